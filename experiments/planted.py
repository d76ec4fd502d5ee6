"""A controlled benchmark: planted order-k dependencies with a known ceiling.

    python -m experiments.planted --budget=cpu --out=runs/planted --max_minutes=110
    python -m experiments.planted --from_results=runs/planted --out=results/planted
    python -m experiments.planted --budget=smoke   # CI: seconds

For every planted dataset of the budget (:mod:`awrsr_jax.planted`: the order
k in ``--orders`` at the budget's base parameters, plus its variations of p,
clusters or length) the sequence file and its JSON (parameters, hash, the
Bayes-optimal ceiling and the popularity floor under the project's protocol)
go to ``<out>/data/``. Each backbone x mechanism (``table_mechs`` of the
registry: stoc for STOSA only) is a cell of ``--seeds`` seeds trained as one
ensemble through :func:`experiments.reproduce.run_table` (a workdir of
:func:`awrsr_jax.runner.run` under ``<out>/cells/``; manifest
``<out>/tableplanted.json``), with early stopping on validation NDCG@5. Done
cells are skipped; a cell ended by a time limit goes on from its checkpoint
when the command runs again. ``--max_minutes`` bounds the command: no cell
starts after it, and the running cell is ended at it (resumable).

Rendering (after training, or alone with ``--from_results``) writes to
``--out``: ``planted.md`` (per cell: the fraction of the ceiling reached,
test NDCG@5 and Recall@10 of the model over the oracle's, mean +- sd over
seeds; the seed-paired t-test against ``none`` of
:func:`awrsr_jax.stats.cell_summary`; epochs, s/epoch, parameters; † for a
cell ended by the epoch cap or a time limit while a seed was within its
patience), ``planted_summary.json`` (every cell's dataset parameters,
backbone, mechanism, per-seed metrics and fractions, p) and
``planted_fraction.png`` (the fraction of the ceiling against k, a line per
mechanism; the popularity floor dashed).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

from absl import app, flags, logging

from awrsr_jax import files, registry, results, stats
from awrsr_jax.analysis import markdown_table
from awrsr_jax.config import Config
from awrsr_jax.planted import Spec, write
from experiments.reproduce import run_table
from experiments.tables import cut_seeds

TABLE = "planted"  # the manifest is <out>/tableplanted.json
METRICS = ("NDCG@5", "Recall@10")
# cpu: SASRec x 4 mechanisms x k in {1,2,3} (+ p = 0.5 at k = 2), 5 seeds: 16
# cells of about 5 minutes each on a 2-core CPU shared with another training
# job (results/planted/README.md).
BUDGETS = {
    "smoke": dict(
        spec=Spec(num_users=80, num_items=40, num_clusters=4, min_len=5, max_len=8),
        orders=(2,), variations=(), backbones="sasrec", mechs="none,add", seeds=2,
        epochs=2, patience=2, cell_minutes=None,
        model=dict(hidden=8, max_len=8, layers=1, heads=1, batch_size=32),
    ),
    "cpu": dict(
        spec=Spec(num_users=2000, num_items=200, num_clusters=8, p=0.8,
                  min_len=15, max_len=25),
        orders=(1, 2, 3), variations=(dict(order=2, p=0.5),), backbones="sasrec",
        mechs="", seeds=5, epochs=200, patience=20, cell_minutes=15,
        model=dict(hidden=32, max_len=25, layers=2, heads=1, dropout=0.2,
                   batch_size=64, lr=2e-3),
    ),
    "gpu": dict(
        spec=Spec(num_users=6000, num_items=1000, num_clusters=20, p=0.8,
                  min_len=30, max_len=50),
        orders=(1, 2, 3, 4), backbones="sasrec,stosa", mechs="", seeds=5,
        variations=(dict(order=2, p=0.5), dict(order=2, num_clusters=40),
                    dict(order=2, min_len=15, max_len=25)),
        epochs=200, patience=20, cell_minutes=None,
        model=dict(hidden=64, max_len=50, layers=2, heads=1, dropout=0.2,
                   batch_size=128),
    ),
}  # fmt: skip


def specs_of(budget: dict, orders, variations: bool = True) -> list[Spec]:
    """The budget's datasets: each order at its base spec, then (if
    ``variations``) the budget's variations of it."""
    base = budget["spec"]
    out = [dataclasses.replace(base, order=k) for k in orders]
    out += [dataclasses.replace(base, **v) for v in budget["variations"] if variations]
    return list(dict.fromkeys(out))


