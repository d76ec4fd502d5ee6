"""BERT4Rec backbone: shapes, padding, bidirectionality, a numpy reference,
the cloze targets, trimming and a tiny run that learns.

"Causal" does not apply to BERT4Rec: a later item must change the output at an
earlier position. The invariant that remains is that padding (its amount, or
whatever embedding sits under it) never changes a real position's output.
"""

from __future__ import annotations

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awrsr_jax import evaluate, models, registry, train
from awrsr_jax.config import Config, validate
from awrsr_jax.data import build, generate
from awrsr_jax.models import bert4rec
from awrsr_jax.ops import metrics
from awrsr_jax.train.step import loss_fn
from awrsr_jax.train.trim import trimmed_loss_and_grad
from tests.conftest import with_refine_params

L, V = 6, 30  # max_len (the model has L + 1 positions), num_items
MECHS = list(registry.BACKBONES["bert4rec"].table_mechs)


def _cfg(**kw):
    base = dict(backbone="bert4rec", hidden=8, max_len=L, layers=2, heads=2,
                dropout=0.0)  # fmt: skip
    return validate(Config(**{**base, **kw}))


@functools.cache
def _base_params(layers):
    """Initial ``mech=none`` parameters plus noise, so that any leak shows
    (initialised once per depth: compiling dominates this file's time)."""
    model = models.build(_cfg(layers=layers), V)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.ones((1, L), jnp.int32))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    leaves = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, leaves)


def _model_and_params(cfg):
    """The model of ``cfg`` and the shared base parameters plus random
    ``[n, n]`` (``[H, n, n]`` per head) refinement matrices, ``n = L + 1``."""
    p = dict(_base_params(cfg.layers)["params"])
    return models.build(cfg, V), {"params": with_refine_params(p, cfg, L + 1, L)}


@functools.partial(jax.jit, static_argnums=0, static_argnames=("method", "train"))
def _apply(model, params, *args, **kw):
    """``model.apply``, compiled."""
    return model.apply(params, *args, **kw)


def _seq():
    return jnp.asarray([[0, 0, 3, 17, 5, 9]], jnp.int32)  # two padded positions


def test_shapes_and_the_mask_token_is_never_scored():
    model, params = _model_and_params(_cfg(mech="value", layers=1))
    p = params["params"]
    assert p["item_emb"].shape == (V + 2, 8)  # padding, items, [mask]
    assert p["pos_emb"].shape == (L + 1, 8)
    assert p["block0"]["W_RV"].shape == (L + 1, L + 1)
    seq = jnp.concatenate([_seq(), _seq().at[0, 1].set(4)])
    rows = jnp.asarray([[1, 5, 30], [7, 7, 2]])

    @jax.jit
    def outputs(params):
        state = model.apply(params, seq, method="user_state")

        def score(ids):
            return model.apply(params, state, ids, method="score_items")

        h = model.apply(params, seq)
        scores = model.apply(params, seq, method="score_all")
        return h, scores, score(jnp.arange(V + 1)), score(rows)

    h, scores, every, some = outputs(params)
    assert h.shape == (2, L, 8) and np.all(h[0, :2] == 0) and np.all(h[1, :1] == 0)
    assert scores.shape == (2, V + 1)  # ids 0..num_items, not [mask]
    np.testing.assert_allclose(every, scores, rtol=1e-5)
    np.testing.assert_allclose(some, jnp.take_along_axis(scores, rows, 1), rtol=1e-5)
    # A history that fills all L + 1 positions leaves no room for [mask].
    with pytest.raises(ValueError, match="exceeds max_len"):
        _apply(model, params, jnp.ones((1, L + 1), jnp.int32), method="score_all")


