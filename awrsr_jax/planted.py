"""Planted higher-order dependencies, and the best possible score on them.

A :class:`World` (made from a :class:`Spec` by :func:`make_world`) puts the
items ``1..I`` in C clusters of nearly equal size, gives them distinct
Zipf-like popularities ``pop`` and draws a rule table
``f: {0..C-1}^k -> {0..C-1}`` uniformly at random. A user's next item, given
the items ``h`` seen so far (:func:`next_probs`), is

* with probability p (the rule): an unseen item of cluster
  ``c* = f(clusters of the last k items of h)``, drawn by popularity;
* otherwise: an unseen item of any cluster, drawn by popularity;

so for an unseen item j, with ``Z(h)`` the popularity of all unseen items and
``Z_c*(h)`` that of the unseen items of ``c*``::

    P(j | h) = (1 - p) pop_j / Z(h) + p [cluster_j = c*] pop_j / Z_c*(h)

Items never repeat. While h holds fewer than k items, or when ``c*`` has no
unseen item left, the rule's draw is the popularity draw. :func:`sample`
draws every sequence from :func:`next_probs` itself, so the generator and the
oracle below cannot disagree.

Ceiling and floor. Each metric of the protocol (Recall@N, NDCG@N, MRR) is
the expectation of a decreasing function of the target's rank, so ranking
candidates by ``P(j | h)`` maximises its expectation: the Bayes-optimal
ranking, whose metrics are the ceiling (:func:`oracle_ranks`). Popularities
are distinct, so its probabilities have no ties in practice and pessimistic
tie-breaking costs it nothing. Ranking by ``pop`` alone is the floor
(:func:`popularity_ranks`). Both are ranked by :func:`ranks_of_scores`, with
the project's :func:`awrsr_jax.evaluate.candidate_mask` and
:func:`awrsr_jax.ops.metrics.target_rank`, on the same
:class:`~awrsr_jax.data.SeqData` arrays the models are evaluated on: the
user's history removed, ties counted against the ranking.

:func:`write` saves a planted dataset as an ordinary user-line sequence file
plus a JSON file of its :class:`Spec`, hash and bounds; :func:`read` loads it.

Shape letters: U users, H history width, V = I + 1 ids (0 = padding),
K = k (the rule's order).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import numpy as np

from awrsr_jax import data as data_lib
from awrsr_jax import datasets, evaluate, files
from awrsr_jax.data import SeqData
from awrsr_jax.datasets import Dataset
from awrsr_jax.ops import metrics

MAX_CODES = 1 << 24  # distinct scores that float32 holds exactly as integers


@dataclasses.dataclass(frozen=True)
class Spec:
    """A planted dataset's generator parameters (its whole identity)."""

    num_users: int = 2000
    num_items: int = 300  # I
    num_clusters: int = 10  # C
    order: int = 2  # k: the rule reads the clusters of the last k items
    p: float = 0.8  # probability that the rule picks the next item's cluster
    min_len: int = 20  # sequence lengths, uniform in [min_len, max_len]
    max_len: int = 30
    pop_exponent: float = 0.8  # popularity of the r-th most popular item ~ r^-a
    seed: int = 0

    @property
    def name(self) -> str:
        """File stem: the parameters that vary in a sweep, then the rest."""
        return (
            f"planted-k{self.order}-p{self.p:g}-c{self.num_clusters}-"
            f"len{self.min_len}-{self.max_len}-u{self.num_users}-"
            f"i{self.num_items}-a{self.pop_exponent:g}-s{self.seed}"
        )

    def check(self) -> Spec:
        """Raises ``ValueError`` naming the first impossible parameter."""
        if self.num_users < 1 or self.num_clusters < 1 or self.order < 1:
            raise ValueError(f"{self}: num_users, num_clusters, order must be >= 1")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p={self.p}: must be in [0, 1]")
        if not self.order + 2 <= self.min_len <= self.max_len:
            raise ValueError(
                f"need order + 2 <= min_len <= max_len (every evaluated history "
                f"holds k items): order={self.order}, min_len={self.min_len}, "
                f"max_len={self.max_len}"
            )
        if self.num_items <= self.max_len or self.num_items < self.num_clusters:
            raise ValueError(
                f"num_items={self.num_items}: must exceed max_len={self.max_len} "
                f"and num_clusters={self.num_clusters}"
            )
        if self.num_clusters**self.order > MAX_CODES:
            raise ValueError(
                f"num_clusters ** order = {self.num_clusters**self.order}: too "
                "many rule entries"
            )
        return self


