"""The paper's protocol for SASRec on one dataset, resumable.

Search Original at one layer on validation NDCG@5 (stage 1: L2 x dropout;
stage 2, one key at a time from the previous best: max length, hidden size,
heads; stage 3: lr 1e-4 beside 1e-3, with the rule of :func:`original`),
then Table 2: every mechanism at Original's configuration, 5 seeds, patience
60 with each seed also reported where the paper's patience 20 stops it;
then the table is rendered from what has finished (with every cell done,
also ``experiments.strata`` and ``experiments.agreement`` at both rules and
``experiments.figures``), and with it the three datasets' table
(:func:`render_all`).
Every step skips finished work, so the same command goes on after a stop::

    python -m experiments.protocol --dataset=ml-1m
    python -m experiments.protocol --dataset=beauty --mechs=add,value,simp,none
    python -m experiments.protocol --dataset=anime   # prepares runs/data/anime

Raw runs go to ``--runs`` (default ``runs/paper``, not committed). Each
search stage's ``results.jsonl``, ``best.json`` and summaries are copied to
``results/paper_protocol/search/<tag>-sasrec-stage{1,2}/`` after every grid
command, and a committed stage is copied back first, so a fresh checkout
retrains nothing (``experiments.grid`` skips configs already in
``results.jsonl``). Table 2's cells train in ``<runs>/reproduce/<tag>/``,
seed by seed (``reproduce --seed_runs``), and each finished seed run or
cell is copied without checkpoints to ``--results`` (default
``results/paper_protocol/table2/<tag>/``) to commit; committed ones are
copied back first. A second command on the same dataset with another
``--mechs`` order shares the table seed by seed.

Paths (``--runs``, ``--results``, ``--pack``) are taken from the repository
root, wherever the command runs. On a GPU, ``--ensemble`` trains each cell's 5 seeds as one vmapped
ensemble (a save every 50 epochs), ``--nosearch`` takes the committed
``original.json`` as it is, ``--norender`` leaves rendering to a machine
with scipy and matplotlib, and ``--pack=DIR`` writes ``--results`` to
``DIR/<tag>.tgz`` after every cell, so a time limit loses only the cell in
training (README, "The paper's protocol").
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tarfile

from absl import app, flags

from awrsr_jax import files, registry, results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
P = "results/paper_protocol"  # the stages' spaces; committed search and tables
# --dataset: (tag of the folders, what grid and reproduce get as --dataset)
DATASETS = {
    "ml-1m": ("ml1m", "ml-1m"),
    "beauty": ("beauty", "beauty"),
    "anime": ("anime", "runs/data/anime/anime.txt"),
}
ANIME_PREP = ["--dataset=anime", "--raw=../shared/data/raw/anime-caserec-5k",
              "--out=runs/data/anime"]  # fmt: skip
MARGIN = 0.001  # stage 3: lr 1e-4 cut by its cap counts as better only beyond this
SEARCHED = ("l2", "dropout", "max_len", "hidden", "heads", "lr")


# ------------------------------------------------------- reading a grid's rows


def _rows(d):
    with open(os.path.join(d, "results.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _best(d):
    with open(os.path.join(d, "best.json")) as f:
        return json.load(f)


def _at_cap(r):
    return r["epochs_run"] >= r["config"]["epochs"]


def _stage3(d, max_len, hidden, heads):
    """{(lr, epoch cap): row} of the stage-3 config's runs."""
    want = {"max_len": int(max_len), "hidden": int(hidden), "heads": int(heads)}
    return {
        (r["config"]["lr"], r["config"]["epochs"]): r
        for r in _rows(d)
        if r["status"] == "ok" and all(r["config"][k] == v for k, v in want.items())
    }


def _ndcg(r):
    return r["valid"]["NDCG@5"]


def should_continue(d, *cfg) -> bool:
    """Stage 3's rule: lr 1e-4 goes on to a 400-epoch cap if it ended at the
    200 cap more than ``MARGIN`` above lr 1e-3 in validation NDCG@5."""
    runs = _stage3(d, *cfg)
    lr3, lr4 = runs[(1e-3, 200)], runs[(1e-4, 200)]
    return _at_cap(lr4) and _ndcg(lr4) > _ndcg(lr3) + MARGIN and (1e-4, 400) not in runs


