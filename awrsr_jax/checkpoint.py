"""Checkpoints of the training loop with orbax: the only module that imports orbax.

A checkpoint is one :class:`train.LoopState` plus JSON metadata, saved under
``DIR/<epoch>/`` where ``<epoch>`` is the number of epochs completed:

* ``state`` (``StandardSave``): the device state of every member (params,
  optimizer state, PRNG key), the best-validation params, and the host arrays
  ``best``, ``best_epoch``, ``bad``, ``active``;
* ``meta`` (``JsonSave``): ``epoch``, the per-epoch ``seconds``, the metrics
  ``history`` (the records of ``metrics.jsonl``), the run identity (config,
  dataset hash, seeds, sweep, item count) and the ``code_version``.

Latest and best are kept together by construction: every checkpoint carries the
best params so far, so retention is by recency alone (``keep`` newest steps)
and no ``best_fn`` is used. A ``best_fn`` policy keeps the best-k by metric and
can delete the latest step, which breaks resuming (orbax issue 526).

Trust: orbax writes each step into a temporary folder and renames it when
complete, so a save killed midway is never listed. On top of that a step is
trusted only if its ``commit_success.txt`` markers exist, and a step whose
metadata or arrays fail to read is moved to ``DIR-unreadable/<step>`` (or
``<step>-1``, ``<step>-2``, ...: an earlier quarantined copy is never deleted
or overwritten) with one ``warning:`` line on stderr, and the previous step is
used. (Read-only stores move nothing; they warn and fall back the same way.)
A failed tensorstore read leaves callbacks that fire on orbax's closed event
loop and print "Event loop is closed" tracebacks, and sibling reads of the same
step whose errors asyncio logs as "Task exception was never retrieved"; those,
and only those, are silenced (:func:`_quiet_closed_loop_noise`), so the
warning stays visible.
Saves are synchronous: the epoch function donates the state buffers, so a
background save must not still be reading them. Nothing here uses pickle.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import logging
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

import awrsr_jax
from awrsr_jax import parallel, train

ARRAYS = ("state", "best_params", "best", "best_epoch", "bad", "active")
# Saved only by runs with ``report_patience``. A step without them (a run
# at another patience, continued while ``resume.same_so_far``) restores
# without them, and ``train.fit`` adds them as not reached yet.
RULE_ARRAYS = ("rule_params", "rule_best_epoch", "rule_epoch")


def _names(loop: train.LoopState) -> tuple[str, ...]:
    return ARRAYS + (RULE_ARRAYS if loop.rule_params is not None else ())


_COMMIT = "commit_success.txt"


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model asked for, or none to read."""


