"""k-core and the sequence rules: fixpoint, idempotence, row-order independence,
stable time order, duplicates (RELIABILITY items 16 and 17)."""

import numpy as np
import pytest

from data_prep import kcore, sequences
from data_prep.readers import RawRows, RowLog


def _random_rows(rng, n=None):
    n = n or int(rng.integers(1, 400))
    users, items = int(rng.integers(1, 40)), int(rng.integers(1, 40))
    user = rng.integers(0, users, n)
    item = np.minimum(rng.geometric(0.15, n) - 1, items - 1)  # skewed popularity
    return user, item


def _pairs(user, item, mask):
    return sorted(zip(user[mask].tolist(), item[mask].tolist()))


def _kcore_by_hand(user, item, k):
    """Plain-Python reference: drop under-k users and items until none is left."""
    rows = list(zip(user.tolist(), item.tolist()))
    while True:
        cu, ci = {}, {}
        for u, i in rows:
            cu[u] = cu.get(u, 0) + 1
            ci[i] = ci.get(i, 0) + 1
        kept = [(u, i) for u, i in rows if cu[u] >= k and ci[i] >= k]
        if len(kept) == len(rows):
            return sorted(kept)
        rows = kept


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_kcore_reaches_the_fixpoint_and_matches_a_hand_reference(k):
    rng = np.random.default_rng(k)
    for _ in range(100):
        user, item = _random_rows(rng)
        mask, passes = kcore.kcore_mask(user, item, k)
        assert kcore.violations(user[mask], item[mask], k) == {
            "users_below_k": 0,
            "items_below_k": 0,
        }
        assert _pairs(user, item, mask) == _kcore_by_hand(user, item, k)
        assert passes >= 1


def test_kcore_is_idempotent_and_independent_of_row_order():
    rng = np.random.default_rng(1)
    for _ in range(100):
        user, item = _random_rows(rng)
        mask, _ = kcore.kcore_mask(user, item, 3)
        again, passes = kcore.kcore_mask(user[mask], item[mask], 3)
        assert again.all() and passes == 1
        perm = rng.permutation(len(user))
        shuffled, _ = kcore.kcore_mask(user[perm], item[perm], 3)
        assert _pairs(user[perm], item[perm], shuffled) == _pairs(user, item, mask)


def test_single_pass_counts_once_and_reports_its_violations():
    # Rows (user, item): (0,9) (0,8) (1,9) (1,7) (2,8), k = 2. Raw counts drop
    # item 7 and user 2 in one pass, which leaves user 1 and item 8 with one row
    # each; the k-core keeps removing until nothing is left.
    user = np.array([0, 0, 1, 1, 2])
    item = np.array([9, 8, 9, 7, 8])
    single = kcore.single_pass_mask(user, item, 2)
    assert single.tolist() == [True, True, True, False, False]
    assert kcore.violations(user[single], item[single], 2) == {
        "users_below_k": 1,
        "items_below_k": 1,
    }
    core, passes = kcore.kcore_mask(user, item, 2)
    assert not core.any() and passes == 4


def _rows(user, item, timestamp=None, unrated=None):
    user, item = np.asarray(user), np.asarray(item)
    return RawRows(
        user=user,
        item=item,
        timestamp=None if timestamp is None else np.asarray(timestamp, np.int64),
        unrated=None if unrated is None else np.asarray(unrated, bool),
        user_ids=np.arange(user.max() + 1) + 100,
        item_ids=np.arange(item.max() + 1) + 500,
        rows_read=len(user),
        log=RowLog("mem"),
        source={},
    )


def _lines(seqs):
    return [
        seqs.items[seqs.offsets[j] : seqs.offsets[j + 1]].tolist()
        for j in range(seqs.num_users)
    ]


def test_time_order_is_stable_on_timestamp_ties():
    rows = _rows([0, 0, 0, 0], [3, 1, 2, 0], [20, 10, 20, 10])
    seqs = sequences.build(rows, sequences.Rules("none", k=1))
    # (timestamp, line): item1 (10, line 2), item0 (10, line 4), item3, item2
    assert seqs.item_ids.tolist() == [501, 500, 503, 502]
    assert _lines(seqs) == [[1, 2, 3, 4]]


