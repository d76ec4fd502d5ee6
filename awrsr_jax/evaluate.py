"""Evaluation: each user's rank of its held-out item, and the metrics of ranks.

Data enters as one member's params and a :class:`SeqData` on the device
(``valid_inp``/``valid_tgt`` or ``test_inp``/``test_tgt``, and ``eval_hist``,
the items removed from each user's candidates). :func:`eval_ranks` scores users
in chunks of ``cfg.eval_chunk`` (``lax.map``) and returns ``int32[Ue]``, each
user's pessimistic rank of its target (ties count against the model); nothing
else leaves the device. Full ranking trims the padding: users go in order of
input length (``SeqData.valid_order``), bucket by bucket, each bucket's inputs
cut to their last ``bucket`` positions (:func:`dataset.bucket_lengths`; one
compiled shape per bucket). Left padding and the models' trimmed refinement
matrices make this give the ranks of the full-length inputs. Large catalogues are scored in item chunks as well
(:func:`_ranks_by_item_chunks`), with the backbone's ``user_state`` and
``score_items``. :func:`summarize` turns ranks into metrics once, on the host:
means of per-user values. :func:`top_k_items` is the item-chunked top-k that
serving uses.

Member vmapping and jitting are the caller's: :func:`awrsr_jax.train.compiled`.

Shape letters: C users in a chunk, H history width, I items in a chunk,
V = num_items + 1.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from awrsr_jax import models
from awrsr_jax.config import Config
from awrsr_jax.data import dataset, sampling
from awrsr_jax.data.dataset import SeqData
from awrsr_jax.ops import metrics, refine


def _split_arrays(data: SeqData, split: str):
    if split == "valid":
        return data.valid_inp, data.valid_tgt, data.eval_hist[:, :-1]
    if split == "test":
        return data.test_inp, data.test_tgt, data.eval_hist
    raise ValueError(f"split must be 'valid' or 'test', got {split!r}")


def _split_buckets(data: SeqData, split: str):
    """``(order, ((length, count), ...))``: users by input length, per bucket."""
    order, counts = (
        (data.valid_order, data.valid_counts)
        if split == "valid"
        else (data.test_order, data.test_counts)
    )
    return order, tuple(zip(dataset.bucket_lengths(data.max_len), counts))
    raise ValueError(f"split must be 'valid' or 'test', got {split!r}")


def candidate_mask(hist_CxH, num_items: int):
    """``[C, V]`` True for real items outside each row's history (0 = padding)."""
    c = hist_CxH.shape[0]
    where = jnp.ones((c, num_items + 1), bool).at[:, 0].set(False)
    return where.at[jnp.arange(c)[:, None], hist_CxH].set(False)


ITEM_CHUNK = 1 << 16  # catalogues larger than this are scored in item chunks


def eval_ranks(
    cfg: Config,
    params,
    data: SeqData,
    split: str,
    key=None,
    *,
    item_chunk=None,
    trim=None,
):
    """Each evaluation user's rank of its target (one member), ``int32[Ue]``.

    ``cfg.protocol == "full"``: among all real items outside the history.
    ``"sampled100"``: among 100 items drawn uniformly from outside the user's
    whole sequence (SASRec paper's protocol; needs ``key``).

    Users go in chunks of ``cfg.eval_chunk`` (``lax.map``). With more than
    ``item_chunk`` (default :data:`ITEM_CHUNK`) items, full-ranking scores are
    also built ``item_chunk`` items at a time from the backbone's
    ``user_state``/``score_items`` (:func:`_ranks_by_item_chunks`), so memory
    is bounded by ``eval_chunk * item_chunk`` whatever the catalogue size.

    Full ranking (``trim``, default on unless the mechanism ``leaks``) runs
    users bucket by bucket of input length, each on its last ``bucket``
    positions only, and puts the ranks back in user order. The sampled
    protocol keeps the full length and the original chunks (its draws are
    keyed by chunk).
    """
    inp, tgt, hist = _split_arrays(data, split)
    model = models.build(cfg, data.num_items)
    n = data.num_eval
    ic = ITEM_CHUNK if item_chunk is None else item_chunk
    by_items = cfg.protocol == "full" and data.num_items + 1 > ic
    if trim is None:
        trim = cfg.protocol == "full" and not refine.MECHANISMS[cfg.mech].leaks

    def one_chunk(rows, length):
        seq = inp[rows][:, inp.shape[1] - length :]
        if by_items:
            state = model.apply(params, seq, method="user_state")

            def score(ids):
                return model.apply(params, state, ids, method="score_items")

            return _ranks_by_item_chunks(
                score, tgt[rows], hist[rows], data.num_items, ic
            )
        scores = model.apply(params, seq, method="score_all")
        if cfg.protocol == "full":
            where = candidate_mask(hist[rows], data.num_items)
            return metrics.target_rank(scores, tgt[rows], where_BxV=where)
        return _sampled_ranks(key, scores, rows, tgt, data)

    def ranks_of(idx, length):
        return jax.lax.map(lambda rows: one_chunk(rows, length), idx).reshape(-1)

    if trim:
        return _ranks_by_bucket(ranks_of, data, split, cfg.eval_chunk)

    c = min(cfg.eval_chunk, n)
    chunks = math.ceil(n / c)
    idx = jnp.minimum(jnp.arange(chunks * c), n - 1).reshape(chunks, c)
    return ranks_of(idx, data.max_len)[:n]


