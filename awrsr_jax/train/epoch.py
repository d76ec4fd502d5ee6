"""One epoch of one member as one compiled call.

The permutation, batches, negatives, dropout keys and (for random targets,
BERT4Rec's cloze masks) target keys are made on the device from keys folded
from (seed, epoch, step), so the data order depends only on the seed and the
host does no per-step work. The backbone's registry record says how a batch
of training sequences becomes inputs and targets.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from awrsr_jax import models, parallel, registry
from awrsr_jax.config import Config
from awrsr_jax.data import sampling
from awrsr_jax.data.dataset import SeqData
from awrsr_jax.train.step import global_norm, loss_fn, optimizer
from awrsr_jax.train.trim import trimmed_loss_and_grad


def train_epoch(
    cfg: Config, state, hp, active, data: SeqData, epoch, *, mesh=None, groups=0
):
    """One epoch of one member; ``active=False`` leaves its state untouched.

    ``groups > 0`` computes each step's gradient on trimmed row groups
    (:func:`awrsr_jax.train.trim.trimmed_loss_and_grad`; same loss and
    gradient, less padding). :func:`awrsr_jax.train.members.compiled` turns it
    on for members run one at a time with no mesh: under ``vmap`` the
    per-member ``lax.switch`` would run every branch.

    Negatives come from the exact bitmask sampler when the ``[U, W]`` history
    bitmask fits (:func:`sampling.bits_fit`), built here once per epoch (a
    scatter of the training histories, a few ms); otherwise from the
    binary-search rejection sampler. ``active`` is applied once after the scan
    (it is constant within an epoch), not per step. With a ``mesh`` that has
    a ``batch`` axis, each step's rows are split over its devices.
    """
    k_epoch = jax.random.fold_in(state["key"], epoch)
    steps, idx, real = _batches(k_epoch, data.num_train, cfg.batch_size)
    tx = optimizer(cfg)
    targets = registry.backbone(cfg.backbone).targets
    model = models.build(cfg, data.num_items)  # its static fields, for targets
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    negatives = _negative_sampler(data)

    def step(carry, xs):
        params, opt_state = carry
        i, rows, w = xs
        rows, w = (
            parallel.constrain_batch(rows, mesh),
            parallel.constrain_batch(w, mesh),
        )
        k_step = jax.random.fold_in(k_epoch, i + 1)
        k_neg, k_drop = jax.random.split(k_step)
        # Its own fold, so the negative and dropout keys stay what they were.
        k_tgt = jax.random.fold_in(k_step, 1)
        seq, pos = targets(data.train_seq[rows], w, k_tgt, model)
        neg = negatives(k_neg, rows, pos.shape)
        if groups:
            loss, grads, _ = trimmed_loss_and_grad(
                params, cfg, data.num_items, hp, seq, pos, neg, k_drop, groups
            )
        else:
            (_, loss), grads = grad_fn(
                params, cfg, data.num_items, hp, seq, pos, neg, k_drop
            )
        updates, opt_state = tx.update(grads, opt_state)
        params = jax.tree.map(lambda p, g: p - hp["lr"] * g, params, updates)
        return (params, opt_state), (loss, global_norm(grads))

    (params, opt_state), (loss, gnorm) = jax.lax.scan(
        step, (state["params"], state["opt_state"]), (jnp.arange(steps), idx, real)
    )
    new_state = _keep_if(active, params, opt_state, state)
    return new_state, {"loss": jnp.mean(loss), "grad_norm": jnp.mean(gnorm)}


def _batches(k_epoch, u: int, bsz: int):
    """``(steps, idx, real)``: the epoch's permutation of the ``u`` training
    users as ``[steps, bsz]`` row indices, padded with row 0, and the mask of
    the real ones."""
    steps = math.ceil(u / bsz)
    perm = jax.random.permutation(jax.random.fold_in(k_epoch, 0), u)
    idx = jnp.pad(perm, (0, steps * bsz - u)).reshape(steps, bsz)
    real = (jnp.arange(steps * bsz) < u).reshape(steps, bsz)
    return steps, idx, real


def _negative_sampler(data: SeqData):
    """``negatives(key, rows, shape)``: items outside each row's training
    history, from the exact bitmask sampler when its bitmask fits (built here,
    once per epoch), else from the rejection sampler."""
    use_bits = sampling.bits_fit(data.num_train, data.num_items)
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

    return negatives


def _keep_if(active, params, opt_state, state) -> dict:
    """The new state where ``active``, else the old one; the key is kept."""

    def keep(new, old):
        return jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)

    return {
        "params": keep(params, state["params"]),
        "opt_state": keep(opt_state, state["opt_state"]),
        "key": state["key"],
    }
