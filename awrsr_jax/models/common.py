"""Pieces both backbones share: refinement parameters and the weight pipeline.

A layer's refinement matrices are ``[n, n]`` (shared by its heads) or
``[H, n, n]`` with ``per_head=True``, ``n`` being the module's ``max_len``. An
input shorter than ``n`` (evaluation trimmed to a user's real items, see
:func:`awrsr_jax.evaluate.eval_ranks`) is left-padded, so it uses the matrices
cut by :func:`awrsr_jax.ops.refine.trim_params` with ``padding="left"``, which
leaves the outputs at its positions those of the left-padded full-length input.
When the ``intermediates`` collection is mutable, the block records the score
matrix ``A`` (masked entries 0) and the refined logits ``B`` of every layer, for
the heatmap figures.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from awrsr_jax.ops import attention as att
from awrsr_jax.ops import refine


def refine_params(module: nn.Module, mech: str, n: int, heads: int, per_head: bool):
    """Creates (or fetches) the matrices of ``mech`` on ``module``.

    Args:
      module: a bound Linen module (inside its ``__call__`` or ``setup``).
      mech: a key of :data:`awrsr_jax.ops.refine.MECHANISMS`.
      n: the matrices' size.
      heads: H, used when ``per_head``.
      per_head: ``[H, n, n]`` matrices (one set per head) instead of ``[n, n]``.

    Returns:
      name -> matrix for :func:`awrsr_jax.ops.refine.param_names` (``{}`` for
      ``"none"``).
    """
    shape = (heads, n, n) if per_head else (n, n)
    return {
        name: module.param(name, refine.init_param, shape)
        for name in refine.param_names(mech)
    }


def refined_weights(module, scores_BxHxLxL, mask, *, mech, refine_input, per_head):
    """Attention weights ``P`` ``[B, H, L, L]`` of one layer, with ``A`` and ``B``
    sown.

    The matrices are ``module.max_len`` square (the input length when that is
    ``None``); a shorter (left-padded) input uses them trimmed to its length.

    Args:
      module: the bound block; reads its ``max_len``, ``hidden`` and ``heads``.
      scores_BxHxLxL: the backbone's scores ``A`` before the softmax.
      mask: boolean, broadcastable to the scores (``[B, 1, L, L]``).
      mech, refine_input: as in :func:`awrsr_jax.ops.refine.refined_logits`.
      per_head: one set of matrices per head.
    """
    length, heads = scores_BxHxLxL.shape[-1], scores_BxHxLxL.shape[1]
    n = getattr(module, "max_len", None) or length
    if length > n:
        raise ValueError(f"input length {length} exceeds max_len {n}")
    mask = jnp.broadcast_to(mask, scores_BxHxLxL.shape)
    b = refine.refined_logits(
        scores_BxHxLxL,
        mask=mask,
        mech=mech,
        params=refine_params(module, mech, n, heads, per_head),
        refine_input=refine_input,
        d_head=module.hidden // module.heads,
        padding="left",
    )
    module.sow("intermediates", "A", jnp.where(mask, scores_BxHxLxL, 0.0))
    module.sow("intermediates", "B", jnp.where(mask, b, 0.0))
    return att.masked_softmax(b, mask)


def query_rows(last: bool, p_BxHxLxL, *per_position):
    """``p`` and the ``[B, L, ...]`` arrays a block reads after its attention
    weights: unchanged, or with ``last`` only the last query row of ``p`` and
    the last position of each. Evaluation reads only the last position, and
    every step after the weights is per position, so the last block need not
    compute the others (the weights themselves need every row: a refinement
    mixes the rows of ``A``)."""
    if not last:
        return (p_BxHxLxL, *per_position)
    return (p_BxHxLxL[:, :, -1:], *(x[:, -1:] for x in per_position))
