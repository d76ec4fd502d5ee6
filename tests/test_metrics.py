"""Ranking metrics against hand-derived values (ties, history, NaN, vmapped)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from awrsr_jax.evaluate import candidate_mask
from awrsr_jax.ops import metrics


def rank1(scores, target, where=None):
    s = jnp.asarray([scores], jnp.float32)
    w = None if where is None else jnp.asarray([where])
    return int(metrics.target_rank(s, jnp.asarray([target]), where_BxV=w)[0])


def test_rank_counts_strictly_higher_items():
    # item 0 is padding (excluded); item 3 scores 0.7, only item 1 (0.9) beats it.
    where = [False, True, True, True, True]
    assert rank1([9.0, 0.9, 0.1, 0.7, 0.3], 3, where) == 2


@pytest.mark.parametrize("rank", [1, 2, 5, 6, 10])
def test_closed_form_values(rank):
    vals = metrics.rank_metrics(jnp.asarray([rank]))
    assert float(vals["MRR"][0]) == pytest.approx(1.0 / rank)
    for k in metrics.NDCG_KS:
        want = 1.0 / math.log2(rank + 1) if rank <= k else 0.0
        assert float(vals[f"NDCG@{k}"][0]) == pytest.approx(want, abs=1e-6)
    for k in metrics.RECALL_KS:
        assert float(vals[f"Recall@{k}"][0]) == float(rank <= k)
    # Recall@N >= NDCG@N, both non-decreasing in N.
    for k in metrics.NDCG_KS:
        assert float(vals[f"Recall@{k}"][0]) >= float(vals[f"NDCG@{k}"][0])


def test_constant_scores_rank_last_not_first():
    v = 6  # items 1..5
    where = [False] + [True] * 5
    r = rank1([0.0] * v, 2, where)
    assert r == 5
    vals = metrics.rank_metrics(jnp.asarray([r]))
    assert float(vals["Recall@1"][0]) == 0.0
    assert float(vals["NDCG@5"][0]) == pytest.approx(1 / math.log2(6))


def test_ties_count_against_the_model():
    # Target ties with two items and is beaten by one: 1 + 1 + 2 = 4.
    assert rank1([0.0, 0.5, 0.9, 0.5, 0.5, 0.1], 1) == 4


def test_history_removed_with_negative_scores():
    # All scores negative: masking history with 0 (a common bug) would push
    # history items above the target; they must vanish instead.
    scores = [-9.0, -0.1, -0.2, -0.5, -0.3, -0.9]
    hist = jnp.asarray([[1, 2, 0]])  # 0 pads the history row
    where = candidate_mask(hist, 5)
    assert where.tolist() == [[False, False, False, True, True, True]]
    r = int(
        metrics.target_rank(jnp.asarray([scores]), jnp.asarray([3]), where_BxV=where)[0]
    )
    assert r == 2  # only item 4 (-0.3) beats item 3 (-0.5)


def test_target_in_history_still_compared_with_others():
    # A repeated item: the target may also be in the history; its own score counts.
    where = [False, True, False, True]
    assert rank1([0.0, 0.2, 0.5, 0.9], 2, where) == 2


def test_nan_target_ranks_last():
    assert rank1([0.0, float("nan"), 0.2, 0.3], 1, [False, True, True, True]) == 3


def test_batched_equals_rowwise():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(16, 40)).astype(np.float32)
    t = rng.integers(1, 40, size=16)
    batch = np.asarray(metrics.target_rank(jnp.asarray(s), jnp.asarray(t)))
    rows = [1 + int(np.sum(np.delete(s[i], t[i]) >= s[i, t[i]])) for i in range(16)]
    assert batch.tolist() == rows


def test_metric_names_order():
    assert metrics.metric_names()[:2] == ["Recall@1", "Recall@5"]
    assert metrics.metric_names()[-1] == "MRR"