def entries_of(paths, backbones, mechs, model: dict) -> list[tuple[str, Config]]:
    """``[(data path, cfg)]``: every dataset x backbone x mechanism."""
    out = []
    for path in paths:
        for bb in backbones:
            allowed = registry.backbone(bb).table_mechs
            for mech in [m for m in mechs or allowed if m in allowed]:
                out.append((path, Config(backbone=bb, mech=mech, **model)))
    return out


def run_sweep(entries, out, *, max_minutes=None, cell_minutes=None, log=sys.stderr,
              **kw) -> None:  # fmt: skip
    """Trains every unfinished cell (:func:`run_table`, one cell at a time).

    With ``max_minutes``, no cell starts after that many minutes and the
    running one is ended at the limit (resumable); ``kw`` goes to
    :func:`run_table` (seeds, epochs, patience, budget, command).
    """
    t0 = time.monotonic()
    for entry in entries:
        limit = cell_minutes
        if max_minutes is not None:
            left = max_minutes - (time.monotonic() - t0) / 60
            if left <= 0:
                print(f"time limit: not starting {entry[1].mech} on {entry[0]}",
                      file=log)  # fmt: skip
                continue
            limit = left if limit is None else min(limit, left)
        t_cell = time.monotonic()
        run_table(TABLE, [entry], out, cell_minutes=limit, log=log, **kw)
        print(f"[{time.monotonic() - t0:6.0f} s] {entry[1].mech} on "
              f"{os.path.basename(entry[0])}: {time.monotonic() - t_cell:.0f} s",
              file=log)  # fmt: skip


# ---------------------------------------------------------------- rendering


def _data_info(results_dir, entry) -> dict:
    """The JSON beside an entry's sequence file (looked up under
    ``<results_dir>/data`` first, so a moved folder still renders)."""
    stem = os.path.splitext(os.path.basename(entry["dataset"]))[0]
    moved = os.path.join(results_dir, "data", stem + ".json")
    if os.path.exists(moved):
        return files.read_json(moved)
    return files.read_json(os.path.splitext(entry["dataset"])[0] + ".json")


def cell_rows(results_dir) -> list[dict]:
    """One JSON-ready row per finished cell: dataset parameters, backbone,
    mechanism, per-seed metrics and fractions of the ceiling, the
    seed-level test against ``none`` on the same dataset and backbone."""
    _, cells = results.load_manifest(results_dir, TABLE)
    done = {}  # keyed by the file name: a path given two ways is one dataset
    for e, run in cells:
        if run and run["results"].get("status") == "ok":
            done[(os.path.basename(e["dataset"]), e["backbone"], e["mech"])] = (e, run)
    rows = []
    for (ds, bb, mech), (e, run) in done.items():
        info = _data_info(results_dir, e)
        base = done.get((ds, bb, "none")) if mech != "none" else None
        rows.append(_row(e, run, info, base and base[1]))
    return rows