class _DropOrbaxUnretrievedTasks(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" records for orbax
    coroutines; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (
            msg.startswith("Task exception was never retrieved") and "orbax" in msg
        )


def _quiet_closed_loop_noise() -> None:
    """Drops two kinds of noise that follow a failed read. Idempotent.

    Orbax reads a step by running coroutines on a fresh event loop and closes
    the loop as soon as the first tensorstore read fails. The reads still in
    flight then complete in tensorstore's threads, their done-callbacks call
    ``loop.call_soon_threadsafe`` on the closed loop, and each raises
    ``RuntimeError("Event loop is closed")`` where nobody can catch it
    (``sys.unraisablehook``: only that error is dropped, everything else goes
    on to the previous hook). And when several reads of the step fail,
    ``asyncio.gather`` raises the first; the others, once collected, are logged
    by the ``asyncio`` logger as "Task exception was never retrieved" (only
    those of orbax coroutines are dropped; how many appear depends on timing).
    Neither carries information: the failure itself is raised to
    :meth:`Store.restore`, which reports it.
    """
    log = logging.getLogger("asyncio")
    if not any(isinstance(f, _DropOrbaxUnretrievedTasks) for f in log.filters):
        log.addFilter(_DropOrbaxUnretrievedTasks())
    previous = sys.unraisablehook
    if getattr(previous, "_drops_closed_loop_noise", False):
        return

    def hook(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        previous(unraisable)

    hook._drops_closed_loop_noise = True
    sys.unraisablehook = hook


def _reason(e: BaseException) -> str:
    """A one-line, bounded description of an exception for a warning."""
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= 200 else text[:197] + "..."


def code_version() -> str:
    """Package version plus a hash of what the package's Python sources do.

    The hash covers each module's syntax tree without docstrings
    (:func:`source_hash`), so editing a docstring, a comment or the layout does
    not make a resumed checkpoint look like it came from other code.
    """
    return f"{awrsr_jax.__version__}+{source_hash(pathlib.Path(awrsr_jax.__file__).parent)}"


@functools.lru_cache(maxsize=8)
def source_hash(root: pathlib.Path) -> str:
    """12 hex digits of SHA-256 over the ``*.py`` files under ``root``: each
    file's relative path and its ``ast.dump`` with docstrings removed (no line
    numbers, so comments and formatting do not count)."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_bytes(), filename=str(path))
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (
                isinstance(node, _DOCUMENTED)
                and body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
        dump = ast.dump(tree, annotate_fields=False)
        h.update(str(path.relative_to(root)).encode() + b"\0" + dump.encode() + b"\0")
    return h.hexdigest()[:12]


_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _flat(tree, prefix=()) -> dict[str, object]:
    """``{"a/b/0": leaf}`` for nested dicts, lists, tuples and namedtuples."""
    if hasattr(tree, "_asdict"):
        tree = tree._asdict()
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return {"/".join(prefix): tree}
    out = {}
    for k, v in items:
        out |= _flat(v, prefix + (str(k),))
    return out


def check_compatible(stored, template) -> None:
    """Raises :class:`CheckpointError` naming the first keys whose presence,
    shape or dtype differ between the stored metadata and ``template``."""
    have, want = _flat(stored), _flat(template)
    problems = [f"{k}: missing from the checkpoint" for k in want if k not in have]
    problems += [
        f"{k}: in the checkpoint, not in the model" for k in have if k not in want
    ]
    for k in want.keys() & have.keys():
        a, b = have[k], want[k]
        sa, sb = tuple(a.shape), tuple(np.shape(b))
        if sa != sb or np.dtype(a.dtype) != np.dtype(b.dtype):
            problems.append(
                f"{k}: checkpoint has {sa} {np.dtype(a.dtype)}, "
                f"model expects {sb} {np.dtype(b.dtype)}"
            )
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(
            "checkpoint does not match the model: "
            + "; ".join(sorted(problems)[:3])
            + more
        )


class Store:
    """Saves and restores :class:`train.LoopState` under ``directory``.

    ``read_only=True`` (for serving) creates and deletes nothing.
    """

    def __init__(self, directory: str, *, keep: int = 2, read_only: bool = False):
        self.directory = os.path.abspath(directory)
        self.read_only = read_only
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(f"{self.directory}: no checkpoints")
        if not read_only:
            if parallel.is_primary():
                self._quarantine(s for s in self._listed() if not self._committed(s))
            parallel.barrier("awrsr-checkpoint-quarantine")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=False,
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,
        )
        # Handlers given up front: item_metadata() of a step this process has
        # not saved needs them.
        handlers = {
            "state": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
        }
        self._mngr = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    def _listed(self) -> list[int]:
        if not os.path.isdir(self.directory):
            return []
        return sorted(int(n) for n in os.listdir(self.directory) if n.isdigit())

    def _committed(self, step: int) -> bool:
        base = os.path.join(self.directory, str(step))
        return all(
            os.path.isfile(os.path.join(base, *sub, _COMMIT))
            for sub in ((), ("state",), ("meta",))
        )

    @property
    def quarantine_dir(self) -> str:
        return f"{self.directory}-unreadable"

    def quarantined(self) -> list[str]:
        """Names under :attr:`quarantine_dir` (``<step>`` or ``<step>-<n>``):
        steps that were moved aside as incomplete or unreadable."""
        if not os.path.isdir(self.quarantine_dir):
            return []
        return sorted(os.listdir(self.quarantine_dir))

    def _quarantine(self, steps, why: str = "is incomplete") -> None:
        """Moves each step to a fresh name under :attr:`quarantine_dir`; never
        deletes or overwrites an earlier copy."""
        for step in list(steps):
            os.makedirs(self.quarantine_dir, exist_ok=True)
            dest, n = os.path.join(self.quarantine_dir, str(step)), 0
            while os.path.lexists(dest):
                n += 1
                dest = os.path.join(self.quarantine_dir, f"{step}-{n}")
            os.rename(os.path.join(self.directory, str(step)), dest)
            print(f"warning: checkpoint {step} {why}; moved to {dest}", file=sys.stderr)

    def _unreadable(self, step: int, e: BaseException) -> None:
        """Reports (and, unless read-only, quarantines) a step that failed to read."""
        why = f"in {self.directory} is unreadable ({_reason(e)})"
        if self.read_only:
            print(
                f"warning: checkpoint {step} {why}; trying an older one",
                file=sys.stderr,
            )
            return
        if parallel.is_primary():
            self._quarantine([step], why)
        parallel.barrier(f"awrsr-checkpoint-unreadable-{step}")
        self._mngr.reload()

    def steps(self) -> list[int]:
        """Trusted (committed) steps, oldest first."""
        return [s for s in self._mngr.all_steps() if self._committed(s)]

    def latest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, loop: train.LoopState, meta: dict) -> None:
        """Saves ``loop`` as step ``loop.epoch``; refuses non-finite params."""
        if loop.epoch in self.steps():
            return
        arrays = {name: getattr(loop, name) for name in _names(loop)}
        ok = train.finite_members({"s": arrays["state"], "b": arrays["best_params"]})
        if not np.all(np.asarray(ok)):
            raise FloatingPointError(
                f"refusing to checkpoint non-finite values at epoch {loop.epoch}"
            )
        meta = dict(meta, epoch=loop.epoch, seconds=list(loop.seconds))
        self._mngr.save(
            loop.epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._mngr.wait_until_finished()

    def read_meta(self, step: int | None = None) -> dict:
        """The JSON metadata of ``step``, or of the newest readable step (an
        unreadable one is reported and quarantined as in :meth:`restore`)."""
        args = ocp.args.Composite(meta=ocp.args.JsonRestore())
        if step is not None:
            return dict(self._mngr.restore(step, args=args)["meta"])
        _quiet_closed_loop_noise()
        errors = []
        for step in reversed(self.steps()):
            try:
                return dict(self._mngr.restore(step, args=args)["meta"])
            except Exception as e:  # unreadable: try an older step
                errors.append(f"step {step}: {_reason(e)}")
                self._unreadable(step, e)
        if errors:
            raise CheckpointError(
                f"{self.directory}: no readable checkpoint ({errors[0]})"
            )
        raise CheckpointError(f"{self.directory}: no checkpoints")

    def restore(self, template: train.LoopState) -> tuple[train.LoopState, dict]:
        """The newest step that restores into ``template``'s shapes, with its meta.

        A model mismatch raises at once; an unreadable step is quarantined
        (unless read-only) and the previous one is tried.
        """
        # Restored as numpy, then put on the device like a fresh init: arrays
        # of the same kind as LoopState.start's keep the compiled epoch valid.
        # Shapes of everything a step may hold: the rule arrays as
        # best_params' and best_epoch's.
        like = {"rule_params": "best_params", "rule_best_epoch": "best_epoch",
                "rule_epoch": "best_epoch"}  # fmt: skip
        shapes = {name: getattr(template, like.get(name, name))
                  for name in ARRAYS + RULE_ARRAYS}  # fmt: skip
        _quiet_closed_loop_noise()
        errors = []
        for step in reversed(self.steps()):
            try:
                stored = self._mngr.item_metadata(step)["state"]
                stored = getattr(stored, "tree", stored)
            except Exception as e:  # unreadable metadata: try an older step
                errors.append(f"step {step}: {_reason(e)}")
                self._unreadable(step, e)
                continue
            names = ARRAYS + (RULE_ARRAYS if "rule_params" in stored else ())
            arrays = jax.tree.map(
                lambda x: np.zeros(x.shape, x.dtype), {k: shapes[k] for k in names}
            )
            check_compatible(stored, arrays)
            try:
                out = self._mngr.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(arrays),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
            except Exception as e:  # truncated or missing files
                errors.append(f"step {step}: {_reason(e)}")
                self._unreadable(step, e)
                continue
            meta = dict(out["meta"])
            wanted = _names(template)  # fit() adds missing rule arrays
            loop = train.LoopState(
                epoch=int(meta["epoch"]),
                seconds=[float(s) for s in meta["seconds"]],
                **{k: jax.tree.map(jnp.asarray, v) if k.endswith("params") or k == "state"
                   else np.asarray(v)
                   for k, v in out["state"].items() if k in wanted},
            )  # fmt: skip
            return loop, meta
        if errors:
            where = "" if self.read_only else f"; moved to {self.quarantine_dir}"
            raise CheckpointError(
                f"{self.directory}: no readable checkpoint ({errors[0]}){where}"
            )
        raise CheckpointError(f"{self.directory}: no checkpoints")

    def close(self) -> None:
        self._mngr.close()


def member_params(params, member: int):
    """One member's params from a tree with a leading member axis."""
    return jax.tree.map(lambda x: x[member], params)
