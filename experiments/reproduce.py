"""The paper's Tables 2 and 3, and the refine_input ablation, from scratch.

    python -m experiments.reproduce --table=2 --budget=gpu --datasets=beauty,ml-1m
    python -m experiments.reproduce --table=3 --budget=gpu --datasets=beauty
    python -m experiments.reproduce --table=refine --budget=gpu --datasets=beauty
    python -m experiments.reproduce --table=2 --from_results=runs/reproduce --out=results
    python -m experiments.reproduce --table=2 --status --from_results=runs/reproduce
    python -m experiments.reproduce --table=2 --budget=smoke   # CI: tiny CPU run

A table is a list of *cells* (dataset, backbone, mechanism, config). A cell
trains its K seeds as one ensemble and is an ordinary workdir of the one
experiment path (:func:`awrsr_jax.runner.run`), ``<out>/cells/<name>-<hash>/``:
``config.json``, ``metrics.jsonl``, ``checkpoints/``, ``test_ranks.npy``
(``int[K, U]``), ``attention.npz`` (A, B of each layer, one user, seed 0) and,
last, ``results.json``; ``experiments.compare`` reads it like any run. Finished
cells are skipped, and cells ended by ``--cell_minutes`` go on from their
checkpoint (a killed command resumes; tables share cells). With
``--seed_runs`` a cell trains each seed as its own run, one after another,
in ``<cell>/seed-<s>/``, and writes the cell from them once all have
finished (:func:`awrsr_jax.results.merge_runs`; members train independently,
so seed s's run is member s of the ensemble, up to rounding): a finished
seed can be kept when the checkpoints of the others are lost.
``<out>/table<N>.json`` lists the cells, merged across commands;
``--from_results`` rebuilds ``table<N>.md`` / ``_summary.json`` from it without
training (:mod:`experiments.tables`, which says what a table reports; scipy
is needed only there, so render on a CPU if the GPU lacks it); ``--status``
says where each cell stands.

``--budget=gpu`` starts from each backbone's registry configuration for the
dataset (:data:`awrsr_jax.registry.BACKBONES`), not a search; ``--tuned=``
grid ``best.json`` files replace them; nothing is tuned on the test split.
With ``--report_patience=R`` the same cells also give
``table<N>_patience<R>.md``: each seed where patience R would have stopped
it (``results.json``'s ``rule``), so ``--patience=60 --report_patience=20``
compares at the paper's rule and at a longer patience from one training;
rerun with a larger ``--patience`` or ``--epochs``, a table continues its
cells (:func:`awrsr_jax.resume.continue_from`) while no seed has waited
that long.
"""

from __future__ import annotations

import glob
import os
import sys
import time

from absl import app, flags, logging

from awrsr_jax import datasets, files, registry, results, resume, runner, search
from awrsr_jax.config import Config, validate
from experiments import tables

SMOKE = dict(hidden=16, max_len=10, layers=1, heads=1, batch_size=32)
# cpu: Table 2 for SASRec on Beauty, 2 seeds per cell: about 45 minutes on 2 CPU
# cores as two commands side by side; a cell's training ends after 50 minutes
# (the table says so).
BUDGETS = {
    "gpu": dict(datasets="ml-1m,beauty", backbones="sasrec,stosa", seeds=5,
                epochs=200, patience=20, mechs="", cell_minutes=None),
    "cpu": dict(datasets="beauty", backbones="sasrec", seeds=2, epochs=200,
                patience=20, mechs="", cell_minutes=50),
    "smoke": dict(datasets="smoke", backbones="sasrec", seeds=2, epochs=3,
                  patience=2, mechs="none,add", cell_minutes=None),
}  # fmt: skip


def base_config(dataset, backbone, budget, tuned=()) -> Config:
    """(dataset, backbone)'s config: a grid ``best.json`` (whose ``dataset`` is
    :func:`awrsr_jax.datasets.label` of ``dataset``: a file's stem for a path),
    else the backbone's registry configuration for that dataset; a dataset
    with neither is refused outside the smoke budget."""
    for info in tuned:
        if info["dataset"] == datasets.label(dataset) and info["backbone"] == backbone:
            return Config.from_dict(info["config"])
    per_dataset = registry.backbone(backbone).per_dataset
    if budget == "smoke":
        return Config(backbone=backbone, **SMOKE)
    if dataset not in per_dataset:
        raise ValueError(
            f"--datasets={dataset}: no {backbone} configuration for it; give a "
            f"grid's best.json for it with --tuned= (or --budget=smoke)"
        )
    return Config(backbone=backbone, **per_dataset[dataset])


