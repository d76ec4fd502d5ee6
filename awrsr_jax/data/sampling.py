"""Negative sampling inside jit, from items outside each user's history.

Histories are sorted segments of one flat array (``SeqData.hist_flat`` with
``hist_start``/``hist_end``). Two exact samplers, both with static shapes and
safe under ``vmap``:

* :func:`sample_from_bits` (used for training): each user's history as a
  packed bitmask ``uint32[U, W]`` (``W = ceil((V + 1) / 32)``, built once per
  epoch by :func:`history_bits`); a draw picks ``j`` uniform in
  ``[0, #free items)`` and returns the j-th free item (rank/select on the
  bitmask). No rejection loop, so a user who rated most of the catalogue costs
  the same as any other, and the result is exactly uniform.
* :func:`sample_negatives`: rejection sampling with a binary search per draw,
  for catalogues whose bitmask would not fit (:func:`bits_fit`).

Shape letters: U users, W bitmask words, B rows, K draws per row.
"""

from __future__ import annotations

import functools

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


BITS_BUDGET = 1 << 28  # bytes of bitmask beyond which training falls back


def bits_fit(num_users: int, num_items: int) -> bool:
    """Whether the ``[U, W]`` history bitmask stays within :data:`BITS_BUDGET`."""
    return num_users * ((num_items + 32) // 32) * 4 <= BITS_BUDGET


def history_bits(flat, start, end, num_items: int):
    """``uint32[U, W]``: bit ``i`` of user u is set iff item i is in its segment.

    Bit 0 (the padding id) and the bits past ``num_items`` are set too, so the
    clear bits are exactly the items a negative may be. Repeated items within a
    segment (they are sorted, so repeats are adjacent) are counted once.
    """
    u, n = start.shape[0], flat.shape[0]
    words = (num_items + 32) // 32
    i = jnp.arange(n, dtype=jnp.int32)
    seg = jnp.searchsorted(end, i, side="right").astype(jnp.int32)
    first = (i == 0) | (flat != jnp.roll(flat, 1)) | (seg != jnp.roll(seg, 1))
    real = (seg < u) & first & (flat >= 0) & (flat <= num_items)
    bit = jnp.where(
        real, jnp.left_shift(jnp.uint32(1), (flat & 31).astype(jnp.uint32)), 0
    )
    bits = jnp.zeros((u, words), jnp.uint32)
    # Bits within a row are distinct, so adding them is a bitwise or.
    bits = bits.at[jnp.where(real, seg, u), flat >> 5].add(bit, mode="drop")
    item = jnp.arange(words * 32, dtype=jnp.int32).reshape(words, 32)
    fixed = (item == 0) | (item > num_items)
    fixed_w = jnp.sum(
        jnp.where(fixed, jnp.uint32(1) << jnp.arange(32, dtype=jnp.uint32), 0),
        1,
        dtype=jnp.uint32,
    )
    return bits | fixed_w


def _select_bit(word, r):
    """Position of the r-th (0-based) set bit of ``word`` (elementwise)."""
    pos = jnp.zeros(word.shape, jnp.int32)
    for width in (16, 8, 4, 2, 1):
        low = word & jnp.uint32((1 << width) - 1)
        c = jax.lax.population_count(low).astype(jnp.int32)
        up = r >= c
        r = jnp.where(up, r - c, r)
        word = jnp.where(up, word >> width, low)
        pos = pos + jnp.where(up, width, 0)
    return pos


def sample_from_bits(key, bits_BxW, k: int):
    """``int32[B, k]``: uniform draws among each row's clear bits (exact).

    A row with no clear bit (a user who rated every item) gets item 1: there
    is no valid negative; such users do not occur in the benchmark data.
    """
    free_BxW = ~bits_BxW
    cum_BxW = jnp.cumsum(jax.lax.population_count(free_BxW).astype(jnp.int32), 1)
    total_B = cum_BxW[:, -1]
    j_BxK = jax.random.randint(
        key, (bits_BxW.shape[0], k), 0, jnp.maximum(total_B, 1)[:, None]
    )
    # A binary search over the W words: a loop of log2(W) steps on the CPU,
    # unrolled elsewhere (JAX's advice for GPUs, where each loop step would be
    # its own small kernels in every training step).
    method = "scan" if jax.default_backend() == "cpu" else "scan_unrolled"
    search = functools.partial(jnp.searchsorted, side="right", method=method)
    w_BxK = jax.vmap(search)(cum_BxW, j_BxK)
    w_BxK = jnp.minimum(w_BxK, bits_BxW.shape[1] - 1).astype(jnp.int32)
    before = jnp.take_along_axis(cum_BxW, w_BxK, 1) - jnp.take_along_axis(
        jax.lax.population_count(free_BxW).astype(jnp.int32), w_BxK, 1
    )
    word = jnp.take_along_axis(free_BxW, w_BxK, 1)
    item = w_BxK * 32 + _select_bit(word, j_BxK - before)
    return jnp.where(total_B[:, None] > 0, item, jnp.maximum(j_BxK, 1))