def original(d, *cfg) -> dict:
    """Original's configuration as a ``best.json`` (for ``reproduce
    --tuned``): the better of lr 1e-3 and lr 1e-4 at stage 3, where an lr
    1e-4 run cut by its cap within ``MARGIN`` of lr 1e-3 counts as a tie
    resolved for lr 1e-3, the one that converged."""
    runs = _stage3(d, *cfg)
    lr3, lr4 = runs[(1e-3, 200)], runs.get((1e-4, 400), runs[(1e-4, 200)])
    if _at_cap(lr4) and _ndcg(lr4) <= _ndcg(lr3) + MARGIN:
        pick = lr3
    else:
        pick = max((lr3, lr4), key=_ndcg)
    info = _best(d)
    keep = ("hash", "config", "valid", "test")
    return {
        **{k: info[k] for k in ("dataset", "backbone")},
        **{k: pick[k] for k in keep},
    }


def _values(rows, key) -> str:
    return "/".join(f"{v:g}" for v in sorted({r["config"][key] for r in rows}))


def searched(*stages) -> str:
    """What the stage folders' ``results.jsonl`` rows searched, read from the
    rows: per stage the number of configs, the keys that vary (a full
    product, or one key at a time) and those held fixed, and the seeds,
    layers, caps and patience of its runs (``reproduce`` prints it in the
    table's header)."""
    parts, every = [], []
    for i, d in enumerate(stages, 1):
        rows = [r for r in _rows(d) if r["status"] == "ok"]
        every += rows
        n = len({tuple(r["config"][k] for k in SEARCHED) for r in rows})
        sizes = {k: len({r["config"][k] for r in rows}) for k in SEARCHED}
        vary = [k for k in SEARCHED if sizes[k] > 1]
        fixed = [f"{k} {_values(rows, k)}" for k in SEARCHED if k not in vary]
        keys = [f"{k} {_values(rows, k)}" for k in vary]
        if n == math.prod(sizes[k] for k in vary):
            desc = " x ".join(keys)
        else:
            desc = "one key at a time from the previous best: " + ", ".join(keys)
        parts.append(
            f"stage {i} ({n} configs): {desc}"
            + (f" at {', '.join(fixed)}" if fixed else "")
        )
    common = ", ".join(
        f"{k} {_values(every, k)}" for k in ("layers", "seed", "epochs", "patience")
    )
    return (
        f"Original searched on validation NDCG@5, one run per config "
        f"({common}); " + "; ".join(parts)
    )


# ------------------------------------------------- finished runs, to commit


def _copy_run(src, dst):
    """A run's files without its checkpoint folders; ``results.json`` last,
    as the runner writes it."""
    os.makedirs(dst, exist_ok=True)
    names = [n for n in os.listdir(src) if os.path.isfile(os.path.join(src, n))]
    for n in sorted(n for n in names if n not in ("results.json", ".lock")):
        shutil.copyfile(os.path.join(src, n), os.path.join(dst, n))
    shutil.copyfile(
        os.path.join(src, "results.json"), os.path.join(dst, "results.json")
    )


def sync_cells(src, dst) -> list[str]:
    """Copies each finished cell of ``src/cells`` (``results.json`` written,
    not ended by a time limit) that ``dst/cells`` lacks, and the finished
    ``seed-<s>`` runs of a cell trained seed by seed (``reproduce
    --seed_runs``; the cell is written from them when the last one ends),
    all without checkpoints, and ``src/table2.json`` unless ``dst``'s lists
    more cells; returns what was copied."""
    copied = []
    cells = os.path.join(src, "cells")
    for name in sorted(os.listdir(cells)) if os.path.isdir(cells) else []:
        cell = os.path.join(cells, name)
        runs = [name] if results.is_finished(cell) else []
        runs += [
            os.path.join(name, s) for s in sorted(os.listdir(cell))
            if s.startswith("seed-") and results.is_finished(os.path.join(cell, s))
        ]  # fmt: skip
        for run in runs:
            out = os.path.join(dst, "cells", run)
            if not results.is_finished(out):
                _copy_run(os.path.join(cells, run), out)
                copied.append(run)
    manifest, target = (
        os.path.join(src, "table2.json"),
        os.path.join(dst, "table2.json"),
    )
    if os.path.exists(manifest) and _entries(manifest) >= _entries(target):
        os.makedirs(dst, exist_ok=True)
        shutil.copyfile(manifest, target)
    return copied


def _entries(manifest) -> int:
    if not os.path.exists(manifest):
        return -1
    with open(manifest) as f:
        return len(json.load(f)["entries"])


