"""Tables from ``experiments.reproduce`` folders, without training.

    python -m experiments.reproduce --table=2 --from_results=DIR --out=DIR
    python -m experiments.reproduce --table=2 --status --from_results=DIR

A folder holds ``table<N>.json`` (its cells: dataset, backbone, mechanism,
layers, refinement input and ``cells/<name>``) and the cells' workdirs.
:func:`render` writes ``table<N>.md`` and ``table<N>_summary.json`` from the
finished cells (several folders, say one per dataset, make one table), and
``table<N>_patience<R>.*`` where the cells also recorded a shorter patience
R; :func:`progress` says where each cell stands. Reported per cell: mean and
sample sd over seeds of the test metrics at each seed's best validation
epoch; against Original, paired by seed, the change of the means, a paired
t-test over the seeds (the only source of stars), its Holm adjustment over
the block's mechanisms and a hierarchical bootstrap 95% interval
(:func:`awrsr_jax.stats.cell_summary`); the per-user test as a secondary
column; the paper's values (:mod:`awrsr_jax.paper`) beside them. A cell
ended by the epoch cap or a time limit while a seed was within its patience
is marked † (:func:`cut_seeds`). ``table<N>_summary.json`` names, for every
cell, its dataset, backbone, mechanism, layers, seeds, each seed's test
metrics and the seed-level p. scipy is needed here only.
"""

from __future__ import annotations

import os

from awrsr_jax import datasets, files, registry, results, resume, stats
from awrsr_jax.analysis import fmt as _f
from awrsr_jax.analysis import markdown_table as _md
from awrsr_jax.paper import PAPER_TABLE2, PAPER_TABLE3
from data_prep import outputs

METRICS = ("Recall@1", "Recall@5", "NDCG@5")
# Printed for every backbone, followed by its own fields (its record's extra).
CONFIG_KEYS = ("max_len", "hidden", "layers", "heads", "dropout", "lr", "l2",
               "batch_size")  # fmt: skip


def _pm(s, m="NDCG@5") -> str:
    return "–" if s is None else f"{s['mean'][m]:.4f} ± {s['sd'][m]:.4f}"


def cut_seeds(res) -> list:
    """:func:`awrsr_jax.results.cut_seeds` of a loaded cell (its ``config``)."""
    return results.cut_seeds(res, res["config"])


def _epochs(res) -> str:
    """``"run / best, best"`` of a cell's results (one number of epochs run
    when the seeds ran alike, else one per seed, in seed order as the best
    epochs); a dagger when cut."""
    if res is None or "epochs_run" not in res:
        return "–"
    best = ", ".join(map(str, res["best_epoch"]))
    runs = results.seed_epochs(res)
    run = ", ".join(map(str, runs[:1] if len(set(runs)) == 1 else runs))
    return f"{run} / {best}" + (" †" if cut_seeds(res) else "")


def _load(cells):
    """``[(entry, results or None, ranks or None)]`` (None: missing/diverged);
    ``results`` is the cell's results.json with its ``config`` added."""
    out = []
    for e, run in cells:
        res = run and dict(run["results"], config=run["config"]["config"])
        ok = res is not None and res["status"] == "ok"
        out.append((e, res if ok else None, run["ranks"] if ok else None))
    return out


def _vs(new, base) -> dict | None:
    """:func:`awrsr_jax.stats.cell_summary` of ``new`` (``(results, ranks)``)
    against ``base`` (None: the row alone), or None when ``new`` is missing."""
    (res, ranks), (bres, branks) = new, base or (None, None)
    if res is None:
        return None
    kw = dict(base_ranks_KxU=branks, base_seeds=bres["seeds"]) if bres else {}
    return stats.cell_summary(ranks, res["seeds"], metrics=METRICS, **kw)


def _delta(s, m="NDCG@5") -> str:
    """``+4.1%** [-1.0, +9.2]``: change of the means, stars from the seed-level
    test, and the hierarchical bootstrap interval."""
    if not s or not s.get("seed_test") or s["seed_test"][m] is None:
        return "–"
    t, ci = s["seed_test"][m], s["bootstrap"][m]
    return (f"{_f(t['improvement_pct'], 1, True)}%{s['stars'][m]} "
            f"[{_f(ci['low_pct'], 1, True)}, {_f(ci['high_pct'], 1, True)}]")  # fmt: skip


