"""The paper's Figures 2-5 as PNG files, from ``experiments.reproduce`` outputs.

    python -m experiments.figures --from_results=runs/reproduce --out=results/figures
    python -m experiments.figures --from_results=runs/a,runs/b   # one set of figures
    python -m experiments.figures --budget=smoke   # trains a tiny Table 2 first

Reads ``<from_results>/table2.json`` and its cells (no training, CPU is
enough); ``--budget=smoke`` first trains a tiny Table 2 into ``--from_results``
(default ``runs/smoke/reproduce``):

* ``fig2_ndcg_at_n.png``: test NDCG@N for N = 1..20 per mechanism, from the
  saved per-user test ranks (mean over seeds and users).
* ``fig3_attention.png``: the last 15 positions of one test user, last layer,
  head 0: A of Original, A and B of a refined model (``--mech``), from the
  intermediates sown during a forward pass of seed 0's best parameters
  (``attention.npz``, written at training time by
  :func:`awrsr_jax.analysis.attention_maps`).
  Masked entries (future or padding) are blank.
* ``fig4_valid_ndcg.png``: validation NDCG@5 per epoch (mean over the seeds
  still training at that epoch), and ``fig4_valid_by_epoch.md``, its numbers
  as a test of learning speed: each seed's best validation NDCG@5 reached by
  epochs 10, 20, 50, 100, 200 (a seed stopped earlier keeps its best), mean
  +- sd per mechanism and, against Original, the change of the means with a
  paired t-test over seeds (:func:`awrsr_jax.stats.seed_paired_test`), its
  p adjusted (Holm) over the panel's mechanisms x epochs.
* ``fig5_grad_norm.png``: seed 0's global gradient norm (mean over an epoch's
  steps) over its last 50 epochs, i.e. up to early stopping.

matplotlib is imported inside the plotting function only, so this module can
be imported where it is missing.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags, logging

from awrsr_jax import files, results, stats
from awrsr_jax.analysis import LAST, fmt, markdown_table, ndcg_at

TAIL = 50  # epochs shown in Figure 5
EARLY = (10, 20, 50, 100, 200)  # epochs of fig4_valid_by_epoch.md


def valid_curve(records) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, mean validation NDCG@5 of the seeds evaluated at that epoch)."""
    by = {}
    for r in records:
        if "valid" in r:
            by.setdefault(r["epoch"], []).append(r["valid"]["NDCG@5"])
    epochs = np.array(sorted(by))
    return epochs, np.array([np.mean(by[e]) for e in epochs])


def best_by_epoch(records, epochs=EARLY) -> np.ndarray:
    """``float64[members, len(epochs)]``, members in id order: each one's
    best validation NDCG@5 over its epochs before ``E`` (0-based epochs
    ``0 .. E-1``) for each ``E``; NaN before its first validation."""
    own = {}
    for r in records:
        if "valid" in r:
            own.setdefault(r["member"], []).append((r["epoch"], r["valid"]["NDCG@5"]))
    out = np.full((len(own), len(epochs)), np.nan)
    for i, m in enumerate(sorted(own)):
        ep, val = np.array(sorted(own[m])).T
        for j, e in enumerate(epochs):
            if (ep < e).any():
                out[i, j] = val[ep < e].max()
    return out


