"""Resumable hyper-parameter search (the paper's Section 3.1).

    python -m experiments.grid --backbone=sasrec --dataset=ml-1m --space=paper
    python -m experiments.grid --backbone=stosa --dataset=beauty --space=small \
        --set=hidden=64,max_len=100,heads=4,layers=1,batch_size=256
    python -m experiments.grid --budget=smoke     # tiny CPU run of the pipeline

``--space`` is ``paper``, ``small``, ``smoke`` or a JSON file (see
``awrsr_jax.search``); ``--set`` fixes other config fields for every config.
Configs that differ only in lr / l2 / dropout / pvn_weight train as one
ensemble (one ``train.fit(sweep=...)``, all members on the same seed, so they
share initialisation and data order). After every ensemble the table
``<out>/results.jsonl`` is replaced atomically; rerunning the command skips
finished configs. A diverging ensemble is retried member by member and only
the diverging members are recorded as failed. At the end the command writes
``best.json`` (best validation NDCG@5; its test metrics are reported, never
used to choose), ``summary.md`` and ``summary.csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys
import time

from absl import app, flags

from awrsr_jax import search
from awrsr_jax.config import Config
from awrsr_jax.ops.metrics import metric_names

PROGRESS_EVERY = 10  # epochs between a group's progress lines
SMOKE_BASE = dict(hidden=16, max_len=10, layers=1, epochs=3, patience=2, batch_size=32)


def parse_set(text: str) -> dict:
    """``"hidden=64,lr=1e-3"`` -> typed overrides of :class:`Config` fields."""
    types = {f.name: type(f.default) for f in dataclasses.fields(Config)}
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, val = item.partition("=")
        if not sep or key not in types:
            raise ValueError(f"--set: {item!r} is not field=value for a config field")
        typ = types[key]
        out[key] = val.lower() in ("1", "true") if typ is bool else typ(val)
    return out


def _record(cfg, h, label, sha, **fields) -> dict:
    return {
        "hash": h,
        "config": dataclasses.asdict(cfg),
        "dataset": label,
        "data_sha256": sha,
        **fields,
    }


def train_group(cfg, sweep, members, data, hashes, label, sha, log):
    """Trains one shape group; returns one record per member."""
    from awrsr_jax import train  # jax work only once something is trained

    curves = [[] for _ in members]
    t0 = time.perf_counter()

    def on_epoch(rec):
        if "valid" in rec:
            curves[rec["member"]].append(rec["valid"][train.SELECT])

    def progress(loop) -> bool:  # a line every PROGRESS_EVERY epochs; never stops
        if loop.epoch % PROGRESS_EVERY == 0:
            best = " ".join(f"{b:.4f}" for b in loop.best)
            print(f"  epoch {loop.epoch} ({time.perf_counter() - t0:.0f} s, "
                  f"{int(loop.active.sum())} training): best valid {train.SELECT} "
                  f"per member {best}", file=log)  # fmt: skip
        return False

    try:
        res = train.fit(cfg, data, seeds=[cfg.seed] * len(members), sweep=sweep,
                        on_epoch=on_epoch, after_epoch=progress)  # fmt: skip
    except FloatingPointError as e:
        if len(members) == 1:
            print(f"  diverged: {e}", file=log)
            return [
                _record(
                    members[0], hashes[0], label, sha, status="failed", error=str(e)
                )
            ]
        print(f"  ensemble diverged ({e}); retrying its members one by one", file=log)
        out = []
        for c, h in zip(members, hashes):
            one = {k: [getattr(c, k)] for k in sweep}
            out += train_group(c, one, [c], data, [h], label, sha, log)
        return out
    wall = time.perf_counter() - t0
    return [
        _record(
            c,
            h,
            label,
            sha,
            status="ok",
            valid=res.valid[m],
            test=res.test[m],
            best_epoch=res.best_epoch[m],
            epochs_run=len(curves[m]),
            seconds_per_epoch=res.seconds_per_epoch,
            group_wall_s=wall,
            members=len(members),
            valid_curve=curves[m],
        )
        for m, (c, h) in enumerate(zip(members, hashes))
    ]


def run_search(configs, seqs, label, out, *, max_members=32, log=sys.stderr):
    """Trains every config not yet in ``<out>/results.jsonl``; returns the table."""
    from awrsr_jax import data as data_lib

    sha = data_lib.fingerprint(seqs)
    table = search.ResultTable(os.path.join(out, "results.jsonl"))
    todo = [c for c in configs if search.config_hash(c, sha) not in table]
    print(f"{len(configs)} configs, {len(configs) - len(todo)} already done", file=log)
    groups = search.shape_groups(todo, max_members)
    built = {}  # max_len -> SeqData: one build per sequence length
    for i, (cfg, sweep, members) in enumerate(groups):
        if cfg.max_len not in built:
            built[cfg.max_len] = data_lib.build(seqs, cfg.max_len)[0]
        hashes = [search.config_hash(c, sha) for c in members]
        print(
            f"group {i + 1}/{len(groups)}: {len(members)} members, "
            f"shape {search.config_hash(cfg)[:8]}",
            file=log,
        )
        table.add(
            train_group(
                cfg, sweep, members, built[cfg.max_len], hashes, label, sha, log
            )
        )
    return table


def summary_markdown(records, title: str, top: int = 20) -> str:
    ok = sorted(
        (r for r in records if r["status"] == "ok"), key=lambda r: -r["valid"]["NDCG@5"]
    )
    failed = [r for r in records if r["status"] != "ok"]
    keys = search.varying_fields(records)
    cols = ["hash", *keys, "valid R@1", "valid R@5", "valid N@5", "best epoch"]
    lines = [
        f"# {title}",
        "",
        f"{len(ok)} finished, {len(failed)} failed; ranked by validation "
        f"NDCG@5 (top {min(top, len(ok))}).",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in ok[:top]:
        v = r["valid"]
        cells = [
            r["hash"][:8],
            *(str(r["config"][k]) for k in keys),
            f"{v['Recall@1']:.4f}",
            f"{v['Recall@5']:.4f}",
            f"{v['NDCG@5']:.4f}",
            str(r["best_epoch"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if ok:
        best = ok[0]
        lines += [
            "",
            f"Best config `{best['hash']}`: test "
            + ", ".join(
                f"{k} {best['test'][k]:.4f}" for k in ("Recall@1", "Recall@5", "NDCG@5")
            )
            + " (reported, not used for selection).",
        ]
    for r in failed:
        lines.append(
            f"- failed `{r['hash'][:8]}` "
            + " ".join(f"{k}={r['config'][k]}" for k in keys)
            + f": {r.get('error', '')}"
        )
    return "\n".join(lines) + "\n"


def summary_csv(records) -> str:
    names = metric_names()
    fields = [f.name for f in dataclasses.fields(Config)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "hash",
            "status",
            *fields,
            *(f"valid_{n}" for n in names),
            *(f"test_{n}" for n in names),
            "best_epoch",
            "epochs_run",
            "seconds_per_epoch",
            "error",
        ]
    )
    for r in records:
        v, t = r.get("valid", {}), r.get("test", {})
        w.writerow(
            [
                r["hash"],
                r["status"],
                *(r["config"][f] for f in fields),
                *(v.get(n, "") for n in names),
                *(t.get(n, "") for n in names),
                r.get("best_epoch", ""),
                r.get("epochs_run", ""),
                r.get("seconds_per_epoch", ""),
                r.get("error", ""),
            ]
        )
    return buf.getvalue()


def write_outputs(table, out, *, label, backbone, space) -> dict | None:
    """best.json, summary.md and summary.csv from the whole table."""
    records = list(table.records.values())
    best = search.best_record(records)
    if best is not None:
        info = {
            "dataset": label,
            "backbone": backbone,
            "space": space,
            "hash": best["hash"],
            "config": best["config"],
            "valid": best["valid"],
            "test": best["test"],
        }
        search.atomic_write(
            os.path.join(out, "best.json"),
            json.dumps(info, indent=2, sort_keys=True) + "\n",
        )
    title = f"Grid search: {backbone} on {label} (space {space})"
    search.atomic_write(
        os.path.join(out, "summary.md"), summary_markdown(records, title)
    )
    search.atomic_write(os.path.join(out, "summary.csv"), summary_csv(records))
    return best


def define_flags():
    flags.DEFINE_enum("backbone", "sasrec", ["sasrec", "stosa"], "backbone")
    flags.DEFINE_string("mech", "none", "refinement of every config (or in --space)")
    flags.DEFINE_string(
        "dataset",
        "ml-1m",
        "ml-1m, beauty, beauty-bert4rec, synthetic, smoke, or a sequence file",
    )
    flags.DEFINE_string("space", "paper", "paper, small, smoke or a JSON file")
    flags.DEFINE_string("set", "", "fixed config fields: field=value,...")
    flags.DEFINE_enum(
        "budget",
        "full",
        ["full", "smoke"],
        "smoke: tiny synthetic data, tiny models, 3 epochs",
    )
    flags.DEFINE_integer("epochs", 200, "epoch cap")
    flags.DEFINE_integer("patience", 20, "early-stopping patience (evaluations)")
    flags.DEFINE_integer("max_members", 32, "largest ensemble trained at once")
    flags.DEFINE_string("out", None, "output folder (default runs/grid/DATA-BACKBONE)")


def main(argv):
    del argv
    f = flags.FLAGS
    try:
        over = parse_set(f.set)
        dataset, space_name = f.dataset, f.space
        base = Config(
            backbone=f.backbone, mech=f.mech, epochs=f.epochs, patience=f.patience
        )
        if f.budget == "smoke":
            dataset, space_name = "smoke", "smoke"
            base = base.replace(**SMOKE_BASE)
        base = base.replace(**over)
        label, seqs = search.load_dataset(dataset)
        configs, dropped = search.expand(
            base, search.load_space(space_name, f.backbone)
        )
        out = f.out or os.path.join("runs", "grid", f"{label}-{f.backbone}")
        os.makedirs(out, exist_ok=True)
        if dropped:
            print(f"dropped {len(dropped)} invalid configs, e.g. {dropped[0]}")
        t0 = time.perf_counter()
        table = run_search(configs, seqs, label, out, max_members=f.max_members)
        best = write_outputs(
            table, out, label=label, backbone=f.backbone, space=space_name
        )
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"{len(table)} configs in the table ({time.perf_counter() - t0:.0f} s)")
    if best:
        print(f"best valid NDCG@5 {best['valid']['NDCG@5']:.4f}: {best['hash']}")
    print(f"outputs in {out}: results.jsonl, best.json, summary.md, summary.csv")


if __name__ == "__main__":
    define_flags()
    app.run(main)