def _header(title, info, rows) -> list[str]:
    done = [r for _, r, _ in rows if r is not None]
    hw = sorted({f"{r['device']} ({r['platform']}, "
                 + (f"{r['cpus']} CPU cores, " if "cpus" in r else "")
                 + f"jax {r['jax']})" for r in done})  # fmt: skip
    stop = {k: "/".join(map(str, sorted({r["config"][k] for r in done})))
            for k in ("patience", "epochs")}  # fmt: skip
    cut = [f"{e['dataset']} / {e['backbone']} / {e['mech']}, {e['layers']} layer(s), "
           f"{e['refine_input']} (seeds {cut_seeds(r)}, {max(results.seed_epochs(r))} epochs)"
           for e, r, _ in rows if r is not None and cut_seeds(r)]  # fmt: skip
    seen = {}  # (dataset, backbone) -> key -> its values in these cells
    for e, r, _ in rows:
        if r is not None:
            block = seen.setdefault((e["dataset"], e["backbone"]), {})
            bb = registry.BACKBONES.get(e["backbone"])
            for k in CONFIG_KEYS + tuple(bb.extra.values() if bb else ()):
                block.setdefault(k, {})[r["config"].get(k)] = None
    shapes = {key: ", ".join(f"{k}={'/'.join(map(str, v))}" for k, v in block.items())
              for key, block in seen.items()}  # fmt: skip
    return [
        f"# {title}",
        "",
        "Commands, in the order first run (a later one resumes or adds cells):",
        *(f"- `{c}`" for c in info["commands"]),
        "",
        f"Budget `{info['budget']}`, seeds {info['seeds']}. Hardware: "
        f"{', '.join(hw) or '–'}. Training wall time of these cells: "
        f"{sum(r.get('train_seconds', 0) for r in done):.0f} s.",
        "",
        "Protocol: leave-one-out (valid = second-last item, test = last); full "
        "ranking over all items with the user's history removed, ties counted "
        "against the model; each seed selected on validation NDCG@5 ("
        + (f"patience {stop['patience']}, at most {stop['epochs']} epochs" if done
           else "patience and epoch cap: no cell has finished")  # fmt: skip
        + "); test metrics "
        "at the best validation epoch. Values: mean ± sample sd over seeds. "
        "Against Original, paired by seed (seed s of every mechanism shares its "
        "data order and negatives): Δ% of the means, * p < 0.05 and ** p < 0.01 "
        "from a paired t-test over the seeds (the only source of stars), and "
        "[a, b] a hierarchical bootstrap 95% interval of Δ% (seeds resampled, "
        "then users within each seed; descriptive: with few seeds it is "
        "narrower than the t-test's interval, as resampling a handful of "
        "values understates their spread, and can exclude 0 where p > 0.05). "
        "'p users' is a paired t-test over users "
        "of NDCG@5 averaged over seeds: conditional on these trained models, "
        "shown for reference only.",
        "",
        *(f"- config {ds} / {bb}: {c}" for (ds, bb), c in shapes.items()),
        *(f"- search {k}: {v}" for k, v in info.get("search", {}).items()),
        *_data_lines(dict.fromkeys(e["dataset"] for e, _, _ in rows),
                     info.get("data", {})),
        "",
    ] + ([
        "† ended by the epoch cap or the time limit while some seeds were still "
        "within their patience (their validation NDCG@5 may still have been "
        f"rising); no conclusion rests on these cells: {', '.join(cut)}.", "",
    ] if cut else [])  # fmt: skip


def prepared_stats(name, known=None) -> dict | None:
    """A data file's ``data_prep`` stats: ``known[name]`` (a manifest's
    ``data``), else the ``stats.json`` beside the file; None for a
    benchmark name or a file without one."""
    if (known or {}).get(name):
        return known[name]
    path = os.path.join(os.path.dirname(name), "stats.json")
    if name in datasets.NAMES or not os.path.isfile(path):
        return None
    return files.read_json(path)


def _data_lines(names, known=None) -> list[str]:
    """What each dataset prepared by ``data_prep`` was made from, its size
    and order, and whether it is the paper's data by Table 1's counts, so
    that a stand-in is never read as the paper's dataset (:func:`prepared_stats`)."""
    out = []
    for name in names:
        st = prepared_stats(name, known)
        if st is None:
            continue
        src, paper = st["source"], st.get("paper_table1") or {}
        off = outputs.paper_mismatch(st)
        line = (f"- data {name}: made by `data_prep` from {src['file']} "
                f"({src['format']}): {st['users']:,} users, {st['items']:,} "
                f"items, {st['interactions']:,} interactions; time order: "
                f"{st['time_order']}")  # fmt: skip
        if paper:
            size = " / ".join(paper[k] for k in outputs.TABLE1_COUNTS)
            line += (f". The paper's {st['dataset']} (Table 1): {size}; "
                     + (f"this is a stand-in, not the paper's data ({', '.join(off)} "
                        "differ), and the paper's values do not apply to it"
                        if off else "the same counts"))  # fmt: skip
        out.append(line)
    return out


