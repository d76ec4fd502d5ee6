"""Refinement as an ``attention_fn`` for ``flax.linen.MultiHeadDotProductAttention``.

Two ways to supply the refinement matrices:

* ``params=`` a dict of ``[m, m]`` (or ``[H, m, m]``) arrays that the enclosing
  module created (e.g. with :func:`awrsr_jax.models.common.refine_params`), or
* no ``params``: the matrices are created on the attention module itself, which
  Flax hands to the function only when it is called with ``sow_weights=True``.

Example (``x_BxLxF`` features, ``valid_BxL`` True at real positions)::

    attn = nn.MultiHeadDotProductAttention(
        num_heads=2, attention_fn=refined_attention_fn("value", padding="left"))
    mask = attention.attention_mask(valid_BxL)  # causal & padding, [B, 1, L, L]
    variables = attn.init(key, x_BxLxF, mask=mask, sow_weights=True)
    y_BxLxF = attn.apply(variables, x_BxLxF, mask=mask, sow_weights=True)

The mask is required (Flax reads ``mask=None`` as "attend everywhere", which in
a sequential recommender leaks the targets): causal and padding for a
sequential model, padding only (``attention_mask(valid, causal=False)``) for a
bidirectional encoder. Attention dropout applies to the final weights.
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
    max_len: int | None = None,
    padding: str | None = None,
):
    """An ``attention_fn`` for Flax's ``MultiHeadDotProductAttention`` that
    refines its dot-product attention weights with ``mech``.

    Args:
      mech: a key of :data:`awrsr_jax.ops.refine.MECHANISMS` whose scores are
        dot products (``stoc`` needs Gaussian scores: refused).
      params: the matrices :func:`awrsr_jax.ops.refine.param_names` lists,
        ``[m, m]`` shared by the heads or ``[H, m, m]`` per head, owned by the
        enclosing module. ``None``: created on the attention module, which
        needs ``sow_weights=True`` on every call.
      refine_input: ``"scores"`` or ``"probs"`` (what the refinement attends to).
      per_head: with ``params=None``, create ``[H, m, m]`` matrices (one set
        per head). With ``params=`` their shape decides, so it is refused.
      max_len: with ``params=None``, the size ``m`` of the created matrices;
        default: that of the existing ones, else the input length at ``init``.
      padding: needed when the input is shorter than the matrices: ``"left"``
        (left-padded, as in this project) or ``"right"``; see
        :func:`awrsr_jax.ops.refine.refined_logits`.

    Returns:
      ``attention_fn(query, key, value, *, mask, bias=None, dropout_rng=None,
      dropout_rate=0.0, deterministic=True, module=None)``: ``query``
      ``[B, L, H, D]``, ``key`` ``[B, L, H, D]`` (refinements need as many
      keys as queries; ``"none"`` also takes ``[B, K, H, D]``), ``value``
      ``[B, K, H, Dv]``, ``mask`` boolean or 0/1, broadcastable to
      ``[B, H, L, K]`` (required), ``bias`` added to the scores; the result is
      ``[B, L, H, Dv]``. The weights are sown as ``attention_weights`` in
      ``intermediates`` when Flax passes ``module``.
    """
    rec = refine.mechanism(mech)
    _check_options(rec, params, per_head=per_head, max_len=max_len)

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
        mask = _bool_mask(mask, mech, scores.shape)
        w = params
        if w is None and rec.fn is not None:
            heads = scores.shape[-3]
            w = _module_params(module, mech, query, heads, max_len, per_head)
        p = refine.attention_weights(
            scores,
            mask=mask,
            mech=mech,
            params=w,
            refine_input=refine_input,
            d_head=query.shape[-1],
            padding=padding,
        )
        if module is not None:
            module.sow("intermediates", "attention_weights", p)
        if not deterministic and dropout_rate > 0.0:
            p = att.dropout(p, dropout_rate, dropout_rng)
        return jnp.einsum("...hqk,...khd->...qhd", p.astype(value.dtype), value)

    return attention_fn


def _check_options(rec: refine.Mechanism, params, *, per_head, max_len) -> None:
    """Refuses a Gaussian mechanism, and options that only apply to matrices
    created on the module when ``params=`` is given."""
    if rec.gaussian:
        raise ValueError(
            f"mech={rec.name!r} needs Gaussian (mean, covariance) scores, the "
            "-W2^2 of STOSA's attention; refined_attention_fn computes dot-product "
            "scores. Use awrsr_jax.models.stosa or refine.refined_logits on "
            "attention.w2_scores"
        )
    if params is not None and per_head:
        raise ValueError(
            "per_head=True applies to matrices created on the module (params=None); "
            "with params=, pass [H, m, m] matrices for one set per head"
        )
    if params is not None and max_len is not None:
        raise ValueError(
            "max_len applies to matrices created on the module (params=None); "
            "with params=, their shape [..., m, m] gives m"
        )


def _bool_mask(mask, mech: str, scores_shape):
    """``mask`` as booleans; Flax's ``mask=None`` (attend everywhere) refused."""
    if mask is None:
        raise ValueError(
            f"refined_attention_fn({mech!r}) needs a mask (Flax's mask=None "
            "means no mask at all): pass mask=attention.attention_mask(valid_BxL)"
            " (causal & padding), attention_mask(valid_BxL, causal=False) "
            "(bidirectional), or jnp.ones((B, 1, L, L), bool) for none; "
            f"scores are {scores_shape} [B, H, L, K]"
        )
    return jnp.asarray(mask).astype(bool)


def _module_params(module, mech: str, query, heads: int, max_len, per_head: bool):
    """The refinement matrices on the attention ``module``, created at ``init``."""
    if module is None:
        raise ValueError(
            "refined_attention_fn without params= needs the attention module: "
            "call MultiHeadDotProductAttention with sow_weights=True"
        )
    m = _size(module, mech, query, max_len)
    return refine_params(module, mech, m, heads, per_head)


def _size(module, mech: str, query, max_len: int | None) -> int:
    """``m`` of the matrices on ``module``: ``max_len``, else that of the
    existing matrices (``apply``), else the query length (``init``)."""
    if max_len is not None:
        return max_len
    first = refine.param_names(mech)[0]
    if module.has_variable("params", first):
        return module.get_variable("params", first).shape[-1]
    return query.shape[-3]
