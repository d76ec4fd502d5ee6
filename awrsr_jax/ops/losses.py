"""Training losses over per-position scores, with a ``where`` mask of targets.

Each loss is a mean over the positions where ``where`` is True; with no such
position it is 0 (never NaN). Scores follow "higher is better"; STOSA passes
distances (lower is better) to :func:`bpr_pvn`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _masked_mean(x, where):
    where = where.astype(x.dtype)
    return jnp.sum(x * where) / jnp.maximum(jnp.sum(where), 1.0)


def bce(pos_logits, neg_logits, *, where):
    """SASRec's loss: ``-log sigmoid(pos) - log(1 - sigmoid(neg))``, masked mean."""
    nll = -jax.nn.log_sigmoid(pos_logits) - jax.nn.log_sigmoid(-neg_logits)
    return _masked_mean(nll, where)


def softmax_ce(logits_xV, targets, *, where, item_mask=None):
    """Full softmax cross-entropy over the catalogue (index 0, padding, excluded).

    ``logits_xV`` is ``[..., V]`` with ``V = num_items + 1``; ``item_mask``
    (``[V]``, default: all but id 0) marks the items that compete.
    """
    v = logits_xV.shape[-1]
    if item_mask is None:
        item_mask = jnp.arange(v) > 0
    x = jnp.where(item_mask, logits_xV.astype(jnp.float32), -1e30)
    lse = jax.nn.logsumexp(x, axis=-1)
    tgt = jnp.take_along_axis(x, targets[..., None], axis=-1)[..., 0]
    return _masked_mean(jnp.where(where, lse - tgt, 0.0), where)


def bpr_pvn(d_pos, d_neg, d_pos_neg, *, where, pvn_weight):
    """STOSA's loss over distances (lower = closer).

    ``-log sigmoid(d_neg - d_pos) + pvn_weight * max(0, d_pos - d_pos_neg)``, where
    ``d_pos_neg`` is the distance between the positive and the negative item.
    """
    bpr = -jax.nn.log_sigmoid(d_neg - d_pos)
    pvn = jnp.maximum(0.0, d_pos - d_pos_neg)
    return _masked_mean(bpr + pvn_weight * pvn, where)
