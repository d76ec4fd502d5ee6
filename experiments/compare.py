"""Compare finished ``experiments.main`` runs: a Markdown table with paired tests.

    python -m experiments.compare runs/stosa-none runs/stosa-value runs/stosa-stoc
    python -m experiments.compare --baseline=none --out=table.md \\
        none=runs/a value=runs/b

Each argument is a workdir, or ``LABEL=WORKDIR`` (default label: the run's
``--mech``). From each workdir's ``config.json``, ``results.json`` and
``test_ranks.npy`` it prints one row: seeds, epochs run, best epoch, what ended
the run, seconds per epoch, validation NDCG@5 and the test metrics (mean ± sd
over seeds when a run has several), then the run against the baseline (the
first run unless ``--baseline`` names a label): the mean per-user difference of
``--paired`` (each user's value averaged over the run's seeds) and its change
in percent; ``p seeds``, a paired t-test over the seeds both rows share
(:func:`awrsr_jax.stats.seed_paired_test`; seed s of both runs shares data
order and negatives), the only test that says whether a mechanism helps (it
needs at least 2 shared seeds); and, for reference, the paired t-test and
Wilcoxon p over users (:func:`awrsr_jax.stats.paired_test`), which are
conditional on the trained models. Runs that share a label are the seeds of
one row (``none=runs/none-s0 none=runs/none-s1``): they must differ only in
their seeds. Every run must be on the same data (same ``data_sha256``), so the
users pair up. ``--out`` also writes the table to a file (atomically);
``--curves`` draws each row's learning curve (validation NDCG@5 per epoch,
mean over the seeds evaluated at that epoch, from ``metrics.jsonl``), the best
epochs marked, to an image file.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

from awrsr_jax import files, results, stats
from awrsr_jax.results import as_list, merged, seeds_of

FLAGS = flags.FLAGS
flags.DEFINE_string("baseline", "", "label of the run the others are tested against")
flags.DEFINE_list("metrics", ["Recall@1", "Recall@5", "NDCG@5", "NDCG@10"], "columns")
flags.DEFINE_string("paired", "NDCG@5", "metric of the paired tests over users")
flags.DEFINE_string("out", "", "also write the Markdown table to this file")
flags.DEFINE_string(
    "curves", "", "also draw each row's validation NDCG@5 per epoch to this image"
)


def load_run(arg: str) -> dict:
    """``{label, dir, config, results, ranks}`` of ``WORKDIR`` or ``LABEL=WORKDIR``
    (:func:`awrsr_jax.results.read_run`; per-member values as lists)."""
    label, _, path = arg.rpartition("=")
    for name in ("config.json", "results.json", "test_ranks.npy"):
        if not os.path.exists(os.path.join(path, name)):
            raise SystemExit(
                f"{os.path.join(path, name)}: not found (not a finished run?)"
            )
    try:
        run = results.read_run(path)
    except json.JSONDecodeError as e:
        raise SystemExit(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path}: {e}") from None
    if run["ranks"] is None:
        raise SystemExit(f"{path}: the run failed ({run['results'].get('error')})")
    return dict(run, label=label or run["config"]["config"]["mech"])


def _ended(run: dict) -> str:
    if "ended" in run:  # a merged row
        return run["ended"]
    res, epochs = run["results"], run["config"]["config"]["epochs"]
    if res.get("stopped"):
        return "time limit"
    return "early stopping" if res["epochs_run"] < epochs else "epoch cap"


def merge_seeds(runs: list[dict]) -> dict:
    """One row of runs that share a label: their seeds, concatenated."""
    first, label = runs[0], runs[0]["label"]
    for r in runs[1:]:
        a, b = first["config"], r["config"]
        diff = [k for k in sorted(set(a["config"]) | set(b["config"]))
                if k != "seed" and a["config"].get(k) != b["config"].get(k)]  # fmt: skip
        diff += [k for k in ("data_sha256", "sweep") if a.get(k) != b.get(k)]
        if diff:
            raise SystemExit(
                f"{first['dir']} and {r['dir']} share a label ({label}) but differ "
                f"in {', '.join(diff)}; name them LABEL=DIR"
            )
    try:
        m = merged(runs)
    except ValueError as e:
        raise SystemExit(f"runs that share a label ({label}): {e}") from None
    res = [r["results"] for r in runs]
    results = dict(
        {k: m["results"][k] for k in ("test", "valid", "best_epoch")},
        epochs_run=", ".join(str(r["epochs_run"]) for r in res),
        seconds_per_epoch=sum(r["seconds_per_epoch"] for r in res) / len(res),
    )
    ended = ", ".join(dict.fromkeys(_ended(r) for r in runs))
    return dict(m, dir="+".join(r["dir"] for r in runs), results=results,
                ended=ended)  # fmt: skip


def _pm(values) -> str:
    mean, sd = stats.mean_std(values)
    return f"{mean:.4f}" if len(values) == 1 else f"{mean:.4f} ± {sd:.4f}"


def table(runs: list[dict], baseline: str, metrics, paired: str) -> str:
    """The Markdown table of ``runs`` against the run labelled ``baseline``."""
    groups = {}
    for r in runs:
        groups.setdefault(r["label"], []).append(r)
    runs = [g[0] if len(g) == 1 else merge_seeds(g) for g in groups.values()]
    labels = list(groups)
    base = next((r for r in runs if r["label"] == (baseline or labels[0])), None)
    if base is None:
        raise SystemExit(f"--baseline={baseline}: no run has that label {labels}")
    for r in runs:
        if r["config"].get("data_sha256") != base["config"].get("data_sha256"):
            raise SystemExit(
                f"{r['dir']} and {base['dir']} were trained on different data; "
                "paired tests need the same users"
            )
    base_user = stats.per_user(base["ranks"], paired)
    head = ["run", "seeds", "epochs run", "best epoch", "ended by", "s/epoch",
            "valid NDCG@5", *(f"test {m}" for m in metrics),
            f"Δ {paired}", "Δ%", "p seeds", "p users (t)", "p users (Wilcoxon)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in runs:
        res = r["results"]
        tests, valid = as_list(res["test"]), as_list(res["valid"])
        row = [r["label"], len(tests), res["epochs_run"],
               ", ".join(map(str, as_list(res["best_epoch"]))), _ended(r),
               f"{res['seconds_per_epoch']:.1f}", _pm([v["NDCG@5"] for v in valid]),
               *(_pm([t[m] for t in tests]) for m in metrics)]  # fmt: skip
        if r is base:
            row += ["(baseline)", "", "", "", ""]
        else:
            user = stats.per_user(r["ranks"], paired)
            if user.shape != base_user.shape:
                raise SystemExit(
                    f"{r['dir']}: {user.size} users, baseline {base_user.size}"
                )
            pt = stats.paired_test(user, base_user)
            pct = stats.improvement(float(user.mean()), float(base_user.mean()))
            row += [f"{pt.mean_diff:+.4f}", "–" if pct is None else f"{pct:+.1f}",
                    _seed_p(r, base, paired), f"{pt.p_t:.2g}",
                    f"{pt.p_wilcoxon:.2g}"]  # fmt: skip
        lines.append("| " + " | ".join(map(str, row)) + " |")
    return "\n".join(lines) + "\n"


def _seed_p(run: dict, base: dict, metric: str) -> str:
    """The seed-level paired p over the seeds both runs have ('–' under 2)."""
    shared = [s for s in seeds_of(run) if s in seeds_of(base)]
    if len(shared) < 2:
        return "–"

    def values(r):
        by_seed = dict(zip(seeds_of(r), stats.per_seed(r["ranks"], metric)))
        return [by_seed[s] for s in shared]

    return f"{stats.seed_paired_test(values(run), values(base)).p:.2g}"


def curve_data(runs: list[dict]) -> dict:
    """``{label: (epochs, mean validation NDCG@5, best epochs)}``: each label's
    validation NDCG@5 per epoch from its runs' ``metrics.jsonl``, averaged over
    the seeds evaluated at that epoch (:func:`experiments.figures.valid_curve`),
    and every seed's best epoch."""
    from experiments.figures import valid_curve

    records, best = {}, {}
    for r in runs:
        records.setdefault(r["label"], []).extend(results.read_metrics(r["dir"]))
        best.setdefault(r["label"], []).extend(as_list(r["results"]["best_epoch"]))
    return {k: (*valid_curve(records[k]), best[k]) for k in records}


def curves(runs: list[dict], path: str) -> str:
    """Draw :func:`curve_data` to the image ``path`` (its extension names the
    format), a dot at each best epoch; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label, (x, y, best) in curve_data(runs).items():
        (line,) = ax.plot(x, y, lw=1.3, label=label)
        ax.plot(best, np.interp(best, x, y), "o", ms=4, color=line.get_color())
    ax.set(xlabel="epoch", ylabel="validation NDCG@5")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    ext = os.path.splitext(path)[1].lstrip(".") or "png"
    with files.atomic_open(path, "wb") as f:
        fig.savefig(f, format=ext, dpi=130)
    plt.close(fig)
    return path


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("give the workdirs to compare (WORKDIR or LABEL=WORKDIR)")
    runs = [load_run(a) for a in argv[1:]]
    md = table(runs, FLAGS.baseline, FLAGS.metrics, FLAGS.paired)
    sys.stdout.write(md)
    if FLAGS.out:
        files.write_text(FLAGS.out, md)
        print(f"wrote {FLAGS.out}", file=sys.stderr)
    if FLAGS.curves:
        print(f"wrote {curves(runs, FLAGS.curves)}", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
