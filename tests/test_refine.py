"""Refinements against naive per-row loops, and their algebraic corner cases."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awrsr_jax.ops import attention as att
from awrsr_jax.ops import refine

N, D_HEAD = 5, 4


def _softmax_rows(x, mask):
    out = np.zeros_like(x)
    for k in range(x.shape[0]):
        idx = [t for t in range(x.shape[1]) if mask[k, t]]
        if not idx:
            continue
        m = max(x[k, t] for t in idx)
        z = sum(math.exp(x[k, t] - m) for t in idx)
        for t in idx:
            out[k, t] = math.exp(x[k, t] - m) / z
    return out


def _matmul(a, b):
    out = np.zeros((a.shape[0], b.shape[1]))
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            out[i, j] = sum(a[i, s] * b[s, j] for s in range(a.shape[1]))
    return out


def naive(mech, a, mask, w):
    """Row-by-row reference of DESIGN.md's equations (float64 loops)."""
    a = np.where(mask, a, 0.0)
    if mech == "stoc":
        mu = _matmul(a, w["W_mu"])
        sg = _matmul(a, w["W_Sigma"])
        sg = np.where(sg > 0, sg, np.expm1(sg)) + 1.0
        b = np.zeros((N, N))
        for k in range(N):
            for t in range(N):
                d2 = sum(
                    (mu[k, j] - mu[t, j]) ** 2
                    + (math.sqrt(sg[k, j]) - math.sqrt(sg[t, j])) ** 2
                    for j in range(N)
                )
                b[k, t] = -d2 / math.sqrt(D_HEAD)
        return _softmax_rows(b, mask)
    r, s = _matmul(a, w["W_RQ"]), _matmul(a, w["W_RK"])
    rs = np.zeros((N, N))
    for k in range(N):
        for t in range(N):
            rs[k, t] = sum(r[k, j] * s[t, j] for j in range(N)) / math.sqrt(D_HEAD)
    if mech == "simp":
        b = rs
    elif mech == "add":
        b = (rs + a) / 2
    elif mech == "value":
        g = _softmax_rows(rs, mask)
        b = _matmul(g, _matmul(a, w["W_RV"]))
    return _softmax_rows(b, mask)


@pytest.mark.parametrize("mech", ["simp", "value", "add", "stoc"])
def test_refinement_matches_naive_loops(mech):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(N, N))
    mask = np.tril(np.ones((N, N), bool))
    mask[:, 0] = False  # a padded first key
    w = {k: rng.normal(size=(N, N)) * 0.5 for k in refine.param_names(mech)}
    got = refine.attention_weights(
        jnp.asarray(a, jnp.float32),
        mask=jnp.asarray(mask),
        mech=mech,
        params={k: jnp.asarray(v, jnp.float32) for k, v in w.items()},
        d_head=D_HEAD,
    )
    want = naive(mech, a, mask, w)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)
    # Rows sum to one where something is allowed; row 0 is fully masked: zeros.
    np.testing.assert_allclose(np.asarray(got).sum(-1)[1:], 1.0, atol=1e-5)
    assert np.all(np.asarray(got)[0] == 0.0)


def test_probs_input_feeds_softmax_probabilities():
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.normal(size=(N, N)), jnp.float32)
    mask = att.causal_mask(N)
    w = {k: jnp.asarray(rng.normal(size=(N, N)), jnp.float32) for k in ("W_RQ", "W_RK")}
    p_in = att.masked_softmax(a, mask)
    via_probs = refine.refined_logits(
        a, mask=mask, mech="simp", params=w, refine_input="probs", d_head=D_HEAD
    )
    direct = refine.simp(p_in, mask=mask, params=w, d_head=D_HEAD)
    np.testing.assert_allclose(via_probs, direct, atol=1e-6)


def test_add_with_zero_matrices_is_half_scores():
    # With W = 0, R S^T = 0 and add gives softmax(A / 2): a hand-derived case.
    a = jnp.asarray([[1.0, 0.0], [2.0, 4.0]])
    mask = att.causal_mask(2)
    w = {"W_RQ": jnp.zeros((2, 2)), "W_RK": jnp.zeros((2, 2))}
    p = refine.attention_weights(a, mask=mask, mech="add", params=w, d_head=1)
    e = math.exp(1.0)  # row 1: softmax([1, 2])
    np.testing.assert_allclose(p, [[1.0, 0.0], [1 / (1 + e), e / (1 + e)]], atol=1e-6)


def test_heads_broadcast_and_vmap():
    rng = np.random.default_rng(2)
    a = jnp.asarray(rng.normal(size=(3, 2, N, N)), jnp.float32)  # [B, H, n, n]
    mask = att.causal_mask(N)
    w = {
        k: jnp.asarray(rng.normal(size=(N, N)), jnp.float32)
        for k in ("W_RQ", "W_RK", "W_RV")
    }
    batched = refine.attention_weights(a, mask=mask, mech="value", params=w, d_head=4)
    one = jax.vmap(
        jax.vmap(
            lambda x: refine.attention_weights(
                x, mask=mask, mech="value", params=w, d_head=4
            )
        )
    )(a)
    np.testing.assert_allclose(batched, one, atol=1e-6)


def test_unknown_mech_and_input_are_refused():
    with pytest.raises(ValueError, match="unknown refinement"):
        refine.param_names("nope")
    with pytest.raises(ValueError, match="refine_input"):
        refine.refined_logits(
            jnp.zeros((2, 2)),
            mask=att.causal_mask(2),
            mech="simp",
            params={},
            refine_input="x",
            d_head=1,
        )