def test_without_timestamps_file_order_is_kept():
    rows = _rows([1, 0, 1, 0], [0, 1, 2, 3])
    seqs = sequences.build(rows, sequences.Rules("none", k=1))
    assert seqs.user_ids.tolist() == [100, 101]
    assert seqs.item_ids[np.concatenate(_lines(seqs)) - 1].tolist() == [
        501,
        503,
        500,
        502,
    ]


def test_duplicates_keep_first_in_time_order_and_are_counted():
    rows = _rows([0, 0, 0, 0], [5, 6, 5, 5], [30, 20, 10, 40])
    first = sequences.build(rows, sequences.Rules("none", k=1))
    assert first.filtered["duplicate"] == 2
    assert first.item_ids[np.array(_lines(first)[0]) - 1].tolist() == [505, 506]
    keep_all = sequences.build(
        rows, sequences.Rules("none", k=1, duplicates="keep_all")
    )
    assert keep_all.filtered["duplicate"] == 0 and len(keep_all.items) == 4


def test_unrated_rule_keeps_or_drops_and_counts():
    rows = _rows([0, 0, 1], [0, 1, 0], unrated=[False, True, False])
    kept = sequences.build(rows, sequences.Rules("none", k=1, unrated="keep"))
    dropped = sequences.build(rows, sequences.Rules("none", k=1, unrated="drop"))
    assert len(kept.items) == 3 and kept.filtered["unrated"] == 0
    assert len(dropped.items) == 2 and dropped.filtered["unrated"] == 1


@pytest.mark.parametrize("filter_", sequences.FILTERS)
def test_every_row_is_kept_or_filtered_by_a_named_rule(filter_):
    rng = np.random.default_rng(7)
    for _ in range(50):
        user, item = _random_rows(rng, n=300)
        user[0], item[0] = 0, 0  # make sure code 0 exists on both sides
        rows = _rows(user, item, rng.integers(0, 5, len(user)))
        try:
            seqs = sequences.build(rows, sequences.Rules(filter_, k=3))
        except sequences.DataPrepError:
            continue  # nothing left
        assert len(seqs.items) + sum(seqs.filtered.values()) == len(user)
        if filter_ == "kcore":
            assert seqs.violations == {"users_below_k": 0, "items_below_k": 0}


def test_bad_rule_values_are_refused():
    for kwargs in ({"filter": "5core"}, {"duplicates": "drop"}, {"k": 0}):
        with pytest.raises(sequences.DataPrepError):
            sequences.Rules(**kwargs)


def test_first_occurrences_matches_a_plain_python_reference():
    rng = np.random.default_rng(3)
    for _ in range(200):
        user, item = _random_rows(rng)
        seen, expected = set(), []
        for pair in zip(user.tolist(), item.tolist()):
            expected.append(pair not in seen)
            seen.add(pair)
        assert kcore.first_occurrences(user, item).tolist() == expected


def _seqs(lines):
    items = np.concatenate([np.asarray(x) for x in lines])
    offsets = np.cumsum([0] + [len(x) for x in lines])
    return sequences.Sequences(items=items, offsets=offsets, user_ids=None,
                               item_ids=None, filtered={}, violations={},
                               kcore_passes=None)  # fmt: skip


def test_pair_directions_by_hand():
    # pairs (1,2) (2,3) | (2,1) (1,4) | (3,4), (4,4) is none; across users
    # (3,2) and (4,3) would reverse (2,3) and (3,4): user boundaries are no pairs
    seqs = _seqs([[1, 2, 3], [2, 1, 4], [3, 4, 4]])
    assert sequences.pair_directions(seqs) == {"distinct": 5, "also_reversed": 2}
    assert sequences.pair_directions(_seqs([[1, 2, 3], [1, 3], [2, 3]])) == {
        "distinct": 3,
        "also_reversed": 0,
    }
    assert sequences.pair_directions(_seqs([[5]])) == {
        "distinct": 0,
        "also_reversed": 0,
    }


def test_pair_directions_match_a_plain_python_reference():
    rng = np.random.default_rng(0)
    for _ in range(20):
        lines = [rng.integers(1, 9, int(rng.integers(1, 7))) for _ in range(12)]
        pairs = {(a, b) for x in lines for a, b in zip(x[:-1].tolist(), x[1:].tolist())
                 if a != b}  # fmt: skip
        want = {"distinct": len(pairs),
                "also_reversed": sum((b, a) in pairs for a, b in pairs)}  # fmt: skip
        assert sequences.pair_directions(_seqs(lines)) == want
