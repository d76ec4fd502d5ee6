"""Ranking metrics against hand-derived values (ties, history, NaN, vmapped),
invariants (cutoffs, relabelling) and an independent implementation (trec_eval
through pytrec-eval-terrier, a test-only dependency)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from awrsr_jax import evaluate
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


# Ranks 10/11 and 20/21 straddle the cutoffs N and N+1; 49 is the last of a
# 49-item catalogue. NDCG@N = 1/log2(rank+1) at rank <= N; MRR = 1/rank.
CUTOFF_FIXTURES = {
    10: dict(R10=1, R20=1, N10=0.28906482631788782, N20=0.28906482631788782),
    11: dict(R20=1, N20=0.27894294565112987),
    20: dict(R20=1, N20=0.22767024869695300),
    21: dict(),
    49: dict(),
}


@pytest.mark.parametrize("rank", sorted(CUTOFF_FIXTURES))
def test_cutoffs_at_n_and_n_plus_1_and_the_last_rank(rank):
    """Target put at ``rank`` by its scores among 49 items (padding scored
    highest, masked): the rank and every metric against hand values, NDCG@1
    included (:func:`rank_metrics` takes the cutoffs)."""
    scores = [9.0] + [1.0 - i / 100 for i in range(1, 50)]  # item i ranks i-th
    where = [False] + [True] * 49
    assert rank1(scores, rank, where) == rank
    vals = metrics.rank_metrics(
        jnp.asarray([rank]), recall_ks=(1, 5, 10, 20), ndcg_ks=(1, 5, 10, 20)
    )
    want = CUTOFF_FIXTURES[rank]
    for k in (1, 5, 10, 20):
        assert float(vals[f"Recall@{k}"][0]) == want.get(f"R{k}", 0.0), k
        got = float(vals[f"NDCG@{k}"][0])
        assert got == pytest.approx(want.get(f"N{k}", 0.0), abs=1e-6), k
    assert float(vals["MRR"][0]) == pytest.approx(1.0 / rank, abs=1e-6)


def test_recall_bounds_ndcg_both_grow_with_n_and_agree_at_1():
    """Over random ranks and every cutoff 1..30: NDCG@1 == Recall@1 per user,
    Recall@N >= NDCG@N, and both non-decreasing in N (per user and averaged)."""
    rng = np.random.default_rng(4)
    ranks = np.concatenate([np.arange(1, 32), rng.integers(1, 60, 500)])
    ks = tuple(range(1, 31))
    vals = metrics.rank_metrics(jnp.asarray(ranks), recall_ks=ks, ndcg_ks=ks)
    rec = np.stack([np.asarray(vals[f"Recall@{k}"]) for k in ks])  # [K, B]
    ndcg = np.stack([np.asarray(vals[f"NDCG@{k}"]) for k in ks])
    np.testing.assert_array_equal(ndcg[0], rec[0])
    assert rec[0].sum() == np.sum(ranks == 1) > 0
    assert np.all(rec >= ndcg)
    assert np.all(np.diff(rec, axis=0) >= 0) and np.all(np.diff(ndcg, axis=0) >= 0)
    assert np.all(np.diff(rec.mean(1)) >= 0) and np.all(np.diff(ndcg.mean(1)) >= 0)


def test_relabelling_items_changes_no_rank():
    """Permuting the item ids (score columns, targets and histories together,
    padding id 0 fixed) changes no rank, with many ties, a NaN target and the
    target in its own history; whole catalogue and item chunks of 7 alike."""
    rng = np.random.default_rng(11)
    b, v = 64, 40
    scores = rng.integers(0, 6, (b, v + 1)).astype(np.float32)  # many ties
    scores[3, 5] = np.nan
    tgt = rng.integers(1, v + 1, b)
    tgt[3] = 5
    hist = rng.integers(0, v + 1, (b, 6))  # 0 pads a history row
    hist[0, 0] = tgt[0]
    perm = np.concatenate([[0], 1 + rng.permutation(v)])  # new id of item i
    new_scores = np.empty_like(scores)
    new_scores[:, perm] = scores

    def ranks(s, t, h):
        s, t, h = jnp.asarray(s), jnp.asarray(t), jnp.asarray(h)
        whole = metrics.target_rank(s, t, where_BxV=candidate_mask(h, v))
        chunked = evaluate._ranks_by_item_chunks(lambda ids: s[:, ids], t, h, v, 7)
        np.testing.assert_array_equal(whole, chunked)
        return np.asarray(whole)

    before = ranks(scores, tgt, hist)
    after = ranks(new_scores, perm[tgt], perm[hist])
    np.testing.assert_array_equal(after, before)
    assert len(set(before.tolist())) > 10  # not a degenerate fixture
    for name, val in metrics.rank_metrics(jnp.asarray(before)).items():
        assert np.array_equal(metrics.rank_metrics(jnp.asarray(after))[name], val)


def _trec_eval_values(scores, tgt, hist, num_items):
    """Per-user trec_eval measures. Each user's run holds exactly its
    candidates, built here from the history (items 1..num_items not in
    ``hist``, the target always), so trec_eval ranks the whole candidate list
    like full ranking; no score ties, so its tie order by document name never
    matters; one relevant item, so recall_k = success_k = Recall@k and
    ndcg_cut_k = 1/log2(rank+1) for rank <= k."""
    pytrec_eval = pytest.importorskip("pytrec_eval")
    qrels, run = {}, {}
    for u, (s, t, h, v) in enumerate(zip(scores, tgt, hist, num_items)):
        cand = (set(range(1, v + 1)) - set(h.tolist())) | {t}
        run[f"u{u}"] = {f"i{i}": float(s[i]) for i in cand}
        qrels[f"u{u}"] = {f"i{t}": 1}
    measures = {"ndcg_cut.5,10,20", "recall.1,5,10,20", "success.1,5,10,20"}
    ev = pytrec_eval.RelevanceEvaluator(qrels, measures | {"recip_rank"})
    got = ev.evaluate(run)
    return [got[f"u{u}"] for u in range(len(scores))]


def test_metrics_match_trec_eval_on_200_random_matrices():
    """NDCG@5/10/20, Recall@1/5/10/20 and MRR, per user and averaged per
    matrix, equal trec_eval's ndcg_cut, recall (and success) and recip_rank on
    200 seeded tie-free score matrices of 20 users and 20-80 items, with random
    histories removed on both sides (masked by :func:`candidate_mask` here,
    left out of trec_eval's run). The matrices are stacked into one [4000, 81]
    batch: the items past a matrix's catalogue are masked like history (and
    absent from the run)."""
    pytest.importorskip("pytrec_eval")
    rng = np.random.default_rng(2024)
    mats, b, width = 200, 20, 81
    v = np.repeat(rng.integers(20, width, mats), b)  # catalogue size per user
    scores = rng.normal(size=(mats * b, width)).astype(np.float32)
    tgt = rng.integers(1, v + 1)
    hist = rng.integers(0, v[:, None] + 1, (mats * b, 30))
    hist = hist * (rng.random(hist.shape) < rng.random((mats * b, 1)))  # 0 pads
    hist = np.where(hist == tgt[:, None], 0, hist)  # the target is not history
    where = np.asarray(candidate_mask(jnp.asarray(hist), width - 1))
    where = where & (np.arange(width) <= v[:, None])
    for s, w in zip(scores, where):  # tie-free among the candidates
        assert len(np.unique(s[w])) == w.sum()
    ranks = metrics.target_rank(
        jnp.asarray(scores), jnp.asarray(tgt), where_BxV=jnp.asarray(where)
    )
    assert int(ranks.max()) > 21 and int(ranks.min()) == 1
    ours = {k: np.asarray(x) for k, x in metrics.rank_metrics(ranks).items()}
    ref = _trec_eval_values(scores, tgt, hist, v)
    pairs = [(f"NDCG@{k}", f"ndcg_cut_{k}") for k in metrics.NDCG_KS]
    pairs += [(f"Recall@{k}", f"recall_{k}") for k in metrics.RECALL_KS]
    pairs += [(f"Recall@{k}", f"success_{k}") for k in metrics.RECALL_KS]
    pairs += [("MRR", "recip_rank")]
    worst = 0.0
    means = [evaluate.summarize(r) for r in np.asarray(ranks).reshape(mats, b)]
    for name, trec in pairs:
        theirs = np.array([r[trec] for r in ref])
        worst = max(worst, float(np.max(np.abs(ours[name] - theirs))))
        theirs_mean = theirs.reshape(mats, b).mean(1)
        ours_mean = np.array([m[name] for m in means])
        worst = max(worst, float(np.max(np.abs(ours_mean - theirs_mean))))
    print(f"max |difference| vs trec_eval over {mats} matrices: {worst:.3g}")
    assert worst <= 1e-6
