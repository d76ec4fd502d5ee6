"""The composable API refuses misuse in words: argument names and shapes.

Every case here used to end in a TypeError, a KeyError, a raw shape error from
deep inside jnp, or (worse) a silent wrong answer.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from awrsr_jax.models.flax_attention import refined_attention_fn
from awrsr_jax.ops import attention as att
from awrsr_jax.ops import refine

B, H, L, D = 2, 2, 6, 4


def _scores(n=L):
    return jax.random.normal(jax.random.key(0), (B, H, n, n))


def _w(mech, m=L, lead=()):
    return {k: jnp.eye(m) + jnp.zeros(lead + (m, m)) for k in refine.param_names(mech)}


def _logits(scores=None, **kw):
    scores = _scores() if scores is None else scores
    n = scores.shape[-1]
    kw.setdefault("mask", att.causal_mask(n))
    kw.setdefault("mech", "simp")
    return refine.refined_logits(scores, d_head=D, **kw)


# --- refine.refined_logits / attention_weights --------------------------------


def test_params_none():
    with pytest.raises(ValueError, match=r"mech='value' needs params=.*W_RV"):
        _logits(mech="value", params=None)


def test_matrices_of_another_mechanism():
    with pytest.raises(ValueError, match=r"W_RQ, W_RK.*got \{W_Sigma, W_mu\}.*stoc"):
        _logits(mech="simp", params=_w("stoc"))
    # Extra matrices too: value's three for simp is a mix-up, not a superset.
    with pytest.raises(ValueError, match=r"exactly .*value, value_literal"):
        _logits(mech="simp", params=_w("value"))
    with pytest.raises(ValueError, match="mech='none' learns no matrices"):
        _logits(mech="none", params=_w("simp"))


def test_matrices_smaller_than_the_input():
    with pytest.raises(ValueError, match=r"4 x 4 .*\(2, 2, 6, 6\).*m >= n"):
        _logits(params=_w("simp", 4))


def test_matrices_not_square_or_of_mixed_sizes():
    w = _w("simp")
    with pytest.raises(ValueError, match=r"params\['W_RK'\] has shape \(6, 7\)"):
        _logits(params=dict(w, W_RK=jnp.zeros((L, L + 1))))
    with pytest.raises(ValueError, match="differ in size"):
        _logits(params=dict(w, W_RK=jnp.zeros((L + 1, L + 1))))


def test_per_head_matrices_of_the_wrong_head_count():
    with pytest.raises(ValueError, match=r"leading axes \(3,\).*\(2, 2\)"):
        _logits(params=_w("simp", lead=(3,)))


def test_queries_and_keys_of_different_lengths_are_refused_in_words():
    s = jnp.zeros((B, H, 3, L))
    mask = jnp.ones((3, L), bool)
    with pytest.raises(ValueError, match=r"self-attention.*3 queries, 6 keys"):
        _logits(s, mask=mask, params=_w("simp"))
    # Without refinement, cross-attention scores pass through.
    assert _logits(s, mask=mask, mech="none").shape == s.shape


def test_shorter_input_needs_the_padding_side():
    with pytest.raises(ValueError, match=r"n=4 .*8 x 8: pass padding='left'"):
        _logits(_scores(4), params=_w("simp", 8))
    with pytest.raises(ValueError, match="padding='top'"):
        _logits(params=_w("simp"), padding="top")


def test_mask_missing_or_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"mask=None.*\(2, 2, 6, 6\)"):
        _logits(mask=None, params=_w("simp"))
    with pytest.raises(ValueError, match=r"mask of shape \(5, 5\).*\(2, 2, 6, 6\)"):
        _logits(mask=att.causal_mask(5), params=_w("simp"))
    with pytest.raises(ValueError, match="mask=None"):
        refine.attention_weights(_scores(), mask=None, mech="none", d_head=D)


def test_unknown_mechanism_names_the_argument():
    with pytest.raises(ValueError, match=r"mech='nope'.*'none', 'simp'"):
        _logits(mech="nope")


# --- attention.dot_product_scores ---------------------------------------------


def _qk(shape):
    return jax.random.normal(jax.random.key(1), shape)


def test_heads_first_input_to_dot_product_scores():
    # [B, H, Q, D] and [B, H, K, D] with Q != K: the "heads" axes disagree.
    with pytest.raises(ValueError, match=r"\[B, L, H, D\].*jnp.swapaxes"):
        att.dot_product_scores(_qk((B, H, 3, D)), _qk((B, H, L, D)))
    # Self-attention: only num_heads can tell [B, H, L, D] from [B, L, H, D].
    x = _qk((B, H, L, D))
    with pytest.raises(ValueError, match=r"axis 2 is 6, not num_heads=2"):
        att.dot_product_scores(x, x, num_heads=H)
    y = jnp.swapaxes(x, 1, 2)
    assert att.dot_product_scores(y, y, num_heads=H).shape == (B, H, L, L)


def test_dot_product_scores_wrong_rank_or_sizes():
    with pytest.raises(ValueError, match=r"q has shape \(6, 2, 4\); expected"):
        att.dot_product_scores(_qk((L, H, D)), _qk((L, H, D)))
    with pytest.raises(ValueError, match="head dimension D"):
        att.dot_product_scores(_qk((B, L, H, D)), _qk((B, L, H, D + 1)))


# --- models.flax_attention.refined_attention_fn -------------------------------


def _mha(fn):
    return nn.MultiHeadDotProductAttention(num_heads=H, qkv_features=8, attention_fn=fn)


def test_per_head_with_params_is_refused():
    with pytest.raises(ValueError, match=r"per_head=True .*\[H, m, m\]"):
        refined_attention_fn("simp", params=_w("simp"), per_head=True)
    with pytest.raises(ValueError, match="max_len applies"):
        refined_attention_fn("simp", params=_w("simp"), max_len=8)


def test_stoc_on_dot_product_attention_is_refused():
    with pytest.raises(ValueError, match=r"'stoc' needs Gaussian"):
        refined_attention_fn("stoc")


def test_flax_mask_none_is_refused():
    x = jnp.ones((B, L, 8))
    attn = _mha(refined_attention_fn("simp", params=_w("simp")))
    with pytest.raises(ValueError, match="needs a mask"):
        attn.init(jax.random.key(0), x)


def test_flax_queries_and_keys_of_different_lengths():
    q, kv = jnp.ones((B, 3, 8)), jnp.ones((B, L, 8))
    attn = _mha(refined_attention_fn("simp", params=_w("simp")))
    with pytest.raises(ValueError, match="3 queries, 6 keys"):
        attn.init(jax.random.key(0), q, kv, mask=jnp.ones((B, 1, 3, L)))


def test_flax_wrong_matrix_size():
    x = jnp.ones((B, L, 8))
    attn = _mha(refined_attention_fn("value", params=_w("value", 4)))
    with pytest.raises(ValueError, match=r"4 x 4 .*m >= n"):
        attn.init(jax.random.key(0), x, mask=att.causal_mask(L))