def _row(e, run, info, base) -> dict:
    res, seeds = run["results"], run["results"]["seeds"]
    kw = {}
    if base is not None:
        kw = dict(base_ranks_KxU=base["ranks"], base_seeds=base["results"]["seeds"])
    cs = stats.cell_summary(run["ranks"], seeds, metrics=METRICS, **kw)
    ceiling, floor = info["bounds"]["ceiling"]["test"], info["bounds"]["floor"]["test"]
    frac = {m: [cs["per_seed"][str(s)][m] / ceiling[m] for s in seeds] for m in METRICS}
    res = dict(res, config=run["config"]["config"])
    return dict(
        dataset=os.path.basename(e["dataset"]),
        **{"data_seed" if k == "seed" else k: v for k, v in info["spec"].items()},
        backbone=e["backbone"],
        mech=e["mech"], seeds=seeds, per_seed=cs["per_seed"], mean=cs["mean"],
        sd=cs["sd"], ceiling=ceiling, floor=floor, fraction_per_seed=frac,
        fraction_mean={m: stats.mean_std(v)[0] for m, v in frac.items()},
        fraction_sd={m: stats.mean_std(v)[1] for m, v in frac.items()},
        p_vs_none=cs.get("p"), seed_test=cs.get("seed_test"),
        bootstrap=cs.get("bootstrap"), epochs_run=res["epochs_run"],
        best_epoch=res["best_epoch"], cut_seeds=cut_seeds(res),
        stopped=res.get("stopped"), seconds_per_epoch=res["seconds_per_epoch"],
        wall_seconds=wall_seconds(run["dir"]), params=res["params"],
        refine_params=res["refine_params"], device=res["device"],
    )  # fmt: skip


def wall_seconds(workdir) -> float:
    """A cell's training and validation time over all its epochs (the
    ensemble's epoch time, compilation included; checkpoints excluded)."""
    by_epoch = {}
    for r in results.read_metrics(workdir):
        t = r["seconds"] + r.get("eval_seconds", 0.0)
        by_epoch[r["epoch"]] = max(by_epoch.get(r["epoch"], 0.0), t)
    return sum(by_epoch.values())


def _pm(mean, sd, digits=3) -> str:
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _p(row, m="NDCG@5") -> str:
    p = (row["p_vs_none"] or {}).get(m)
    if p is None:
        return "–"
    d = row["seed_test"][m]["mean_diff"] / row["ceiling"][m]
    return f"{d:+.3f} (p={p:.3f}{stats.stars(p)})"


def markdown(rows, command: str = "") -> str:
    """``planted.md``: a summary (fraction of the ceiling per mechanism x k,
    main axis) and one row per cell."""
    lines = [
        "# Planted order-k dependencies: fraction of the ceiling reached",
        "",
        *([f"Command: `{command}`.", ""] if command else []),
        "Ceiling: the Bayes-optimal ranking (P(next item | history) under the "
        "generator); floor: ranking by the generator's popularity. Both and "
        "the models under the same protocol: leave-one-out, full ranking, "
        "history removed, ties counted against the ranking; each seed "
        "selected on validation NDCG@5 (early stopping). Fraction = a seed's "
        "test metric / the ceiling's; mean ± sd over seeds. Δ vs none: the "
        "mean per-seed difference of test NDCG@5, as a fraction of the "
        "ceiling, and the two-sided paired t-test over seeds (* p < 0.05, "
        "** p < 0.01). † a seed was still within its patience when the epoch "
        "cap or a time limit ended the cell.",
        "",
    ]
    lines += _summary_table(rows)
    head = ["dataset", "backbone", "mech", "seeds", "ceiling N@5", "floor N@5",
            "test N@5", "frac N@5", "frac R@10", "Δ vs none", "epochs run / best",
            "s/epoch", "minutes", "params (refine)"]  # fmt: skip
    table = [
        [f"k={r['order']} p={r['p']:g} C={r['num_clusters']} len "
         f"{r['min_len']}-{r['max_len']}", r["backbone"], r["mech"], len(r["seeds"]),
         f"{r['ceiling']['NDCG@5']:.4f}", f"{r['floor']['NDCG@5']:.4f}",
         _pm(r["mean"]["NDCG@5"], r["sd"]["NDCG@5"], 4),
         _pm(r["fraction_mean"]["NDCG@5"], r["fraction_sd"]["NDCG@5"]),
         _pm(r["fraction_mean"]["Recall@10"], r["fraction_sd"]["Recall@10"]),
         _p(r), f"{r['epochs_run']} / {', '.join(map(str, r['best_epoch']))}"
         + (" †" if r["cut_seeds"] else ""), f"{r['seconds_per_epoch']:.2f}",
         f"{r['wall_seconds'] / 60:.1f}",
         f"{r['params']:,} ({r['refine_params']:,})"]
        for r in rows
    ]  # fmt: skip
    return "\n".join([*lines, "## Every cell", "", *markdown_table(head, table)]) + "\n"