@functools.partial(jax.jit, static_argnums=0)
def _variants(model, params, poked):
    """One compiled call: the outputs of ``_seq()``, of it with its last item
    changed, under ``poked`` parameters and cut to its real items, and the
    scores of the full and the cut input."""
    seq = _seq()
    h = model.apply(params, jnp.concatenate([seq, seq.at[0, -1].set(1)]))
    cut = seq[:, 2:]
    return dict(
        h=h[0],
        later=h[1],
        poked=model.apply(poked, seq)[0],
        cut=model.apply(params, cut)[0],
        scores=model.apply(params, seq, method="score_all"),
        scores_cut=model.apply(params, cut, method="score_all"),
    )


# Non-slow subset (each case compiles its own model).
QUICK = {("value", "scores"), ("add", "probs")}
CASES = [
    c if c in QUICK else pytest.param(*c, marks=pytest.mark.slow)
    for c in [(m, r) for m in MECHS for r in ("scores", "probs")]
    if c != ("none", "probs")
]


@pytest.mark.parametrize("mech,refine_input", CASES)
def test_bidirectional_and_padding_blind(mech, refine_input):
    cfg = _cfg(mech=mech, refine_input=refine_input, per_head=(mech == "simp"),
               layers=1)  # fmt: skip
    model, params = _model_and_params(cfg)
    # Whatever sits under the padding: item row 0 and the padded positions'
    # embeddings (a length-L input reads position rows 1..L).
    p = dict(params["params"])
    p["item_emb"] = p["item_emb"].at[0].set(100.0 * jnp.arange(8))
    p["pos_emb"] = p["pos_emb"].at[1:3].add(4.0)
    out = _variants(model, params, {"params": p})
    h = out["h"]
    # A later item changes every earlier real position's output.
    assert np.all(np.abs(out["later"] - h)[2:-1].max(-1) > 1e-4)
    np.testing.assert_allclose(out["poked"][2:], h[2:], atol=1e-5)
    # The amount of padding: the cut input gives the same outputs and scores.
    np.testing.assert_allclose(out["cut"], h[2:], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["scores_cut"], out["scores"], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------ numpy reference


def _np_ln(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-12) * p["scale"] + p["bias"]


def _np_gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _np_dense(x, p):
    return x @ p["kernel"] + p["bias"]


def _np_softmax_rows(logits, allowed):
    """Row-wise softmax over the allowed entries; a row with none is all 0."""
    out = np.zeros_like(logits)
    for k in range(logits.shape[0]):
        idx = np.flatnonzero(allowed[k])
        if idx.size:
            e = np.exp(logits[k, idx] - logits[k, idx].max())
            out[k, idx] = e / e.sum()
    return out


def _np_weights(a, allowed, p, mech, dh):
    """The attention weights of one head from its scores, entry by entry."""
    n = a.shape[0]
    a = np.where(allowed, a, 0.0)
    if mech == "none":
        return _np_softmax_rows(a, allowed)
    # value: R = A W_RQ, S = A W_RK, C = softmax(mask(R S^T / sqrt(dh))) (A W_RV)
    r, s, vv = a @ p["W_RQ"], a @ p["W_RK"], a @ p["W_RV"]
    inner = np.array([[r[k] @ s[t] for t in range(n)] for k in range(n)])
    g = _np_softmax_rows(inner / np.sqrt(dh), allowed)
    c = np.array([[sum(g[k, j] * vv[j, t] for j in range(n)) for t in range(n)]
                  for k in range(n)])  # fmt: skip
    return _np_softmax_rows(np.where(allowed, c, 0.0), allowed)


def _np_block(x, valid, p, mech, heads):
    n, d = x.shape
    dh = d // heads
    q, k, v = (_np_dense(x, p[name]) for name in ("q", "k", "v"))
    allowed = valid[:, None] & valid[None, :]  # bidirectional: padding only
    ctx = np.zeros_like(x)
    for h in range(heads):
        cols = slice(h * dh, (h + 1) * dh)
        a = np.array([[q[i, cols] @ k[j, cols] for j in range(n)] for i in range(n)])
        w = _np_weights(a / np.sqrt(dh), allowed, p, mech, dh)
        ctx[:, cols] = w @ v[:, cols]
    x = _np_ln(x + _np_dense(ctx, p["out"]), p["ln_attn"])
    f = _np_dense(_np_gelu(_np_dense(x, p["ffn1"])), p["ffn2"])
    return _np_ln(x + f, p["ln_ffn"]) * valid[:, None]


def _np_forward(seq, p, mech, layers, heads):
    """Output states of one sequence (``[n]`` -> ``[n, D]``), computed on it
    left-padded to the model's ``L + 1`` positions."""
    n = len(seq)
    seq = np.concatenate([np.zeros(L + 1 - n, seq.dtype), seq])
    valid = seq > 0
    x = p["item_emb"][seq] + p["pos_emb"][-len(seq) :]
    x = _np_ln(x, p["ln_emb"]) * valid[:, None]
    for i in range(layers):
        x = _np_block(x, valid, p[f"block{i}"], mech, heads)
    out = _np_ln(_np_gelu(_np_dense(x, p["head"])), p["ln_head"]) * valid[:, None]
    return out[-n:]


@pytest.mark.parametrize(
    "mech,layers", [("value", 1), pytest.param("none", 2, marks=pytest.mark.slow)]
)
def test_matches_a_numpy_reference(mech, layers):
    cfg = _cfg(mech=mech, layers=layers)
    model, params = _model_and_params(cfg)
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params["params"])
    seq = np.asarray(_seq()[0])
    got = _apply(model, params, jnp.asarray(seq[None]))[0]
    np.testing.assert_allclose(got, _np_forward(seq, p, mech, layers, 2), atol=1e-4)
    # score_all: the output at [mask] appended after the history, tied items.
    with_mask = np.append(seq, V + 1)
    state = _np_forward(with_mask, p, mech, layers, 2)[-1]
    want = state @ p["item_emb"][: V + 1].T + p["out_bias"]
    got = _apply(model, params, jnp.asarray(seq[None]), method="score_all")[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # The loss: cross-entropy over items 1..V at the masked positions only.
    inp = jnp.asarray([[0, 0, 3, V + 1, 5, V + 1]])
    pos = jnp.asarray([[0, 0, 0, 17, 0, 9]])
    h = _np_forward(np.asarray(inp[0]), p, mech, layers, 2)
    logits = h @ p["item_emb"][1 : V + 1].T + p["out_bias"][1:]
    lse = np.log(np.exp(logits).sum(-1))
    want = np.mean([lse[t] - logits[t, pos[0, t] - 1] for t in (3, 5)])
    got = _apply(model, params, inp, pos, 0 * pos, method="loss", train=False)
    np.testing.assert_allclose(got, want, rtol=1e-4)


# ------------------------------------------------------------ cloze targets


def _cloze(batch, real, seed=0, mask_prob=0.2, mask_last=0.0):
    model = types.SimpleNamespace(num_items=50, mask_prob=mask_prob,
                                  mask_last=mask_last)  # fmt: skip
    seq, pos = registry.cloze_targets(
        jnp.asarray(batch), jnp.asarray(real), jax.random.PRNGKey(seed), model
    )
    return np.asarray(seq), np.asarray(pos)


def test_cloze_targets_by_hand():
    batch = np.array([[0, 0, 4, 8, 2], [0, 0, 0, 6, 9], [0, 3, 1, 5, 7]])
    real = np.array([True, True, False])  # the last row pads the batch
    # mask_prob 1: every real item is masked; padding and the padding row never.
    seq, pos = _cloze(batch, real, mask_prob=1.0)
    np.testing.assert_array_equal(seq[:2], [[0, 0, 51, 51, 51], [0, 0, 0, 51, 51]])
    np.testing.assert_array_equal(pos[:2], np.where(batch[:2] > 0, batch[:2], 0))
    np.testing.assert_array_equal(seq[2], batch[2])
    np.testing.assert_array_equal(pos[2], 0)
    # A tiny mask_prob still masks one real item per row (BERT's max(1, .)).
    for s in range(5):
        seq, pos = _cloze(batch, real, seed=s, mask_prob=1e-6)
        assert (pos[:2] > 0).sum(1).tolist() == [1, 1]
        assert np.all(batch[pos > 0] > 0)
    # mask_last 1: the last item alone, as at evaluation.
    seq, pos = _cloze(batch, real, mask_prob=1.0, mask_last=1.0)
    np.testing.assert_array_equal(seq[:2], [[0, 0, 4, 8, 51], [0, 0, 0, 6, 51]])
    np.testing.assert_array_equal(pos[:2], [[0, 0, 0, 0, 2], [0, 0, 0, 0, 9]])


def test_cloze_targets_statistics():
    rng = np.random.default_rng(0)
    lens = rng.integers(2, 21, 4000)
    batch = np.where(np.arange(21) >= 21 - lens[:, None],
                     rng.integers(1, 51, (4000, 21)), 0)  # fmt: skip
    real = np.ones(4000, bool)
    seq, pos = _cloze(batch, real, mask_prob=0.2)
    masked = seq == 51
    np.testing.assert_array_equal(masked, pos > 0)  # targets only where masked
    np.testing.assert_array_equal(pos[masked], batch[masked])
    np.testing.assert_array_equal(seq[~masked], batch[~masked])
    assert not np.any(masked & (batch == 0))
    # BERT's count: max(1, round(n p)) items of each row, never over the cap
    # the loss scores; each real position equally likely.
    np.testing.assert_array_equal(masked.sum(1), np.maximum(1, np.round(lens * 0.2)))
    assert masked.sum(1).max() <= bert4rec.cloze_cap(21, 0.2) == 5
    share = masked[lens == 20][:, 1:].mean(0)
    assert abs(share.mean() - 0.2) < 1e-6 and np.all(np.abs(share - 0.2) < 0.06)
    # With every item masked otherwise, a last-item-only row is the rule's.
    seq, _ = _cloze(batch, real, mask_prob=1.0, mask_last=0.25)
    last_only = (seq[:, -1] == 51) & ((seq == 51).sum(1) == 1)
    assert abs(last_only.mean() - 0.25) < 0.03
    # The same key, the same masks; another key, others.
    np.testing.assert_array_equal(_cloze(batch, real)[1], pos)
    assert not np.array_equal(_cloze(batch, real, seed=1)[1], pos)


def test_cloze_cap_bounds_the_count_and_the_loss_refuses_more():
    for length in range(1, 260):
        for p in (0.1, 0.15, 0.2, 0.3, 0.5, 0.6, 0.7, 1.0):
            want = max(1, round(np.float32(length) * np.float32(p)))
            assert want <= bert4rec.cloze_cap(length, p)
    cfg = _cfg(mech="none")
    model, params = _model_and_params(cfg)
    inp = jnp.asarray([[0, V + 1, V + 1, V + 1, 5, 6]])  # 3 targets, cap 2
    pos = jnp.asarray([[0, 3, 4, 7, 0, 0]])
    with pytest.raises(ValueError, match="more than 2 targets"):
        model.apply(params, inp, pos, 0 * pos, method="loss", train=False)


def test_next_item_targets_ignore_the_key():
    batch, real = jnp.asarray([[0, 3, 4, 5]]), jnp.asarray([True])
    got = [registry.next_item_targets(batch, real, jax.random.PRNGKey(k), None)
           for k in (0, 1)]  # fmt: skip
    np.testing.assert_array_equal(got[0][0], got[1][0])
    np.testing.assert_array_equal(got[0][1], [[0, 4, 5]])


def test_config():
    for bad, flag in ((dict(mask_prob=0.0), "--mask_prob"),
                      (dict(mask_last=1.5), "--mask_last"),
                      (dict(mech="stoc"), "--mech"),
                      (dict(mech="value_literal"), "--mech"),  # no future to leak
                      (dict(loss="bce"), "--loss")):  # fmt: skip
        with pytest.raises(ValueError, match=flag):
            _cfg(**bad)
    assert _cfg().loss_type == "ce"
    assert registry.BACKBONES["bert4rec"].mechs == ("none", "simp", "value", "add")
    assert "value_literal" in registry.BACKBONES["sasrec"].mechs
    # Its fields name bert4rec configs; other backbones' names are unchanged.
    assert "mask_prob" in _cfg().identity()
    assert "mask_prob" not in Config().identity()
    assert "mask_prob" in Config(mask_prob=0.5).identity()
    assert Config.from_dict(Config().identity()) == Config()


# ------------------------------------------------------------ training


@pytest.fixture(scope="module")
def data():
    # Short sequences whose next item mostly follows from the previous one:
    # BERT4Rec leaves its initial plateau (near-uniform attention) quickly.
    seqs = generate(num_users=300, num_items=100, min_len=4, max_len=10,
                    num_successors=1, p_follow=0.9, seed=2)  # fmt: skip
    return build(seqs, 9)[0]  # the model has 10 positions: widths 8 and 10


@pytest.mark.slow  # as tests/test_train_trim.py's cases beyond its one quick case
def test_trimmed_gradient_equals_the_full_batch_gradient(data):
    cfg = _cfg(mech="value", max_len=9, l2=0.1, layers=1)
    params = jax.tree.map(
        lambda x: x[0], train.init_state(cfg, data.num_items, [4])["params"]
    )
    hp = jax.tree.map(lambda x: x[0], train.hparams(cfg, 1))
    model = models.build(cfg, data.num_items)
    rows, real = jnp.arange(13) * 7, jnp.arange(13) < 11
    seq, pos = registry.cloze_targets(
        data.train_seq[rows], real, jax.random.PRNGKey(2), model
    )
    assert seq.shape == (13, 10) and int(jnp.min(jnp.sum(seq > 0, 1))) < 8
    neg = jnp.zeros_like(pos)
    args = (params, cfg, data.num_items, hp, seq, pos, neg, jax.random.PRNGKey(3))
    full = jax.value_and_grad(loss_fn, has_aux=True)
    (_, want_loss), want = jax.jit(full, static_argnums=(1, 2))(*args)
    trim = jax.jit(trimmed_loss_and_grad, static_argnums=(1, 2, 8))
    loss, grads, _ = trim(*args, 4)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-6)


