"""One experiment end to end: data -> fit -> files under the workdir.

``run`` is what ``python -m experiments.main`` calls. It writes, under
``workdir``: ``config.json`` (the config plus the dataset's name, path and
content hash), ``metrics.jsonl`` (one JSON line per member and epoch) and
``results.json`` (``valid`` and ``test`` objects keyed by metric name, the
protocol, epochs and timing). Files are written to a temporary name and renamed,
so an interrupted run never leaves a half-written result.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from tqdm import tqdm

from awrsr_jax import data as data_lib
from awrsr_jax import train
from awrsr_jax.config import Config, validate
from awrsr_jax.ops.metrics import metric_names

DATASETS = ("synthetic", "file")


def protocol_text(cfg: Config, num_items: int) -> str:
    if cfg.protocol == "sampled100":
        rank = "rank among the target and 100 sampled negatives (SASRec paper)"
    else:
        rank = f"full ranking over all {num_items} items"
    return (
        f"leave-one-out (valid = second-last item, test = last); {rank}, "
        "user history removed, ties counted against the model; "
        f"model selected on valid {train.SELECT} (patience {cfg.patience})"
    )


def load_sequences(dataset: str, data_file: str | None, data_format: str = "auto"):
    """``{user: items}`` for ``--dataset`` (``synthetic`` or ``file``)."""
    if dataset == "synthetic":
        return data_lib.generate()
    if dataset == "file":
        if not data_file:
            raise ValueError("--data_file: required with --dataset=file")
        return data_lib.read_sequences(data_file, data_format)
    raise ValueError(f"--dataset={dataset!r}: choose from {DATASETS}")


def write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def results_table(res: train.FitResult, names=None) -> str:
    names = names or metric_names()
    rows = [f"{'split':<6} {'member':>6} " + " ".join(f"{n:>9}" for n in names)]
    for split in ("valid", "test"):
        for m, vals in enumerate(getattr(res, split)):
            rows.append(
                f"{split:<6} {m:>6} " + " ".join(f"{vals[n]:>9.4f}" for n in names)
            )
    return "\n".join(rows)


def run(
    cfg: Config,
    *,
    workdir: str,
    dataset: str = "synthetic",
    data_file: str | None = None,
    data_format: str = "auto",
    seeds=None,
    sweep: dict | None = None,
    quiet: bool = False,
) -> dict:
    """Trains ``cfg`` on the dataset and writes the run's files; returns results."""
    validate(cfg)
    seqs = load_sequences(dataset, data_file, data_format)
    data, _ = data_lib.build(seqs, cfg.max_len)
    os.makedirs(workdir, exist_ok=True)
    meta = {
        "config": json.loads(cfg.to_json()),
        "dataset": dataset,
        "data_file": os.path.abspath(data_file) if data_file else None,
        "data_sha256": data_lib.fingerprint(seqs),
        "seeds": train.members_of(cfg, seeds, sweep),
        "sweep": sweep or {},
    }
    write_json(os.path.join(workdir, "config.json"), meta)
    protocol = protocol_text(cfg, data.num_items)
    log = sys.stderr
    if not quiet:
        print(
            f"{dataset}: {len(seqs)} users, {data.num_items} items, "
            f"{data.num_train} training rows, {data.num_eval} evaluated users",
            file=log,
        )
    bar = tqdm(total=cfg.epochs, desc="epochs", disable=quiet, file=log)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as mfile:

        def on_epoch(rec):
            mfile.write(json.dumps(rec) + "\n")
            mfile.flush()
            if rec["member"] == 0:
                bar.update(1)
                post = {"loss": f"{rec['loss']:.4f}"}
                if "valid" in rec:
                    post["valid NDCG@5"] = f"{rec['valid'][train.SELECT]:.4f}"
                bar.set_postfix(post)

        res = train.fit(cfg, data, seeds=seeds, sweep=sweep, on_epoch=on_epoch)
    bar.close()
    single = len(res.test) == 1
    results = {
        "protocol": protocol,
        "valid": res.valid[0] if single else res.valid,
        "test": res.test[0] if single else res.test,
        "best_epoch": res.best_epoch[0] if single else res.best_epoch,
        "epochs_run": res.epochs_run,
        "seconds_per_epoch": res.seconds_per_epoch,
    }
    np.save(os.path.join(workdir, "test_ranks.npy"), res.test_ranks)
    write_json(os.path.join(workdir, "results.json"), results)
    if not quiet:
        print(f"\n{cfg.backbone} mech={cfg.mech} | protocol: {protocol}")
        print(results_table(res))
        print(
            f"best epoch {res.best_epoch}, {res.epochs_run} epochs run, "
            f"{res.seconds_per_epoch:.3f} s/epoch; files in {workdir}"
        )
    return results