def valid_by_epoch(panels, epochs=EARLY) -> list[str]:
    """``fig4_valid_by_epoch.md``'s lines (see the module docstring)."""
    lines = ["# Best validation NDCG@5 reached by each epoch, over seeds", "",
             "The numbers behind fig4_valid_ndcg.png (`python -m experiments.figures`): "
             "per mechanism mean ± sd over seeds of each seed's best validation "
             "NDCG@5 before epoch E (a seed that stopped earlier keeps its best); "
             "against Original the change of the means, the paired t-test over "
             "seeds, and its p adjusted (Holm) over the panel's mechanisms x "
             "epochs. A mechanism ahead early but level later learns faster "
             "without ending higher.", ""]  # fmt: skip
    for (ds, bb), items in panels.items():
        vals = {e["mech"]: (e["seeds"], best_by_epoch(e["metrics"], epochs))
                for e, _ in items}  # fmt: skip
        base = vals.get("none")
        cells, tests = {}, []
        for j in range(len(epochs)):
            for mech, (seeds, v) in vals.items():
                col = v[:, j]
                if np.isnan(col).any():
                    continue
                cells[j, mech] = [*stats.mean_std(col), None]
                ok = base and not np.isnan(base[1][:, j]).any() and len(seeds) > 1
                if mech != "none" and ok:
                    t = stats.seed_paired_test(col, base[1][:, j], seeds=seeds,
                                               base_seeds=base[0])  # fmt: skip
                    tests.append((j, mech, t))
        for (j, mech, t), p in zip(tests, stats.holm([t.p for _, _, t in tests])):
            cells[j, mech][2] = (f" ({fmt(t.improvement_pct, 1, True)}%, "
                                 f"p {t.p:.3f}, Holm {p:.3f})")  # fmt: skip
        rows = [[ep, *(f"{c[0]:.4f} ± {c[1]:.4f}{c[2] or ''}" if (c := cells.get((j, m)))
                       else "–" for m in vals)]
                for j, ep in enumerate(epochs)]  # fmt: skip
        lines += [f"## {ds} / {bb}", "",
                  *markdown_table(["epoch E", *vals], rows), ""]  # fmt: skip
    return lines


def grad_tail(records, member: int = 0, tail: int = TAIL):
    """(epochs relative to the member's last epoch, grad norms) of its last
    ``tail`` epochs: the run up to early stopping."""
    own = sorted((r["epoch"], r["grad_norm"]) for r in records if r["member"] == member)
    own = own[-tail:]
    last = own[-1][0] if own else 0
    return np.array([e - last for e, _ in own]), np.array([g for _, g in own])


def masked_tail(mat_LxL, seq_L, last: int = LAST) -> np.ndarray:
    """The last ``last`` rows and columns, NaN where the causal/padding mask is."""
    n = mat_LxL.shape[-1]
    valid = seq_L > 0
    mask = np.tril(np.ones((n, n), bool)) & valid[:, None] & valid[None, :]
    return np.where(mask, mat_LxL, np.nan)[-last:, -last:]


