"""Refinement as an ``attention_fn`` for ``flax.linen.MultiHeadDotProductAttention``.

Two ways to supply the refinement matrices:

* ``params=`` a dict of ``[n, n]`` (or ``[H, n, n]``) arrays that the enclosing
  module created (e.g. with :func:`awrsr_jax.models.common.refine_params`), or
* no ``params``: the matrices are created on the attention module itself, which
  Flax hands to the function only when it is called with ``sow_weights=True``.

Example::

    attn = nn.MultiHeadDotProductAttention(
        num_heads=2, qkv_features=32,
        attention_fn=refined_attention_fn("value"))
    y = attn(x, x, mask=nn.make_causal_mask(tokens), sow_weights=True)

The mask must be causal for sequential recommendation (the refinements are only
causal under a causal mask). Attention dropout applies to the final weights.
"""

from __future__ import annotations

import jax.numpy as jnp

from awrsr_jax.models.common import refine_params
from awrsr_jax.ops import attention as att
from awrsr_jax.ops import refine


def refined_attention_fn(
    mech: str,
    *,
    params=None,
    refine_input: str = "scores",
    per_head: bool = False,
):
    """Returns ``attention_fn(query, key, value, mask=..., ...)`` for Flax MHA."""
    refine.check_mech(mech)

    def attention_fn(
        query,
        key,
        value,
        bias=None,
        mask=None,
        dropout_rng=None,
        dropout_rate=0.0,
        deterministic=True,
        module=None,
        **unused,
    ):
        del unused  # broadcast_dropout, dtype, precision, ...
        scores = att.dot_product_scores(query, key)
        if bias is not None:
            scores = scores + bias
        n, heads = scores.shape[-1], scores.shape[-3]
        if mask is None:
            mask = att.causal_mask(n)
        mask = jnp.broadcast_to(mask, scores.shape)
        w = params
        if w is None and mech != "none":
            if module is None:
                raise ValueError(
                    "refined_attention_fn without params= needs the attention module: "
                    "call MultiHeadDotProductAttention with sow_weights=True"
                )
            w = refine_params(module, mech, n, heads, per_head)
        p = refine.attention_weights(
            scores,
            mask=mask,
            mech=mech,
            params=w,
            refine_input=refine_input,
            d_head=query.shape[-1],
        )
        if module is not None:
            module.sow("intermediates", "attention_weights", p)
        if not deterministic and dropout_rate > 0.0:
            p = att.dropout(p, dropout_rate, dropout_rng)
        return jnp.einsum("...hqk,...khd->...qhd", p.astype(value.dtype), value)

    return attention_fn