def render_table2(info, cells):
    rows = _load(cells)
    lines = _header("Table 2: Original vs refinement mechanisms", info, rows)
    summary = []
    for ds, bb in dict.fromkeys((e["dataset"], e["backbone"]) for e, _, _ in rows):
        block = [row for row in rows if row[0]["dataset"] == ds
                 and row[0]["backbone"] == bb]  # fmt: skip
        base = next(((r, k) for e, r, k in block if e["mech"] == "none" and r), None)
        table = []
        vss = [_vs((r, k), base if e["mech"] != "none" else None) for e, r, k in block]
        ps = [(vs or {}).get("p", {}).get("NDCG@5") for vs in vss]
        # the family: every mechanism of the block; one without a p yet counts
        # as p = 1 (conservative until it arrives)
        fam = stats.holm([None if e["mech"] == "none" else 1.0 if p is None else p
                          for (e, _, _), p in zip(block, ps)])  # fmt: skip
        holms = [h if p is not None else None for p, h in zip(ps, fam)]
        for (e, r, _), vs, p, p_holm in zip(block, vss, ps, holms):
            paper = PAPER_TABLE2.get((ds, bb, e["mech"]), {})
            user = (vs or {}).get("user_level_conditional")
            test = ((vs or {}).get("seed_test") or {}).get("NDCG@5") or {}
            table.append([e["mech"], len(r["seeds"]) if r else "–",
                          *(_pm(vs, m) for m in METRICS), _delta(vs),
                          _f(test.get("detectable_pct"), 1),
                          _f(p, 3), _f(p_holm, 3), _f(user and user["p_t"], 3),
                          *(_f(paper.get(m)) for m in METRICS), _epochs(r)])  # fmt: skip
            summary.append(_summary_row(e, r, vs, paper) | {"p_holm_NDCG@5": p_holm})
        head = ["mechanism", "seeds", *METRICS, "Δ% N@5 [95% CI]", "detectable Δ%",
                "p seeds", "p Holm", "p users", *(f"paper {m}" for m in METRICS),
                "epochs run / best"]  # fmt: skip
        st = prepared_stats(ds, info.get("data"))
        stand_in = st and st.get("paper_table1") and outputs.paper_mismatch(st)
        lines += [f"## {ds} / {bb}" + (" (a stand-in, not the paper's data)"
                                       if stand_in else ""),
                  "", *_md(head, table), ""]  # fmt: skip
    lines.append(
        "paper: Liu et al. 2024, Table 2 (awrsr_jax/paper.py), only where the "
        "value could be read ('–' otherwise; never filled in by us). Epochs: "
        "run by the cell, and each seed's best validation epoch (0-based). "
        "p Holm: 'p seeds' adjusted (Holm) over the block's mechanisms, for "
        "the question whether any of them beats Original (one without a result "
        "yet counts as p = 1). detectable Δ%: the change of the NDCG@5 mean "
        "that a paired t-test over this many seeds would find (p < 0.05) four "
        "times in five, at the observed sd of the per-seed differences: the "
        "resolution of the cell, read after the fact, not a test; a Δ% well "
        "inside it is within seed noise."
    )
    return "\n".join(lines) + "\n", summary


def _summary_row(e, res, vs, paper=None) -> dict:
    """One cell of a table's JSON summary: what it is, its seeds with their
    test metrics, and the seed-level test against Original."""
    row = {k: e[k] for k in ("dataset", "backbone", "mech", "layers", "refine_input")}
    row.update(seeds=res and res["seeds"], cut_seeds=res and cut_seeds(res),
               epochs_run=res and res["epochs_run"],
               best_epoch=res and res["best_epoch"])  # fmt: skip
    if vs:
        row.update({k: vs.get(k) for k in ("per_seed", "mean", "sd", "p", "stars",
                                           "seed_test", "bootstrap",
                                           "user_level_conditional")})  # fmt: skip
    if paper is not None:
        row["paper"] = paper or None
    return row


