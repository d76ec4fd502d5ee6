"""STOSA backbone: invariants, loss and ranking values, the passthrough option.

Causality is checked for every mechanism x refine_input on both output streams
(mean and covariance): changing the items after t, or the embeddings that sit
under the padding mask, leaves every output at positions <= t unchanged.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awrsr_jax import models, registry, train
from awrsr_jax.config import Config, validate
from awrsr_jax.data import build, generate
from awrsr_jax.models.stosa import STOSA, w2_sq_paired
from awrsr_jax.ops import losses
from tests.conftest import check_item_chunks_match_whole_catalogue, with_refine_params

L, V = 7, 30
MECHS = list(registry.BACKBONES["stosa"].table_mechs)


def _cfg(**kw):
    base = dict(backbone="stosa", hidden=8, max_len=L, layers=2, heads=2, dropout=0.0)
    base.update(kw)
    return validate(Config(**base))


@functools.cache
def _init_params(hidden, layers):
    """Freshly initialised ``mech=none`` parameters (eager init is the slow part,
    so it runs once per shape)."""
    cfg = _cfg(hidden=hidden, layers=layers)
    return models.build(cfg, V).init(jax.random.PRNGKey(0), jnp.ones((1, L), int))


@functools.cache
def _base_params(hidden, layers, noise):
    """Randomised (not near-constant, so any leak shows) initial parameters."""
    leaves, tree = jax.tree.flatten(_init_params(hidden, layers))
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    leaves = [x + noise * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, leaves)


def _model_and_params(cfg, noise=0.3):
    """The model of ``cfg`` and its parameters: the shared base plus random
    refinement matrices (``[n, n]``, or ``[H, n, n]`` per head) in each block."""
    p = dict(_base_params(cfg.hidden, 2, noise)["params"])
    if cfg.layers == 1:  # a one-layer model is the two-layer one minus block1
        del p["block1"]
    return models.build(cfg, V), {"params": with_refine_params(p, cfg, L, L)}


def _seq():
    return jnp.asarray([[0, 0, 3, 17, 5, 9, 22]], jnp.int32)  # two padded positions


def _poke_padding(params):
    """Changes everything that only reaches padded positions: item row 0 and the
    position embeddings of the two padded slots, in both streams."""
    p = dict(params["params"])
    ramp = 3.0 * jnp.arange(p["item_mu"].shape[1])
    for name in ("item_mu", "item_sigma"):
        p[name] = p[name].at[0].set(ramp - 5.0)
    for name in ("pos_mu", "pos_sigma"):
        p[name] = p[name].at[:2].add(4.0)
    return {"params": p}


def _check_causal(model, params, rngs=None, train=False):
    """Row 0 is the sequence; row j >= 1 changes the items after t = j + 1.
    One batched call per parameter set keeps this cheap in eager mode."""
    seq = _seq()
    ts = list(range(2, L - 1))
    rows = [seq[0]] + [
        seq[0].at[t + 1 :].set((seq[0, t + 1 :] + 7) % (V - 1) + 1) for t in ts
    ]
    batch = jnp.stack(rows)

    def fwd(params):
        # vmap over rows with one closed-over key: every row gets the same
        # dropout masks, so only the items differ between rows.
        one = lambda s: model.apply(params, s[None], train, rngs=rngs)  # noqa: E731
        return jax.tree.map(lambda x: x[:, 0], jax.vmap(one)(batch))

    mu, sg = fwd(params)
    for j, t in enumerate(ts, start=1):
        np.testing.assert_allclose(mu[j, : t + 1], mu[0, : t + 1], atol=1e-5)
        np.testing.assert_allclose(sg[j, : t + 1], sg[0, : t + 1], atol=1e-5)
        assert not np.allclose(sg[j, t + 1 :], sg[0, t + 1 :], atol=1e-4)
    mu3, sg3 = fwd(_poke_padding(params))
    # Padded outputs are held at (0, 1), so here "positions <= t" is all of them.
    np.testing.assert_allclose(mu3, mu, atol=1e-5)
    np.testing.assert_allclose(sg3, sg, atol=1e-5)
    assert (np.asarray(sg) > 0).all()


@pytest.mark.parametrize("refine_input", ["scores", "probs"])
@pytest.mark.parametrize("mech", MECHS)
def test_causal_and_padding_blind(mech, refine_input):
    cfg = _cfg(mech=mech, refine_input=refine_input, per_head=(mech == "value"))
    _check_causal(*_model_and_params(cfg))


def test_causal_with_dropout_and_passthrough():
    # Same dropout key for both inputs: the masks are identical, so only the
    # items can differ; the typo mode must be causal too.
    cfg = _cfg(mech="stoc", dropout=0.3, attn_dropout=0.2, stosa_mean_passthrough=True)
    model, params = _model_and_params(cfg)
    _check_causal(model, params, rngs={"dropout": jax.random.PRNGKey(5)}, train=True)


@pytest.mark.slow
def test_gradient_causality():
    """Outputs at t have exactly zero gradient w.r.t. the items after t."""
    model, params = _model_and_params(_cfg(mech="stoc", layers=1))
    seq, t = _seq(), 4

    def out_t(tables):
        p = {"params": {**params["params"], **tables}}
        mu, sg = model.apply(p, seq)
        return jnp.sum(mu[0, t] ** 2) + jnp.sum(sg[0, t] ** 2)

    tables = {k: params["params"][k] for k in ("item_mu", "item_sigma")}
    grads = jax.grad(out_t)(tables)
    later, earlier = np.asarray(seq[0, t + 1 :]), np.asarray(seq[0, 2 : t + 1])
    for g in grads.values():
        assert np.all(np.asarray(g)[later] == 0.0)
        assert np.all(np.abs(np.asarray(g)[earlier]).sum(-1) > 0)


def test_loss_hand_values():
    # Output N((0,0), diag(1,1)) at both positions.
    # pos 0: target N((1,0), I) -> d_pos = 1; negative N((0,2), diag(4,1)):
    #   d_neg = 4 + (2-1)^2 = 5; d(pos, neg) = 1 + 4 + 1 = 6 -> pvn = 0.
    # pos 1: target N((2,0), I) -> d_pos = 4; negative N((1,0), I): d_neg = 1,
    #   d(pos, neg) = 1 -> pvn = 3.  pos 2 is padding and ignored.
    w = 0.5
    mu = jnp.zeros((3, 2))
    sg = jnp.ones((3, 2))
    p_mu = jnp.array([[1.0, 0.0], [2.0, 0.0], [9.0, 9.0]])
    n_mu = jnp.array([[0.0, 2.0], [1.0, 0.0], [5.0, 5.0]])
    n_sg = jnp.array([[4.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    d_pos = w2_sq_paired(mu, sg, p_mu, sg)
    d_neg = w2_sq_paired(mu, sg, n_mu, n_sg)
    d_pn = w2_sq_paired(p_mu, sg, n_mu, n_sg)
    np.testing.assert_allclose(d_pos[:2], [1.0, 4.0], rtol=1e-6)
    np.testing.assert_allclose(d_neg[:2], [5.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(d_pn[:2], [6.0, 1.0], rtol=1e-6)
    want = (math.log1p(math.exp(-4.0)) + math.log1p(math.exp(3.0)) + w * 3.0) / 2
    got = losses.bpr_pvn(
        d_pos, d_neg, d_pn, where=jnp.array([True, True, False]), pvn_weight=w
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _np_w2(m1, s1, m2, s2):
    return np.sum((m1 - m2) ** 2, -1) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2, -1)


def _np_elu1(x):
    return np.where(x > 0, x + 1.0, np.exp(x))


def test_model_loss_and_ranking_match_numpy_reference():
    cfg = _cfg(mech="stoc", pvn_weight=0.3)
    model, params = _model_and_params(cfg, noise=0.1)
    seq = _seq()
    pos = jnp.asarray([[0, 0, 17, 5, 9, 22, 4]], jnp.int32)
    neg = jnp.asarray([[0, 0, 8, 2, 11, 6, 13]], jnp.int32)
    mu, sg = (np.asarray(x, np.float64)[0] for x in model.apply(params, seq))
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params["params"])
    i_mu, i_sg = p["item_mu"], _np_elu1(p["item_sigma"])
    d_pos = _np_w2(mu, sg, i_mu[pos[0]], i_sg[pos[0]])
    d_neg = _np_w2(mu, sg, i_mu[neg[0]], i_sg[neg[0]])
    d_pn = _np_w2(i_mu[pos[0]], i_sg[pos[0]], i_mu[neg[0]], i_sg[neg[0]])
    per = np.log1p(np.exp(-(d_neg - d_pos))) + 0.3 * np.maximum(0.0, d_pos - d_pn)
    want = per[2:].mean()
    got = model.apply(params, seq, pos, neg, False, method="loss")
    np.testing.assert_allclose(got, want, rtol=1e-4)
    # Ranking: -W2^2 (squared, no sqrt) from the last position to every item.
    scores = model.apply(params, seq, method="score_all")
    ref = -_np_w2(mu[-1][None], sg[-1][None], i_mu, i_sg)
    np.testing.assert_allclose(scores[0], ref, rtol=1e-4, atol=1e-4)


def test_mean_passthrough_reproduces_the_typo():
    seq = _seq()
    for passthrough in (True, False):
        cfg = _cfg(mech="simp", stosa_mean_passthrough=passthrough)
        model, params = _model_and_params(cfg)
        mu, sg = model.apply(params, seq)
        mu0, sg0 = model.apply(params, seq, method="embed")
        assert np.allclose(mu, mu0, atol=1e-6) == passthrough
        assert not np.allclose(sg, sg0, atol=1e-3)  # covariance always updated


@pytest.mark.slow
def test_traced_dropout_and_pvn_weight_vmap():
    # Members differing in dropout and pvn_weight share one compiled program.
    cfg = _cfg(mech="add", layers=1)
    seq, pos = _seq(), _seq().at[0, 2:].add(1)
    neg = jnp.full_like(seq, 29)
    params = _model_and_params(cfg)[1]

    def member_loss(rate, w):
        m = models.build(cfg, V, dropout=rate, pvn_weight=w)
        rngs = {"dropout": jax.random.PRNGKey(3)}
        return m.apply(params, seq, pos, neg, True, rngs=rngs, method="loss")

    rates, ws = jnp.array([0.0, 0.0, 0.5]), jnp.array([0.0, 1.0, 0.0])
    got = jax.jit(jax.vmap(member_loss))(rates, ws)
    want = [member_loss(float(r), float(w)) for r, w in zip(rates, ws)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    no_drop = STOSA(V, L, hidden=8, layers=1, heads=2, mech="add", pvn_weight=0.0)
    np.testing.assert_allclose(
        got[0], no_drop.apply(params, seq, pos, neg, False, method="loss"), rtol=1e-5
    )


def test_l2_penalty_and_init():
    model, params = _model_and_params(_cfg(mech="stoc"))
    want = 0.5 * sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(params))
    got = model.apply(params, method="l2_penalty")
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # The authors' init_weights: weights Normal(mean=0.01, std=0.02), biases 0,
    # LayerNorm scale 1.
    flat = jax.tree_util.tree_flatten_with_path(_init_params(8, 2))[0]
    by_kind = {"w": [], "bias": [], "scale": []}
    for path, x in flat:
        last = str(path[-1].key)
        kind = last if last in ("bias", "scale") else "w"
        by_kind[kind].append(np.ravel(x))
    w = np.concatenate(by_kind["w"])
    assert w.size > 2000
    assert abs(w.mean() - 0.01) < 2e-3 and abs(w.std() - 0.02) < 2e-3
    assert np.all(np.concatenate(by_kind["bias"]) == 0.0)
    assert np.all(np.concatenate(by_kind["scale"]) == 1.0)


@pytest.mark.slow
def test_item_chunked_ranks_and_top_k_match_the_whole_catalogue():
    # As tests/test_train_speed_invariants.py checks for SASRec.
    data, _ = build(generate(num_users=40, num_items=30, min_len=3, max_len=9), L)
    cfg = _cfg(mech="stoc", eval_chunk=16)
    params = train.init_member(cfg, data.num_items, 0)["params"]
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    noisy = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    params = jax.tree.unflatten(tree, noisy)
    score, scores = check_item_chunks_match_whole_catalogue(cfg, params, data)
    # STOSA's score_items also gives score_all's scores for every item.
    rows = jnp.broadcast_to(jnp.arange(data.num_items + 1), scores.shape)
    np.testing.assert_allclose(score(rows), scores, rtol=1e-6)


def test_sasrec_stoc_refused():
    with pytest.raises(ValueError, match="STOSA only"):
        validate(Config(backbone="sasrec", mech="stoc"))


@pytest.mark.slow
@pytest.mark.parametrize("mech", ["none", "stoc"])
def test_stosa_learns_the_synthetic_successors(mech):
    data, _ = build(generate(num_users=400, num_items=200, seed=0), 20)
    cfg = _cfg(mech=mech, hidden=32, max_len=20, batch_size=64, epochs=30)
    res = train.fit(cfg, data)
    # Popularity alone reaches NDCG@10 of a few percent here; successors give much more.
    assert res.test[0]["NDCG@10"] > 0.25