def _axis(rows):
    """Rows on the main axis (the spec that only k varies over), by
    backbone: ``{backbone: {mech: [row by k]}}``; the base is the spec of
    the most rows at p, clusters and lengths shared."""

    def key(r):
        return tuple(r[f] for f in ("p", "num_clusters", "min_len", "max_len",
                                    "num_users", "num_items"))  # fmt: skip

    keys = [key(r) for r in rows]
    main = max(set(keys), key=keys.count) if keys else None
    out = {}
    for r in rows:
        if key(r) == main:
            out.setdefault(r["backbone"], {}).setdefault(r["mech"], []).append(r)
    return {bb: {m: sorted(v, key=lambda r: r["order"]) for m, v in by.items()}
            for bb, by in out.items()}  # fmt: skip


def _summary_table(rows) -> list[str]:
    lines = []
    for bb, by in _axis(rows).items():
        orders = sorted({r["order"] for v in by.values() for r in v})
        head = ["mech", *(f"k={k}" for k in orders)]
        table = []
        for mech, v in by.items():
            at = {r["order"]: r for r in v}
            table.append([mech] + [
                "–" if k not in at else
                _pm(at[k]["fraction_mean"]["NDCG@5"], at[k]["fraction_sd"]["NDCG@5"])
                + (" †" if at[k]["cut_seeds"] else "") + f" {_p(at[k])}"
                for k in orders])  # fmt: skip
        floor = {r["order"]: r["floor"]["NDCG@5"] / r["ceiling"]["NDCG@5"]
                 for v in by.values() for r in v}  # fmt: skip
        table.append(["popularity floor"]
                     + [f"{floor[k]:.3f}" if k in floor else "–" for k in orders])  # fmt: skip
        lines += [f"## {bb}: fraction of the ceiling's test NDCG@5 against k", "",
                  *markdown_table(head, table), ""]  # fmt: skip
    return lines


