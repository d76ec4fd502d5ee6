"""Pieces both backbones share: refinement parameters and the weight pipeline.

A layer's refinement matrices are ``[n, n]`` (shared by its heads) or
``[H, n, n]`` with ``per_head=True``, ``n`` being the module's ``max_len``. An
input shorter than ``n`` (evaluation trimmed to a user's real items, see
:func:`awrsr_jax.evaluate.eval_ranks`) uses the matrices cut by
:func:`awrsr_jax.ops.refine.trim_params`, which leaves the outputs at its
positions those of the left-padded full-length input. When the ``intermediates`` collection is
mutable, the block records the score matrix ``A`` (masked entries 0) and the
refined logits ``B`` of every layer, for the heatmap figures.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from awrsr_jax.ops import attention as att
from awrsr_jax.ops import refine


def refine_params(module: nn.Module, mech: str, n: int, heads: int, per_head: bool):
    """Creates (or fetches) the ``n x n`` matrices of ``mech`` on ``module``."""
    shape = (heads, n, n) if per_head else (n, n)
    return {
        name: module.param(name, refine.init_param, shape)
        for name in refine.param_names(mech)
    }


def refined_weights(module, scores_BxHxLxL, mask, *, mech, refine_input, per_head):
    """Attention weights ``P`` of one layer, with ``A`` and ``B`` sown.

    The matrices are ``module.max_len`` square (the input length when that is
    ``None``); a shorter input uses them trimmed to its length.
    """
    length, heads = scores_BxHxLxL.shape[-1], scores_BxHxLxL.shape[1]
    n = getattr(module, "max_len", None) or length
    if length > n:
        raise ValueError(f"input length {length} exceeds max_len {n}")
    mask = jnp.broadcast_to(mask, scores_BxHxLxL.shape)
    params = refine_params(module, mech, n, heads, per_head)
    if length < n:
        params = refine.trim_params(params, length)
    b = refine.refined_logits(
        scores_BxHxLxL,
        mask=mask,
        mech=mech,
        params=params,
        refine_input=refine_input,
        d_head=module.hidden // module.heads,
    )
    module.sow("intermediates", "A", jnp.where(mask, scores_BxHxLxL, 0.0))
    module.sow("intermediates", "B", jnp.where(mask, b, 0.0))
    return att.masked_softmax(b, mask)
