"""Resumable hyper-parameter search (the paper's Section 3.1).

    python -m experiments.grid --backbone=sasrec --dataset=ml-1m --space=paper
    python -m experiments.grid --backbone=stosa --dataset=beauty --space=small \
        --set=hidden=64,max_len=100,heads=4,layers=1,batch_size=256
    python -m experiments.grid --dataset=beauty --space=paper --set=layers=1 \
        --sample=24 --out=runs/search/beauty      # a seeded random subset
    python -m experiments.grid --budget=smoke     # tiny CPU run of the pipeline

``--space`` is ``paper``, ``small``, ``smoke`` or a JSON file (see
``awrsr_jax.search``); ``--set`` fixes other config fields for every config;
``--sample=N`` keeps N configs of the space drawn with ``--sample_seed``.
Configs that differ only in lr / l2 / dropout / pvn_weight train as one
ensemble: one :func:`awrsr_jax.runner.run` with a sweep, all members on the
same seed (they share initialisation and data order), in the workdir
``<out>/groups/<hash>/`` (checkpointed: a killed search resumes inside a
group). After every group the table ``<out>/results.jsonl`` is replaced
atomically; rerunning the command skips finished configs. A diverging group
is retried member by member and only the diverging members are recorded as
failed. At the end the command writes ``best.json`` (best validation NDCG@5;
its test metrics are reported, never used to choose), ``summary.md`` and
``summary.csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import os
import sys
import time

from absl import app, flags, logging

from awrsr_jax import datasets, files, registry, results, resume, runner, search
from awrsr_jax.config import Config
from awrsr_jax.ops.metrics import metric_names
from awrsr_jax.results import as_list
from awrsr_jax.train.loop import SELECT

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


def _record(cfg, h, data, **fields) -> dict:
    return {
        "hash": h,
        "config": cfg.identity(),
        "dataset": data.name,
        "data_sha256": data.sha256,
        **fields,
    }


def _curves(workdir: str, members: int) -> list[list[float]]:
    """Validation NDCG@5 per epoch of each member, from ``metrics.jsonl``."""
    curves = [[] for _ in range(members)]
    for rec in results.read_metrics(workdir):
        if "valid" in rec:
            curves[rec["member"]].append(rec["valid"][SELECT])
    return curves


def train_group(cfg, sweep, members, data, out, log) -> list[dict]:
    """Trains one shape group through the one experiment path; returns one
    record per member."""
    hashes = [search.config_hash(c, data.sha256) for c in members]
    name = search.config_hash(cfg, data.sha256, sweep=sweep)
    workdir = os.path.join(out, "groups", name)
    seeds = [cfg.seed] * len(members)
    copied = not os.path.exists(workdir) and resume.continue_from(
        glob.glob(os.path.join(out, "groups", "*")),
        resume.run_identity(cfg, data, seeds, sweep), workdir, log,
    )  # fmt: skip
    options = runner.Options(progress="lines", log=log)
    try:
        if copied and results.is_done(workdir):  # stopped below the old cap
            res = files.read_json(os.path.join(workdir, "results.json"))
        else:
            res = runner.run(cfg, workdir=workdir, data=data, seeds=seeds,
                             sweep=sweep, options=options)  # fmt: skip
    except FloatingPointError as e:
        if len(members) == 1:
            print(f"  diverged: {e}", file=log)
            return [_record(members[0], hashes[0], data, status="failed", error=str(e))]
        print(f"  ensemble diverged ({e}); retrying its members one by one", file=log)
        out_records = []
        for c in members:
            one = {k: [getattr(c, k)] for k in sweep}
            out_records += train_group(c, one, [c], data, out, log)
        return out_records
    curves = _curves(workdir, len(members))
    return [
        _record(
            c,
            h,
            data,
            status="ok",
            valid=valid,
            test=test,
            best_epoch=best,
            epochs_run=len(curve),
            seconds_per_epoch=res["seconds_per_epoch"],
            group_wall_s=res["train_seconds"],
            members=len(members),
            valid_curve=curve,
            workdir=workdir,
        )  # fmt: skip
        for c, h, valid, test, best, curve in zip(
            members,
            hashes,
            *(as_list(res[k]) for k in ("valid", "test", "best_epoch")),
            curves,
        )  # fmt: skip
    ]


def run_search(configs, data, out, *, max_members=32, log=sys.stderr):
    """Trains every config not yet in ``<out>/results.jsonl``; returns the table."""
    table = results.ResultTable(os.path.join(out, "results.jsonl"))
    todo = [c for c in configs if search.config_hash(c, data.sha256) not in table]
    print(f"{len(configs)} configs, {len(configs) - len(todo)} already done", file=log)
    groups = search.shape_groups(todo, max_members)
    for i, (cfg, sweep, members) in enumerate(groups):
        print(
            f"group {i + 1}/{len(groups)}: {len(members)} members, "
            f"shape {search.config_hash(cfg)[:8]}",
            file=log,
        )
        table.add(train_group(cfg, sweep, members, data, out, log))
    return table


def summary_markdown(records, title: str, top: int = 20) -> str:
    ok = sorted(
        (r for r in records if r["status"] == "ok"), key=lambda r: -r["valid"]["NDCG@5"]
    )
    failed = [r for r in records if r["status"] != "ok"]
    keys = results.varying_fields(records)
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
    """One row per record; a config field no record names (one its backbone
    does not read) gets no column."""
    names = metric_names()
    fields = [
        f.name
        for f in dataclasses.fields(Config)
        if any(f.name in r["config"] for r in records)
    ]
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
                *(r["config"].get(f, "") for f in fields),
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
    best = results.best_record(records)
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
        files.write_json(os.path.join(out, "best.json"), info)
    title = f"Grid search: {backbone} on {label} (space {space})"
    files.write_text(os.path.join(out, "summary.md"), summary_markdown(records, title))
    files.write_text(os.path.join(out, "summary.csv"), summary_csv(records))
    return best


def define_flags():
    flags.DEFINE_enum("backbone", "sasrec", list(registry.BACKBONES), "model searched")
    flags.DEFINE_string("mech", "none", "refinement of every config (or in --space)")
    flags.DEFINE_string(
        "dataset",
        "ml-1m",
        f"data: {', '.join(datasets.NAMES)}, or a sequence file's path",
    )
    flags.DEFINE_string("space", "paper", "paper, small, smoke or a JSON file")
    flags.DEFINE_string("set", "", "fixed config fields: field=value,...")
    flags.DEFINE_integer(
        "sample", None, "train only this many configs of the space, drawn at random"
    )
    flags.DEFINE_integer("sample_seed", 0, "seed of the --sample draw")
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
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
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
        data = datasets.load(dataset)
        configs, dropped = search.expand(
            base, search.load_space(space_name, f.backbone)
        )
        if f.sample is not None:
            configs = search.sample(configs, f.sample, f.sample_seed)
        out = f.out or os.path.join("runs", "grid", f"{data.name}-{f.backbone}")
        os.makedirs(out, exist_ok=True)
        if dropped:
            print(f"dropped {len(dropped)} invalid configs, e.g. {dropped[0]}")
        t0 = time.perf_counter()
        table = run_search(configs, data, out, max_members=f.max_members)
        best = write_outputs(
            table, out, label=data.name, backbone=f.backbone, space=space_name
        )
    except runner.Preempted as e:
        sys.exit(runner.preempted_exit(e))
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"{len(table)} configs in the table ({time.perf_counter() - t0:.0f} s)")
    if best:
        print(f"best valid NDCG@5 {best['valid']['NDCG@5']:.4f}: {best['hash']}")
    print(f"outputs in {out}: results.jsonl, best.json, summary.md, summary.csv")


if __name__ == "__main__":
    define_flags()
    app.run(main)
