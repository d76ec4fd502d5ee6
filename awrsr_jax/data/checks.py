"""Whether a dataset can be trained and evaluated: clear errors before any work.

:func:`check_trainable` takes ``{user: [item, ...]}`` (what
:func:`~awrsr_jax.data.read_sequences` returns) and raises ``ValueError``
naming ``where`` (the file) and the problem, for data that would otherwise
fail late or with a raw JAX/numpy error:

* no users, a user with no items, an id that is not an integer;
* an item id outside ``1..num_items`` (JAX clamps out-of-range gathers
  silently, so this is caught on the host);
* item ids much larger than the number of distinct items (ids index the
  embedding table): the largest id may be at most ``SPARSE_FACTOR`` x the
  distinct items + ``SPARSE_SLACK``; above that the message says how much
  memory the table would take and to renumber the items with ``data_prep``;
  ids above ``2**31 - 2`` never fit the int32 device arrays;
* fewer than 2 distinct items (nothing to rank);
* no training target: under leave-one-out a user with ``m >= 3`` items trains
  on ``s[:m-2]`` and a user with ``m < 3`` on all of ``s``; a target needs 2
  training items, so some user must have 2 items, or 4 or more;
* no user with 3 or more items: nothing to validate or test.

:func:`~awrsr_jax.data.build` runs it too, so every path into training is
covered; entry points call it first, before they write anything.
"""

from __future__ import annotations

import numbers

SPARSE_FACTOR = 10
SPARSE_SLACK = 1000
MAX_ITEM_ID = 2**31 - 2  # num_items + 1 rows must fit int32 indexing


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def table_gib(rows: int, hidden: int) -> float:
    """GiB of one float32 ``[rows, hidden]`` table with its two Adam moments
    and the best-params copy (four copies)."""
    return 4 * rows * hidden * 4 / 2**30


def check_trainable(
    sequences: dict,
    *,
    where: str,
    num_items: int | None = None,
    hidden: int = 64,
) -> None:
    """Raises ``ValueError`` ``"{where}: ..."`` if ``sequences`` cannot be
    trained and evaluated (see the module docstring for the rules).

    ``num_items`` is a fixed catalogue size (a trained model's); without it the
    catalogue is the largest item id, and the sparse-id rule applies.
    ``hidden`` only sizes the memory figure in the sparse-id message.
    """
    if not isinstance(sequences, dict) or not sequences:
        raise ValueError(f"{where}: no users (an empty dataset)")
    largest = 0
    for u, s in sequences.items():
        largest = max(largest, _check_user(u, s, where=where, num_items=num_items))
    distinct = len(set().union(*map(set, sequences.values())))
    if num_items is None:
        _check_dense(largest, distinct, where=where, hidden=hidden)
    if distinct < 2:
        raise ValueError(f"{where}: only one distinct item: nothing to rank")
    _check_lengths([len(s) for s in sequences.values()], where=where)


def _check_user(u, s, *, where: str, num_items: int | None) -> int:
    """User ``u``'s largest item id, after checking its ids."""
    if not _is_int(u):
        raise ValueError(f"{where}: user id {u!r} is not an integer")
    if len(s) == 0:
        raise ValueError(f"{where}: user {u} has no items")
    if not all(type(x) is int for x in s):  # slow path: name the bad id
        for x in s:
            if not _is_int(x):
                raise ValueError(f"{where}: user {u}: item {x!r} is not an integer id")
    lo, hi = min(s), max(s)
    if lo < 1:
        bad = next(x for x in s if x < 1)
        raise ValueError(
            f"{where}: user {u}: item {bad} is not a positive id (0 is padding)"
        )
    if num_items is not None and hi > num_items:
        bad = next(x for x in s if x > num_items)
        raise ValueError(f"{where}: user {u}: item {bad} outside 1..{num_items}")
    return int(hi)


def _check_dense(largest: int, distinct: int, *, where: str, hidden: int) -> None:
    """The sparse-id rule: ids index the embedding table."""
    limit = SPARSE_FACTOR * distinct + SPARSE_SLACK
    if largest > limit or largest > MAX_ITEM_ID:
        raise ValueError(
            f"{where}: item ids are sparse: the largest is {largest:,} but there "
            f"are {distinct:,} distinct items. Ids index the embedding table, "
            f"which would need {largest + 1:,} rows (about "
            f"{table_gib(largest + 1, hidden):,.1f} GiB with Adam state at "
            f"hidden={hidden}). Renumber the items 1..{distinct:,} (python -m "
            f"data_prep writes dense ids); the rule: largest id <= "
            f"{SPARSE_FACTOR} x distinct items + {SPARSE_SLACK} = {limit:,}"
        )


def _check_lengths(lengths: list[int], *, where: str) -> None:
    """Leave-one-out needs a training target and a user to validate and test."""
    lo, hi = min(lengths), max(lengths)
    span = f"{lo}" if lo == hi else f"{lo} to {hi}"
    shape = f"{len(lengths):,} users with {span} item{'s' * (hi != 1)} each"
    if not any(m == 2 or m >= 4 for m in lengths):
        raise ValueError(
            f"{where}: no training targets ({shape}). Leave-one-out holds out the "
            "last 2 items of a user with 3 or more and trains on the rest; a "
            "target needs 2 training items, so some user must have 2 items, or 4 "
            "or more"
        )
    if max(lengths) < 3:
        raise ValueError(
            f"{where}: nothing to validate or test ({shape}): leave-one-out "
            "needs users with 3 or more items (the last is the test target, the "
            "one before it the validation target)"
        )
