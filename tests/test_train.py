"""Training loop behaviour: early stopping, sampled protocol, learning."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awrsr_jax import evaluate, train
from awrsr_jax.data import build, generate
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def tiny_data():
    data, _ = build(generate(num_users=40, num_items=30, min_len=3, max_len=9), 6)
    return data


def test_early_stopping_counts_patience(tiny_data):
    # A vanishing learning rate keeps validation NDCG@5 flat: the first epoch stays
    # best and the run stops after `patience` evaluations without improvement.
    cfg = tiny_config(lr=1e-12, epochs=50, patience=3)
    res = train.fit(cfg, tiny_data)
    assert res.best_epoch == [0]
    assert res.epochs_run == 4


def test_epoch_seconds_count_only_epochs_every_member_trained(tiny_data):
    # Member 1 is stopped before the run: no epoch has every member training,
    # so none is timed; the per-epoch records still carry their seconds.
    cfg = tiny_config(epochs=2, patience=5)
    loop = train.LoopState.start(cfg, tiny_data.num_items, [0, 1])
    loop.active[1] = False
    records = []
    res = train.fit(cfg, tiny_data, seeds=[0, 1], loop=loop, on_epoch=records.append)
    assert loop.seconds == [] and np.isnan(res.seconds_per_epoch)
    assert [r["member"] for r in records] == [0, 0] and records[1]["seconds"] > 0
    # Both training: every epoch is timed, the first (compiling) one left out.
    loop = train.LoopState.start(cfg, tiny_data.num_items, [0, 1])
    res = train.fit(cfg, tiny_data, seeds=[0, 1], loop=loop)
    assert len(loop.seconds) == 2
    assert res.seconds_per_epoch == pytest.approx(loop.seconds[1])


def test_sampled_negatives_avoid_the_whole_history():
    hist = jnp.asarray([[1, 2, 3, 0], [4, 5, 6, 7]])
    negs = np.asarray(evaluate._sample_outside(jax.random.PRNGKey(0), hist, 9, 100))
    assert negs.shape == (2, 100)
    assert set(negs[0].tolist()) <= {4, 5, 6, 7, 8, 9}
    assert set(negs[1].tolist()) <= {1, 2, 3, 8, 9}


def test_sampled100_ranks_are_within_101(tiny_data):
    cfg = tiny_config(protocol="sampled100", epochs=1)
    state = train.init_member(cfg, tiny_data.num_items, 0)
    ranks = np.asarray(
        evaluate.eval_ranks(
            cfg, state["params"], tiny_data, "test", jax.random.PRNGKey(0)
        )
    )
    assert ranks.shape == (tiny_data.num_eval,)
    assert ranks.min() >= 1 and ranks.max() <= 101


@pytest.mark.slow
@pytest.mark.parametrize("mech", ["none", "value"])
def test_sasrec_learns_the_synthetic_successors(mech):
    data, _ = build(generate(num_users=400, num_items=200, seed=0), 20)
    cfg = tiny_config(
        mech=mech, hidden=32, max_len=20, heads=1, batch_size=64, epochs=40
    )
    res = train.fit(cfg, data)
    # Popularity alone reaches NDCG@10 of a few percent here; successors give much more.
    assert res.test[0]["NDCG@10"] > 0.25
