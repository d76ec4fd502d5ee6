"""Losses against hand-derived values; masked positions never contribute."""

from __future__ import annotations

import math

import jax.numpy as jnp
import pytest

from awrsr_jax.ops import losses


def test_bce_hand_values():
    pos = jnp.asarray([[0.0, 2.0, 5.0]])
    neg = jnp.asarray([[0.0, -1.0, 7.0]])
    where = jnp.asarray([[True, True, False]])

    def sp(x):  # softplus
        return math.log1p(math.exp(x))

    want = ((sp(0) + sp(0)) + (sp(-2.0) + sp(-1.0))) / 2
    assert float(losses.bce(pos, neg, where=where)) == pytest.approx(want, rel=1e-6)


def test_softmax_ce_excludes_padding_item():
    logits = jnp.asarray([[100.0, 1.0, 2.0, 3.0]])  # item 0 must not compete
    want = math.log(math.exp(1) + math.exp(2) + math.exp(3)) - 2.0
    got = losses.softmax_ce(logits, jnp.asarray([2]), where=jnp.asarray([True]))
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_bpr_pvn_hand_values():
    d_pos, d_neg, d_pn = (
        jnp.asarray([1.0, 3.0]),
        jnp.asarray([2.0, 1.0]),
        jnp.asarray([0.5, 4.0]),
    )
    w = 0.1
    bpr = [
        -math.log(1 / (1 + math.exp(-(2.0 - 1.0)))),
        -math.log(1 / (1 + math.exp(2.0))),
    ]
    pvn = [max(0, 1.0 - 0.5), max(0, 3.0 - 4.0)]
    want = sum(b + w * p for b, p in zip(bpr, pvn)) / 2
    got = losses.bpr_pvn(
        d_pos, d_neg, d_pn, where=jnp.asarray([True, True]), pvn_weight=w
    )
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_all_masked_is_zero_not_nan():
    z = jnp.zeros((2, 3))
    assert float(losses.bce(z, z, where=z > 1)) == 0.0
    logits = jnp.zeros((2, 3, 5))
    assert (
        float(losses.softmax_ce(logits, jnp.zeros((2, 3), jnp.int32), where=z > 1))
        == 0.0
    )
