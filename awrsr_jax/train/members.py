"""Ensembles: M members (seeds, or hyper-parameters that keep shapes) in one
compiled program.

The state pytree has a leading member axis. Members are vmapped, except with
trimmed training (the CPU default), where they run one after another and a
member that has stopped skips its epochs (:func:`compiled`). Per-member
hyper-parameters are the ``HPARAMS`` fields, given in ``hp``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from awrsr_jax import evaluate, models
from awrsr_jax.config import Config
from awrsr_jax.train.epoch import train_epoch
from awrsr_jax.train.step import optimizer
from awrsr_jax.train.trim import trim_rows

HPARAMS = ("lr", "l2", "dropout", "pvn_weight")


def hparams(cfg: Config, members: int = 1, **sweep) -> dict:
    """Per-member hyper-parameters ``{name: float32[M]}``; ``sweep`` gives lists."""
    out = {}
    for name in HPARAMS:
        vals = sweep.get(name, [getattr(cfg, name)] * members)
        if len(vals) != members:
            raise ValueError(f"--{name}: {len(vals)} values for {members} members")
        out[name] = jnp.asarray(vals, jnp.float32)
    return out


def init_member(cfg: Config, num_items: int, seed):
    """Params, optimizer state and the training key of one member."""
    key = jax.random.PRNGKey(seed)
    k_init, k_drop, k_train = jax.random.split(key, 3)
    model = models.build(cfg, num_items)
    seq = jnp.ones((1, cfg.max_len), jnp.int32)
    params = model.init({"params": k_init, "dropout": k_drop}, seq)
    return {"params": params, "opt_state": optimizer(cfg).init(params), "key": k_train}


def init_state(cfg: Config, num_items: int, seeds) -> dict:
    """Stacked member states for ``seeds`` (leading axis M)."""
    return init_fn(cfg, num_items)(jnp.asarray(seeds, jnp.uint32))


@functools.cache
def init_fn(cfg: Config, num_items: int):
    """The jitted, member-vmapped :func:`init_member` (cached: every start of
    one config reuses one compiled init)."""
    return jax.jit(jax.vmap(functools.partial(init_member, cfg, num_items)))


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


@functools.cache
def compiled(cfg: Config, mesh=None):
    """The jitted epoch and evaluation functions of ``cfg``, over a member axis.

    Members are vmapped, except with trimmed training
    (:func:`awrsr_jax.train.trim.trim_rows`, the CPU default), where they run
    one after another, each trimmed, and a member that has stopped skips its
    epochs.

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
    return epoch_fn, eval_fn(cfg.replace(trim_rows=-1), mesh)


@functools.cache
def eval_fn(cfg: Config, mesh=None):
    """Jitted per-user ranks of every member: ``(params, data, split, key)``."""

    def eval_members(params, data, split, key):
        one = functools.partial(evaluate.eval_ranks, cfg, split=split, key=key)
        return over_members(lambda p, d: one(p, d), (0, None))(params, data)

    return jax.jit(eval_members, static_argnums=(2,))


@jax.jit
def select(mask_M, new, old):
    """Member m's leaves from ``new`` where ``mask_M[m]``, else from ``old``."""

    def pick(a, b):
        return jnp.where(mask_M.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, new, old)


@jax.jit
def finite_members(tree):
    """``bool[M]``: every entry of member m's leaves is finite."""
    oks = [
        jnp.all(jnp.isfinite(x).reshape(x.shape[0], -1), axis=1)
        for x in jax.tree.leaves(tree)
    ]
    return functools.reduce(jnp.logical_and, oks)