def _sampled_ranks(key, scores_CxV, rows_C, tgt_Ue, data: SeqData):
    """``"sampled100"``: each target's rank among 100 items drawn outside the
    user's whole sequence, keyed by the chunk's first user."""
    k = jax.random.fold_in(key, rows_C[0])
    full_hist = jnp.concatenate(
        [data.eval_hist[rows_C], data.test_tgt[rows_C][:, None]], 1
    )
    negs = _sample_outside(k, full_hist, data.num_items, 100)
    cand = jnp.concatenate([tgt_Ue[rows_C][:, None], negs], 1)
    sub = jnp.take_along_axis(scores_CxV, cand, 1)
    return metrics.target_rank(sub, jnp.zeros(rows_C.shape[0], jnp.int32))


def _ranks_by_bucket(ranks_of, data: SeqData, split: str, eval_chunk: int):
    """``ranks_of(idx, length)`` bucket by bucket of input length, each bucket's
    users in ``eval_chunk``-sized chunks; ranks back in user order."""
    order, buckets = _split_buckets(data, split)
    parts, start = [], 0
    for length, count in buckets:
        if count:
            rows = order[start : start + count]
            chunks = math.ceil(count / eval_chunk)
            c = math.ceil(count / chunks)  # least padding for that many chunks
            pick = jnp.minimum(jnp.arange(chunks * c), count - 1)
            parts.append(ranks_of(rows[pick].reshape(chunks, c), length)[:count])
        start += count
    return jnp.zeros(data.num_eval, jnp.int32).at[order].set(jnp.concatenate(parts))


def _chunk_candidates(ids_I, tgt_C, hist_CxH, num_items):
    """``[C, I]`` candidate mask of one item chunk (``ids_I`` consecutive)."""
    c, i = tgt_C.shape[0], ids_I.shape[0]
    cand = (ids_I >= 1) & (ids_I <= num_items)
    cand = cand[None] & (ids_I[None] != tgt_C[:, None])
    local = hist_CxH - ids_I[0]
    local = jnp.where((local >= 0) & (local < i), local, i)
    return cand.at[jnp.arange(c)[:, None], local].set(False, mode="drop")


def _ranks_by_item_chunks(score, tgt_C, hist_CxH, num_items: int, ic: int):
    """Pessimistic ranks from ``score(ids_I) -> [C, I]``, ``ic`` items at a time.

    Two passes: the first reads each target's score out of the chunk that
    holds it (the same matmul that scores its rivals, so ties stay exact), the
    second counts rivals at or above it, as :func:`metrics.target_rank` does.
    """
    starts = jnp.arange(math.ceil((num_items + 1) / ic)) * ic

    def ids_of(o):
        return o + jnp.arange(ic)

    def target_pass(t, o):
        ids = ids_of(o)
        s = score(jnp.minimum(ids, num_items))
        hit = ids[None] == tgt_C[:, None]
        return t + jnp.sum(jnp.where(hit, s, 0.0), 1), None

    t, _ = jax.lax.scan(target_pass, jnp.zeros(tgt_C.shape, jnp.float32), starts)

    def count_pass(carry, o):
        above, worst = carry
        ids = ids_of(o)
        s = score(jnp.minimum(ids, num_items))
        cand = _chunk_candidates(ids, tgt_C, hist_CxH, num_items)
        above = above + jnp.sum(cand & (s >= t[:, None]), 1)
        return (above, worst + jnp.sum(cand, 1)), None

    zero = jnp.zeros(tgt_C.shape, jnp.int32)
    (above, worst), _ = jax.lax.scan(count_pass, (zero, zero), starts)
    return 1 + jnp.where(jnp.isnan(t), worst, above).astype(jnp.int32)


def top_k_items(score, hist_CxH, num_items: int, k: int, ic: int = ITEM_CHUNK):
    """Top-``k`` ``(scores, ids)`` per row over items outside the history.

    ``score(ids_I) -> [C, I]``; the catalogue is visited ``ic`` items at a
    time with ``lax.top_k`` per chunk and a running merge, so a 1M-item
    catalogue needs ``C * (ic + k)`` scores in memory, not ``C * V``. Equal
    scores come out in id order, like ``lax.top_k`` over the whole catalogue.
    """
    c = hist_CxH.shape[0]
    no_tgt = jnp.zeros((c,), jnp.int32)  # id 0 is never a candidate anyway

    def body(best, o):
        ids = o + jnp.arange(ic)
        s = score(jnp.minimum(ids, num_items)).astype(jnp.float32)
        cand = _chunk_candidates(ids, no_tgt, hist_CxH, num_items)
        s, j = jax.lax.top_k(jnp.where(cand, s, -jnp.inf), min(k, ic))
        vals = jnp.concatenate([best[0], s], 1)
        ids_all = jnp.concatenate([best[1], ids[j]], 1)
        top, pick = jax.lax.top_k(vals, k)
        return (top, jnp.take_along_axis(ids_all, pick, 1)), None

    init = (jnp.full((c, k), -jnp.inf), jnp.zeros((c, k), jnp.int32))
    starts = jnp.arange(math.ceil((num_items + 1) / ic)) * ic
    (top, ids), _ = jax.lax.scan(body, init, starts)
    return top, ids


def _sample_outside(key, hist_CxH, num_items, k):
    """``k`` uniform items per row, none in the row's history (padded with 0).

    Exact: the history becomes a packed bitmask and each draw selects the j-th
    free item (:func:`sampling.sample_from_bits`); no rejection loop.
    """
    c, h = hist_CxH.shape
    flat = jnp.sort(hist_CxH, axis=1).reshape(-1)
    start = jnp.arange(c, dtype=jnp.int32) * h
    bits = sampling.history_bits(flat, start, start + h, num_items)
    return sampling.sample_from_bits(key, bits, k)


def summarize(ranks) -> dict[str, float]:
    """Mean metrics from ranks (host side)."""
    vals = metrics.rank_metrics(jnp.asarray(ranks))
    return {k: float(jnp.mean(v)) for k, v in vals.items()}