def render_table3(info, cells):
    rows = _load(cells)
    lines = _header("Table 3: NDCG@5 by number of layers", info, rows)
    depths = sorted({e["layers"] for e, _, _ in rows})
    grid = {}
    for e, r, k in rows:
        grid.setdefault((e["dataset"], e["backbone"], e["mech"]), {})[e["layers"]] = (
            e, r, k)  # fmt: skip
    table, summary = [], []
    for (ds, bb, mech), by in grid.items():
        out = [ds, bb, mech]
        for n in depths:
            e, r, k = by.get(n, (None, None, None))
            base = grid.get((ds, bb, "none"), {}).get(n, (None, None, None))[1:]
            vs = _vs((r, k), base if mech != "none" and base[0] else None)
            mark = (vs or {}).get("stars", {}).get("NDCG@5", "")
            low = mark and vs["seed_test"]["NDCG@5"]["mean_diff"] < 0
            paper = PAPER_TABLE3.get((ds, bb, mech, n), {}).get("NDCG@5")
            out.append(_pm(vs) + mark + (" (lower)" if low else "")
                       + (" †" if r and cut_seeds(r) else "")
                       + (f" (paper {paper:.4f})" if paper is not None else ""))  # fmt: skip
            if e is not None:
                summary.append(_summary_row(e, r, vs))
        table.append(out)
    head = ["dataset", "backbone", "mechanism", *(f"{n} layer(s)" for n in depths)]
    lines += _md(head, table)
    lines += ["", "Stars: seed-level paired t-test against Original at the same "
              "depth; '(lower)': significantly below Original. The paper's Table 3 "
              "values are shown where awrsr_jax/paper.py has them."]  # fmt: skip
    return "\n".join(lines) + "\n", summary


def render_refine(info, cells):
    rows = _load(cells)
    lines = _header("Ablation: refinement input A = scores or probs", info, rows)
    by = {(e["dataset"], e["backbone"], e["mech"], e["refine_input"]): (e, r, k)
          for e, r, k in rows}  # fmt: skip
    table, summary = [], []
    for key in dict.fromkeys(k[:3] for k in by):
        sc, pr = by.get((*key, "scores")), by.get((*key, "probs"))
        base = sc[1:] if sc and sc[1] else None
        vs = _vs(pr[1:], base) if pr else None
        table.append([*key, _pm(_vs(sc[1:], None) if sc else None), _pm(vs),
                      _delta(vs), _f((vs or {}).get("p", {}).get("NDCG@5"), 3)])  # fmt: skip
        if pr:
            summary.append(_summary_row(pr[0], pr[1], vs))
    head = ["dataset", "backbone", "mechanism", "scores N@5", "probs N@5",
            "Δ% [95% CI]", "p seeds"]  # fmt: skip
    lines += [*_md(head, table), "", "Δ% and p: probs against scores, paired by seed."]
    return "\n".join(lines) + "\n", summary


RENDER = {"2": render_table2, "3": render_table3, "refine": render_refine}


def load_tables(results_dirs, table) -> tuple[dict, list]:
    """:func:`awrsr_jax.results.load_manifest` of one folder, or of several
    (a list or a comma-separated string: say one per dataset) as one table:
    their cells in folder order, their commands and searches together."""
    loaded = [
        (info, cells) for _, info, cells in results.load_manifests(results_dirs, table)
    ]
    infos = [info for info, _ in loaded]
    joined = {k: sorted({str(i.get(k)) for i in infos}) for k in ("budget", "seeds")}
    info = dict(
        infos[0],
        commands=[c for i in infos for c in i["commands"]],
        search={k: v for i in infos for k, v in i.get("search", {}).items()},
        data={k: v for i in infos for k, v in i.get("data", {}).items()},
        **{k: v[0] if len(v) == 1 else " / ".join(v) for k, v in joined.items()},
    )
    return info, [cell for _, cells in loaded for cell in cells]


