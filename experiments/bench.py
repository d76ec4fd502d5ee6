"""Speed benchmark: ``python -m experiments.bench [--suite=cpu|gpu] [--quick]``.

Each case trains through the one experiment path (:func:`awrsr_jax.runner.run`,
in a temporary workdir) and is timed from its ``metrics.jsonl``. Prints one
JSON line per case, as soon as it is measured: backbone, mech, data shape,
device, seconds per epoch (median of ``--epochs`` epochs after the first,
compiling one; validation excluded), compile seconds (the first epoch's extra
time), sequences per second, full-ranking evaluation seconds (the median
validation pass over every evaluated user, after the first), peak memory and
ensemble size (an ensemble case also prints its throughput against sequential
one-member runs and the share of a one-member epoch that batching members
shares, :func:`ensemble_split`), the share of training positions that are not padding
(``fill``), and the training row-group size (``--trim_rows``: each batch's
padding is cut, see :mod:`awrsr_jax.train.trim`, and ensemble members
train one after another; ``--trim_rows=0`` measures full-length batches and
vmapped members). Data: ``$AWRSR_DATA_DIR`` or ``<repo>/../shared/data`` files when present (ML-1M for
SASRec, STOSA's 5-core Beauty for STOSA), otherwise random sequences of the
same shape (users, items, mean length), marked ``"data": "synthetic"``.

Suites: ``cpu`` (default): SASRec ML-1M at L=200 and L=50 with ``none`` and
``value``, STOSA Beauty with ``none`` and ``stoc``, a 5-member ensemble at
L=50 against one member (throughput ratio), then BERT4Rec ML-1M at L=50
with ``none`` and ``value``. ``gpu``: the same, with a 16-member ensemble and
BERT4Rec at L=200 instead, sized for a ~4
minute budget (``--budget_s``; cases that would start after it print a skip
line). ``--quick``: tiny synthetic shapes, for CI. Needs only jax, flax,
optax, numpy.

GPU command::

    PYTHONUNBUFFERED=1 python -m experiments.bench --suite=gpu --budget_s=220
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags, logging

from awrsr_jax import datasets, registry, results, runner, train
from awrsr_jax.config import Config
from awrsr_jax.datasets import SHARED_DATA

flags.DEFINE_enum("suite", "cpu", ["cpu", "gpu"], "which cases to run")
flags.DEFINE_bool("quick", False, "tiny synthetic shapes (CI smoke run)")
flags.DEFINE_integer("epochs", 3, "timed epochs per case (after compilation)")
flags.DEFINE_float(
    "budget_s", 0.0, "skip cases that would start after this (0: no limit)"
)
flags.DEFINE_string("only", "", "comma-separated case names to run (default: all)")
flags.DEFINE_integer("eval_chunk", 0, "users per evaluation chunk (0: ~2^24 scores)")
flags.DEFINE_integer(
    "trim_rows",
    None,
    "training row-group size (0: full-length batches; default: auto, 16 on CPU)",
)
FLAGS = flags.FLAGS

DATA_DIR = SHARED_DATA  # AWRSR_DATA_DIR overrides <repo>/../shared/data
# name -> (file, users, items, mean sequence length) of the benchmark data.
DATASETS = {
    "ml-1m": ("ml-1m_sasrec-equivalent.txt", 6040, 3416, 165.5),
    "beauty": ("Beauty_5core_stosa.txt", 22363, 12101, 8.88),
    "tiny": (None, 300, 200, 20.0),
}
_SIZES = ("hidden", "layers", "heads", "batch_size")  # of the reference configs
REFERENCE = {
    name: dict(backbone=name, **{k: b.reference[k] for k in _SIZES})
    for name, b in registry.BACKBONES.items()
}
SASREC, STOSA = REFERENCE["sasrec"], REFERENCE["stosa"]


def cases(suite: str, quick: bool) -> list[dict]:
    """``{name, dataset, members, cfg}`` for each case of the suite."""
    if quick:
        base = dict(hidden=16, layers=1, heads=1, batch_size=32)
        out = [
            dict(name="sasrec-none", dataset="tiny", cfg=dict(base, max_len=20)),
            dict(
                name="sasrec-value",
                dataset="tiny",
                cfg=dict(base, max_len=20, mech="value"),
            ),
            dict(
                name="stosa-stoc",
                dataset="tiny",
                cfg=dict(base, backbone="stosa", max_len=20, mech="stoc"),
            ),
        ]
    else:
        out = []
        for n in (200, 50):
            for mech in ("none", "value"):
                out.append(
                    dict(
                        name=f"sasrec-{mech}-L{n}",
                        dataset="ml-1m",
                        cfg=dict(SASREC, max_len=n, mech=mech),
                    )
                )
        for mech in ("none", "stoc"):
            out.append(
                dict(
                    name=f"stosa-{mech}",
                    dataset="beauty",
                    cfg=dict(STOSA, max_len=100, mech=mech),
                )
            )
        # An ensemble against its one-member case (throughput ratio).
        n, k = (200, 16) if suite == "gpu" else (50, 5)
        out.append(
            dict(
                name=f"sasrec-none-L{n}-x{k}",
                dataset="ml-1m",
                members=k,
                eval=False,
                cfg=dict(SASREC, max_len=n),
            )
        )
        # Last, so that --budget_s cuts them first.
        for mech in ("none", "value"):
            out.append(
                dict(
                    name=f"bert4rec-{mech}-L{n}",
                    dataset="ml-1m",
                    cfg=dict(REFERENCE["bert4rec"], max_len=n, mech=mech),
                )
            )
    for c in out:
        c.setdefault("members", 1)
        c.setdefault("eval", True)
    return out


def load(name: str) -> tuple[datasets.Dataset, str]:
    """A benchmark dataset, or random data of the same shape."""
    file, users, items, mean_len = DATASETS[name]
    if file and (DATA_DIR / file).is_file():
        return datasets.load(name), "file"
    rng = np.random.default_rng(0)
    # Geometric-like lengths with the file's mean, at least 5 (5-core style).
    lens = np.minimum(5 + rng.geometric(1 / max(mean_len - 4, 1.0), users), items)
    seqs = {
        u + 1: (rng.permutation(items)[:n] + 1).tolist() for u, n in enumerate(lens)
    }
    return datasets.Dataset(f"{name}-shaped", seqs), "synthetic"


def peak_memory() -> dict:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return {"peak_device_mib": round(stats["peak_bytes_in_use"] / 2**20, 1)}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"peak_host_rss_mib": round(rss / 1024, 1)}


def ensemble_split(members: int, t_one: float, t_all: float) -> dict:
    """Throughput of an ensemble epoch (``t_all`` s) against ``members`` sequential
    one-member epochs (``t_one`` s each), and the share of ``t_one`` that the
    members share: with ``t(M) = o + w M``, ``o = (M t_one - t_all) / (M - 1)``.
    A ratio of 10 at 16 members needs ``o >= 24 w`` (a share of 0.96)."""
    shared = (members * t_one - t_all) / (members - 1)
    return {
        "speedup_vs_sequential": round(members * t_one / t_all, 2),
        "shared_share": round(shared / t_one, 3),
    }


def _steady(times: list[float]) -> tuple[float, float]:
    """(median of the calls after the first, first minus that): the steady
    time and the compile time the first call paid on top."""
    sec = float(np.median(times[1:])) if len(times) > 1 else float("nan")
    return sec, times[0] - sec


def run_case(
    case: dict, data, source: str, epochs: int, eval_chunk: int, trim_rows=None
) -> dict:
    """Trains the case for ``1 + epochs`` epochs through the one experiment path
    (a temporary workdir) and reads its timings from ``metrics.jsonl``: epoch
    seconds exclude validation, which is timed separately."""
    cfg = Config(**case["cfg"])
    if trim_rows is not None:
        cfg = cfg.replace(trim_rows=trim_rows)
    built = data.build(cfg.max_len)
    cfg = cfg.replace(trim_rows=train.trim_rows(cfg, built))
    chunk = eval_chunk or max(256, (1 << 24) // (built.num_items + 1))
    cfg = cfg.replace(
        eval_chunk=min(chunk, built.num_eval),
        epochs=1 + epochs,
        patience=2 + epochs,
        eval_every=1 if case["eval"] else 1 + epochs,
    )
    m = case["members"]
    options = runner.Options(progress="none", checkpoint_every=1 + epochs)
    with tempfile.TemporaryDirectory() as workdir:
        runner.run(cfg, workdir=workdir, data=data, seeds=list(range(m)),
                   options=options)  # fmt: skip
        recs = [r for r in results.read_metrics(workdir) if r["member"] == 0]
    sec, compile_s = _steady([r["seconds"] for r in recs])
    rec = {
        "case": case["name"],
        "backbone": cfg.backbone,
        "mech": cfg.mech,
        "data": source,
        "users": built.num_train,
        "items": built.num_items,
        "max_len": cfg.max_len,
        "hidden": cfg.hidden,
        "layers": cfg.layers,
        "heads": cfg.heads,
        "batch": cfg.batch_size,
        "fill": round(train.fill(built), 3),
        "trim_rows": cfg.trim_rows,
        "ensemble": m,
        "device": f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}",
        "sec_per_epoch": round(sec, 5),
        "epoch_times": [round(r["seconds"], 5) for r in recs[1:]],
        "compile_s": round(compile_s, 2),
        "seq_per_s": round(m * built.num_train / sec, 1),
        "loss": recs[-1]["loss"],
    }
    evals = [r["eval_seconds"] for r in recs if "eval_seconds" in r]
    if case["eval"] and len(evals) > 1:
        eval_s, eval_compile_s = _steady(evals)
        rec.update(eval_s=round(eval_s, 5), eval_compile_s=round(eval_compile_s, 2),
                   eval_users=built.num_eval, eval_chunk=cfg.eval_chunk)  # fmt: skip
    rec.update(peak_memory())
    return rec


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    start = time.perf_counter()
    has_stosa = importlib.util.find_spec("awrsr_jax.models.stosa") is not None
    wanted = {s for s in FLAGS.only.split(",") if s}
    loaded = {}
    for case in cases(FLAGS.suite, FLAGS.quick):
        name = case["name"]
        if wanted and name not in wanted:
            continue
        if case["cfg"].get("backbone") == "stosa" and not has_stosa:
            print(
                json.dumps(
                    {"case": name, "skipped": "awrsr_jax/models/stosa.py missing"}
                )
            )
            continue
        if FLAGS.budget_s and time.perf_counter() - start > FLAGS.budget_s:
            print(
                json.dumps(
                    {"case": name, "skipped": f"over --budget_s={FLAGS.budget_s}"}
                )
            )
            continue
        if case["dataset"] not in loaded:
            loaded[case["dataset"]] = load(case["dataset"])
        data, source = loaded[case["dataset"]]
        epochs = 1 if FLAGS.quick else FLAGS.epochs
        rec = run_case(case, data, source, epochs, FLAGS.eval_chunk, FLAGS.trim_rows)
        if case["members"] > 1:
            base = name.split("-x")[0]
            ref = next((r for r in _done if r["case"] == base), None)
            if ref is not None:
                rec.update(
                    ensemble_split(
                        case["members"], ref["sec_per_epoch"], rec["sec_per_epoch"]
                    )
                )
        rec["elapsed_s"] = round(time.perf_counter() - start, 1)
        _done.append(rec)
        print(json.dumps(rec), flush=True)
    sys.stdout.flush()


_done: list[dict] = []

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app.run(main)