def _lines(d) -> list[str]:
    """``d/results.jsonl``'s lines ([] where there is none)."""
    path = os.path.join(d, "results.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.readlines()


def _sync_in(runs_dir, committed):
    """A committed stage -> its runs folder, unless that has as many rows."""
    if len(_lines(runs_dir)) < len(_lines(committed)):
        os.makedirs(runs_dir, exist_ok=True)
        shutil.copyfile(os.path.join(committed, "results.jsonl"),
                        os.path.join(runs_dir, "results.jsonl"))  # fmt: skip


def _sync_out(runs_dir, committed):
    """A stage with new rows -> its committed folder."""
    if _lines(runs_dir) == _lines(committed):
        return
    os.makedirs(committed, exist_ok=True)
    for n in ("results.jsonl", "best.json", "summary.md", "summary.csv"):
        shutil.copyfile(os.path.join(runs_dir, n), os.path.join(committed, n))


def _pack(folder, out, tag):
    """``folder`` as ``out/<tag>.tgz``, written under another name first."""
    os.makedirs(out, exist_ok=True)
    part = os.path.join(out, f"{tag}.tgz.part")
    with tarfile.open(part, "w:gz") as tar:
        tar.add(folder, arcname=folder)
    os.replace(part, os.path.join(out, f"{tag}.tgz"))


# ---------------------------------------------------------------- the driver


def _python(module, *args):
    """Runs ``python -m module args`` in the repository root; a failure (or a
    preempted run's exit code) ends the protocol with the same code."""
    argv = [sys.executable, "-m", module, *args]
    print("$ " + " ".join(["python", *argv[1:]]), file=sys.stderr, flush=True)
    rc = subprocess.call(argv)
    if rc:
        raise SystemExit(rc)


def search(tag, data, runs, call=_python) -> str:
    """Stages 1-3 (each grid command skips the configs it already has);
    writes ``original.json`` beside stage 2's rows, committed too, and
    returns the committed path."""
    s1 = os.path.join(runs, "search", f"{tag}-sasrec")
    s2 = os.path.join(runs, "search", f"{tag}-sasrec-stage2")
    c1, c2 = (os.path.join(P, "search", f"{tag}-sasrec-stage{i}") for i in (1, 2))

    def grid(space, fixed, out):
        call("experiments.grid", "--backbone=sasrec", f"--dataset={data}",
             f"--space={P}/{space}_space.json", f"--set={fixed}", f"--out={out}")  # fmt: skip

    def best(d, key):
        return _best(d)["config"][key]

    _sync_in(s1, c1)  # stage 1: L2 x dropout at hidden 64, max length 50, 1 head
    grid("stage1", "layers=1,hidden=64,max_len=50,heads=1,lr=0.001,batch_size=128", s1)
    _sync_out(s1, c1)
    fix = f"layers=1,l2={best(s1, 'l2')},dropout={best(s1, 'dropout')},batch_size=128"

    _sync_in(s2, c2)  # stage 2, one key at a time; stage 1's best is 2a's 50
    if not _lines(s2):
        (row,) = [r for r in _rows(s1) if r["hash"] == _best(s1)["hash"]]
        os.makedirs(s2, exist_ok=True)
        files.write_text(os.path.join(s2, "results.jsonl"), json.dumps(row) + "\n")
    grid("stage2a", f"{fix},hidden=64,heads=1,lr=0.001", s2)
    _sync_out(s2, c2)
    ml = best(s2, "max_len")
    grid("stage2b", f"{fix},max_len={ml},heads=1,lr=0.001", s2)
    _sync_out(s2, c2)
    hidden = best(s2, "hidden")
    grid("stage2c", f"{fix},max_len={ml},hidden={hidden},lr=0.001", s2)
    _sync_out(s2, c2)
    heads = best(s2, "heads")

    at = f"{fix},max_len={ml},hidden={hidden},heads={heads}"  # stage 3: lr
    grid("stage3", at, s2)
    if should_continue(s2, ml, hidden, heads):
        grid("stage3b", f"{at},epochs=400", s2)
    _sync_out(s2, c2)
    info = original(s2, ml, hidden, heads)
    info["search"] = searched(s1, s2)
    for d in (s2, c2):
        path = os.path.join(d, "original.json")
        if not os.path.exists(path) or files.read_json(path) != info:
            files.write_json(path, info)
    return os.path.join(c2, "original.json")


def render(results_dir, call=_python) -> None:
    """Table 2 at both rules from what has finished in ``results_dir``; once
    every cell of its manifest has, also the by-group and agreement tables
    (both rules) and the figures (``figures/``)."""
    call("experiments.reproduce", "--table=2", f"--from_results={results_dir}",
         f"--out={results_dir}")  # fmt: skip
    with open(os.path.join(results_dir, "table2.json")) as f:
        cells = [e["cell"] for e in json.load(f)["entries"]]
    if all(results.is_finished(os.path.join(results_dir, c)) for c in cells):
        for module in ("experiments.strata", "experiments.agreement"):
            for rule in ((), ("--rule",)):
                call(module, f"--from_results={results_dir}",
                     f"--out={results_dir}", *rule)  # fmt: skip
        call("experiments.figures", f"--from_results={results_dir}",
             f"--out={os.path.join(results_dir, 'figures')}")  # fmt: skip


def render_all(call=_python) -> None:
    """The datasets' committed Table 2 folders (those with a manifest) as one
    table, ``results/paper_protocol/table2/table2.md`` and its summaries."""
    out = os.path.join(P, "table2")
    dirs = [d for d in (os.path.join(out, tag) for tag, _ in DATASETS.values())
            if os.path.exists(os.path.join(d, "table2.json"))]  # fmt: skip
    if dirs:
        call("experiments.reproduce", "--table=2",
             f"--from_results={','.join(dirs)}", f"--out={out}")  # fmt: skip


def table2(data, tuned, runs_dir, results_dir, mechs, *, epochs=1000,
           cell_minutes=None, ensemble=False, pack=None, tag="", draw=True,
           call=_python) -> None:  # fmt: skip
    """Every mechanism of ``mechs`` at ``tuned``, 5 seeds, one cell after
    another (patience 60, the paper's 20 reported from the same training);
    finished seed runs and cells are synced from ``results_dir`` before and
    to it after each cell, which ``pack`` then archives; at the end
    :func:`render` (unless not ``draw``)."""
    sync_cells(results_dir, runs_dir)
    for mech in mechs:
        call("experiments.reproduce", "--table=2", f"--datasets={data}",
             "--backbones=sasrec", "--seeds=5", f"--tuned={tuned}",
             f"--epochs={epochs}", "--patience=60", "--report_patience=20",
             f"--mechs={mech}",
             *(["--checkpoint_every=50"] if ensemble else ["--seed_runs"]),
             f"--out={runs_dir}",
             *([f"--cell_minutes={cell_minutes:g}"] if cell_minutes else []))  # fmt: skip
        for name in sync_cells(runs_dir, results_dir):
            print(f"{runs_dir} -> {results_dir}: {name}", file=sys.stderr)
        if pack:
            _pack(results_dir, pack, tag)
    if draw:
        render(results_dir, call)


def define_flags():
    flags.DEFINE_enum("dataset", None, list(DATASETS), "the dataset")
    flags.DEFINE_list("mechs", ["none", "simp", "value", "add"],
                      "Table 2's cells, in this order")  # fmt: skip
    flags.DEFINE_bool("search", True,
                      "run the search (finished stages are skipped); "
                      "--nosearch takes the committed original.json")  # fmt: skip
    flags.DEFINE_integer("epochs", 1000, "Table 2's epoch cap (patience 60 ends seeds)")
    flags.DEFINE_float("cell_minutes", None,
                       "end each training after this many minutes "
                       "(the same command continues it)")  # fmt: skip
    flags.DEFINE_bool("ensemble", False,
                      "train each cell's seeds as one vmapped ensemble (a GPU)")  # fmt: skip
    flags.DEFINE_string("runs", "runs/paper", "raw runs (search/, reproduce/<tag>/)")
    flags.DEFINE_string("results", None,
                        "finished Table 2 runs, to commit (default "
                        "results/paper_protocol/table2/<tag>)")  # fmt: skip
    flags.DEFINE_string("pack", None, "also archive --results as DIR/<tag>.tgz")
    flags.DEFINE_bool("render", True,
                      "at the end, render --results' tables (and, once every "
                      "cell has finished, strata and figures; these need scipy "
                      "and matplotlib: --norender on a GPU machine)")  # fmt: skip
    flags.mark_flag_as_required("dataset")


def main(argv):
    del argv
    f = flags.FLAGS
    try:
        registry.check_table_mechs(f.mechs, ["sasrec"])
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    os.chdir(REPO)
    tag, data = DATASETS[f.dataset]
    if f.dataset == "anime" and not os.path.exists(data):
        _python("data_prep", *ANIME_PREP)
    tuned = os.path.join(P, "search", f"{tag}-sasrec-stage2", "original.json")
    if f.search:
        tuned = search(tag, data, f.runs)
    elif not os.path.exists(tuned):
        raise app.UsageError(f"--nosearch: {tuned} does not exist (run the search)")
    table2(data, tuned, os.path.join(f.runs, "reproduce", tag),
           f.results or os.path.join(P, "table2", tag), f.mechs, epochs=f.epochs,
           cell_minutes=f.cell_minutes, ensemble=f.ensemble, pack=f.pack, tag=tag,
           draw=f.render)  # fmt: skip
    if f.render and f.results is None:
        render_all()


if __name__ == "__main__":
    define_flags()
    app.run(main)
