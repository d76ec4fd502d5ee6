"""Negative sampling inside jit, from items outside each user's history.

Histories are sorted segments of one flat array (``SeqData.hist_flat`` with
``hist_start``/``hist_end``); membership is a fixed-depth binary search, so the
sampler has static shapes and works under ``vmap``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def segment_contains(flat, start, end, query):
    """Whether ``query`` is in the sorted segment ``flat[start:end]`` (elementwise)."""
    lo, hi = start, end
    depth = max(1, int(flat.shape[0]).bit_length())

    def body(_, lohi):
        lo, hi = lohi
        mid = (lo + hi) // 2
        go_right = (lo < hi) & (flat[jnp.clip(mid, 0, flat.shape[0] - 1)] < query)
        return jnp.where(go_right, mid + 1, lo), jnp.where(
            go_right | (lo >= hi), hi, mid
        )

    lo, _ = jax.lax.fori_loop(0, depth, body, (lo, hi))
    return (lo < end) & (flat[jnp.clip(lo, 0, flat.shape[0] - 1)] == query)


def sample_negatives(key, num_items, flat, start, end, max_tries: int = 64):
    """One uniform item in ``1..num_items`` outside each segment, same shape as
    ``start``. Rejection sampling; after ``max_tries`` rounds (only for users who
    rated almost every item) the last draw is kept."""

    def draw(k):
        return jax.random.randint(k, start.shape, 1, num_items + 1, jnp.int32)

    def cond(state):
        i, _, bad = state
        return (i < max_tries) & jnp.any(bad)

    def body(state):
        i, neg, bad = state
        new = draw(jax.random.fold_in(key, i))
        neg = jnp.where(bad, new, neg)
        return i + 1, neg, bad & segment_contains(flat, start, end, neg)

    neg = draw(jax.random.fold_in(key, 0))
    bad = segment_contains(flat, start, end, neg)
    _, neg, _ = jax.lax.while_loop(cond, body, (1, neg, bad))
    return neg
