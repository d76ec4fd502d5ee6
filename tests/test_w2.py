"""Squared 2-Wasserstein scores, the ELU+1 covariance map and M_stoc.

References are naive double loops over pairs in numpy and hand-derived values.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awrsr_jax.ops import attention as att
from awrsr_jax.ops import refine


def _gaussians(key, shape):
    k1, k2 = jax.random.split(key)
    mu = jax.random.normal(k1, shape)
    sigma = att.elu_plus_one(jax.random.normal(k2, shape))
    return mu, sigma


def _naive_w2(mu1, s1, mu2, s2):
    """``[I, J]`` by a double loop: ||m1-m2||^2 + ||sqrt(s1)-sqrt(s2)||^2."""
    mu1, s1, mu2, s2 = (np.asarray(x, np.float64) for x in (mu1, s1, mu2, s2))
    out = np.zeros((mu1.shape[0], mu2.shape[0]))
    for i in range(mu1.shape[0]):
        for j in range(mu2.shape[0]):
            out[i, j] = np.sum((mu1[i] - mu2[j]) ** 2) + np.sum(
                (np.sqrt(s1[i]) - np.sqrt(s2[j])) ** 2
            )
    return out


def test_hand_value():
    # ||(1,0)-(0,0)||^2 = 1; ||(2,1)-(1,1)||^2 = 1 -> 2.
    d = att.w2_distance_sq(
        jnp.array([[1.0, 0.0]]),
        jnp.array([[4.0, 1.0]]),
        jnp.array([[0.0, 0.0]]),
        jnp.array([[1.0, 1.0]]),
    )
    np.testing.assert_allclose(d, [[2.0]], rtol=1e-6)


def test_matches_naive_double_loop_with_batch_axes():
    mu1, s1 = _gaussians(jax.random.key(0), (2, 5, 7))
    mu2, s2 = _gaussians(jax.random.key(1), (2, 4, 7))
    d = att.w2_distance_sq(mu1, s1, mu2, s2)
    assert d.shape == (2, 5, 4)
    for b in range(2):
        np.testing.assert_allclose(
            d[b], _naive_w2(mu1[b], s1[b], mu2[b], s2[b]), rtol=1e-5, atol=1e-5
        )


def test_symmetric_nonnegative_zero_diagonal():
    mu, s = _gaussians(jax.random.key(2), (6, 8))
    d = np.asarray(att.w2_distance_sq(mu, s, mu, s))
    np.testing.assert_allclose(d, d.T, atol=1e-5)
    np.testing.assert_allclose(np.diag(d), 0.0, atol=1e-5)
    assert (d >= 0).all()
    assert (d[~np.eye(6, dtype=bool)] > 1e-2).all()


@pytest.mark.parametrize("sigma_value", [1.0, 0.0])
def test_gradients_finite_at_equal_inputs(sigma_value):
    # Identical distributions put the distance at 0 (where a sqrt of it would
    # blow up); sigma = 0 is what ELU(x)+1 underflows to for very negative x.
    mu = jnp.ones((3, 4))
    sigma = jnp.full((3, 4), sigma_value)

    def f(mu, sigma):
        return jnp.sum(att.w2_distance_sq(mu, sigma, mu, sigma))

    for g in jax.grad(f, argnums=(0, 1))(mu, sigma):
        assert np.isfinite(np.asarray(g)).all()


def test_w2_scores_per_head_layout():
    b, q, k, h, d = 2, 4, 3, 2, 5
    mq, sq = _gaussians(jax.random.key(3), (b, q, h, d))
    mk, sk = _gaussians(jax.random.key(4), (b, k, h, d))
    s = att.w2_scores(mq, sq, mk, sk)
    assert s.shape == (b, h, q, k)
    for bi in range(b):
        for hi in range(h):
            ref = -_naive_w2(mq[bi, :, hi], sq[bi, :, hi], mk[bi, :, hi], sk[bi, :, hi])
            np.testing.assert_allclose(
                s[bi, hi], ref / math.sqrt(d), rtol=1e-5, atol=1e-5
            )


def test_w2_scores_refuses_other_layouts_in_words():
    mq, sq = _gaussians(jax.random.key(8), (2, 3, 4, 5))  # heads-first [B, H, Q, D]
    mk, sk = _gaussians(jax.random.key(9), (2, 3, 6, 5))
    with pytest.raises(ValueError, match=r"w2_scores: .*\[B, L, H, D\].*swapaxes"):
        att.w2_scores(mq, sq, mk, sk)
    with pytest.raises(ValueError, match=r"axis 2 is 4, not num_heads=3"):
        att.w2_scores(mq, sq, mq, sq, num_heads=3)
    with pytest.raises(ValueError, match=r"'mu_q': \(2, 3, 4, 5\), 'sigma_q'"):
        att.w2_scores(mq, sq[..., :4], mq, sq)
    with pytest.raises(ValueError, match=r"mu_k has shape \(3, 6, 5\)"):
        att.w2_scores(mq, sq, mk[0], sk[0])


def test_elu_plus_one():
    x = jnp.array([-2.0, -0.5, 0.0, 1.5])
    np.testing.assert_allclose(
        att.elu_plus_one(x), [math.exp(-2.0), math.exp(-0.5), 1.0, 2.5], rtol=1e-6
    )
    x = jnp.linspace(-30, 30, 121)
    y = att.elu_plus_one(x)
    # float32 ELU(x)+1 = expm1(x)+1 rounds to exactly 0 below about -17: the
    # reason w2_distance_sq clamps the covariance before its square root.
    assert (y >= 0).all() and (y[x >= -15] > 0).all()
    assert float(att.elu_plus_one(jnp.float32(-30.0))) == 0.0


def test_stoc_matches_naive():
    n, dh = 5, 4
    a = jax.random.normal(jax.random.key(5), (n, n))
    mask = att.causal_mask(n)
    a = jnp.where(mask, a, 0.0)
    w = {
        "W_mu": jax.random.normal(jax.random.key(6), (n, n)),
        "W_Sigma": jax.random.normal(jax.random.key(7), (n, n)),
    }
    b = refine.stoc(a, mask=mask, params=w, d_head=dh)
    a64 = np.asarray(a, np.float64)
    mu = a64 @ np.asarray(w["W_mu"], np.float64)
    z = a64 @ np.asarray(w["W_Sigma"], np.float64)
    sigma = np.where(z > 0, z + 1.0, np.exp(z))
    ref = np.where(np.asarray(mask), -_naive_w2(mu, sigma, mu, sigma) / 2.0, 0.0)
    np.testing.assert_allclose(b, ref, rtol=1e-4, atol=1e-4)
    # Row k of B uses only rows <= k of a: perturbing row n-1 leaves rows < n-1.
    b2 = refine.stoc(a.at[n - 1].add(3.0), mask=mask, params=w, d_head=dh)
    np.testing.assert_allclose(b2[: n - 1], b[: n - 1], atol=1e-6)
    assert not np.allclose(b2[n - 1], b[n - 1])
