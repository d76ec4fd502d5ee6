"""Full-ranking metrics: the target's rank -> Recall@N, NDCG@N, MRR.

Functions work per user on the last axis and are vmapped over leading axes.
Rank is pessimistic: ``1 + #(candidates scoring strictly higher) + #(other
candidates scoring equal)``, so a tie never favours the model and a constant
scorer ranks every target last. ``where`` marks the candidates (False for the
padding id, the user's history, or items outside a chunk); the target is always
compared against the candidates, never against itself, even if ``where`` is
False at the target. A NaN target score ranks last.

With one relevant item per user: ``Recall@N = [rank <= N]``,
``NDCG@N = [rank <= N] / log2(rank + 1)``, ``MRR = 1 / rank``.

Evaluators return per-user values (or sums and counts); the host divides once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

RECALL_KS = (1, 5, 10, 20)
NDCG_KS = (5, 10, 20)


def _count_above(scores_V, target, where_V):
    t = scores_V[target]
    cand = where_V & (jnp.arange(scores_V.shape[-1]) != target)
    higher = jnp.sum(cand & (scores_V > t))
    ties = jnp.sum(cand & (scores_V == t))
    worst = jnp.sum(cand)
    return jnp.where(jnp.isnan(t), worst, higher + ties).astype(jnp.int32)


def count_above(scores_BxV, target_B, *, where_BxV):
    """Candidates at or above the target's score (per user), for item chunks."""
    return jax.vmap(_count_above)(scores_BxV, target_B, where_BxV)


def target_rank(scores_BxV, target_B, *, where_BxV=None):
    """Pessimistic 1-based rank of ``target_B`` among the candidates."""
    if where_BxV is None:
        where_BxV = jnp.ones(scores_BxV.shape, bool)
    return 1 + count_above(scores_BxV, target_B, where_BxV=where_BxV)


def rank_metrics(rank_B, *, recall_ks=RECALL_KS, ndcg_ks=NDCG_KS):
    """Per-user metric values ``{name: [B] float32}`` from 1-based ranks."""
    r = rank_B.astype(jnp.float32)
    out = {f"Recall@{k}": (r <= k).astype(jnp.float32) for k in recall_ks}
    gain = 1.0 / jnp.log2(r + 1.0)
    out |= {f"NDCG@{k}": jnp.where(r <= k, gain, 0.0) for k in ndcg_ks}
    out["MRR"] = 1.0 / r
    return out


def metric_names(recall_ks=RECALL_KS, ndcg_ks=NDCG_KS):
    return [f"Recall@{k}" for k in recall_ks] + [f"NDCG@{k}" for k in ndcg_ks] + ["MRR"]