def check_tuned(paths, tuned, datasets_, backbones) -> None:
    """Refuses a ``--tuned`` file that no (dataset, backbone) of the table uses."""
    wanted = {(datasets.label(d), b) for d in datasets_ for b in backbones}
    for path, info in zip(paths, tuned):
        if (info.get("dataset"), info.get("backbone")) not in wanted:
            raise ValueError(
                f"--tuned={path}: its dataset {info.get('dataset')!r} / backbone "
                f"{info.get('backbone')!r} is not in this table "
                f"(--datasets={','.join(datasets_)}, --backbones={','.join(backbones)})"
            )


def table_datasets(table, datasets) -> list:
    """The datasets a table trains on: Table 3 uses the last one only (Beauty)."""
    return datasets[-1:] if table == "3" else datasets


def table_entries(table, datasets, backbones, budget, tuned=(), mechs=None):
    """``[(dataset, cfg)]`` of every dataset of :func:`table_datasets`."""
    registry.check_table_mechs(mechs, backbones)
    out = []
    for ds in table_datasets(table, datasets):
        for bb in backbones:
            base = base_config(ds, bb, budget, tuned)
            allowed = registry.backbone(bb).table_mechs
            for mech in [m for m in mechs or allowed if m in allowed]:
                if table == "2":
                    out.append((ds, base.replace(mech=mech)))
                elif table == "3":
                    for n in (1, 2) if budget == "smoke" else (1, 2, 3, 4):
                        out.append((ds, base.replace(mech=mech, layers=n)))
                elif mech != "none":
                    for ri in ("scores", "probs"):
                        out.append((ds, base.replace(mech=mech, refine_input=ri)))
    return out


def cell_name(dataset: str, cfg: Config, data_id: str, seeds) -> str:
    """Folder name of one cell: readable prefix plus the config hash."""
    h = search.config_hash(cfg, data_id, seeds=[int(s) for s in seeds])
    label = os.path.basename(dataset)  # a path names its file, never a folder
    return f"{label}-{cfg.backbone}-{cfg.mech}-L{cfg.layers}-{cfg.refine_input}-{h}"


def write_manifest(out, table, specs, *, budget, seeds, command, tuned=()) -> str:
    """``table<N>.json``: merged with an existing one, so commands that each
    train part of a table (say one dataset each) add up to the whole table.
    A ``--tuned`` file's ``search`` (what chose its configuration) is kept
    under ``search``, keyed ``"<dataset> / <backbone>"``, and the
    ``stats.json`` of a dataset prepared by ``data_prep`` under ``data``, so
    that the table says what the data was without the data beside it."""
    path = os.path.join(out, f"table{table}.json")
    os.makedirs(out, exist_ok=True)
    with files.held(os.path.join(out, f".table{table}.lock")):  # two commands
        old = {"entries": [], "commands": []}
        if os.path.exists(path):
            old = files.read_json(path)
        merged = {results.entry_key(e): e for e in old["entries"]}
        for ds, cfg, name in specs:
            e = dict(dataset=ds, backbone=cfg.backbone, mech=cfg.mech,
                     layers=cfg.layers, refine_input=cfg.refine_input,
                     cell=f"cells/{name}")  # fmt: skip
            merged[results.entry_key(e)] = e
        commands = old.get("commands", [])  # in the order first run
        commands += [command] if command not in commands else []
        search = old.get("search", {}) | {
            f"{t['dataset']} / {t['backbone']}": t["search"]
            for t in tuned if "search" in t
        }  # fmt: skip
        data = old.get("data", {}) | {
            ds: st for ds in dict.fromkeys(ds for ds, _, _ in specs)
            if (st := tables.prepared_stats(ds))
        }  # fmt: skip
        info = dict(table=table, budget=budget, seeds=list(seeds),
                    commands=commands, entries=list(merged.values()),
                    **({"search": search} if search else {}),
                    **({"data": data} if data else {}))  # fmt: skip
        files.write_json(path, info)
    return path


