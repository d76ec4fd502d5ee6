"""Leave-one-out split and the padded device arrays that training reads.

For a user sequence ``s`` of length ``m`` (chronological):

* ``m >= 3``: training part ``s[:m-2]``; validation input ``s[:m-2]`` with target
  ``s[m-2]``; test input ``s[:m-1]`` with target ``s[m-1]``.
* ``m < 3``: the whole sequence trains, and the user is in no evaluation.

Training rows hold the last ``L + 1`` items of the training part, left-padded
with 0: inputs are ``row[:-1]``, next-item targets ``row[1:]`` (training skips
a target whose input is padding, so a user's first item is never a target). A training part
of one item has no target and gives no row. Evaluation inputs are the last ``L``
items before the target, left-padded. ``eval_hist`` is ``s[:m-1]``
right-aligned: the test history; the validation history is ``eval_hist[:, :-1]``.

For evaluation on short inputs, each split also keeps its users ordered by input
length (``valid_order``/``test_order``) and how many fall in each of the
:func:`bucket_lengths` (``valid_counts``/``test_counts``, static): evaluation
runs each bucket on the last ``bucket`` positions only.
"""

from __future__ import annotations

import dataclasses
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from awrsr_jax.data.checks import check_trainable


def leave_one_out(seqs: dict[int, list[int]]):
    """Returns ``(train, valid, test)``; valid/test map user -> (input, target)."""
    train, valid, test = {}, {}, {}
    for u, s in seqs.items():
        m = len(s)
        if m < 3:
            train[u] = list(s)
            continue
        train[u] = list(s[: m - 2])
        valid[u] = (list(s[: m - 2]), s[m - 2])
        test[u] = (list(s[: m - 1]), s[m - 1])
    return train, valid, test


def _left_pad(rows, width):
    out = np.zeros((len(rows), width), np.int32)
    for r, items in enumerate(rows):
        items = items[-width:]
        if items:
            out[r, width - len(items) :] = items
    return out


def bucket_lengths(max_len: int) -> tuple[int, ...]:
    """Input widths that evaluation and trimmed training compile: 8, 16, 32,
    ... then ``max_len``."""
    out, b = [], 8
    while b < max_len:
        out.append(b)
        b *= 2
    return (*out, max_len)


def _by_length(inp: np.ndarray, max_len: int):
    """Users ordered by real input length, and the count in each bucket."""
    lens = np.count_nonzero(inp, axis=1)
    order = np.argsort(lens, kind="stable").astype(np.int32)
    edges = np.asarray(bucket_lengths(max_len))
    which = np.searchsorted(edges, lens, side="left")  # smallest bucket >= len
    counts = np.bincount(which, minlength=len(edges))
    return jnp.asarray(order), tuple(int(c) for c in counts)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SeqData:
    """Device arrays for one dataset at one max length (a pytree for jit)."""

    train_seq: jax.Array  # [Ut, L+1] int32
    hist_flat: jax.Array  # [N] int32, each train user's items sorted
    hist_start: jax.Array  # [Ut] int32, segment bounds into hist_flat
    hist_end: jax.Array  # [Ut]
    valid_inp: jax.Array  # [Ue, L]
    valid_tgt: jax.Array  # [Ue]
    test_inp: jax.Array  # [Ue, L]
    test_tgt: jax.Array  # [Ue]
    eval_hist: jax.Array  # [Ue, H]
    valid_order: jax.Array  # [Ue] int32, users by valid input length
    test_order: jax.Array  # [Ue] int32, users by test input length
    num_items: int = dataclasses.field(metadata=dict(static=True))
    max_len: int = dataclasses.field(metadata=dict(static=True))
    # Users per bucket_lengths(max_len) bucket, in *_order order.
    valid_counts: tuple = dataclasses.field(metadata=dict(static=True))
    test_counts: tuple = dataclasses.field(metadata=dict(static=True))

    @property
    def num_train(self) -> int:
        return self.train_seq.shape[0]

    @property
    def num_eval(self) -> int:
        return self.valid_tgt.shape[0]


def num_items_of(seqs: dict[int, list[int]]) -> int:
    return max(max(s) for s in seqs.values())


def fingerprint(seqs: dict[int, list[int]]) -> str:
    """SHA-256 of the canonical user-line text: identifies a dataset's content."""
    h = hashlib.sha256()
    for u, s in seqs.items():
        h.update((" ".join(map(str, [u, *s])) + "\n").encode())
    return h.hexdigest()


def build(
    seqs: dict[int, list[int]],
    max_len: int,
    num_items: int | None = None,
    *,
    where: str = "sequences",
):
    """Splits ``seqs`` and returns ``(SeqData, eval_users)`` (users as numpy).

    Data that cannot be trained or evaluated raises ``ValueError`` naming
    ``where`` (see :func:`~awrsr_jax.data.checks.check_trainable`), before any
    array is made: ids are checked on the host because inside jit an
    out-of-range gather is clamped silently.
    """
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    check_trainable(seqs, where=where, num_items=num_items)
    n_items = num_items_of(seqs) if num_items is None else num_items
    train, valid, test = leave_one_out(seqs)
    rows = [s for s in train.values() if len(s) >= 2]
    hist = [np.unique(np.asarray(s, np.int32)) for s in train.values() if len(s) >= 2]
    lens = np.array([len(h) for h in hist], np.int64)
    end = np.cumsum(lens)
    users = np.array(list(valid), np.int64)
    hist_rows = [test[u][0] for u in users]
    width = max((len(h) for h in hist_rows), default=1)
    eval_hist = np.zeros((len(users), width), np.int32)
    for r, h in enumerate(hist_rows):
        eval_hist[r, width - len(h) :] = h
    valid_inp = _left_pad([valid[u][0] for u in users], max_len)
    test_inp = _left_pad([test[u][0] for u in users], max_len)
    valid_order, valid_counts = _by_length(valid_inp, max_len)
    test_order, test_counts = _by_length(test_inp, max_len)
    data = SeqData(
        train_seq=jnp.asarray(_left_pad(rows, max_len + 1)),
        hist_flat=jnp.asarray(np.concatenate(hist) if hist else np.zeros(1, np.int32)),
        hist_start=jnp.asarray((end - lens).astype(np.int32)),
        hist_end=jnp.asarray(end.astype(np.int32)),
        valid_inp=jnp.asarray(valid_inp),
        valid_tgt=jnp.asarray(np.array([valid[u][1] for u in users], np.int32)),
        test_inp=jnp.asarray(test_inp),
        test_tgt=jnp.asarray(np.array([test[u][1] for u in users], np.int32)),
        eval_hist=jnp.asarray(eval_hist),
        valid_order=valid_order,
        test_order=test_order,
        num_items=int(n_items),
        max_len=int(max_len),
        valid_counts=valid_counts,
        test_counts=test_counts,
    )
    return data, users