def _popularity_ndcg10(data) -> float:
    """Test NDCG@10 of ranking by training popularity, under the protocol."""
    counts = jnp.bincount(data.train_seq.ravel(), length=data.num_items + 1)
    scores = jnp.broadcast_to(counts, (data.num_eval, data.num_items + 1))
    where = evaluate.candidate_mask(data.eval_hist, data.num_items)
    rank = metrics.target_rank(scores, data.test_tgt, where_BxV=where)
    return float(jnp.mean(metrics.rank_metrics(rank, ndcg_ks=(10,))["NDCG@10"]))


@pytest.mark.slow
def test_a_tiny_run_learns(data):
    cfg = _cfg(mech="value", max_len=9, hidden=16, layers=1, heads=1,
               batch_size=32, lr=5e-3, epochs=40, patience=40, eval_every=5)  # fmt: skip
    res = train.fit(cfg, data)
    pop = _popularity_ndcg10(data)
    # Measured: 0.61 against popularity's 0.24.
    assert res.test[0]["NDCG@10"] > max(2 * pop, 0.4), (res.test[0], pop)
    # Length-bucketed evaluation ranks as the full-length one does.
    params = jax.tree.map(lambda x: x[0], res.best_params)
    ranks = [
        evaluate.eval_ranks(cfg, params, data, "test", trim=t) for t in (True, False)
    ]
    np.testing.assert_array_equal(*ranks)