def run_table(table, entries, out, *, seeds, epochs, patience, eval_every=1,
              report_patience=0, budget="gpu", command="", max_minutes=None,
              cell_minutes=None, seed_runs=False, checkpoint_every=1,
              tuned=(), log=sys.stderr) -> str:  # fmt: skip
    """Trains every unfinished cell of ``entries`` (each an ordinary workdir
    under ``<out>/cells/``, through :func:`awrsr_jax.runner.run`). The
    manifest is written first, so a table can be rendered from whatever
    finished if the command is killed; no new cell starts after
    ``max_minutes``; a cell's training ends after ``cell_minutes`` (the same
    command continues it), and then the cells train in order of the hours
    they have trained so far, least first, so that repeated commands share
    the time out. A diverged cell is recorded as failed. ``seed_runs``:
    a cell not yet started trains its seeds one by one (:func:`train_seeds`);
    ``checkpoint_every``: epochs between saves (a stop loses at most that
    many, replayed identically on resume)."""
    loaded, specs = {}, []
    for ds, cfg in entries:
        cfg = validate(cfg.replace(epochs=epochs, patience=patience,
                                   eval_every=eval_every,
                                   report_patience=report_patience))  # fmt: skip
        if ds not in loaded:
            loaded[ds] = datasets.load(ds)
        specs.append((ds, cfg, cell_name(ds, cfg, loaded[ds].sha256, seeds)))
    path = write_manifest(out, table, specs, budget=budget, seeds=seeds,
                          command=command, tuned=tuned)  # fmt: skip
    t0 = time.perf_counter()
    options = runner.Options(max_minutes=cell_minutes, progress="lines",
                             attention=True, log=log,
                             checkpoint_every=checkpoint_every)  # fmt: skip
    if cell_minutes is not None:  # time slices: the least trained cell first
        specs.sort(
            key=lambda s: tables.cell_progress(os.path.join(out, "cells", s[2]))[
                "hours"
            ]
        )
    for ds, cfg, name in specs:
        cell_dir, elapsed = os.path.join(out, "cells", name), time.perf_counter() - t0
        if results.is_finished(cell_dir):
            continue
        if max_minutes is not None and elapsed > 60 * max_minutes:
            print(f"[{elapsed:5.0f} s] time limit: not starting {name}", file=log)
            continue
        print(f"[{elapsed:5.0f} s] training {name}", file=log)
        others = glob.glob(os.path.join(out, "cells", f"{name.rsplit('-', 1)[0]}-*"))
        if not os.path.exists(cell_dir):  # a raised cap goes on
            resume.continue_from(
                others, resume.run_identity(cfg, loaded[ds], seeds, None), cell_dir, log
            )
            if results.is_finished(cell_dir):  # stopped by patience below the old cap
                continue
        split = seed_runs and not os.path.exists(os.path.join(cell_dir, "config.json"))
        try:
            if split:
                train_seeds(cfg, loaded[ds], seeds, cell_dir, options, others)
            else:
                runner.run(cfg, workdir=cell_dir, data=loaded[ds], seeds=seeds,
                           options=options)  # fmt: skip
        except FloatingPointError as e:  # recorded in results.json; table goes on
            print(f"  diverged: {e}", file=log)
    return path


def train_seeds(cfg, data, seeds, cell_dir, options, others=()) -> None:
    """Trains each seed of a cell as its own run (``<cell>/seed-<s>/``), one
    after another, then writes the cell from them
    (:func:`awrsr_jax.results.merge_runs`). A seed ended by a time limit
    leaves the cell unfinished (the same call goes on); a diverged seed
    fails the cell. A seed that another process is training (its workdir
    locked) is left to it, so two commands share a cell's seeds; whichever
    finishes the last seed writes the cell. A seed not yet started here
    goes on from its run in one of the cells ``others`` (the same cell under
    a smaller epoch cap or another patience:
    :func:`awrsr_jax.resume.continue_from`) where one can."""
    dirs = results.seed_dirs(cell_dir, seeds)
    for s, d in zip(seeds, dirs):
        if not os.path.exists(d):
            resume.continue_from(
                [os.path.join(o, f"seed-{s}") for o in others if o != cell_dir],
                resume.run_identity(cfg, data, [s], None), d, options.log,
            )  # fmt: skip
        if not results.is_finished(d):
            print(f"  seed {s}", file=options.log)
            try:
                runner.run(cfg, workdir=d, data=data, seeds=[s], options=options)
            except files.WorkdirBusy as e:
                print(f"  left to the other run: {e}", file=options.log)
                continue
            except FloatingPointError as e:
                files.write_json(os.path.join(cell_dir, "results.json"),
                                 {"status": "failed", "error": f"seed {s}: {e}",
                                  "seeds": list(seeds)})  # fmt: skip
                raise
            if not results.is_finished(d):
                return
    if all(map(results.is_finished, dirs)):
        results.merge_runs(dirs, cell_dir)


