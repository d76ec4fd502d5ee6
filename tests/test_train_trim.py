"""Trimmed row groups in training: the same loss and gradient as the full batch.

``train.trim.trimmed_loss_and_grad`` sorts a batch by input length, cuts each group of
rows to its own length and weights each group's mean loss by its share of the
targets. With dropout off this must equal the full-length batch loss and its
gradient for every backbone and refinement, and a one-member epoch with groups
must match the epoch without them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awrsr_jax import train
from awrsr_jax.data.dataset import build
from awrsr_jax.data.synthetic import generate
from tests.conftest import mech_config, tiny_config

N = 20  # max_len: widths 8, 16, 20

QUICK = [("sasrec", "value", "probs")]
SLOW = [
    ("sasrec", "none", "scores"),
    ("sasrec", "add", "scores"),
    ("sasrec", "simp", "scores"),
    ("stosa", "none", "scores"),
    ("stosa", "stoc", "scores"),
    ("stosa", "value", "scores"),
]
CASES = QUICK + [pytest.param(*c, marks=pytest.mark.slow) for c in SLOW]


@pytest.fixture(scope="module")
def data():
    seqs = generate(num_users=60, num_items=40, min_len=3, max_len=26, seed=3)
    return build(seqs, N)[0]


def _batch(data, rows, real):
    batch = data.train_seq[rows]
    seq = batch[:, :-1]
    pos = batch[:, 1:] * (real[:, None] & (seq > 0))
    neg = jax.random.randint(jax.random.PRNGKey(1), pos.shape, 1, data.num_items + 1)
    return seq, pos, neg


@pytest.mark.parametrize("backbone,mech,refine_input", CASES)
def test_trimmed_gradient_equals_the_full_batch_gradient(
    data, backbone, mech, refine_input
):
    cfg = mech_config(backbone, mech, refine_input, max_len=N, l2=0.1)
    params = jax.tree.map(
        lambda x: x[0], train.init_state(cfg, data.num_items, [4])["params"]
    )
    hp = jax.tree.map(lambda x: x[0], train.hparams(cfg, 1))
    rows = jnp.arange(13) * 4  # long and short rows mixed
    real = jnp.arange(13) < 11  # the last two rows are batch padding
    seq, pos, neg = _batch(data, rows, real)
    assert int(jnp.sum(seq > 0, 1).min()) < 8 < int(jnp.sum(seq > 0, 1).max())
    key = jax.random.PRNGKey(2)
    (ref_total, ref_loss), ref_g = jax.value_and_grad(train.step.loss_fn, has_aux=True)(
        params, cfg, data.num_items, hp, seq, pos, neg, key
    )
    loss, grads, penalty = train.trim.trimmed_loss_and_grad(
        params, cfg, data.num_items, hp, seq, pos, neg, key, 4
    )
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(loss + penalty, ref_total, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_g), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize(
    "active", [pytest.param([True], marks=pytest.mark.slow), [True, False, True]]
)
def test_trimmed_epoch_matches_the_plain_epoch(data, active):
    # Several members: the trimmed epoch runs them one after another (lax.map)
    # and skips the stopped one; the plain epoch vmaps them.
    cfg = tiny_config(max_len=N, batch_size=16, mech="value", trim_rows=4)
    m = len(active)
    hp, active = train.hparams(cfg, m), jnp.asarray(active)
    state = train.init_state(cfg, data.num_items, [5, 9, 2][:m])
    before = jax.tree.map(np.asarray, state)
    plain_fn, _ = train.compiled(cfg.replace(trim_rows=0))
    ref, ref_stats = plain_fn(jax.tree.map(jnp.copy, state), hp, active, data, 1)
    trim_fn, _ = train.compiled(cfg)
    got, stats = trim_fn(state, hp, active, data, 1)
    on = np.asarray(active)
    np.testing.assert_allclose(stats["loss"][on], ref_stats["loss"][on], rtol=1e-5)
    np.testing.assert_allclose(
        stats["grad_norm"][on], ref_stats["grad_norm"][on], rtol=1e-4
    )
    # Adam normalises each update to about lr, so a parameter whose gradient is
    # round-off may step +-lr either way: compare to a few lr.
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, atol=3 * cfg.lr)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(before), strict=True):
        np.testing.assert_array_equal(np.asarray(a)[~on], b[~on])


def test_auto_trims_only_padded_data_on_the_cpu(data):
    # User 1 trains on items 1-3: inputs 1, 2 (2 of 20 positions); user 2 fills
    # all 20. Fill = 22 / 40.
    half = build({1: [1, 2, 3, 4, 5], 2: list(range(1, 40))}, N)[0]
    dense = build({2: list(range(1, 40))}, N)[0]
    assert train.fill(half) == pytest.approx(0.55) and train.fill(dense) == 1.0
    auto = tiny_config(max_len=N)  # trim_rows=-1
    cpu = 16 if jax.default_backend() == "cpu" else 0
    assert train.trim_rows(auto) == train.trim_rows(auto, half) == cpu
    assert train.trim_rows(auto, dense) == 0
    assert train.trim_rows(auto.replace(trim_rows=4), dense) == 4