@dataclasses.dataclass(frozen=True)
class World:
    """The generator's fixed parts (arrays indexed by item id, 0 = padding)."""

    cluster: np.ndarray  # int64[V], -1 at the padding id
    pop: np.ndarray  # float64[V], 0 at the padding id
    rule: np.ndarray  # int64[C**K], c* of each code sum_i c_i C^(K-1-i)
    order: int  # K
    p: float

    @property
    def num_clusters(self) -> int:
        return int(self.cluster.max()) + 1


def make_world(spec: Spec) -> World:
    """The clusters, popularities and rule of ``spec`` (seeded)."""
    spec.check()
    rng = np.random.default_rng([spec.seed, 1])
    n, c = spec.num_items, spec.num_clusters
    cluster = np.concatenate([[-1], rng.permutation(np.arange(n) % c)])
    zipf = np.arange(1, n + 1, dtype=np.float64) ** -spec.pop_exponent
    pop = np.concatenate([[0.0], rng.permutation(zipf / zipf.sum())])
    rule = rng.integers(0, c, size=c**spec.order)
    return World(cluster, pop, rule, spec.order, spec.p)


def next_probs(world: World, hist_UxH) -> np.ndarray:
    """``float64[U, V]``: P(next item | history) of each row (module docstring).

    ``hist_UxH`` holds each user's items so far, oldest first, padded with 0
    on the left (as ``SeqData.eval_hist``) or not padded at all. Seen items
    and the padding id get probability 0.
    """
    hist = np.asarray(hist_UxH, np.int64)
    u, h = hist.shape
    k, c = world.order, world.num_clusters
    free_UxV = np.tile(world.pop, (u, 1))
    free_UxV[np.arange(u)[:, None], hist] = 0.0
    by_pop = free_UxV / free_UxV.sum(1, keepdims=True)
    if h < k:
        return by_pop
    last_UxK = hist[:, h - k :]
    ruled_U = (last_UxK > 0).all(1)
    code_U = (np.maximum(world.cluster[last_UxK], 0) * c ** np.arange(k)[::-1]).sum(1)
    target_U = world.rule[code_U]
    in_c_UxV = free_UxV * (world.cluster[None, :] == target_U[:, None])
    z_c = in_c_UxV.sum(1, keepdims=True)
    use = ruled_U[:, None] & (z_c > 0)
    by_rule = np.where(use, in_c_UxV / np.where(z_c > 0, z_c, 1.0), by_pop)
    return (1.0 - world.p) * by_pop + world.p * by_rule


def sample(spec: Spec) -> tuple[World, dict[int, list[int]]]:
    """``(world, {user: items})``: users ``1..U``, each sequence drawn from
    :func:`next_probs` step by step (all users at once), cut to its length."""
    world = make_world(spec)
    rng = np.random.default_rng([spec.seed, 2])
    lengths = rng.integers(spec.min_len, spec.max_len + 1, size=spec.num_users)
    seq_UxT = np.zeros((spec.num_users, spec.max_len), np.int64)
    for t in range(spec.max_len):
        cdf_UxV = np.cumsum(next_probs(world, seq_UxT[:, :t]), axis=1)
        draw_U = rng.random(spec.num_users) * cdf_UxV[:, -1]
        seq_UxT[:, t] = np.argmax(cdf_UxV > draw_U[:, None], axis=1)
    return world, {
        u + 1: seq_UxT[u, :n].tolist() for u, n in enumerate(lengths.tolist())
    }


