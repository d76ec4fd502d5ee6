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
``--paired`` (each user's value averaged over the run's seeds), its change in
percent, and the paired t-test and Wilcoxon p over users
(:func:`awrsr_jax.stats.paired_test`). Every run must be on the same data (same
``data_sha256``), so the users pair up. ``--out`` also writes the table to a
file (atomically).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from awrsr_jax import stats
from awrsr_jax.runner import read_ranks
from awrsr_jax.search import atomic_write

FLAGS = flags.FLAGS
flags.DEFINE_string("baseline", "", "label of the run the others are tested against")
flags.DEFINE_list("metrics", ["Recall@1", "Recall@5", "NDCG@5", "NDCG@10"], "columns")
flags.DEFINE_string("paired", "NDCG@5", "metric of the paired tests over users")
flags.DEFINE_string("out", "", "also write the Markdown table to this file")


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise SystemExit(
            f"{path}: not found (not a finished experiments.main run?)"
        ) from None
    except json.JSONDecodeError as e:
        raise SystemExit(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None


def load_run(arg: str) -> dict:
    """``{label, dir, config, results, ranks}`` of ``WORKDIR`` or ``LABEL=WORKDIR``."""
    label, _, path = arg.rpartition("=")
    config = _read_json(os.path.join(path, "config.json"))
    results = _read_json(os.path.join(path, "results.json"))
    try:
        ranks = read_ranks(path)  # [seeds, users] or [users]: stats.per_user takes both
    except (OSError, ValueError) as e:
        raise SystemExit(f"{os.path.join(path, 'test_ranks.npy')}: {e}") from None
    return dict(
        label=label or config["config"]["mech"],
        dir=path,
        config=config,
        results=results,
        ranks=ranks,
    )


def _as_list(x):
    return x if isinstance(x, list) else [x]


def _ended(run: dict) -> str:
    res, epochs = run["results"], run["config"]["config"]["epochs"]
    if res.get("stopped"):
        return "time limit"
    return "early stopping" if res["epochs_run"] < epochs else "epoch cap"


def _pm(values) -> str:
    mean, sd = stats.mean_std(values)
    return f"{mean:.4f}" if len(values) == 1 else f"{mean:.4f} ± {sd:.4f}"


def table(runs: list[dict], baseline: str, metrics, paired: str) -> str:
    """The Markdown table of ``runs`` against the run labelled ``baseline``."""
    labels = [r["label"] for r in runs]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"two runs share a label: {labels}; name them LABEL=DIR")
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
            f"Δ {paired}", "Δ%", "p (t)", "p (Wilcoxon)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in runs:
        res = r["results"]
        tests, valid = _as_list(res["test"]), _as_list(res["valid"])
        row = [r["label"], len(tests), res["epochs_run"],
               ", ".join(map(str, _as_list(res["best_epoch"]))), _ended(r),
               f"{res['seconds_per_epoch']:.1f}", _pm([v["NDCG@5"] for v in valid]),
               *(_pm([t[m] for t in tests]) for m in metrics)]  # fmt: skip
        if r is base:
            row += ["(baseline)", "", "", ""]
        else:
            user = stats.per_user(r["ranks"], paired)
            if user.shape != base_user.shape:
                raise SystemExit(
                    f"{r['dir']}: {user.size} users, baseline {base_user.size}"
                )
            pt = stats.paired_test(user, base_user)
            pct = stats.improvement(float(user.mean()), float(base_user.mean()))
            row += [f"{pt.mean_diff:+.4f}", "–" if pct is None else f"{pct:+.1f}",
                    f"{pt.p_t:.2g}", f"{pt.p_wilcoxon:.2g}"]  # fmt: skip
        lines.append("| " + " | ".join(map(str, row)) + " |")
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("give the workdirs to compare (WORKDIR or LABEL=WORKDIR)")
    md = table(
        [load_run(a) for a in argv[1:]], FLAGS.baseline, FLAGS.metrics, FLAGS.paired
    )
    sys.stdout.write(md)
    if FLAGS.out:
        atomic_write(FLAGS.out, md)
        print(f"wrote {FLAGS.out}", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
