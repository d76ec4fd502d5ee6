"""Training loop behaviour: early stopping, sampled protocol, learning."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awrsr_jax import evaluate, train
from awrsr_jax.data import build, generate
from tests.conftest import run_tiny, tiny_config


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


def test_full_ranking_is_the_default_and_sampled_results_are_labelled(
    tmp_path, monkeypatch
):
    """Full ranking is the default (Config's, so the --protocol flag's too);
    another protocol is refused naming the flag; the runner hands the protocol
    to ``train.fit`` (a stand-in here) and its results.json and config.json
    say which: "full ranking over all 30 items" by default, "100 sampled
    negatives" under protocol=sampled100, never the other."""
    from awrsr_jax import analysis, checkpoint, config

    assert config.Config().protocol == "full" == config.PROTOCOLS[0]
    with pytest.raises(ValueError, match="--protocol"):
        config.validate(config.Config(protocol="sampled50"))
    seen = []

    def fake_fit(cfg, data, *, seeds=None, **_):
        seen.append(cfg.protocol)
        vals = [{"NDCG@5": 0.5}]
        return train.FitResult(
            best_epoch=[0], epochs_run=1, valid=vals, test=vals,
            test_ranks=np.ones((1, data.num_eval), np.int32), best_params=None,
            seconds_per_epoch=0.1,
        )  # fmt: skip

    monkeypatch.setattr(train, "fit", fake_fit)
    monkeypatch.setattr(checkpoint.Store, "save", lambda *a: None)
    monkeypatch.setattr(analysis, "count_params", lambda *a: {"params": 1})
    out = {}
    for name, kw in [("default", {}), ("sampled100", {"protocol": "sampled100"})]:
        run_tiny(tmp_path / name, tiny_config(**kw))
        res = json.loads((tmp_path / name / "results.json").read_text())
        cfg = json.loads((tmp_path / name / "config.json").read_text())["config"]
        out[name] = (res["protocol"], cfg["protocol"])
    assert seen == ["full", "sampled100"]
    (full, full_cfg), (sampled, sampled_cfg) = out["default"], out["sampled100"]
    assert full_cfg == "full" and sampled_cfg == "sampled100"
    assert "full ranking over all 30 items" in full and "sampled" not in full
    assert "100 sampled negatives" in sampled and "full ranking" not in sampled


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
