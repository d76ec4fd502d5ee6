"""The speed work keeps the results: samplers, dropout, softmax, eval chunks,
ensembles.

Each refinement of issue 5 is checked against the plain computation it
replaces: the bitmask sampler against Python sets, the closed-form softmax
derivative against autodiff of the naive formula, item-chunked ranking and
top-k against whole-catalogue scoring, a one-member epoch against the vmapped
one, and a 2-member ensemble against two single runs.
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awrsr_jax import train
from awrsr_jax.data import build, generate, sampling
from awrsr_jax.ops import attention as att
from tests.conftest import check_item_chunks_match_whole_catalogue, tiny_config


@pytest.fixture(scope="module")
def tiny_data():
    data, _ = build(generate(num_users=40, num_items=30, min_len=3, max_len=9), 6)
    return data


def _segments(segs):
    flat = jnp.asarray(np.concatenate(segs).astype(np.int32))
    lens = np.array([len(s) for s in segs])
    end = np.cumsum(lens)
    return flat, jnp.asarray(end - lens, jnp.int32), jnp.asarray(end, jnp.int32)


def test_history_bits_match_python_sets():
    segs = [[1, 2, 3, 5, 8], [2, 2, 4], list(range(1, 11)), [10], [33, 64]]
    flat, start, end = _segments(segs)
    bits = np.asarray(sampling.history_bits(flat, start, end, 70))
    assert bits.shape == (5, 3)
    for row, seg in zip(bits, segs):
        taken = {i for i in range(96) if row[i // 32] >> (i % 32) & 1}
        assert taken == set(seg) | {0} | set(range(71, 96))


def test_bitmask_negatives_are_uniform_outside_the_history():
    segs = [[1, 2, 3, 5, 8], [2, 2, 4], list(range(1, 10))]
    flat, start, end = _segments(segs)
    bits = sampling.history_bits(flat, start, end, 10)
    draws = np.asarray(sampling.sample_from_bits(jax.random.PRNGKey(0), bits, 8000))
    for row, seg in zip(draws, segs):
        free = sorted(set(range(1, 11)) - set(seg))
        counts = collections.Counter(row.tolist())
        assert sorted(counts) == free
        # Each free item's share is 1/len(free) within 5 standard errors.
        p = 1 / len(free)
        tol = 5 * np.sqrt(p * (1 - p) / row.size)
        assert all(abs(c / row.size - p) <= tol for c in counts.values())


def test_bitmask_search_unrolled_off_the_cpu_draws_the_same(monkeypatch):
    # Off the CPU the word search is JAX's unrolled binary search: same draws.
    rng = np.random.default_rng(0)
    segs = [np.unique(rng.integers(1, 501, n)) for n in (3, 40, 300, 480)]
    flat, start, end = _segments(segs)
    bits = sampling.history_bits(flat, start, end, 500)  # 16 words per row
    key = jax.random.PRNGKey(5)
    on_cpu = np.asarray(sampling.sample_from_bits(key, bits, 400))
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    unrolled = np.asarray(sampling.sample_from_bits(key, bits, 400))
    np.testing.assert_array_equal(unrolled, on_cpu)
    for row, seg in zip(on_cpu, segs):
        assert not set(row.tolist()) & set(seg.tolist())


def test_epoch_negatives_avoid_each_users_training_history(tiny_data):
    bits = sampling.history_bits(
        tiny_data.hist_flat, tiny_data.hist_start, tiny_data.hist_end, 30
    )
    draws = np.asarray(sampling.sample_from_bits(jax.random.PRNGKey(3), bits, 50))
    flat, start, end = (
        np.asarray(x)
        for x in (tiny_data.hist_flat,)
        + (
            tiny_data.hist_start,
            tiny_data.hist_end,
        )
    )
    for u in range(tiny_data.num_train):
        hist = set(flat[start[u] : end[u]].tolist())
        assert not hist & set(draws[u].tolist())
        assert draws[u].min() >= 1 and draws[u].max() <= 30


def test_every_training_sequence_is_seen_once_per_epoch(tiny_data, monkeypatch):
    """Through :func:`train.train_epoch`, its ``_batches`` and loss spied on
    (the loss a constant, so no model compiles): each epoch's real batch slots
    are a permutation of the training rows and the last batch's padding slots
    are row 0 marked unreal; the loss receives every row's next-item targets
    exactly once and nothing from the padding slots; the same (seed, epoch)
    repeats its order, another epoch or another seed gives another order."""
    from awrsr_jax.train import epoch

    orders, targets = [], []
    batches = epoch._batches

    def spy_batches(k_epoch, u, bsz):
        steps, idx, real = batches(k_epoch, u, bsz)
        jax.debug.callback(lambda i, r: orders.append((i, r)), idx, real)
        return steps, idx, real

    def constant_loss(params, cfg, num_items, hp, seq, pos, neg, key):
        jax.debug.callback(lambda p: targets.extend(np.asarray(p).tolist()), pos)
        zero = sum(jnp.sum(p) for p in jax.tree.leaves(params)) * 0.0
        return zero, zero

    monkeypatch.setattr(epoch, "_batches", spy_batches)
    monkeypatch.setattr(epoch, "loss_fn", constant_loss)
    cfg = tiny_config(layers=1)  # batch_size 8
    u = tiny_data.num_train
    assert u % cfg.batch_size  # the last batch is padded
    rows = np.asarray(tiny_data.train_seq)
    want = sorted((r[1:] * (r[:-1] > 0)).tolist() for r in rows)
    hp = jax.tree.map(lambda x: x[0], train.hparams(cfg, 1))
    fn = jax.jit(functools.partial(train.train_epoch, cfg))
    states = {s: train.init_member(cfg, tiny_data.num_items, s) for s in (0, 1)}
    seen = {}
    for seed, ep in [(0, 0), (0, 1), (1, 0), (0, 0)]:
        state = states[seed]
        orders.clear()
        targets.clear()
        jax.block_until_ready(fn(state, hp, jnp.bool_(True), tiny_data, ep))
        jax.effects_barrier()
        ((idx, real),) = orders
        assert idx.shape == real.shape == (-(-u // cfg.batch_size), cfg.batch_size)
        assert sorted(idx[real].tolist()) == list(range(u))
        assert not idx[~real].any() and real.sum() == u
        got = [t for t in targets if any(t)]
        assert sorted(got) == want
        assert len(targets) - len(got) == idx.size - u  # padding slots only
        seen.setdefault((seed, ep), idx[real].tolist())
        assert seen[(seed, ep)] == idx[real].tolist()
    assert seen[(0, 0)] != seen[(0, 1)] and seen[(0, 0)] != seen[(1, 0)]


def test_hash_dropout_rate_scale_and_determinism():
    x = jnp.ones((400, 500))
    key = jax.random.PRNGKey(0)
    y = np.asarray(att.dropout(x, 0.2, key))
    assert set(np.unique(y).tolist()) == {0.0, 1.25}
    assert abs((y > 0).mean() - 0.8) < 5 * np.sqrt(0.16 / y.size)
    np.testing.assert_array_equal(y, np.asarray(att.dropout(x, 0.2, key)))
    other = np.asarray(att.dropout(x, 0.2, jax.random.PRNGKey(1)))
    # Independent masks agree on 0.8^2 + 0.2^2 = 68% of the entries.
    assert abs(((y > 0) == (other > 0)).mean() - 0.68) < 0.01
    assert att.dropout(x, 0.2, None) is x


def _naive_masked_softmax(x, mask):
    x = jnp.where(mask, x, jnp.finfo(jnp.float32).min)
    e = jnp.where(mask, jnp.exp(x - jnp.max(x, -1, keepdims=True)), 0.0)
    d = jnp.sum(e, -1, keepdims=True)
    return e / jnp.where(d > 0, d, 1.0)


def test_masked_softmax_derivative_matches_autodiff():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5, 5))
    valid = jnp.asarray([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], bool)
    mask = att.attention_mask(valid)
    w = jax.random.normal(jax.random.PRNGKey(1), x.shape)

    def loss(fn, x):
        return jnp.sum(w * fn(x, mask) ** 2)

    np.testing.assert_allclose(
        att.masked_softmax(x, mask), _naive_masked_softmax(x, mask), atol=1e-7
    )
    got = jax.grad(functools.partial(loss, att.masked_softmax))(x)
    ref = jax.grad(functools.partial(loss, _naive_masked_softmax))(x)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert np.all(np.asarray(got)[~np.broadcast_to(np.asarray(mask), x.shape)] == 0)
    t = jax.jvp(lambda x: att.masked_softmax(x, mask), (x,), (w,))[1]
    t_ref = jax.jvp(lambda x: _naive_masked_softmax(x, mask), (x,), (w,))[1]
    np.testing.assert_allclose(t, t_ref, atol=1e-6)


@pytest.mark.slow
def test_item_chunked_ranks_and_top_k_match_the_whole_catalogue(tiny_data):
    cfg = tiny_config(eval_chunk=16)
    params = train.init_member(cfg, tiny_data.num_items, 0)["params"]
    check_item_chunks_match_whole_catalogue(cfg, params, tiny_data)


@pytest.mark.slow
def test_one_member_epoch_equals_the_vmapped_epoch(tiny_data):
    # Trimmed row groups draw other dropout masks: off here (tested on their own).
    cfg = tiny_config(dropout=0.3, trim_rows=0)
    state = train.init_state(cfg, tiny_data.num_items, [5])
    hp = train.hparams(cfg, 1)
    active = jnp.ones(1, bool)
    plain = jax.vmap(
        functools.partial(train.train_epoch, cfg), in_axes=(0, 0, 0, None, None)
    )
    ref, ref_stats = jax.jit(plain)(state, hp, active, tiny_data, 2)
    epoch_fn, _ = train.compiled(cfg)
    copy = jax.tree.map(jnp.copy, state)  # the epoch donates its state
    got, stats = epoch_fn(copy, hp, active, tiny_data, 2)
    np.testing.assert_allclose(stats["loss"], ref_stats["loss"], rtol=1e-5)
    np.testing.assert_allclose(stats["grad_norm"], ref_stats["grad_norm"], rtol=1e-4)
    # Adam scales each update to about lr whatever the gradient's size, so a
    # parameter whose gradient is pure round-off (batched vs plain matmuls sum
    # in another order) may step +-lr either way: compare to a few lr.
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, atol=3 * cfg.lr)


@pytest.mark.slow
def test_epoch_is_a_pure_function_of_seed_and_epoch(tiny_data):
    cfg = tiny_config(dropout=0.3)
    epoch_fn, _ = train.compiled(cfg)
    hp, active = train.hparams(cfg, 1), jnp.ones(1, bool)
    runs = []
    for _ in range(2):
        state = train.init_state(cfg, tiny_data.num_items, [7])
        state, _ = epoch_fn(state, hp, active, tiny_data, 3)
        runs.append(jax.tree.leaves(state["params"]))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_inactive_member_is_left_untouched(tiny_data):
    cfg = tiny_config()
    epoch_fn, _ = train.compiled(cfg)
    state = train.init_state(cfg, tiny_data.num_items, [1, 2])
    before = jax.tree.map(np.asarray, state)
    after, _ = epoch_fn(
        state, train.hparams(cfg, 2), jnp.asarray([True, False]), tiny_data, 0
    )
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(a)[1], b[1])
    moved = [
        not np.array_equal(np.asarray(a)[0], b[0])
        for a, b in zip(
            jax.tree.leaves(after["params"]), jax.tree.leaves(before["params"])
        )
    ]
    assert any(moved)


@pytest.mark.slow
def test_two_member_ensemble_equals_two_single_runs(tiny_data):
    cfg = tiny_config(epochs=3, dropout=0.2)
    both = train.fit(cfg, tiny_data, seeds=[3, 11])
    for m, seed in enumerate([3, 11]):
        one = train.fit(cfg, tiny_data, seeds=[seed])
        assert one.best_epoch[0] == both.best_epoch[m]
        for split in ("valid", "test"):
            got, ref = getattr(both, split)[m], getattr(one, split)[0]
            for name in ref:
                assert got[name] == pytest.approx(ref[name], abs=1e-6), (split, name)


def test_members_that_stop_early_leave_the_others_bit_identical(tiny_data, monkeypatch):
    # Five members, four of which stop within a few epochs: once at most half
    # train, epochs and validations run on the active ones only (padded to a
    # width of 2), which must change no member's numbers.
    from awrsr_jax.train import loop

    cfg = tiny_config(epochs=12, patience=2, trim_rows=0)
    sweep = {"lr": [0.3, 0.2, 0.25, 1e-3, 0.15]}
    widths = []
    run_epoch = loop._run_epoch

    def spy(lp, rows, *args):
        widths.append(lp.active.size if rows is None else len(rows))
        return run_epoch(lp, rows, *args)

    monkeypatch.setattr(loop, "_run_epoch", spy)
    narrow = train.fit(cfg, tiny_data, sweep=sweep)
    monkeypatch.setattr(loop, "_rows_to_run", lambda active: None)
    full = train.fit(cfg, tiny_data, sweep=sweep)
    assert min(widths) == 2 and widths[0] == 5
    assert narrow.best_epoch == full.best_epoch
    np.testing.assert_array_equal(narrow.test_ranks, full.test_ranks)
    for a, b in zip(
        jax.tree.leaves(narrow.best_params), jax.tree.leaves(full.best_params)
    ):
        np.testing.assert_array_equal(a, b)


def test_rows_to_run_pads_the_active_members_to_a_power_of_two():
    from awrsr_jax.train.loop import _rows_to_run

    assert _rows_to_run(np.array([True] * 5 + [False] * 3)) is None
    assert _rows_to_run(np.array([True, False, True, False, False])).tolist() == [0, 2]
    got = _rows_to_run(
        np.array([False, True, False, True, True, False, False, False, False])
    )
    assert got.tolist() == [0, 1, 3, 4]  # 3 active, padded by the first stopped
    assert _rows_to_run(np.array([False, False, True, False, False])).tolist() == [0, 2]
