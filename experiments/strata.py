"""Where a mechanism helps: a Table 2's test metric by user group, over seeds.

    python -m experiments.strata --from_results=results/paper_protocol/table2/anime
    python -m experiments.strata --from_results=DIR --rule --out=DIR   # patience 20

Reads a ``experiments.reproduce`` folder (its ``table2.json`` and finished
cells; several folders comma-separated) and the data each cell trained on
(found by the cell's dataset name or file and checked against its
``data_sha256``), and splits the evaluated users into ``--groups`` quantile
groups of each ``--by`` feature (:data:`awrsr_jax.analysis.USER_FEATURES`):
history length and test-target popularity. No training; a CPU is enough.

For each block (dataset, backbone, layers, refinement input) with a finished
``none`` cell, each group and each mechanism: the group's mean test metric per
seed, mean +- sd over seeds, the change of the means against Original, and
the paired t-test over seeds (seed s of both arms shares data order and
negatives; :func:`awrsr_jax.stats.seed_paired_test`), its p adjusted (Holm)
over the block's mechanisms x groups of one feature. A last row per feature
asks whether the effect depends on the group: a paired t-test over seeds of
each seed's relative change in the last group minus that in the first.

``--rule`` reads the cells as their ``report_patience`` rule (the paper's
patience 20) ended each seed. ``--out`` writes ``strata[_patience<R>].md``
and ``..._summary.json`` there; the Markdown is printed either way.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags, logging

from awrsr_jax import analysis, datasets, files, results, stats
from awrsr_jax.ops.metrics import metric_names


def _sequences(entry, run, cache) -> dict:
    """The sequences the cell ``run`` trained on: ``entry``'s dataset name, or
    the file its config.json recorded, whichever has its ``data_sha256``."""
    ident = run["config"]
    want = ident.get("data_sha256")
    tried = []
    for name in dict.fromkeys(filter(None, (entry["dataset"], ident.get("data_file")))):
        if name in cache:
            ds = cache[name]
        else:
            try:
                ds = cache[name] = datasets.load(name)
            except ValueError as e:
                tried.append(str(e))
                continue
        if want is None or ds.sha256 == want:
            return ds.sequences
        tried.append(f"{name}: other data (sha256 {ds.sha256[:12]}, the cell "
                     f"trained on {want[:12]})")  # fmt: skip
    raise ValueError(f"{run['dir']}: the data it trained on is not here; "
                     + "; ".join(tried))  # fmt: skip


def _per_seed_groups(ranks_KxU, group_U, n_groups, metric) -> np.ndarray:
    """``float64[G, K]``: each seed's mean ``metric`` over each group's users."""
    vals = stats.user_values(ranks_KxU, (metric,))[metric]
    return np.stack([vals[:, group_U == g].mean(1) for g in range(n_groups)])


def block_strata(cells, features, by, n_groups, metric="NDCG@5") -> list[dict]:
    """Rows of one block (``[(entry, run)]``, its ``none`` first, runs
    finished) for the feature ``by`` of ``features`` (its data's
    :func:`awrsr_jax.analysis.user_features`): per group and mechanism the
    per-seed values, mean, sd and, against ``none``, the seed-paired test with its
    Holm-adjusted p (family: the block's mechanisms x groups); then per
    mechanism a ``"last vs first"`` row (:mod:`experiments.strata`)."""
    feature = features[by]
    group, ranges = analysis.quantile_groups(feature, n_groups)
    (base_e, base), *others = cells
    if base_e["mech"] != "none":
        raise ValueError(f"{base['dir']}: a block's first cell must be none")
    g = len(ranges)
    rows, tests = [], []
    base_seeds = results.seeds_of(base)
    base_v = _per_seed_groups(base["ranks"], group, g, metric)
    for e, run in [(base_e, base), *others]:
        if run["config"].get("data_sha256") != base["config"].get("data_sha256"):
            raise ValueError(f"{run['dir']}: other data than {base['dir']}")
        if run["ranks"].shape[1] != feature.size:
            raise ValueError(f"{run['dir']}: {run['ranks'].shape[1]} users ranked, "
                             f"the data has {feature.size} evaluated users")  # fmt: skip
        seeds = results.seeds_of(run)
        common = dict(dataset=e["dataset"], backbone=e["backbone"], layers=e["layers"],
                      mech=e["mech"], by=by, seeds=seeds,
                      patience=run["config"]["config"]["patience"])  # fmt: skip
        v = _per_seed_groups(run["ranks"], group, g, metric)
        rel = []
        for k, (lo, hi) in enumerate(ranges):
            mean, sd = stats.mean_std(v[k])
            row = dict(common, group=k, range=[lo, hi], users=int((group == k).sum()),
                       per_seed=v[k].tolist(), mean=mean, sd=sd)  # fmt: skip
            if e["mech"] != "none":
                t = stats.seed_paired_test(v[k], base_v[k], seeds=seeds,
                                           base_seeds=base_seeds)  # fmt: skip
                row |= dict(improvement_pct=t.improvement_pct, p=t.p)
                tests.append(row)
                base_k = base_v[k][[base_seeds.index(s) for s in seeds]]
                rel.append(v[k] / base_k - 1 if np.all(base_k > 0) else None)
            rows.append(row)
        if g > 1 and rel and rel[0] is not None and rel[-1] is not None:
            t = stats.seed_paired_test(rel[-1], rel[0])
            rows.append(dict(common, group="last vs first",
                             mean_diff_pts=100 * t.mean_diff, p=t.p))  # fmt: skip
    for family in (tests, [r for r in rows if r["group"] == "last vs first"]):
        for row, p in zip(family, stats.holm([r["p"] for r in family])):
            row["p_holm"] = p
    return rows


def finished_blocks(cells) -> list:
    """``[(key, [(entry, run)])]``: finished cells grouped by dataset,
    backbone, layers and refinement input, ``none`` first; blocks without a
    finished ``none`` are left out."""
    out = {}
    for e, run in cells:
        if run is None or run["ranks"] is None:
            continue
        key = (e["dataset"], e["backbone"], e["layers"], e["refine_input"])
        out.setdefault(key, []).append((e, run))
    blocks = []
    for key, these in out.items():
        these.sort(key=lambda c: c[0]["mech"] != "none")
        if these[0][0]["mech"] == "none":
            blocks.append((key, these))
    return blocks


def _cell(rows, k) -> str:
    """A mechanism's entry for group ``k`` (or the "last vs first" row)."""
    r = next((r for r in rows if r["group"] == k), None)
    if r is None:
        return "–"
    if r["mech"] == "none":
        return f"{r['mean']:.4f} ± {r['sd']:.4f}"
    change = (f"{r['mean_diff_pts']:+.1f} pts" if k == "last vs first"
              else f"{analysis.fmt(r['improvement_pct'], 1, True)}%")  # fmt: skip
    return f"{change} (p {r['p']:.3f}, Holm {r['p_holm']:.3f})"


def load_blocks(results_dirs, rule: bool) -> list:
    """:func:`finished_blocks` of the Table 2 folders ``results_dirs``, as
    trained or (``rule``) as their ``report_patience`` rule ended each seed;
    ValueError when there is none."""
    cells = [c for _, _, cs in results.load_manifests(results_dirs, "2") for c in cs]
    if rule:
        cells = [(e, results.rule_view(run)) for e, run in cells]
    blocks = finished_blocks(cells)
    if not blocks:
        raise ValueError(f"{results_dirs}: no block with a finished none cell"
                         + (" trained with --report_patience" if rule else ""))  # fmt: skip
    return blocks


def render(results_dirs, *, by=("history", "popularity"), n_groups=3,
           metric="NDCG@5", rule=False) -> tuple[str, list]:  # fmt: skip
    """The Markdown and the JSON rows of :mod:`experiments.strata`."""
    blocks = load_blocks(results_dirs, rule)
    patience = sorted({run["config"]["config"]["patience"] for _, b in blocks
                       for _, run in b})  # fmt: skip
    lines = [
        f"# Test {metric} by user group, over training seeds "
        f"(patience {'/'.join(map(str, patience))})",
        "",
        f"From {results_dirs} (`python -m experiments.strata`). Users split "
        f"into {n_groups} quantile groups of each feature (equal values share a "
        "group). Original: mean ± sd over seeds of the group's mean; a "
        "mechanism: change of the means against Original, the paired t-test "
        "over seeds, and its p adjusted (Holm) over the block's mechanisms x "
        "groups. Last vs first: paired t over seeds of each seed's relative "
        "change in the last group minus that in the first (percentage points; "
        "Holm over the block's mechanisms).",
        "",
        "Exploratory: Holm corrects within one table, not over the features, "
        "rules and datasets looked at, so a lone p below 0.05 among them is "
        "what chance alone tends to give.",
        "",
        *(f"- {k}: {v}" for k, v in analysis.USER_FEATURES.items() if k in by),
        *(
            f"- {e['dataset']} / {e['mech']}: seeds {cut} cut by the epoch cap or a "
            "time limit while within patience"
            for _, b in blocks
            for e, run in b
            if (cut := results.cut_seeds(run["results"], run["config"]["config"]))
        ),
        "",
    ]
    out, cache = [], {}
    for (ds, bb, layers, ri), these in blocks:
        features = analysis.user_features(_sequences(*these[0], cache))
        mechs = [e["mech"] for e, _ in these]
        for feature in by:
            rows = block_strata(these, features, feature, n_groups, metric)
            out += rows
            groups = sorted({r["group"] for r in rows if r["group"] != "last vs first"})
            table = []
            for k in groups:
                r0 = next(r for r in rows if r["group"] == k)
                lo, hi = r0["range"]
                table.append([f"{lo}–{hi}" if lo != hi else lo, r0["users"],
                              *(_cell([r for r in rows if r["mech"] == m], k)
                                for m in mechs)])  # fmt: skip
            if any(r["group"] == "last vs first" for r in rows):
                table.append(["last vs first", "", "", *(
                    _cell([r for r in rows if r["mech"] == m], "last vs first")
                    for m in mechs[1:])])  # fmt: skip
            head = [feature, "users", *mechs]
            lines += [f"## {ds} / {bb} / {layers} layer(s) / {ri}: by {feature}", "",
                      *analysis.markdown_table(head, table), ""]  # fmt: skip
    return "\n".join(lines), out


def write_outputs(out, stem, md, rows, *, rule) -> None:
    """``<stem>.md`` and ``<stem>_summary.json`` in ``out``; with ``rule``,
    ``<stem>_patience<R>...`` (R: the rows' patience)."""
    if rule:
        stem += "_patience" + "-".join(map(str, sorted({r["patience"] for r in rows})))
    os.makedirs(out, exist_ok=True)
    files.write_text(os.path.join(out, f"{stem}.md"), md + "\n")
    files.write_json(os.path.join(out, f"{stem}_summary.json"), rows)


def define_table_flags(stem):
    """``--from_results``, ``--rule`` and ``--out`` of a command that reads
    Table 2 folders and writes ``<stem>*.md`` (:func:`write_outputs`)."""
    flags.DEFINE_string("from_results", None, "experiments.reproduce output folder, "
                        "or several (comma-separated)")  # fmt: skip
    flags.DEFINE_bool("rule", False, "the cells as their report_patience rule "
                      "ended each seed (the paper's patience 20)")  # fmt: skip
    flags.DEFINE_string("out", None, f"folder to write {stem}*.md and "
                        f"{stem}*_summary.json into (default: print only)")  # fmt: skip
    flags.mark_flag_as_required("from_results")


def define_flags():
    define_table_flags("strata")
    flags.DEFINE_list("by", ["history", "popularity"],
                      f"user features to group by: {', '.join(analysis.USER_FEATURES)}")  # fmt: skip
    flags.DEFINE_integer("groups", 3, "quantile groups per feature")
    flags.DEFINE_string("metric", "NDCG@5", "per-user test metric")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    try:
        bad = [b for b in f.by if b not in analysis.USER_FEATURES]
        if bad:
            raise ValueError(f"--by={','.join(bad)}: choose from "
                             f"{', '.join(analysis.USER_FEATURES)}")  # fmt: skip
        if f.metric not in metric_names():
            raise ValueError(
                f"--metric={f.metric}: choose from {', '.join(metric_names())}"
            )
        if f.groups < 1:
            raise ValueError(f"--groups={f.groups}: need at least 1")
        md, rows = render(f.from_results, by=tuple(f.by), n_groups=f.groups,
                          metric=f.metric, rule=f.rule)  # fmt: skip
        if f.out:
            write_outputs(f.out, "strata", md, rows, rule=f.rule)
    except (ValueError, OSError, KeyError) as e:
        sys.exit(f"error: {e}")
    print(md)


if __name__ == "__main__":
    define_flags()
    app.run(main)
