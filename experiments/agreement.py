"""Whether a mechanism changes what a model gets right more than a new seed does.

    python -m experiments.agreement --from_results=results/paper_protocol/table2/beauty
    python -m experiments.agreement --from_results=DIR --rule --out=DIR   # patience 20

Reads an ``experiments.reproduce`` folder (its ``table2.json`` and finished
cells; several folders comma-separated). For each user and run, a hit is a
test target ranked within the top ``--top`` (rank <= N, the per-user
Recall@N). Two runs agree on a set of users to the extent of the Jaccard
index of their hit sets, ``|H_a & H_b| / |H_a | H_b|`` (1: the same users).

For each block (dataset, backbone, layers, refinement input) with a finished
``none`` cell and each mechanism, over seeds s paired by seed id:

- *same seed*: J(mechanism seed s, Original seed s); seed s of both arms
  shares its data order and negatives;
- *other seeds*: the mean of J(mechanism seed s, Original seed t), t != s;
- the paired t-test over seeds of same minus other
  (:func:`awrsr_jax.stats.seed_paired_test`).

Original's own row gives the mean J between two of its seeds. Same-seed
agreement well above the other seeds' says the refined model stays close to
the Original trained from the same seed: the mechanism changed less of what
was learned than the seed does. No training; a CPU is enough.
``--out`` writes ``agreement[_patience<R>].md`` and ``..._summary.json``.
"""

from __future__ import annotations

import sys

import numpy as np
from absl import app, flags, logging

from awrsr_jax import analysis, results, stats
from experiments.strata import define_table_flags, load_blocks, write_outputs


def jaccard(a_U, b_U) -> float:
    """``|a & b| / |a | b|`` of two boolean user vectors (1.0 when both are empty)."""
    a, b = np.asarray(a_U, bool), np.asarray(b_U, bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _hits(run, top) -> dict:
    """``{seed: bool[U]}``: the users whose test target ``run`` ranks <= ``top``."""
    return {s: r <= top for s, r in zip(results.seeds_of(run), run["ranks"])}


def block_agreement(cells, top=5) -> list[dict]:
    """Rows of one block (``[(entry, run)]``, its ``none`` first, runs
    finished): Original's mean J over pairs of its seeds, then per mechanism
    the per-seed same-seed and other-seed J over the seeds both arms have, and
    the paired test of their difference (:mod:`experiments.agreement`)."""
    (base_e, base), *others = cells
    if base_e["mech"] != "none":
        raise ValueError(f"{base['dir']}: a block's first cell must be none")
    hb = _hits(base, top)
    pairs = [jaccard(hb[s], hb[t]) for s in hb for t in hb if s < t]
    key = dict(dataset=base_e["dataset"], backbone=base_e["backbone"],
               layers=base_e["layers"], refine_input=base_e["refine_input"],
               top=top, patience=base["config"]["config"]["patience"])  # fmt: skip
    rows = [key | dict(mech="none", seeds=sorted(hb), pairs=len(pairs),
                       other=float(np.mean(pairs)) if pairs else None)]  # fmt: skip
    for e, run in others:
        hm = _hits(run, top)
        seeds = [s for s in hm if s in hb]
        same = [jaccard(hm[s], hb[s]) for s in seeds]
        other = [np.mean([jaccard(hm[s], hb[t]) for t in hb if t != s]) for s in seeds]
        row = key | dict(mech=e["mech"], seeds=seeds, same_per_seed=same,
                         other_per_seed=[float(x) for x in other],
                         same=float(np.mean(same)), other=float(np.mean(other)))  # fmt: skip
        if len(seeds) >= 2 and len(hb) >= 2:
            row["test"] = stats.seed_paired_test(same, other).as_dict()
        rows.append(row)
    return rows


def render(results_dirs, *, top=5, rule=False) -> tuple[str, list]:
    """The Markdown and the JSON rows of :mod:`experiments.agreement`."""
    blocks = [(key, block_agreement(these, top))
              for key, these in load_blocks(results_dirs, rule)]  # fmt: skip
    out = [r for _, rows in blocks for r in rows]
    patience = "/".join(map(str, sorted({r["patience"] for r in out})))
    lines = [
        f"# Agreement with Original: which users get a hit in the top {top} "
        f"(patience {patience})",
        "",
        f"From {results_dirs} (`python -m experiments.agreement`). J: the "
        f"Jaccard index of two runs' sets of users whose test target ranks in "
        f"the top {top}. Same seed: J(mechanism seed s, Original seed s), "
        "which share data order and negatives; other seeds: mean J(mechanism "
        "seed s, Original seed t != s); p: paired t-test over seeds of same "
        "minus other. Original's row: mean J between two of its seeds.",
        "",
    ]
    for (ds, bb, layers, ri), rows in blocks:
        table = []
        for r in rows:
            if r["mech"] == "none":
                table.append(["none", len(r["seeds"]), "–", "–",
                              analysis.fmt(r["other"], 3), "–"])  # fmt: skip
                continue
            test = r.get("test")
            table.append([
                r["mech"], len(r["seeds"]), f"{r['same']:.3f}",
                " ".join(f"{x:.2f}" for x in r["same_per_seed"]),
                f"{r['other']:.3f}", "–" if test is None else f"{test['p']:.3f}",
            ])  # fmt: skip
        head = ["mechanism", "seeds", "same seed", "per seed", "other seeds", "p"]
        lines += [f"## {ds} / {bb} / {layers} layer(s) / {ri}", "",
                  *analysis.markdown_table(head, table), ""]  # fmt: skip
    return "\n".join(lines), out


def define_flags():
    define_table_flags("agreement")
    flags.DEFINE_integer("top", 5, "a hit: the test target ranked within this many")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    try:
        if f.top < 1:
            raise ValueError(f"--top={f.top}: need at least 1")
        md, rows = render(f.from_results, top=f.top, rule=f.rule)
        if f.out:
            write_outputs(f.out, "agreement", md, rows, rule=f.rule)
    except (ValueError, OSError, KeyError) as e:
        sys.exit(f"error: {e}")
    print(md)


if __name__ == "__main__":
    define_flags()
    app.run(main)
