"""Refinements against naive per-row loops, and their algebraic corner cases."""

from __future__ import annotations

import math
import warnings

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


def _mask(kind):
    """Position 0 pads; ``causal`` adds the causal mask, ``bidirectional`` not."""
    valid = np.arange(N) > 0
    mask = valid[:, None] & valid[None, :]
    return mask & np.tril(np.ones((N, N), bool)) if kind == "causal" else mask


@pytest.mark.parametrize("kind", ["causal", "bidirectional"])
@pytest.mark.parametrize("mech", ["simp", "value", "add", "stoc"])
def test_refinement_matches_naive_loops(mech, kind):
    # The naive value masks its inner attention with the same mask: causal in
    # one case, padding only (every real row) in the other.
    rng = np.random.default_rng(0)
    a = rng.normal(size=(N, N))
    mask = _mask(kind)
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


def test_registry_records():
    assert list(refine.MECHANISMS) == [
        "none", "simp", "value", "add", "stoc", "value_literal",
    ]  # fmt: skip
    for name, m in refine.MECHANISMS.items():
        assert m.name == name and (m.fn is None) == (name == "none")
        assert (m.param_names == ()) == (m.fn is None)
        assert refine.param_names(name) == m.param_names
    # A matrix name means the same everywhere: trim_params cuts by name alone.
    for m1 in refine.MECHANISMS.values():
        for m2 in refine.MECHANISMS.values():
            for k in set(m1.param_names) & set(m2.param_names):
                assert (k in m1.key_columns) == (k in m2.key_columns)
    assert [k for k, m in refine.MECHANISMS.items() if m.leaks] == ["value_literal"]
    assert [k for k, m in refine.MECHANISMS.items() if m.gaussian] == ["stoc"]
    with pytest.raises(ValueError, match="key_columns"):
        refine.Mechanism("x", refine.simp, ("W_RQ",), frozenset({"W_RV"}))


def _params(mech, m, rng):
    return {
        k: jnp.asarray(rng.normal(size=(m, m)) * 0.5, jnp.float32)
        for k in refine.param_names(mech)
    }


def _weights(mech, a, mask, w, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # value_literal warns
        return refine.attention_weights(
            a, mask=mask, mech=mech, params=w, d_head=D_HEAD, **kw
        )


@pytest.mark.parametrize("refine_input", ["scores", "probs"])
@pytest.mark.parametrize("mech", ["simp", "value", "add", "stoc"])
def test_bidirectional_padding_never_reaches_real_positions(mech, refine_input):
    # Padding-only mask (an encoder): whatever sits in a padded row or column
    # of the scores leaves every real row of P unchanged.
    rng = np.random.default_rng(3)
    valid = np.array([False, False, True, True, True])
    mask = jnp.asarray(valid[:, None] & valid[None, :])
    a = rng.normal(size=(2, N, N))
    w = _params(mech, N, rng)
    p = _weights(mech, jnp.asarray(a, jnp.float32), mask, w, refine_input=refine_input)
    pad = ~(valid[:, None] & valid[None, :])
    a2 = np.where(pad, rng.normal(size=a.shape) * 10, a)
    p2 = _weights(
        mech, jnp.asarray(a2, jnp.float32), mask, w, refine_input=refine_input
    )
    np.testing.assert_allclose(p2[:, valid], p[:, valid], atol=1e-6)
    # Not causal: a later real key changes an earlier real row.
    a3 = a.copy()
    a3[:, 3:, 4] += 1.0
    p3 = _weights(
        mech, jnp.asarray(a3, jnp.float32), mask, w, refine_input=refine_input
    )
    assert not np.allclose(p3[:, 2], p[:, 2], atol=1e-5)


@pytest.mark.parametrize("kind", ["causal", "bidirectional"])
@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("mech", ["simp", "value", "add", "stoc", "value_literal"])
def test_shorter_input_equals_the_padded_full_input(mech, padding, kind):
    # Matrices for m = 8 positions; an input of n = 5 (2 of them padding), and
    # the same sequence padded to 8 on the stated side: the same weights.
    m, n, real = 8, 5, 3
    rng = np.random.default_rng(4)
    w = _params(mech, m, rng)

    def layout(length):
        pos = np.arange(length)
        valid = pos >= length - real if padding == "left" else pos < real
        mask = valid[:, None] & valid[None, :]
        if kind == "causal":
            mask &= np.tril(np.ones((length, length), bool))
        return valid, jnp.asarray(mask)

    scores = rng.normal(size=(3, real, real))
    full = np.zeros((3, m, m), np.float32)
    short = np.zeros((3, n, n), np.float32)
    sl = slice(m - real, m) if padding == "left" else slice(0, real)
    ss = slice(n - real, n) if padding == "left" else slice(0, real)
    full[:, sl, sl] = scores
    short[:, ss, ss] = scores
    (_, mask_m), (_, mask_n) = layout(m), layout(n)
    p_full = _weights(mech, jnp.asarray(full), mask_m, w)
    p_short = _weights(mech, jnp.asarray(short), mask_n, w, padding=padding)
    np.testing.assert_allclose(p_short[:, ss, ss], p_full[:, sl, sl], atol=1e-6)
    # The other side's cut is another model: it must differ.
    other = {"left": "right", "right": "left"}[padding]
    p_other = _weights(mech, jnp.asarray(short), mask_n, w, padding=other)
    assert not np.allclose(p_other[:, ss, ss], p_full[:, sl, sl], atol=1e-4)


def test_trim_params_right_padding_takes_the_leading_block():
    w = {k: jnp.arange(36.0).reshape(6, 6) for k in ("W_RQ", "W_RV")}
    left = refine.trim_params(w, 4)
    right = refine.trim_params(w, 4, padding="right")
    np.testing.assert_array_equal(left["W_RQ"], w["W_RQ"][2:])
    np.testing.assert_array_equal(left["W_RV"], w["W_RV"][2:, 2:])
    np.testing.assert_array_equal(right["W_RQ"], w["W_RQ"][:4])
    np.testing.assert_array_equal(right["W_RV"], w["W_RV"][:4, :4])
    with pytest.raises(ValueError, match="padding='middle'"):
        refine.trim_params(w, 4, padding="middle")
