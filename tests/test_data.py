"""Leave-one-out split, the two file layouts, file errors, negative sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awrsr_jax.data import (
    DataFileError,
    build,
    generate,
    leave_one_out,
    read_sequences,
    write_sequences,
)
from awrsr_jax.data.sampling import sample_negatives, segment_contains

SEQS = {7: [1, 2, 3, 4, 5], 8: [6, 1], 9: [2, 9, 4]}


def test_leave_one_out_by_hand():
    train, valid, test = leave_one_out(SEQS)
    assert train == {7: [1, 2, 3], 8: [6, 1], 9: [2]}
    assert valid == {7: ([1, 2, 3], 4), 9: ([2], 9)}
    assert test == {7: ([1, 2, 3, 4], 5), 9: ([2, 9], 4)}  # user 8: train only


def test_build_arrays_by_hand():
    data, users = build(SEQS, max_len=3)
    assert users.tolist() == [7, 9]
    # Training rows: last L+1 items of the training part; user 9 has no target.
    assert data.train_seq.tolist() == [[0, 1, 2, 3], [0, 0, 6, 1]]
    assert data.valid_inp.tolist() == [[1, 2, 3], [0, 0, 2]]
    assert data.valid_tgt.tolist() == [4, 9]
    assert data.test_inp.tolist() == [[2, 3, 4], [0, 2, 9]]
    assert data.test_tgt.tolist() == [5, 4]
    assert data.eval_hist.tolist() == [[1, 2, 3, 4], [0, 0, 2, 9]]
    flat = np.asarray(data.hist_flat)
    segs = [flat[s:e].tolist() for s, e in zip(data.hist_start, data.hist_end)]
    assert segs == [[1, 2, 3], [1, 6]]
    assert data.num_items == 9


def test_split_invariants_on_generated_data():
    seqs = generate(num_users=50, num_items=80, min_len=2, max_len=12, seed=3)
    train, valid, test = leave_one_out(seqs)
    for u, s in seqs.items():
        if len(s) < 3:
            assert u not in valid and train[u] == s
            continue
        assert train[u] == s[:-2] and valid[u] == (s[:-2], s[-2])
        assert test[u] == (s[:-1], s[-1])


def _many_generated_datasets(count=20):
    """``count`` seeded datasets of varied size and length (users of 1, 2 and
    3+ items), with shuffled sparse user ids; every other one with repeated
    items (ids folded onto a few), so positions, not values, must decide."""
    for seed in range(count):
        rng = np.random.default_rng(seed)
        longest = int(rng.integers(4, 15))
        seqs = generate(
            num_users=int(rng.integers(10, 80)),
            num_items=longest + 4 + int(rng.integers(0, 60)),
            min_len=int(rng.integers(1, 4)),
            max_len=longest,
            seed=seed,
        )
        rows = list(seqs.values())
        if seed % 2:
            rows = [[1 + (i - 1) % 5 for i in s] for s in rows]
        ids = 1 + rng.permutation(10**6)[: len(rows)]
        yield {int(u): s for u, s in zip(ids, rows)}, int(rng.integers(2, 10))


def test_leave_one_out_arrays_on_many_generated_datasets():
    """Over 20 generated datasets, the split and every built array by position:
    training rows hold only items before position len-2 (the last L+1 of them,
    left-padded) and their negatives' history exactly those items; valid =
    (item[:-2], item[-2]), test = (item[:-1], item[-1]) with the last L inputs
    left-padded; users with fewer than 3 items train on everything and are in
    no valid/test array, order or bucket count (the denominators)."""

    def pad(items, width):
        items = items[-width:]
        return [0] * (width - len(items)) + list(items)

    lengths = set()
    for seqs, L in _many_generated_datasets():
        train, valid, test = leave_one_out(seqs)
        data, users = build(seqs, max_len=L)
        arr = {k: np.asarray(v) for k, v in vars(data).items() if hasattr(v, "shape")}
        eligible = [u for u, s in seqs.items() if len(s) >= 3]
        short = [u for u, s in seqs.items() if len(s) < 3]
        assert users.tolist() == eligible and set(valid) == set(test) == set(eligible)
        assert data.num_eval == len(eligible) == len(arr["test_tgt"])
        for split in ("valid", "test"):
            assert sorted(arr[f"{split}_order"]) == list(range(len(eligible)))
            assert sum(getattr(data, f"{split}_counts")) == len(eligible)
        parts = [s[:-2] if len(s) >= 3 else s for s in seqs.values()]
        assert list(train.values()) == parts
        parts = [p for p in parts if len(p) >= 2]  # one item: no target, no row
        assert arr["train_seq"].tolist() == [pad(p, L + 1) for p in parts]
        flat = arr["hist_flat"]
        bounds = zip(arr["hist_start"], arr["hist_end"])
        assert [flat[a:b].tolist() for a, b in bounds] == [
            sorted(set(p)) for p in parts
        ]
        h = arr["eval_hist"].shape[1]
        for r, u in enumerate(eligible):
            s = seqs[u]
            assert valid[u] == (s[:-2], s[-2]) and test[u] == (s[:-1], s[-1])
            assert arr["valid_tgt"][r] == s[-2] and arr["test_tgt"][r] == s[-1]
            assert arr["valid_inp"][r].tolist() == pad(s[:-2], L)
            assert arr["test_inp"][r].tolist() == pad(s[:-1], L)
            assert arr["eval_hist"][r].tolist() == pad(s[:-1], h)
        for u in short:
            assert train[u] == seqs[u] and u not in valid and u not in test
        lengths |= {len(s) for s in seqs.values()}
    assert {1, 2, 3} <= lengths  # users of every kind were exercised


def test_both_layouts_read_the_same(tmp_path):
    a, b = tmp_path / "lines.txt", tmp_path / "pairs.txt"
    write_sequences(a, SEQS)
    b.write_text("".join(f"{u} {i}\n" for u, s in SEQS.items() for i in s))
    assert read_sequences(a) == SEQS
    assert read_sequences(b) == SEQS
    assert read_sequences(b, "pairs") == SEQS


@pytest.mark.parametrize(
    "text, line, msg",
    [
        ("1 2 3\n2 x 4\n", 2, "not a positive integer"),
        ("1 2 3\n2 -4 4\n", 2, "not a positive integer"),
        ("1 2 3\n2 0 4\n", 2, "reserved for padding"),
        ("1 2 3\n1 4 5\n", 2, "appears twice"),
        ("1 2 3\n2\n", 2, "needs a user id"),
        ("", None, "empty"),
    ],
)
def test_file_errors_name_path_and_line(tmp_path, text, line, msg):
    f = tmp_path / "bad.txt"
    f.write_text(text)
    with pytest.raises(DataFileError, match=msg) as e:
        read_sequences(f)
    assert str(f) in str(e.value)
    if line:
        assert f"{f}:{line}:" in str(e.value)


def test_non_contiguous_pairs_refused(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("1 5\n1 6\n2 7\n2 8\n1 9\n")
    with pytest.raises(DataFileError, match=":5: user 1's lines are not contiguous"):
        read_sequences(f, "pairs")


def test_segment_contains_matches_python():
    rng = np.random.default_rng(0)
    segs = [np.unique(rng.integers(1, 50, size=n)) for n in (0, 1, 7, 30)]
    flat = jnp.asarray(np.concatenate(segs).astype(np.int32))
    ends = np.cumsum([len(s) for s in segs])
    starts = ends - [len(s) for s in segs]
    for q in range(0, 52):
        got = segment_contains(
            flat, jnp.asarray(starts), jnp.asarray(ends), jnp.full(4, q, jnp.int32)
        )
        assert got.tolist() == [bool(q in s) for s in segs]


def test_negatives_avoid_history_and_cover_the_rest():
    hist = jnp.asarray([1, 2, 3, 5, 8], jnp.int32)  # one user, sorted
    start = jnp.zeros((4000,), jnp.int32)
    end = jnp.full((4000,), 5, jnp.int32)
    neg = np.asarray(sample_negatives(jax.random.PRNGKey(0), 10, hist, start, end))
    assert set(neg.tolist()) == {4, 6, 7, 9, 10}