def cell_progress(cell_dir) -> dict:
    """Where one cell stands, from its files alone (nothing is trained):
    ``state`` ("not started", "unfinished": training, paused or ended by a
    time limit, "done" or "failed"), ``config`` (config.json's, or None),
    ``members`` (:func:`awrsr_jax.resume.member_progress`; a cell trained
    seed by seed counts its seed runs' members in seed order) and ``hours``
    trained (each epoch's training plus validation seconds, as logged)."""
    whole = os.path.exists(os.path.join(cell_dir, "config.json"))
    runs = [p for p in results.seed_dirs(cell_dir)
            if os.path.exists(os.path.join(p, "config.json"))]  # fmt: skip
    parts = runs
    if whole:  # an ensemble's members share each epoch's seconds; a cell
        # written from its seed runs is read from them, each timed alone
        seeds = files.read_json(os.path.join(cell_dir, "config.json"))["seeds"]
        parts = runs if len(runs) == len(seeds) else [cell_dir]
    if not parts:
        return dict(state="not started", config=None, members={}, hours=0.0)
    config = files.read_json(os.path.join(parts[0], "config.json"))["config"]
    history, hours = [], 0.0
    for p in parts:
        part = resume.workdir_history(p) or []
        seen = {r["member"] for r in history if "member" in r}
        history += results.renumbered(part, len(seen))
        per_epoch = {r["epoch"]: r.get("seconds", 0) + r.get("eval_seconds", 0)
                     for r in part if "epoch" in r}  # fmt: skip
        hours += sum(per_epoch.values()) / 3600
    state = "unfinished"
    if results.is_done(cell_dir):
        res = files.read_json(os.path.join(cell_dir, "results.json"))
        if not res.get("stopped"):
            state = "done" if res["status"] == "ok" else "failed"
    return dict(state=state, config=config, members=resume.member_progress(history),
                hours=hours)  # fmt: skip


def progress(results_dirs, table) -> list[str]:
    """A Markdown table of every cell of one or several reproduce folders
    (``--status``): its state, epochs, and per seed the best validation
    NDCG@5, its epoch and the validations waited since; "seeds stopped"
    counts seeds that have waited ``patience`` (and, with a
    ``report_patience`` R, "at rule R" those that have waited R at some time)."""
    rows = []
    for d in results.folders(results_dirs):
        for e in results.manifest(d, table)[1]:
            p = cell_progress(os.path.join(d, e["cell"]))
            ms = [p["members"][m] for m in sorted(p["members"])]
            stops, cfg = "–", p["config"]
            if cfg is not None and ms:
                stops = f"{sum(m['longest'] >= cfg['patience'] for m in ms)}/{len(ms)}"
                if rule := cfg.get("report_patience"):
                    stops += (
                        f"; at rule {rule}: {sum(m['longest'] >= rule for m in ms)}"
                    )
            rows.append([
                e["dataset"], e["backbone"], e["mech"], e["layers"], p["state"],
                max((m["epochs"] for m in ms), default=0), f"{p['hours']:.1f}",
                " ".join(f"{m['best']:.4f}" for m in ms) or "–",
                " ".join(str(m["best_epoch"]) for m in ms) or "–",
                " ".join(str(m["wait"]) for m in ms) or "–", stops,
            ])  # fmt: skip
    header = ["dataset", "backbone", "mech", "layers", "state", "epochs", "hours",
              "best valid NDCG@5 per seed", "at epoch", "waited", "seeds stopped"]  # fmt: skip
    return _md(header, rows)


def render(results_dir, table, out) -> list[str]:
    """``table<N>.md`` and ``table<N>_summary.json`` from a results folder;
    where its cells trained with ``--report_patience=R``, also
    ``table<N>_patience<R>.*``: the same cells as that rule ended each seed."""
    info, cells = load_tables(results_dir, table)
    views = [(e, results.rule_view(run)) for e, run in cells]
    rules = {v["results"]["rule"]["patience"] for _, v in views if v}
    tables = [(f"table{table}", cells, None)]
    if len(rules) == 1 and all(v or not run for (_, v), (_, run) in zip(views, cells)):
        (r,) = rules
        patience = {run["config"]["config"]["patience"] for _, run in cells if run}
        note = (f"The same trainings as table{table}.md (patience "
                f"{'/'.join(map(str, sorted(patience)))}), each seed taken where "
                f"patience {r} (the paper's rule when 20) would have stopped it: "
                "its best validation epoch by then. Epochs: where each seed "
                "stopped under this rule.")  # fmt: skip
        tables.append((f"table{table}_patience{r}", views, note))
    os.makedirs(out, exist_ok=True)
    paths = []
    for name, these, note in tables:
        md, summary = RENDER[table](info, these)
        if note:
            head, _, rest = md.partition("\n\n")
            md = f"{head}\n\n{note}\n\n{rest}"
        paths += [os.path.join(out, f"{name}{x}") for x in (".md", "_summary.json")]
        files.write_text(paths[-2], md)
        files.write_json(paths[-1], summary)
    return paths