def make_figures(results_dir, out, *, dataset=None, backbone=None, mech="add",
                 log=None):  # fmt: skip
    """Writes the four PNG files (one panel per dataset and backbone; several
    folders, a list or comma-separated, e.g. one per dataset, give one set of
    figures); returns their paths. Without ``dataset``, Figure 3 is skipped
    (a line on ``log``, default stderr) while the first panel lacks the
    ``none`` or ``mech`` cell, as a table still training does."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(results_dir)
    os.makedirs(out, exist_ok=True)

    ns = np.arange(1, 21)
    grids = [
        ("fig2_ndcg_at_n", lambda e, r: (ns, ndcg_at(r, ns)), "test NDCG@N", "N"),
        ("fig4_valid_ndcg", lambda e, r: valid_curve(e["metrics"]),
         "validation NDCG@5", "epoch"),
        ("fig5_grad_norm", lambda e, r: grad_tail(e["metrics"]),
         "global gradient norm (seed 0)", "epochs before stopping"),
    ]  # fmt: skip
    paths = {}
    for name, draw, ylabel, xlabel in grids:
        path = os.path.join(out, f"{name}.png")
        paths[name] = _plot_grid(plt, panels, path, draw, ylabel, xlabel)
    paths["fig4_valid_by_epoch"] = os.path.join(out, "fig4_valid_by_epoch.md")
    files.write_text(paths["fig4_valid_by_epoch"], "\n".join(valid_by_epoch(panels)))

    key = (dataset, backbone) if dataset else next(iter(panels))
    by_mech = {e["mech"]: e for e, _ in panels.get(key, [])}
    if "none" not in by_mech or mech not in by_mech:
        missing = f"Figure 3 needs finished none and {mech} cells for {key}"
        if dataset:
            raise ValueError(missing)
        print(f"{missing}: skipped", file=log or sys.stderr)
        return [paths[k] for k in sorted(paths)]
    paths["fig3_attention"] = _plot_attention(
        plt,
        key,
        mech,
        base_dir=by_mech["none"]["cell"],
        refined_dir=by_mech[mech]["cell"],
        path=os.path.join(out, "fig3_attention.png"),
    )
    return [paths[k] for k in sorted(paths)]


def _panels(results_dir) -> dict:
    """``{(dataset, backbone): [(entry, ranks), ...]}`` of the finished Table 2
    cells of one folder or several (each entry's ``cell`` its path, ``seeds``
    and ``metrics``, its ``metrics.jsonl`` records, read once); ValueError
    if there are none, or if two folders hold the same row."""
    panels = {}
    for d, _, cells in results.load_manifests(results_dir, "2"):
        for e, run in cells:
            if run is not None and run["results"]["status"] == "ok":
                key = (e["dataset"], e["backbone"])
                cell = os.path.join(d, e["cell"])
                e = dict(e, cell=cell, seeds=results.seeds_of(run),
                         metrics=results.read_metrics(cell))  # fmt: skip
                panels.setdefault(key, []).append((e, run["ranks"]))
    if not panels:
        raise ValueError(f"{results_dir}: no finished Table 2 cells")
    return panels


def _plot_grid(plt, panels, path, draw, ylabel, xlabel) -> str:
    """One subplot per panel, a line per mechanism at ``draw(entry, ranks)``."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, ((ds, bb), items) in zip(np.atleast_1d(axes), panels.items()):
        for e, ranks in items:
            x, y = draw(e, ranks)
            ax.plot(x, y, label=e["mech"], lw=1.4)
        ax.set(title=f"{ds} / {bb}", xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _plot_attention(plt, key, mech, *, base_dir, refined_dir, path) -> str:
    """Figure 3: the masked tails of Original's A and the refined cell's A, B."""
    base = np.load(os.path.join(base_dir, "attention.npz"), allow_pickle=False)
    ref = np.load(os.path.join(refined_dir, "attention.npz"), allow_pickle=False)
    maps = [("A, Original", base["A"], base["seq"]),
            (f"A, {mech}", ref["A"], ref["seq"]),
            (f"B, {mech}", ref["B"], ref["seq"])]  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for ax, (title, m, seq) in zip(axes, maps):
        tail = masked_tail(m[-1, 0], seq)
        im = ax.imshow(tail, cmap="viridis")
        ax.set(title=title, xlabel="key position", ylabel="query position",
               xticks=range(0, len(tail), 2), yticks=range(0, len(tail), 2))  # fmt: skip
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"{key[0]} / {key[1]}: last {LAST} positions, last layer, head 0")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def define_flags():
    flags.DEFINE_string("from_results", None,
                        "experiments.reproduce output folder to read, or several "
                        "(comma-separated; default runs/reproduce)")  # fmt: skip
    flags.DEFINE_string("results", None, "deprecated name of --from_results")
    flags.DEFINE_string("out", None, "PNG folder (default <from_results>/figures)")
    flags.DEFINE_enum("budget", "full", ["full", "smoke"],
                      "smoke: first train a tiny Table 2 into --from_results")  # fmt: skip
    flags.DEFINE_string("dataset", None, "Figure 3's dataset (default: the first)")
    flags.DEFINE_string("backbone", None, "Figure 3's backbone")
    flags.DEFINE_string("mech", "add", "Figure 3's refined mechanism")


def _results_dir(f) -> str:
    if f.results and f.from_results and f.results != f.from_results:
        raise ValueError(f"--results={f.results} and --from_results={f.from_results}")
    if f.results:
        print("warning: --results is deprecated; use --from_results", file=sys.stderr)
    default = os.path.join("runs", "smoke" if f.budget == "smoke" else "", "reproduce")
    return f.from_results or f.results or os.path.normpath(default)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    f = flags.FLAGS
    try:
        src = _results_dir(f)
        if f.budget == "smoke":
            from experiments import reproduce

            b = reproduce.BUDGETS["smoke"]
            entries = reproduce.table_entries("2", ["smoke"], ["sasrec"], "smoke",
                                              mechs=["none", f.mech])  # fmt: skip
            reproduce.run_table("2", entries, src, seeds=list(range(b["seeds"])),
                                epochs=b["epochs"], patience=b["patience"],
                                budget="smoke", command="experiments.figures smoke")  # fmt: skip
        out = f.out or os.path.join(results.folders(src)[0], "figures")
        paths = make_figures(src, out,
                             dataset=f.dataset, backbone=f.backbone, mech=f.mech)  # fmt: skip
    except (ValueError, OSError, KeyError) as e:
        sys.exit(f"error: {e}")
    print("figures: " + ", ".join(paths))


if __name__ == "__main__":
    define_flags()
    app.run(main)
