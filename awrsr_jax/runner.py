"""The one experiment path: a config trained and evaluated into a workdir.

:func:`run` trains one member, K seeds, or a sweep of shape-sharing configs
(:func:`awrsr_jax.train.fit`) and writes, under ``workdir`` and nowhere else:

* ``config.json``: the run's identity (config, dataset name and hash, seeds,
  sweep) plus the data path, item count and code version;
* ``metrics.jsonl``: one JSON line per member and epoch (loss, grad_norm,
  seconds; ``valid`` metrics and ``eval_seconds`` where validated);
* ``checkpoints/`` (:mod:`awrsr_jax.checkpoint`);
* ``test_ranks.npy``: per-user test ranks, ``int[M, U]``;
* ``attention.npz`` with ``Options(attention=True)``: A and B of every layer
  for one test user, member 0 (:func:`awrsr_jax.analysis.attention_maps`);
* ``results.json``, last: ``status`` (``ok`` or ``failed``), ``valid`` and
  ``test`` metrics (a dict for one member, else a list), ``best_epoch``,
  ``epochs_run``, ``seconds_per_epoch``, ``train_seconds``, the protocol,
  ``seeds``, parameter counts, the device and jax version, and ``stopped``
  when a time limit ended training.

Every command that trains (``experiments.main``, ``grid``, ``reproduce``,
``complexity``, ``bench``) calls :func:`run`, so a reproduce cell or a grid
group is an ordinary workdir that ``experiments.compare`` reads. Files are
written atomically (:mod:`awrsr_jax.files`); a second run in the same
workdir is refused (:class:`awrsr_jax.files.WorkdirLock`).

Resuming: the same call with the same workdir continues from the newest
checkpoint; ``metrics.jsonl`` is rewritten from the history saved in it. A
different config, dataset, seed list or sweep is refused, except a larger
``epochs`` or another patience where continuing gives exactly the new run
(:mod:`awrsr_jax.resume`).
With ``report_patience``, ``results.json`` also holds ``rule``: each member
as a run at that patience would have ended (the same training, cut where that
rule stops it), its test ranks in ``test_ranks_rule.npy``. A workdir that
holds results but no readable checkpoint is never restarted from scratch
unless ``Options(restart=True)``, which first moves the old files to
``replaced-<k>/``.

SIGTERM: the handler only sets a flag; at the next epoch boundary the loop
state is saved and :class:`Preempted` is raised. A non-finite loss, gradient
or parameter writes ``results.json`` with ``status: failed`` and raises
``FloatingPointError`` naming the epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from typing import Any

import jax
import numpy as np

from awrsr_jax import analysis, checkpoint, files, parallel, resume, train
from awrsr_jax.config import Config, validate
from awrsr_jax.datasets import Dataset

RESULT_FILES = ("results.json", "metrics.jsonl", "test_ranks.npy",
                "test_ranks_rule.npy", "attention.npz")  # fmt: skip
PROGRESS = ("bar", "lines", "none")


@dataclasses.dataclass(frozen=True)
class Options:
    """How :func:`run` trains (none of this is part of the run's identity).

    Attributes:
      checkpoint_every: save the loop state every this many epochs (and at the
        end, at a time limit and at SIGTERM).
      keep_checkpoints: newest checkpoints kept (each holds the best params).
      max_minutes: end training after the first epoch that finishes past this
        many minutes (0: after one epoch); results are those of the best
        validation epoch so far,
        marked ``"stopped": "max_minutes"``; the same call goes on from there.
      progress: ``bar`` (tqdm and status lines on stderr), ``lines`` (a line
        every ``progress_every`` epochs) or ``none``.
      mesh: a :func:`awrsr_jax.parallel.mesh_for` mesh, or None (one device).
      attention: also write ``attention.npz``.
      restart: train from epoch 0 in a workdir that holds results but no
        readable checkpoint (the old files are moved to ``replaced-<k>/``).
    """

    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    max_minutes: float | None = None
    progress: str = "bar"
    progress_every: int = 10
    mesh: Any = None
    attention: bool = False
    restart: bool = False
    log: Any = None  # a text stream for progress (default sys.stderr)

    def check(self) -> Options:
        """Raises ``ValueError`` naming the flag of the first bad option."""
        if self.checkpoint_every < 1:
            raise ValueError(
                f"--checkpoint_every={self.checkpoint_every}: must be >= 1"
            )
        if self.keep_checkpoints < 1:
            raise ValueError(
                f"--keep_checkpoints={self.keep_checkpoints}: must be >= 1"
            )
        m = self.max_minutes
        if m is not None and not (math.isfinite(m) and m >= 0):
            raise ValueError(f"--max_minutes={m}: must be a number >= 0")
        if self.progress not in PROGRESS:
            raise ValueError(f"progress={self.progress!r}: one of {PROGRESS}")
        if self.progress_every < 1:
            raise ValueError(f"progress_every={self.progress_every}: must be >= 1")
        return self


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


def preempted_exit(e: Preempted, log=None) -> int:
    """For commands that chain runs (grid, reproduce): prints ``e`` (saved,
    and how to resume) and returns 143, a SIGTERM's exit status, so that a
    script going on to its next step on success stops here."""
    print(e, file=log or sys.stderr)
    return 128 + signal.SIGTERM


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


def run(
    cfg: Config,
    *,
    workdir: str,
    data: Dataset,
    seeds=None,
    sweep: dict | None = None,
    options: Options = Options(),
) -> dict:
    """Trains ``cfg`` on ``data`` into ``workdir`` (resuming if it holds this
    run) and returns what ``results.json`` holds.

    ``seeds`` (default ``[cfg.seed]``, or one per sweep value) are trained as
    one ensemble; ``sweep`` maps :data:`awrsr_jax.train.HPARAMS` names to one
    value per member. Raises ``ValueError`` for bad flags, data or a foreign
    or busy workdir (before anything is written), ``FloatingPointError`` on
    divergence and :class:`Preempted` after SIGTERM.
    """
    validate(cfg)
    options.check()
    seeds = train.members_of(cfg, seeds, sweep)
    built = data.build(cfg.max_len)  # bad data fails here, before any file
    identity = resume.run_identity(cfg, data, seeds, sweep)
    meta = identity | {
        "data_file": data.path,
        "num_items": built.num_items,
        "code_version": checkpoint.code_version(),
    }
    os.makedirs(workdir, exist_ok=True)
    # Several processes share the workdir: process 0 holds the lock and
    # writes the files; every process takes part in the checkpoint saves.
    primary = parallel.is_primary()
    lock = files.WorkdirLock(workdir) if primary else contextlib.nullcontext()
    with _TermFlag() as term, lock:
        path = {
            n: files.output_path(workdir, n) for n in (*RESULT_FILES, "config.json")
        }
        if os.path.exists(path["config.json"]):
            try:
                old = files.read_json(path["config.json"])
            except (OSError, ValueError) as e:
                raise ValueError(f"{path['config.json']}: unreadable ({e})") from None
            resume.check_same_run(
                old, identity, workdir, resume.workdir_history(workdir)
            )
        store = checkpoint.Store(
            files.output_path(workdir, "checkpoints"), keep=options.keep_checkpoints
        )
        try:
            if store.latest() is None:
                _guard_results(
                    workdir, options.restart, store.quarantined(),
                    same_run=os.path.exists(path["config.json"]),
                )  # fmt: skip
                parallel.barrier("awrsr-guard-results")
            res, stopped, history = _train(
                cfg, built, meta, store, workdir, term, options
            )
        except FloatingPointError as e:
            if primary:
                files.write_json(path["results.json"], _failed(seeds, str(e)))
            raise
        finally:
            store.close()
        results = _results(cfg, built, seeds, res, stopped, history)
        if not primary:
            return results
        files.save_npy(path["test_ranks.npy"], res.test_ranks)
        if res.rule is not None:
            files.save_npy(path["test_ranks_rule.npy"], res.rule["test_ranks"])
        if options.attention:
            maps = analysis.attention_maps(cfg, res.best_params, built)
            with files.atomic_open(path["attention.npz"], "wb") as f:
                np.savez(f, **maps)
        files.write_json(path["results.json"], results)
    return results


def _guard_results(
    workdir: str, restart: bool, quarantined: list, same_run: bool = False
) -> None:
    """Refuses to start from epoch 0 over a previous run's results or its
    unreadable checkpoints, unless ``restart``: then moves the results to
    ``replaced-<k>/`` (never deleted; quarantined checkpoints stay where
    they are). ``same_run``: the workdir's ``config.json`` is this run's, so
    a ``metrics.jsonl`` alone is its own log, killed before the first
    checkpoint, and starting over rewrites it."""
    found = [
        n
        for n in RESULT_FILES
        if os.path.exists(p := os.path.join(workdir, n))
        and os.path.getsize(p) > 0
        and not (same_run and n == "metrics.jsonl")
    ]
    if not found and not quarantined:
        return
    if not restart:
        what = ", ".join(found + ["checkpoints-unreadable/"] * bool(quarantined))
        raise ValueError(
            f"{workdir} holds an earlier run ({what}) but no readable checkpoint "
            "to resume from; pass --restart to train again from epoch 0 (old "
            "results are kept in replaced-<k>/), or use a new --workdir"
        )
    if not found or not parallel.is_primary():
        return
    k = 1
    while os.path.exists(dest := os.path.join(workdir, f"replaced-{k}")):
        k += 1
    os.makedirs(dest)
    for n in found:
        os.replace(os.path.join(workdir, n), os.path.join(dest, n))
    print(f"--restart: moved {', '.join(found)} to {dest}", file=sys.stderr)


def _device() -> dict:
    dev = jax.devices()[0]
    # the cores this process may use (macOS has no affinity: all of them)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"device": dev.device_kind, "platform": dev.platform, "jax": jax.__version__,
            "cpus": cpus or os.cpu_count()}  # fmt: skip


def _failed(seeds, error: str) -> dict:
    return {"status": "failed", "error": error, "seeds": seeds} | _device()


def _results(cfg, built, seeds, res: train.FitResult, stopped, history) -> dict:
    one = len(res.test) == 1
    out = {
        "status": "ok",
        "protocol": protocol_text(cfg, built.num_items),
        "seeds": seeds,
        "valid": res.valid[0] if one else res.valid,
        "test": res.test[0] if one else res.test,
        "best_epoch": res.best_epoch[0] if one else res.best_epoch,
        "epochs_run": res.epochs_run,
        "seconds_per_epoch": res.seconds_per_epoch,
        "train_seconds": sum(r["seconds"] for r in history if r["member"] == 0),
        **analysis.count_params(cfg, res.best_params, len(seeds)),
        **_device(),
    }
    if res.rule is not None:  # per member as above; ranks in test_ranks_rule.npy
        out["rule"] = {
            k: v[0] if one and isinstance(v, list) else v
            for k, v in res.rule.items()
            if k != "test_ranks"
        }
    if stopped:
        out["stopped"] = "max_minutes"
    return out


def _restore(cfg, built, meta, store, log):
    """``(loop, history)`` from the newest checkpoint, or ``(None, [])``."""
    if store.latest() is None:
        return None, []
    t0 = time.perf_counter()
    template = train.LoopState.template(cfg, built.num_items, meta["seeds"])
    loop, saved = store.restore(template)
    resume.check_same_run(saved, meta, store.directory, saved["history"])
    if saved.get("code_version") != meta["code_version"]:
        print(
            f"warning: resuming a checkpoint of code {saved.get('code_version')} "
            f"with {meta['code_version']}; results may differ",
            file=log,
        )
    if log is not None:
        print(
            f"resumed at epoch {loop.epoch} from {store.directory} "
            f"({time.perf_counter() - t0:.2f} s)",
            file=log,
        )
    return loop, list(saved["history"])


def _train(cfg, built, meta, store, workdir, term, options: Options):
    """Restores or starts the loop and trains with checkpoints; returns the
    FitResult, whether ``options.max_minutes`` ended it, and the history."""
    log = None if options.progress == "none" else (options.log or sys.stderr)
    loop, history = _restore(cfg, built, meta, store, log)
    mpath = os.path.join(workdir, "metrics.jsonl")
    if parallel.is_primary():
        files.write_json(os.path.join(workdir, "config.json"), meta)
        files.write_lines(mpath, history)
    else:
        mpath = os.devnull
    if log is not None:
        print(
            f"{meta['dataset']}: {built.num_items} items, {built.num_train} "
            f"training rows, {built.num_eval} evaluated users",
            file=log,
        )
    t0 = time.monotonic()
    deadline = None if options.max_minutes is None else t0 + 60 * options.max_minutes
    report = _Progress(cfg, options, log, loop.epoch if loop else 0)
    stopped = False
    with open(mpath, "a") as mfile, report:

        def on_epoch(rec):
            history.append(rec)
            mfile.write(json.dumps(rec) + "\n")
            mfile.flush()
            report.epoch_record(rec)

        def after_epoch(lp):
            nonlocal stopped
            done = lp.epoch >= cfg.epochs or not lp.active.any()
            stopped = not done and deadline is not None and time.monotonic() > deadline
            # Each process has its own clock and signals, and a save is a
            # collective: every decision below is agreed by all processes.
            stopped = parallel.any_process(stopped)
            report.after_epoch(lp)
            saved = done or stopped or lp.epoch % options.checkpoint_every == 0
            if saved:
                store.save(lp, meta | {"history": history})
            # Checked after that save: a SIGTERM landing during it counts here.
            if parallel.any_process(term.requested) and not done:
                if not saved:
                    store.save(lp, meta | {"history": history})
                raise Preempted(lp.epoch, workdir)
            return stopped

        try:
            res = train.fit(
                cfg, built, seeds=meta["seeds"], sweep=meta["sweep"] or None,
                loop=loop or train.LoopState.start(cfg, built.num_items, meta["seeds"]),
                on_epoch=on_epoch, after_epoch=after_epoch, mesh=options.mesh,
            )  # fmt: skip
        except FloatingPointError as e:
            last = store.latest()
            last = "none" if last is None else f"after epoch {last - 1}"
            raise FloatingPointError(
                f"{e}; not saved (last good checkpoint: {last}, in {store.directory})"
            ) from None
    return res, stopped, history


class _Progress:
    """The ``progress`` option: a tqdm bar, a line every N epochs, or nothing
    (tqdm is imported only for the bar: a GPU machine without it trains with
    ``lines``)."""

    def __init__(self, cfg: Config, options: Options, log, start_epoch: int):
        self.mode, self.every, self.log = options.progress, options.progress_every, log
        self.t0 = time.perf_counter()
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.epochs, initial=start_epoch, desc="epochs",
                            file=log)  # fmt: skip

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

    def epoch_record(self, rec: dict) -> None:
        if self.bar is not None and rec["member"] == 0:
            self.bar.update(1)
            post = {"loss": f"{rec['loss']:.4f}"}
            if "valid" in rec:
                post["valid NDCG@5"] = f"{rec['valid'][train.SELECT]:.4f}"
            self.bar.set_postfix(post)

    def after_epoch(self, loop: train.LoopState) -> None:
        if self.mode == "lines" and loop.epoch % self.every == 0:
            best = " ".join(f"{b:.4f}" for b in loop.best)
            print(
                f"  epoch {loop.epoch} ({time.perf_counter() - self.t0:.0f} s, "
                f"{int(loop.active.sum())} training): best valid {train.SELECT} "
                f"per member {best}",
                file=self.log,
            )