def define_flags():
    flags.DEFINE_enum("table", "2", ["2", "3", "refine"], "which table")
    flags.DEFINE_enum("budget", "gpu", list(BUDGETS),
                      "gpu: Table 2 at full size; cpu: SASRec on Beauty, 2 seeds; "
                      "smoke: tiny CPU pipeline run")  # fmt: skip
    flags.DEFINE_string("datasets", None, "comma list (default: the budget's)")
    flags.DEFINE_string("backbones", None, "comma list (default: the budget's)")
    flags.DEFINE_string("mechs", None, "comma list (default: every mechanism)")
    flags.DEFINE_integer("seeds", None, "seeds per cell (default: the budget's)")
    flags.DEFINE_integer("epochs", None, "epoch cap (default: the budget's)")
    flags.DEFINE_integer("patience", None, "early-stopping patience (evaluations)")
    flags.DEFINE_integer("report_patience", 0,
                         "also tabulate each seed where this smaller patience "
                         "would have stopped it (table<N>_patience<R>.md): e.g. "
                         "--patience=60 --report_patience=20 gives the paper's "
                         "rule and a longer run from one training; 0 = off")  # fmt: skip
    flags.DEFINE_integer("eval_every", 1, "validate every this many epochs")
    flags.DEFINE_string("tuned", "", "grid best.json files replacing the TUNED configs")
    flags.DEFINE_string("out", None, "output folder (default runs/reproduce)")
    flags.DEFINE_string("from_results", None,
                        "only rebuild the table from this folder, or from several "
                        "(comma-separated, e.g. one per dataset) as one table")  # fmt: skip
    flags.DEFINE_bool("status", False,
                      "print where each cell of --from_results (or --out) "
                      "stands, from its files, and exit: nothing is trained")  # fmt: skip
    flags.DEFINE_float("max_minutes", None, "start no new cell after this many minutes")
    flags.DEFINE_bool("seed_runs", False,
                      "train each seed of a cell as its own run, one after "
                      "another (<cell>/seed-<s>/), and write the cell once all "
                      "have finished: a finished seed outlives lost checkpoints")  # fmt: skip
    flags.DEFINE_integer("checkpoint_every", 1,
                         "save each run every this many epochs (on a GPU a "
                         "save per epoch costs more than the epoch)")  # fmt: skip
    flags.DEFINE_float("cell_minutes", None,
                       "end a cell's training after this many minutes (default: "
                       "the budget's; its row is marked)")  # fmt: skip


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    f, b = flags.FLAGS, BUDGETS[flags.FLAGS.budget]
    out = (
        f.out
        or (f.from_results or "").split(",")[0]
        or os.path.join("runs", "reproduce")
    )
    try:
        if f.status:
            print("\n".join(tables.progress(f.from_results or out, f.table)))
            return
        if not f.from_results:
            if f.cell_minutes is not None and f.cell_minutes < 0:
                raise ValueError(f"--cell_minutes={f.cell_minutes}: must be >= 0")
            if f.checkpoint_every < 1:
                raise ValueError(
                    f"--checkpoint_every={f.checkpoint_every}: must be >= 1"
                )
            tuned_paths = list(filter(None, f.tuned.split(",")))
            tuned = [files.read_json(p) for p in tuned_paths]
            dss = (f.datasets or b["datasets"]).split(",")
            bbs = (f.backbones or b["backbones"]).split(",")
            check_tuned(tuned_paths, tuned, table_datasets(f.table, dss), bbs)
            mechs = f.mechs or b["mechs"]
            entries = table_entries(f.table, dss, bbs, f.budget, tuned,
                                    mechs.split(",") if mechs else None)  # fmt: skip
            command = " ".join(["python -m experiments.reproduce", *sys.argv[1:]])
            run_table(f.table, entries, out, seeds=list(range(f.seeds or b["seeds"])),
                      epochs=f.epochs or b["epochs"], patience=f.patience or b["patience"],
                      eval_every=f.eval_every, report_patience=f.report_patience,
                      budget=f.budget, command=command,
                      max_minutes=f.max_minutes, seed_runs=f.seed_runs,
                      checkpoint_every=f.checkpoint_every, tuned=tuned,
                      cell_minutes=b["cell_minutes"] if f.cell_minutes is None
                      else f.cell_minutes)  # fmt: skip
        try:
            paths = tables.render(f.from_results or out, f.table, out)
        except ImportError as e:  # no scipy on the training machine
            print(f"results in {out}; render the table elsewhere with "
                  f"--from_results={out} ({e})")  # fmt: skip
            return
    except runner.Preempted as e:
        sys.exit(runner.preempted_exit(e))
    except (ValueError, OSError, KeyError) as e:
        sys.exit(f"error: {e}")
    with open(paths[0]) as fh:
        print(fh.read())
    print("outputs: " + ", ".join(paths) + f"; cells under {out}/cells")


if __name__ == "__main__":
    define_flags()
    app.run(main)