def plot(rows, path) -> str:
    """``planted_fraction.png``: fraction of the ceiling (test NDCG@5) against
    k, a line per mechanism (error bars: sd over seeds), a panel per backbone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis = _axis(rows)
    fig, axes = plt.subplots(1, max(1, len(axis)), figsize=(5 * max(1, len(axis)), 4),
                             squeeze=False)  # fmt: skip
    for ax, (bb, by) in zip(axes[0], axis.items()):
        for i, (mech, v) in enumerate(by.items()):
            shift = 0.04 * (i - (len(by) - 1) / 2)  # error bars side by side
            ks = [r["order"] + shift for r in v]
            ax.errorbar(ks, [r["fraction_mean"]["NDCG@5"] for r in v],
                        yerr=[r["fraction_sd"]["NDCG@5"] for r in v], marker="o",
                        capsize=3, label=mech)  # fmt: skip
        floor = sorted({(r["order"], r["floor"]["NDCG@5"] / r["ceiling"]["NDCG@5"])
                        for v in by.values() for r in v})  # fmt: skip
        ax.plot(*zip(*floor), "k--", label="popularity floor")
        r = next(iter(by.values()))[0]
        title = (
            f"{bb}: p={r['p']:g}, {r['num_clusters']} clusters, length "
            f"{r['min_len']}-{r['max_len']}, {len(r['seeds'])} seeds"
        )
        ax.set(xlabel="order k of the planted rule", ylim=(0, 1.05),
               ylabel="test NDCG@5 / ceiling (mean ± sd over seeds)",
               title=title)  # fmt: skip
        ax.set_xticks(sorted({r["order"] for v in by.values() for r in v}))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def render(results_dir, out) -> list[str]:
    """``planted.md``, ``planted_summary.json`` and ``planted_fraction.png``."""
    info = files.read_json(os.path.join(results_dir, f"table{TABLE}.json"))
    rows = cell_rows(results_dir)
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, n) for n in ("planted.md", "planted_summary.json")]
    files.write_text(paths[0], markdown(rows, "; ".join(info["commands"])))
    files.write_json(paths[1], {"commands": info["commands"], "cells": rows})
    if rows:
        paths.append(plot(rows, os.path.join(out, "planted_fraction.png")))
    return paths


# ---------------------------------------------------------------- command line


def define_flags():
    flags.DEFINE_enum("budget", "cpu", list(BUDGETS),
                      "smoke: seconds (CI); cpu: SASRec, k = 1..3, about an "
                      "hour on 2 CPU cores; gpu: larger data, SASRec and STOSA")  # fmt: skip
    flags.DEFINE_string("out", None, "output folder (default runs/planted, or "
                        "runs/smoke/planted for --budget=smoke)")  # fmt: skip
    flags.DEFINE_list("orders", None, "orders k (default: the budget's)")
    flags.DEFINE_string("backbones", None, "comma list (default: the budget's)")
    flags.DEFINE_bool("variations", True, "also the budget's variations of p, "
                      "clusters or length (at one k)")  # fmt: skip
    flags.DEFINE_string("mechs", None, "comma list, trained in this order "
                        "(default: every table mechanism)")  # fmt: skip
    flags.DEFINE_integer("seeds", None, "seeds per cell (default: the budget's)")
    flags.DEFINE_integer("epochs", None, "epoch cap (default: the budget's)")
    flags.DEFINE_integer("patience", None, "early-stopping patience (epochs)")
    flags.DEFINE_float("max_minutes", None, "bound on the command's training time")
    flags.DEFINE_float("cell_minutes", None, "end a cell's training after this "
                       "many minutes (default: the budget's)")  # fmt: skip
    flags.DEFINE_string("from_results", None, "only render from this folder")


def train_all(f, b, out) -> None:
    """Writes the budget's datasets and trains their cells (flags ``f``)."""
    orders = [int(k) for k in f.orders] if f.orders else b["orders"]
    specs = specs_of(b, orders, f.variations)
    mechs = [
        m for m in (f.mechs if f.mechs is not None else b["mechs"]).split(",") if m
    ]
    backbones = (f.backbones or b["backbones"]).split(",")
    registry.check_table_mechs(mechs, backbones)  # before any file is written
    paths = [write(s, os.path.join(out, "data")) for s in specs]
    entries = entries_of(paths, backbones, mechs, b["model"])
    run_sweep(entries, out, max_minutes=f.max_minutes,
              cell_minutes=b["cell_minutes"] if f.cell_minutes is None
              else f.cell_minutes, seeds=list(range(f.seeds or b["seeds"])),
              epochs=f.epochs or b["epochs"], patience=f.patience or b["patience"],
              budget=f.budget,
              command=" ".join(["python -m experiments.planted", *sys.argv[1:]]))  # fmt: skip


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    f = flags.FLAGS
    smoke = f.budget == "smoke"
    default = os.path.join("runs", "smoke", "planted") if smoke else "runs/planted"
    out = f.out or f.from_results or default
    try:
        if not f.from_results:
            train_all(f, BUDGETS[f.budget], out)
        paths = render(f.from_results or out, out)
    except (ValueError, OSError, KeyError) as e:
        sys.exit(f"error: {e}")
    with open(paths[0]) as fh:
        print(fh.read())
    print("outputs: " + ", ".join(paths) + f"; cells under {f.from_results or out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