def split_history(data: SeqData, split: str):
    """``(hist_UxH, tgt_U)`` of ``split``: the items before each target, as
    the evaluation removes them (``SeqData``: the validation history is
    ``eval_hist[:, :-1]``)."""
    if split == "valid":
        return data.eval_hist[:, :-1], data.valid_tgt
    if split == "test":
        return data.eval_hist, data.test_tgt
    raise ValueError(f"split must be 'valid' or 'test', got {split!r}")


def ranks_of_scores(scores_UxV, hist_UxH, tgt_U, num_items: int) -> np.ndarray:
    """``int32[U]``: each target's pessimistic rank among the real items
    outside its history, by the project's metric functions.

    Scores may be float64: they are replaced by their exact order (equal
    scores stay equal) before the float32 ranking, so float32 rounding never
    makes or breaks a tie.
    """
    scores = np.asarray(scores_UxV, np.float64)
    _, codes = np.unique(scores, return_inverse=True)
    if codes.max(initial=0) >= MAX_CODES:
        raise ValueError(f"more than {MAX_CODES} distinct scores")
    codes = codes.reshape(scores.shape).astype(np.float32)
    return np.asarray(_ranks(codes, hist_UxH, tgt_U, num_items=num_items))


@functools.partial(jax.jit, static_argnames="num_items")
def _ranks(codes_UxV, hist_UxH, tgt_U, *, num_items: int):
    # One compiled call (eager vmapped ops compile one by one: seconds).
    where = evaluate.candidate_mask(hist_UxH, num_items)
    return metrics.target_rank(codes_UxV, tgt_U, where_BxV=where)


def oracle_ranks(world: World, data: SeqData, split: str) -> np.ndarray:
    """``int32[U]``: ranks under the Bayes-optimal ranking (the ceiling)."""
    hist, tgt = split_history(data, split)
    return ranks_of_scores(next_probs(world, hist), hist, tgt, data.num_items)


def popularity_ranks(world: World, data: SeqData, split: str) -> np.ndarray:
    """``int32[U]``: ranks under the generator's popularity alone (the floor)."""
    hist, tgt = split_history(data, split)
    scores = np.broadcast_to(world.pop, (hist.shape[0], world.pop.size))
    return ranks_of_scores(scores, hist, tgt, data.num_items)


def bounds(world: World, data: SeqData) -> dict:
    """``{"ceiling"|"floor": {"valid"|"test": {metric: mean}}}``."""
    ranking = {"ceiling": oracle_ranks, "floor": popularity_ranks}
    return {
        name: {s: evaluate.summarize(fn(world, data, s)) for s in ("valid", "test")}
        for name, fn in ranking.items()
    }


def write(spec: Spec, folder) -> str:
    """Writes ``<folder>/<spec.name>.txt`` (user lines) and ``.json`` (the
    spec, the data hash and :func:`bounds`) unless they exist for this spec;
    returns the sequence file's path."""
    stem = os.path.join(folder, spec.name)
    if os.path.exists(stem + ".json") and os.path.exists(stem + ".txt"):
        if files.read_json(stem + ".json")["spec"] == dataclasses.asdict(spec):
            return stem + ".txt"
    world, seqs = sample(spec)
    ds = Dataset(spec.name, seqs)
    info = {
        "spec": dataclasses.asdict(spec),
        "data_sha256": ds.sha256,
        "bounds": bounds(world, ds.build(spec.max_len)),
        "protocol": "leave-one-out; full ranking, history removed, ties "
        "counted against the ranking (awrsr_jax.planted)",
    }
    os.makedirs(folder, exist_ok=True)
    data_lib.write_sequences(stem + ".txt", seqs)
    files.write_json(stem + ".json", info)
    return stem + ".txt"


def read(path) -> tuple[dict, Dataset]:
    """``(info, dataset)`` of a sequence file :func:`write` made (``info``:
    its JSON), loaded as ``--dataset=<path>`` loads it; its hash must match
    the recorded one."""
    stem, _ = os.path.splitext(os.fspath(path))
    info = files.read_json(stem + ".json")
    ds = datasets.load(stem + ".txt")
    if ds.sha256 != info["data_sha256"]:
        raise ValueError(f"{stem}.txt: content differs from {stem}.json")
    return info, ds
