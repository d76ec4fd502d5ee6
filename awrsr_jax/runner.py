"""One experiment end to end: data -> fit -> files under the workdir.

``run`` is what ``python -m experiments.main`` calls. It writes, under
``workdir`` and nowhere else: ``config.json`` (the config plus the dataset's
name, path, content hash, item count and the code version), ``metrics.jsonl``
(one JSON line per member and epoch), ``checkpoints/`` (see
:mod:`awrsr_jax.checkpoint`), ``results.json`` (``valid`` and ``test`` objects
keyed by metric name, the protocol, epochs and timing) and ``test_ranks.npy``.
Files are written to a temporary name and renamed; a symlink or a name that
would leave the workdir is refused.

Resuming: running the same command with the same workdir continues from the
newest checkpoint (saved every ``checkpoint_every`` epochs and at the end);
``metrics.jsonl`` is rewritten from the history saved in that checkpoint, so
lines of epochs after it are dropped and recomputed identically. A different
config, dataset, seed list or sweep in an existing workdir is refused.

SIGTERM: the handler only sets a flag; at the next epoch boundary (an epoch is
one compiled call, so it is our step boundary) the loop state is saved and
:class:`Preempted` is raised; ``experiments.main`` then exits 0. A non-finite
loss, gradient or parameter raises ``FloatingPointError`` naming the epoch; it
is checked before the epoch can be saved or selected as best.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import numpy as np
from tqdm import tqdm

from awrsr_jax import checkpoint, train
from awrsr_jax import data as data_lib
from awrsr_jax.config import Config, validate
from awrsr_jax.ops.metrics import metric_names

DATASETS = ("synthetic", "file")
IDENTITY = ("config", "dataset", "data_sha256", "seeds", "sweep")


class Preempted(BaseException):  # noqa: N818 (an interruption, not an error)
    """Raised by :func:`run` after SIGTERM, once the checkpoint is saved.

    A ``BaseException`` like ``KeyboardInterrupt``, so that code catching
    ``Exception`` for failed trials (a grid) does not swallow a shutdown.
    """

    def __init__(self, epoch: int, workdir: str):
        super().__init__(
            f"stopped by SIGTERM after epoch {epoch - 1}; checkpoint saved in "
            f"{workdir}; run the same command again to resume"
        )
        self.epoch = epoch


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


def check_inputs(dataset: str, data_file: str | None) -> None:
    """Flag checks that need no data: run before anything is loaded or compiled."""
    if dataset not in DATASETS:
        raise ValueError(f"--dataset={dataset!r}: choose from {DATASETS}")
    if dataset == "file":
        if not data_file:
            raise ValueError("--data_file: required with --dataset=file")
        if not os.path.isfile(data_file):
            raise ValueError(f"--data_file={data_file}: cannot read (no such file)")


def load_sequences(dataset: str, data_file: str | None, data_format: str = "auto"):
    """``{user: items}`` for ``--dataset`` (``synthetic`` or ``file``)."""
    check_inputs(dataset, data_file)
    if dataset == "synthetic":
        return data_lib.generate()
    return data_lib.read_sequences(data_file, data_format)


def output_path(workdir: str, name: str) -> str:
    """``workdir/name`` for a file this run writes; refuses escapes and symlinks."""
    if not name or os.path.isabs(name) or name in (".", "..") or "/" in name:
        raise ValueError(f"refusing output name {name!r}: must be a plain file name")
    if "\\" in name or "\0" in name:
        raise ValueError(f"refusing output name {name!r}")
    path = os.path.join(workdir, name)
    if os.path.islink(path):
        raise ValueError(f"refusing to write through the symlink {path}")
    return path


def write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _write_lines(path: str, records) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, path)


def _save_npy(path: str, arr) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.save(f, np.asarray(arr), allow_pickle=False)
    os.replace(tmp, path)


def read_ranks(workdir: str) -> np.ndarray:
    """``test_ranks.npy`` of a finished run (never unpickles)."""
    return np.load(os.path.join(workdir, "test_ranks.npy"), allow_pickle=False)


def check_same_run(old: dict, new: dict, where: str) -> None:
    """Refuses to continue ``old`` (a saved identity) with a different ``new``."""
    diffs = []
    for key in IDENTITY:
        a, b = old.get(key), new.get(key)
        if key == "config" and isinstance(a, dict):
            diffs += [
                f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
                for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)
            ]
        elif a != b:
            diffs.append(f"{key}: {str(a)[:40]!r} -> {str(b)[:40]!r}")
    if diffs:
        raise ValueError(
            f"{where} belongs to a different run ({'; '.join(diffs[:4])}); "
            "use a new --workdir or the original flags"
        )


class _TermFlag:
    """SIGTERM sets ``requested``; the previous handler comes back on exit."""

    def __init__(self):
        self.requested, self._old = False, None

    def _handle(self, signum, frame):
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


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
    sequences: dict | None = None,
    seeds=None,
    sweep: dict | None = None,
    quiet: bool = False,
    checkpoint_every: int = 1,
    keep_checkpoints: int = 2,
    mesh=None,
    max_minutes: float | None = None,
) -> dict:
    """Trains ``cfg`` (resuming from ``workdir`` if it holds this run); returns
    the results. ``sequences`` passes data in memory (``dataset`` names it).
    ``mesh`` (:func:`awrsr_jax.parallel.mesh_for`) goes to :func:`train.fit`;
    it is not part of the run's identity, so a run may resume on another mesh.
    ``max_minutes`` ends training after the first epoch that finishes past it
    (checkpointed): the results are those of the best validation epoch so far,
    marked ``"stopped": "max_minutes"``, and the same call resumes training.

    Raises ``ValueError`` for bad flags, data or a foreign workdir,
    ``FloatingPointError`` on divergence and :class:`Preempted` after SIGTERM.
    """
    with _TermFlag() as term:
        validate(cfg)
        if checkpoint_every < 1:
            raise ValueError(f"--checkpoint_every={checkpoint_every}: must be >= 1")
        if keep_checkpoints < 1:
            raise ValueError(f"--keep_checkpoints={keep_checkpoints}: must be >= 1")
        if sequences is None:
            check_inputs(dataset, data_file)
        os.makedirs(workdir, exist_ok=True)
        paths = {
            n: output_path(workdir, n)
            for n in (
                "config.json",
                "metrics.jsonl",
                "results.json",
                "test_ranks.npy",
                "checkpoints",
                "checkpoints-unreadable",
            )
        }
        if sequences is None:
            sequences = load_sequences(dataset, data_file, data_format)
        data, _ = data_lib.build(sequences, cfg.max_len)
        identity = {
            "config": json.loads(cfg.to_json()),
            "dataset": dataset,
            "data_sha256": data_lib.fingerprint(sequences),
            "seeds": train.members_of(cfg, seeds, sweep),
            "sweep": sweep or {},
        }
        meta = identity | {
            "data_file": os.path.abspath(data_file) if data_file else None,
            "num_items": data.num_items,
            "code_version": checkpoint.code_version(),
        }
        if os.path.exists(paths["config.json"]):
            try:
                with open(paths["config.json"]) as f:
                    old = json.load(f)
            except (OSError, ValueError) as e:
                raise ValueError(f"{paths['config.json']}: unreadable ({e})") from None
            check_same_run(old, identity, workdir)
        store = checkpoint.Store(paths["checkpoints"], keep=keep_checkpoints)
        try:
            deadline = (
                None if max_minutes is None else time.monotonic() + 60 * max_minutes
            )
            res, stopped = _train(
                cfg, data, meta, store, paths, term, checkpoint_every, quiet, mesh,
                deadline,
            )  # fmt: skip
        finally:
            store.close()
    protocol = protocol_text(cfg, data.num_items)
    single = len(res.test) == 1
    results = {
        "protocol": protocol,
        "valid": res.valid[0] if single else res.valid,
        "test": res.test[0] if single else res.test,
        "best_epoch": res.best_epoch[0] if single else res.best_epoch,
        "epochs_run": res.epochs_run,
        "seconds_per_epoch": res.seconds_per_epoch,
    }
    if stopped:
        results["stopped"] = "max_minutes"
    _save_npy(paths["test_ranks.npy"], res.test_ranks)
    write_json(paths["results.json"], results)
    if not quiet:
        print(f"\n{cfg.backbone} mech={cfg.mech} | protocol: {protocol}")
        print(results_table(res))
        if stopped:
            print(f"stopped after --max_minutes={max_minutes}; run again to go on")
        print(
            f"best epoch {res.best_epoch}, {res.epochs_run} epochs run, "
            f"{res.seconds_per_epoch:.3f} s/epoch; files in {workdir}"
        )
    return results


def _train(cfg, data, meta, store, paths, term, every, quiet, mesh, deadline):
    """Restores or starts the loop, trains with checkpoints; returns the
    FitResult and whether the ``deadline`` (``time.monotonic``) ended it."""
    stopped = False
    log = sys.stderr
    loop, history = None, []
    if store.latest() is not None:
        t0 = time.perf_counter()
        template = train.LoopState.template(cfg, data.num_items, meta["seeds"])
        loop, saved = store.restore(template)
        check_same_run(saved, meta, store.directory)
        if saved.get("code_version") != meta["code_version"]:
            print(
                f"warning: resuming a checkpoint of code {saved.get('code_version')} "
                f"with {meta['code_version']}; results may differ",
                file=log,
            )
        history = list(saved["history"])
        if not quiet:
            print(
                f"resumed at epoch {loop.epoch} from {store.directory} "
                f"({time.perf_counter() - t0:.2f} s)",
                file=log,
            )
    write_json(paths["config.json"], meta)
    _write_lines(paths["metrics.jsonl"], history)
    if not quiet:
        print(
            f"{meta['dataset']}: {data.num_items} items, "
            f"{data.num_train} training rows, {data.num_eval} evaluated users",
            file=log,
        )
    bar = tqdm(
        total=cfg.epochs,
        initial=loop.epoch if loop else 0,
        desc="epochs",
        disable=quiet,
        file=log,
    )
    with open(paths["metrics.jsonl"], "a") as mfile:

        def on_epoch(rec):
            history.append(rec)
            mfile.write(json.dumps(rec) + "\n")
            mfile.flush()
            if rec["member"] == 0:
                bar.update(1)
                post = {"loss": f"{rec['loss']:.4f}"}
                if "valid" in rec:
                    post["valid NDCG@5"] = f"{rec['valid'][train.SELECT]:.4f}"
                bar.set_postfix(post)

        def after_epoch(lp):
            nonlocal stopped
            done = lp.epoch >= cfg.epochs or not lp.active.any()
            stopped = not done and deadline is not None and time.monotonic() > deadline
            if done or stopped or term.requested or lp.epoch % every == 0:
                store.save(lp, meta | {"history": history})
            if term.requested and not done:
                raise Preempted(lp.epoch, os.path.dirname(store.directory))
            return stopped

        try:
            res = train.fit(
                cfg,
                data,
                seeds=meta["seeds"],
                sweep=meta["sweep"] or None,
                loop=loop or train.LoopState.start(cfg, data.num_items, meta["seeds"]),
                on_epoch=on_epoch,
                after_epoch=after_epoch,
                mesh=mesh,
            )
        except FloatingPointError as e:
            last = store.latest()
            last = "none" if last is None else f"after epoch {last - 1}"
            raise FloatingPointError(
                f"{e}; not saved (last good checkpoint: {last}, in {store.directory})"
            ) from None
        finally:
            bar.close()
    return res, stopped
