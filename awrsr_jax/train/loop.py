"""The early-stopping loop over compiled epochs, and its resumable state.

:func:`fit` trains M members (:mod:`awrsr_jax.train.members`) with early
stopping on validation NDCG@5 each; :class:`LoopState` is everything it needs
to continue (what a checkpoint holds); :func:`finish` evaluates each member's
best parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from awrsr_jax import evaluate, parallel
from awrsr_jax.config import Config
from awrsr_jax.data.dataset import SeqData
from awrsr_jax.train import members
from awrsr_jax.train.trim import trim_rows

SELECT = "NDCG@5"  # model selection metric on validation


@dataclasses.dataclass
class LoopState:
    """Everything the early-stopping loop needs to continue: a checkpoint.

    ``state`` and ``best_params`` live on the device (leading member axis); the
    rest are host arrays of length M. ``epoch`` is the next epoch to run.
    """

    epoch: int
    state: dict
    best_params: dict
    best: np.ndarray  # best validation NDCG@5 so far
    best_epoch: np.ndarray
    bad: np.ndarray  # evaluations since the last improvement
    active: np.ndarray
    seconds: list  # wall seconds of each epoch call in which every member trained
    # With ``cfg.report_patience`` (else None): each member's best params, best
    # epoch and epochs run when it first had that many validations without
    # improvement (-1 until then): where a run at that patience would stop.
    rule_params: dict | None = None
    rule_best_epoch: np.ndarray | None = None
    rule_epoch: np.ndarray | None = None

    @classmethod
    def _of(cls, state, best_params, m: int) -> LoopState:
        return cls(
            epoch=0,
            state=state,
            best_params=best_params,
            best=np.full(m, -np.inf),
            best_epoch=np.full(m, -1),
            bad=np.zeros(m, np.int64),
            active=np.ones(m, bool),
            seconds=[],
        )

    def with_rule(self, cfg: Config, copy=jnp.copy) -> LoopState:
        """This state with the ``report_patience`` fields (not yet reached),
        where ``cfg`` asks for them and they are missing."""
        if cfg.report_patience and self.rule_params is None:
            self.rule_params = jax.tree.map(copy, self.best_params)
            self.rule_best_epoch = np.full(self.best.size, -1)
            self.rule_epoch = np.full(self.best.size, -1)
        return self

    @classmethod
    def start(cls, cfg: Config, num_items: int, seeds) -> LoopState:
        state = members.init_state(cfg, num_items, seeds)
        params = jax.tree.map(jnp.copy, state["params"])
        return cls._of(state, params, len(seeds)).with_rule(cfg)

    @classmethod
    def template(cls, cfg: Config, num_items: int, seeds) -> LoopState:
        """Shapes and dtypes only (nothing computed): a target to restore into."""
        state = jax.eval_shape(
            members.init_fn(cfg, num_items), jnp.zeros(len(seeds), jnp.uint32)
        )
        loop = cls._of(state, state["params"], len(seeds))
        return loop.with_rule(cfg, copy=lambda x: x)


@dataclasses.dataclass
class FitResult:
    """Per-member outcome: best epoch, validation and test metrics, and ranks."""

    best_epoch: list[int]
    epochs_run: int
    valid: list[dict[str, float]]
    test: list[dict[str, float]]
    test_ranks: np.ndarray  # [M, Ue]
    best_params: dict
    seconds_per_epoch: float  # median over the epochs after the first in which
    # every member trained: a stopped member would make later epochs cheaper
    # With ``cfg.report_patience``: the same per member as a run at that
    # patience would give (``epochs_run`` a list: members stop apart), and
    # ``test_ranks``; else None.
    rule: dict | None = None


def members_of(cfg: Config, seeds=None, sweep: dict | None = None) -> list[int]:
    """The seeds of an ensemble: given, or ``cfg.seed + m`` for each sweep value."""
    if seeds is not None:
        return [int(s) for s in seeds]
    m = len(next(iter(sweep.values()))) if sweep else 1
    return [cfg.seed + i for i in range(m)]


def fit(
    cfg: Config,
    data: SeqData,
    *,
    seeds=None,
    sweep: dict | None = None,
    loop: LoopState | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    after_epoch: Callable[[LoopState], bool | None] | None = None,
    mesh=None,
) -> FitResult:
    """Trains M members with early stopping on validation NDCG@5 each.

    A member whose validation NDCG@5 has not improved for ``cfg.patience``
    evaluations is frozen (masked; the program keeps running for the others,
    and once at most half of the vmapped members train, only on them: see
    :func:`_rows_to_run`); the loop ends when all are frozen or after
    ``cfg.epochs``. Test metrics come
    from each member's best-validation parameters.

    ``loop`` resumes from a saved :class:`LoopState`. ``on_epoch`` gets one
    JSON-ready record per active member and epoch; ``after_epoch`` sees the loop
    state after every epoch (to checkpoint it) and stops the run by returning
    True.

    ``mesh`` (:func:`parallel.mesh_for`): the data is replicated over it, and
    the member-axis state, ``hp`` and ``active`` are replicated (``batch``
    axis) or split (``members`` axis) by :func:`parallel.place_members`.
    """
    seeds = members_of(cfg, seeds, sweep)
    hp = members.hparams(cfg, len(seeds), **(sweep or {}))
    loop = (loop or LoopState.start(cfg, data.num_items, seeds)).with_rule(cfg)
    if mesh is not None:
        data = parallel.replicate(data, mesh)
        loop.state, loop.best_params, loop.rule_params, hp = parallel.place_members(
            (loop.state, loop.best_params, loop.rule_params, hp), mesh
        )
    run_cfg = cfg.replace(trim_rows=trim_rows(cfg, data))
    epoch_fn, eval_fn = members.compiled(run_cfg, mesh)
    eval_key = jax.random.PRNGKey(cfg.seed + 10_000)
    # Vmapped members stop computing once at most half train (trimmed members
    # run one at a time and skip their stopped epochs already).
    shrink = mesh is None and run_cfg.trim_rows == 0
    while loop.epoch < cfg.epochs and loop.active.any():
        epoch, was_active = loop.epoch, loop.active.copy()
        rows = _rows_to_run(was_active) if shrink else None
        t0 = time.perf_counter()
        stats = _run_epoch(loop, rows, hp, epoch_fn, data, epoch, mesh)
        seconds = time.perf_counter() - t0
        if was_active.all():  # a stopped member skips its (trimmed) epochs
            loop.seconds.append(seconds)
        check_finite(epoch, stats, loop.state["params"], was_active)
        records = [
            {
                "epoch": epoch,
                "member": m,
                "loss": float(stats["loss"][m]),
                "grad_norm": float(stats["grad_norm"][m]),
                "seconds": seconds,
            }
            for m in range(len(seeds))
        ]
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            _validate(cfg, loop, records, was_active, eval_fn, data, eval_key, rows)
        loop.epoch = epoch + 1
        if on_epoch:
            for m in np.flatnonzero(was_active):
                on_epoch(records[m])
        if after_epoch and after_epoch(loop):
            break
    return finish(cfg, data, loop, mesh=mesh)


def _rows_to_run(active: np.ndarray) -> np.ndarray | None:
    """The members an epoch computes: all (``None``) while more than half of
    them train; then the active ones, padded with stopped ones to a power of
    two of at least 2 (a stopped member's state is left as it is), so that a
    run compiles at most log2(M) narrower programs. Members are independent
    and a batched program's width does not change a member's arithmetic
    (``tests/test_train_speed_invariants.py`` checks it bit for bit); one
    member alone would run the unbatched program, which agrees only to
    round-off, hence the width of 2."""
    m, n = active.size, int(active.sum())
    width = max(2, 1 << (n - 1).bit_length())
    if width >= m:
        return None
    order = np.concatenate([np.flatnonzero(active), np.flatnonzero(~active)])
    return np.sort(order[:width])


def _run_epoch(loop, rows, hp, epoch_fn, data, epoch, mesh) -> dict:
    """One epoch of ``loop``'s active members (of ``rows`` only, when given);
    returns per-member host stats ``[M]`` (0 for the members not run)."""
    active = loop.active
    if rows is None:
        state, stats = epoch_fn(
            loop.state, hp, parallel.place_members(jnp.asarray(active), mesh),
            data, epoch,
        )  # fmt: skip
        loop.state = state
        return jax.device_get(stats)
    take = functools.partial(_take, rows=jnp.asarray(rows))
    sub, stats = epoch_fn(
        take(loop.state), take(hp), jnp.asarray(active[rows]), data, epoch
    )
    loop.state = _put(loop.state, sub, jnp.asarray(rows))
    out = {k: np.zeros(active.size, np.float32) for k in stats}
    for k, v in jax.device_get(stats).items():
        out[k][rows] = v
    return out


@jax.jit
def _take(tree, rows):
    return jax.tree.map(lambda x: x[rows], tree)


@jax.jit
def _put(tree, sub, rows):
    return jax.tree.map(lambda x, y: x.at[rows].set(y), tree, sub)


def _validate(cfg, loop, records, was_active, eval_fn, data, eval_key, rows=None):
    """Validation of every member after ``records``' epoch (of ``rows`` only,
    when given): updates the best metric, best parameters, patience counters
    and ``active`` of ``loop``, and adds ``valid`` and ``eval_seconds`` to the
    records of the active members."""
    epoch = records[0]["epoch"]
    t0 = time.perf_counter()
    params = loop.state["params"] if rows is None else _take(loop.state["params"], rows)
    ranks = np.asarray(eval_fn(params, data, "valid", eval_key))
    if rows is not None:
        full = np.zeros((was_active.size, *ranks.shape[1:]), ranks.dtype)
        full[rows] = ranks
        ranks = full
    seconds = time.perf_counter() - t0
    for m in np.flatnonzero(was_active):
        records[m]["valid"] = valid = evaluate.summarize(ranks[m])
        records[m]["eval_seconds"] = seconds
        if valid[SELECT] > loop.best[m]:
            loop.best[m], loop.best_epoch[m], loop.bad[m] = valid[SELECT], epoch, 0
        else:
            loop.bad[m] += 1
            loop.active[m] = loop.bad[m] < cfg.patience
    improved = jnp.asarray(loop.best_epoch == epoch)
    loop.best_params = members.select(improved, loop.state["params"], loop.best_params)
    if cfg.report_patience:
        reached = was_active & (loop.bad == cfg.report_patience) & (loop.rule_epoch < 0)
        if reached.any():
            loop.rule_epoch[reached] = epoch + 1
            loop.rule_best_epoch[reached] = loop.best_epoch[reached]
            loop.rule_params = members.select(
                jnp.asarray(reached), loop.best_params, loop.rule_params
            )


def check_finite(epoch: int, stats: dict, params, active: np.ndarray) -> None:
    """Raises ``FloatingPointError`` naming the epoch if an active member's loss,
    gradient norm or parameters are not finite.

    Runs before the epoch is counted, selected as best or handed to
    ``after_epoch``, so no checkpoint ever holds the diverged state. The epoch
    is the step boundary: one epoch is one compiled call.
    """
    checks = {
        "training loss": np.isfinite(stats["loss"]),
        "gradient": np.isfinite(stats["grad_norm"]),
        "parameters": np.asarray(members.finite_members(params)),
    }
    found = [
        f"{what} (members {bad.tolist()})"
        for what, ok in checks.items()
        if (bad := np.flatnonzero(~ok & active)).size
    ]
    if found:
        raise FloatingPointError(f"non-finite {', '.join(found)} at epoch {epoch}")


def finish(cfg: Config, data: SeqData, loop: LoopState, *, mesh=None) -> FitResult:
    """Validation and test metrics of each member's best parameters.

    With a ``mesh``, ``data`` and ``loop.best_params`` are already placed on it
    (as :func:`fit` leaves them).
    """
    _, eval_fn = members.compiled(cfg, mesh)
    eval_key = jax.random.PRNGKey(cfg.seed + 10_000)

    def ranks(params):
        return [
            np.asarray(eval_fn(params, data, s, eval_key)) for s in ("valid", "test")
        ]

    valid_ranks, test_ranks = ranks(loop.best_params)
    steady = loop.seconds[1:] or loop.seconds or [float("nan")]
    rule = None
    if cfg.report_patience:  # a member that never reached it ends as the run
        reached = loop.rule_epoch >= 0
        params = members.select(
            jnp.asarray(reached), loop.rule_params, loop.best_params
        )
        r_valid, r_test = ranks(params)
        rule = {
            "patience": cfg.report_patience,
            "best_epoch": np.where(
                reached, loop.rule_best_epoch, loop.best_epoch
            ).tolist(),
            "epochs_run": np.where(reached, loop.rule_epoch, loop.epoch).tolist(),
            "valid": [evaluate.summarize(r) for r in r_valid],
            "test": [evaluate.summarize(r) for r in r_test],
            "test_ranks": r_test,
        }
    return FitResult(
        best_epoch=[int(e) for e in loop.best_epoch],
        epochs_run=loop.epoch,
        valid=[evaluate.summarize(r) for r in valid_ranks],
        test=[evaluate.summarize(r) for r in test_ranks],
        test_ranks=test_ranks,
        best_params=loop.best_params,
        seconds_per_epoch=float(np.median(steady)),
        rule=rule,
    )
