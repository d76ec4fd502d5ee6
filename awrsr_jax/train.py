"""Pure train steps, compiled epochs, and the early-stopping loop.

Everything trains as an ensemble of M members (M = 1 for a plain run): the
state pytree has a leading member axis, and the members run in one compiled
program (``jax.vmap``, or one after another with trimmed training: see
:func:`compiled`). Members differ in seed and in the hyper-parameters that keep
shapes (``HPARAMS``), given per member in ``hp``.

An epoch is one jitted call: the permutation, batches, negatives and dropout
keys are made on the device from keys folded from (seed, epoch, step), so the
data order depends only on the seed and the host does no per-step work. The
state buffers are donated. :func:`compiled` also jits the member-vmapped
evaluation of :mod:`awrsr_jax.evaluate` (per-user ranks on the device; metrics
on the host).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from awrsr_jax import evaluate, models, parallel
from awrsr_jax.config import Config
from awrsr_jax.data import dataset, sampling
from awrsr_jax.data.dataset import SeqData

HPARAMS = ("lr", "l2", "dropout", "pvn_weight")
SELECT = "NDCG@5"  # model selection metric on validation


def hparams(cfg: Config, members: int = 1, **sweep) -> dict:
    """Per-member hyper-parameters ``{name: float32[M]}``; ``sweep`` gives lists."""
    out = {}
    for name in HPARAMS:
        vals = sweep.get(name, [getattr(cfg, name)] * members)
        if len(vals) != members:
            raise ValueError(f"--{name}: {len(vals)} values for {members} members")
        out[name] = jnp.asarray(vals, jnp.float32)
    return out


# Adam's beta2 as in each backbone's reference code (SASRec TF 0.98, STOSA torch 0.999).
ADAM_B2 = {"sasrec": 0.98, "stosa": 0.999}


def _optimizer(cfg: Config):
    # The learning rate is applied outside so it can differ per member.
    return optax.scale_by_adam(b1=0.9, b2=ADAM_B2[cfg.backbone], eps=1e-8)


def _global_norm(tree):
    # Written out: optax renamed its helper across the versions we support.
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _model(cfg: Config, num_items: int, hp):
    return models.build(
        cfg, num_items, dropout=hp["dropout"], pvn_weight=hp["pvn_weight"]
    )


def init_member(cfg: Config, num_items: int, seed):
    """Params, optimizer state and the training key of one member."""
    key = jax.random.PRNGKey(seed)
    k_init, k_drop, k_train = jax.random.split(key, 3)
    model = models.build(cfg, num_items)
    seq = jnp.ones((1, cfg.max_len), jnp.int32)
    params = model.init({"params": k_init, "dropout": k_drop}, seq)
    return {"params": params, "opt_state": _optimizer(cfg).init(params), "key": k_train}


def init_state(cfg: Config, num_items: int, seeds) -> dict:
    """Stacked member states for ``seeds`` (leading axis M)."""
    return _init_fn(cfg, num_items)(jnp.asarray(seeds, jnp.uint32))


@functools.cache
def _init_fn(cfg: Config, num_items: int):
    # Cached so that every start of one config reuses one compiled init.
    return jax.jit(jax.vmap(functools.partial(init_member, cfg, num_items)))


def _loss_fn(params, cfg, num_items, hp, seq, pos, neg, key):
    model = _model(cfg, num_items, hp)
    loss = model.apply(
        params, seq, pos, neg, True, rngs={"dropout": key}, method="loss"
    )
    penalty = model.apply(params, method="l2_penalty")
    return loss + hp["l2"] * penalty, loss


def _trimmed_loss_and_grad(params, cfg, num_items, hp, seq, pos, neg, key, groups):
    """:func:`_loss_fn` on one batch with the padding cut: ``(loss, grads,
    penalty)``, the mean loss, the gradient of loss + penalty, and the penalty.

    The batch's rows are sorted by input length and split into ``groups``
    groups; each group runs on its last ``w`` positions only, ``w`` the
    smallest :func:`dataset.bucket_lengths` width that holds its longest row
    (a ``lax.switch``: one compiled shape per width). Each group's mean loss
    is weighted by its share of the batch's targets, so the sum is the batch's
    mean loss and its gradient the full-length gradient: left padding and the
    models' trimmed refinement matrices make the cut exact (the same as for
    evaluation). Only the dropout masks differ (they are drawn per group).
    On short-sequence data (Beauty: mean length 9 at ``max_len`` 100) most
    groups run at width 8 or 16.
    """
    b, n = seq.shape
    lens = jnp.where(jnp.any(pos > 0, 1), jnp.sum(seq > 0, 1), 0)
    order = jnp.argsort(lens)
    size = -(-b // groups)

    def group(x):
        x = jnp.pad(x[order], ((0, groups * size - b),) + ((0, 0),) * (x.ndim - 1))
        return x.reshape((groups, size) + x.shape[1:])

    seq_g, pos_g, neg_g, lens_g = map(group, (seq, pos, neg, lens))
    widths = dataset.bucket_lengths(n)
    which = jnp.searchsorted(jnp.asarray(widths), jnp.max(lens_g, 1), side="left")
    total = jnp.maximum(jnp.sum(pos > 0), 1).astype(jnp.float32)
    model = _model(cfg, num_items, hp)

    def branch(w):
        def loss_of(p, s, ps, ng, k):
            mean = model.apply(
                p, s[:, n - w :], ps[:, n - w :], ng[:, n - w :], True,
                rngs={"dropout": k}, method="loss",
            )  # fmt: skip
            return mean * jnp.sum(ps > 0) / total

        return jax.value_and_grad(loss_of)

    branches = [branch(w) for w in widths]

    def body(acc, xs):
        i, s, ps, ng = xs
        k = jax.random.fold_in(key, i)
        out = jax.lax.switch(which[i], branches, params, s, ps, ng, k)
        return jax.tree.map(jnp.add, acc, out), None

    zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (loss, grads), _ = jax.lax.scan(
        body, zero, (jnp.arange(groups), seq_g, pos_g, neg_g)
    )
    penalty, g_pen = jax.value_and_grad(
        lambda p: hp["l2"] * model.apply(p, method="l2_penalty")
    )(params)
    return loss, jax.tree.map(jnp.add, grads, g_pen), penalty


def train_epoch(
    cfg: Config, state, hp, active, data: SeqData, epoch, *, mesh=None, groups=0
):
    """One epoch of one member; ``active=False`` leaves its state untouched.

    ``groups > 0`` computes each step's gradient on trimmed row groups
    (:func:`_trimmed_loss_and_grad`; same loss and gradient, less padding).
    :func:`compiled` turns it on for members run one at a time with no mesh:
    under ``vmap`` the per-member ``lax.switch`` would run every branch.

    Negatives come from the exact bitmask sampler when the ``[U, W]`` history
    bitmask fits (:func:`sampling.bits_fit`), built here once per epoch (a
    scatter of the training histories, a few ms); otherwise from the
    binary-search rejection sampler. ``active`` is applied once after the scan
    (it is constant within an epoch), not per step. With a ``mesh`` that has
    a ``batch`` axis, each step's rows are split over its devices.
    """
    u, bsz = data.num_train, cfg.batch_size
    steps = math.ceil(u / bsz)
    k_epoch = jax.random.fold_in(state["key"], epoch)
    perm = jax.random.permutation(jax.random.fold_in(k_epoch, 0), u)
    idx = jnp.pad(perm, (0, steps * bsz - u)).reshape(steps, bsz)
    real = (jnp.arange(steps * bsz) < u).reshape(steps, bsz)
    tx = _optimizer(cfg)
    grad_fn = jax.value_and_grad(_loss_fn, has_aux=True)
    use_bits = sampling.bits_fit(u, data.num_items)
    if use_bits:
        bits = sampling.history_bits(
            data.hist_flat, data.hist_start, data.hist_end, data.num_items
        )

    def negatives(key, rows, shape):
        if use_bits:
            return sampling.sample_from_bits(key, bits[rows], shape[1])
        start = jnp.broadcast_to(data.hist_start[rows][:, None], shape)
        end = jnp.broadcast_to(data.hist_end[rows][:, None], shape)
        return sampling.sample_negatives(
            key, data.num_items, data.hist_flat, start, end
        )

    def step(carry, xs):
        params, opt_state = carry
        i, rows, w = xs
        rows, w = (
            parallel.constrain_batch(rows, mesh),
            parallel.constrain_batch(w, mesh),
        )
        k_neg, k_drop = jax.random.split(jax.random.fold_in(k_epoch, i + 1))
        batch = data.train_seq[rows]
        seq = batch[:, :-1]
        # A target counts only where its input holds an item: as in the SASRec
        # code, a user's first item is never a target (its input would be padding).
        pos = batch[:, 1:] * (w[:, None] & (seq > 0))
        neg = negatives(k_neg, rows, pos.shape)
        if groups:
            loss, grads, _ = _trimmed_loss_and_grad(
                params, cfg, data.num_items, hp, seq, pos, neg, k_drop, groups
            )
        else:
            (_, loss), grads = grad_fn(
                params, cfg, data.num_items, hp, seq, pos, neg, k_drop
            )
        updates, opt_state = tx.update(grads, opt_state)
        params = jax.tree.map(lambda p, g: p - hp["lr"] * g, params, updates)
        return (params, opt_state), (loss, _global_norm(grads))

    (params, opt_state), (loss, gnorm) = jax.lax.scan(
        step, (state["params"], state["opt_state"]), (jnp.arange(steps), idx, real)
    )

    def keep(new, old):
        return jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)

    new_state = {
        "params": keep(params, state["params"]),
        "opt_state": keep(opt_state, state["opt_state"]),
        "key": state["key"],
    }
    return new_state, {"loss": jnp.mean(loss), "grad_norm": jnp.mean(gnorm)}


def over_members(fn, in_axes, single=None, sequential=False):
    """``jax.vmap(fn, in_axes)``, except that a single member (leading axis 1)
    calls ``single`` (default ``fn``) unbatched: batched dot products and
    per-member gathers cost ~20-30% of a one-member CPU epoch for nothing.
    ``sequential=True`` runs several members one after another through
    ``single`` (``jax.lax.map``) instead of batching them: no batching cost,
    and ``single`` may branch per member (``lax.switch``/``lax.cond`` really
    skip work there, where under ``vmap`` they run every branch). The choice is
    made at trace time from the static shapes, so every case stays one
    compiled program."""
    vmapped = jax.vmap(fn, in_axes=in_axes)
    single = single or fn

    def call(*args):
        sizes = {
            x.shape[0]
            for a, ax in zip(args, in_axes)
            if ax == 0
            for x in jax.tree.leaves(a)
        }
        if sizes == {1}:
            squeezed = [
                jax.tree.map(lambda x: x[0], a) if ax == 0 else a
                for a, ax in zip(args, in_axes)
            ]
            return jax.tree.map(lambda x: x[None], single(*squeezed))
        if not sequential:
            return vmapped(*args)

        def one(mapped):
            it = iter(mapped)
            return single(*(next(it) if ax == 0 else a for a, ax in zip(args, in_axes)))

        return jax.lax.map(one, [a for a, ax in zip(args, in_axes) if ax == 0])

    return call


TRIM_MAX_FILL = 0.8  # auto trims only where >= 20% of training positions pad


def fill(data: SeqData) -> float:
    """Share of the training input positions that hold an item (not padding)."""
    return float(np.mean(np.asarray(data.train_seq[:, :-1]) > 0))


def trim_rows(cfg: Config, data: SeqData | None = None) -> int:
    """Rows per trimmed training group (0: full batches, members vmapped).

    ``cfg.trim_rows = -1`` (auto) is 16 on the CPU and off on accelerators,
    where its effect has not been measured yet (``experiments.bench
    --trim_rows=16`` does). Given the ``data``, auto is also off when less
    than 20% of the training positions are padding (``fill > TRIM_MAX_FILL``).
    Measured on the quiet CPU: 5.4x faster STOSA Beauty epochs (fill 0.06),
    1.5-2.2x at ML-1M L=200 (fill 0.54), 1.18x at L=100 (0.73), but 1.2x
    slower at L=50 (0.88).
    Trimmed ensembles train their members one after another, not vmapped.
    """
    if cfg.trim_rows >= 0:
        return cfg.trim_rows
    if jax.default_backend() != "cpu":
        return 0
    return 0 if data is not None and fill(data) > TRIM_MAX_FILL else 16


@functools.cache
def compiled(cfg: Config, mesh=None):
    """The jitted epoch and evaluation functions of ``cfg``, over a member axis.

    Members are vmapped, except with trimmed training (:func:`trim_rows`, the
    CPU default), where they run one after another, each trimmed, and a member
    that has stopped skips its epochs.

    ``mesh`` (see :mod:`awrsr_jax.parallel`): a ``batch`` axis splits each
    training batch over its devices; the caller places the inputs
    (``parallel.replicate`` / ``parallel.shard_members``).
    """
    epoch = functools.partial(train_epoch, cfg, mesh=mesh)
    rows = trim_rows(cfg)
    groups = math.ceil(cfg.batch_size / rows) if rows and mesh is None else 0
    trimmed = functools.partial(train_epoch, cfg, groups=groups)

    def one(state, hp, active, data, epoch):
        # Trimmed members run one at a time, so a stopped member skips its epoch.
        idle = {"loss": jnp.float32(0), "grad_norm": jnp.float32(0)}
        return jax.lax.cond(
            active,
            lambda s: trimmed(s, hp, active, data, epoch),
            lambda s: (s, idle),
            state,
        )

    epoch_fn = jax.jit(
        over_members(
            epoch,
            (0, 0, 0, None, None),
            single=one if groups else None,
            sequential=bool(groups),
        ),
        donate_argnums=(0,),
    )

    # Evaluation does not depend on trim_rows: one compiled copy for all values.
    return epoch_fn, _eval_fn(cfg.replace(trim_rows=-1), mesh)


@functools.cache
def _eval_fn(cfg: Config, mesh=None):
    def eval_members(params, data, split, key):
        one = functools.partial(evaluate.eval_ranks, cfg, split=split, key=key)
        return over_members(lambda p, d: one(p, d), (0, None))(params, data)

    return jax.jit(eval_members, static_argnums=(2,))


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

    @classmethod
    def start(cls, cfg: Config, num_items: int, seeds) -> LoopState:
        m = len(seeds)
        state = init_state(cfg, num_items, seeds)
        return cls(
            epoch=0,
            state=state,
            best_params=jax.tree.map(jnp.copy, state["params"]),
            best=np.full(m, -np.inf),
            best_epoch=np.full(m, -1),
            bad=np.zeros(m, np.int64),
            active=np.ones(m, bool),
            seconds=[],
        )

    @classmethod
    def template(cls, cfg: Config, num_items: int, seeds) -> LoopState:
        """Shapes and dtypes only (nothing computed): a target to restore into."""
        state = jax.eval_shape(
            _init_fn(cfg, num_items), jnp.zeros(len(seeds), jnp.uint32)
        )
        m = len(seeds)
        return cls(
            epoch=0,
            state=state,
            best_params=state["params"],
            best=np.full(m, -np.inf),
            best_epoch=np.full(m, -1),
            bad=np.zeros(m, np.int64),
            active=np.ones(m, bool),
            seconds=[],
        )


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
    evaluations is frozen (masked; the program keeps running for the others);
    the loop ends when all are frozen or after ``cfg.epochs``. Test metrics come
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
    hp = hparams(cfg, len(seeds), **(sweep or {}))
    loop = loop or LoopState.start(cfg, data.num_items, seeds)
    if mesh is not None:
        data = parallel.replicate(data, mesh)
        loop.state, loop.best_params, hp = parallel.place_members(
            (loop.state, loop.best_params, hp), mesh
        )
    epoch_fn, eval_fn = compiled(cfg.replace(trim_rows=trim_rows(cfg, data)), mesh)
    eval_key = jax.random.PRNGKey(cfg.seed + 10_000)
    while loop.epoch < cfg.epochs and loop.active.any():
        epoch, was_active = loop.epoch, loop.active.copy()
        t0 = time.perf_counter()
        active = parallel.place_members(jnp.asarray(was_active), mesh)
        loop.state, stats = epoch_fn(loop.state, hp, active, data, epoch)
        stats = jax.device_get(stats)
        seconds = time.perf_counter() - t0
        if was_active.all():  # a stopped member skips its (trimmed) epochs
            loop.seconds.append(seconds)
        _check_finite(epoch, stats, loop.state["params"], was_active)
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
            ranks = np.asarray(eval_fn(loop.state["params"], data, "valid", eval_key))
            for m in np.flatnonzero(was_active):
                records[m]["valid"] = valid = evaluate.summarize(ranks[m])
                if valid[SELECT] > loop.best[m]:
                    loop.best[m], loop.best_epoch[m], loop.bad[m] = (
                        valid[SELECT],
                        epoch,
                        0,
                    )
                else:
                    loop.bad[m] += 1
                    loop.active[m] = loop.bad[m] < cfg.patience
            improved = jnp.asarray(loop.best_epoch == epoch)
            loop.best_params = _select(improved, loop.state["params"], loop.best_params)
        loop.epoch = epoch + 1
        if on_epoch:
            for m in np.flatnonzero(was_active):
                on_epoch(records[m])
        if after_epoch and after_epoch(loop):
            break
    return finish(cfg, data, loop, mesh=mesh)


def _check_finite(epoch: int, stats: dict, params, active: np.ndarray) -> None:
    """Raises ``FloatingPointError`` naming the epoch if an active member's loss,
    gradient norm or parameters are not finite.

    Runs before the epoch is counted, selected as best or handed to
    ``after_epoch``, so no checkpoint ever holds the diverged state. The epoch
    is the step boundary: one epoch is one compiled call.
    """
    checks = {
        "training loss": np.isfinite(stats["loss"]),
        "gradient": np.isfinite(stats["grad_norm"]),
        "parameters": np.asarray(_finite_members(params)),
    }
    found = [
        f"{what} (members {bad.tolist()})"
        for what, ok in checks.items()
        if (bad := np.flatnonzero(~ok & active)).size
    ]
    if found:
        raise FloatingPointError(f"non-finite {', '.join(found)} at epoch {epoch}")


@jax.jit
def _finite_members(tree):
    """``bool[M]``: every entry of member m's leaves is finite."""
    oks = [
        jnp.all(jnp.isfinite(x).reshape(x.shape[0], -1), axis=1)
        for x in jax.tree.leaves(tree)
    ]
    return functools.reduce(jnp.logical_and, oks)


def finish(cfg: Config, data: SeqData, loop: LoopState, *, mesh=None) -> FitResult:
    """Validation and test metrics of each member's best parameters.

    With a ``mesh``, ``data`` and ``loop.best_params`` are already placed on it
    (as :func:`fit` leaves them).
    """
    _, eval_fn = compiled(cfg, mesh)
    eval_key = jax.random.PRNGKey(cfg.seed + 10_000)
    valid_ranks = np.asarray(eval_fn(loop.best_params, data, "valid", eval_key))
    test_ranks = np.asarray(eval_fn(loop.best_params, data, "test", eval_key))
    steady = loop.seconds[1:] or loop.seconds or [float("nan")]
    return FitResult(
        best_epoch=[int(e) for e in loop.best_epoch],
        epochs_run=loop.epoch,
        valid=[evaluate.summarize(r) for r in valid_ranks],
        test=[evaluate.summarize(r) for r in test_ranks],
        test_ranks=test_ranks,
        best_params=loop.best_params,
        seconds_per_epoch=float(np.median(steady)),
    )


@jax.jit
def _select(mask_M, new, old):
    def pick(a, b):
        return jnp.where(mask_M.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, new, old)
