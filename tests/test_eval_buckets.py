"""Length-bucketed evaluation: trimming left padding changes no output or rank.

A left-padded input cut to its last ``l`` positions must give, at those
positions, the outputs of the full-length input (position tables read from the
end, refinement matrices trimmed by ``refine.trim_params``), so the bucketed
ranks of :func:`evaluate.eval_ranks` equal the full-length ones.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awrsr_jax import evaluate, models, registry
from awrsr_jax.data import dataset
from awrsr_jax.data.synthetic import generate
from tests.conftest import mech_config

N = 20  # model max_len: buckets 8, 16, 20
MECHS = {name: b.table_mechs for name, b in registry.BACKBONES.items()}
CASES = [
    (b, m, r)
    for b, mechs in MECHS.items()
    for m in mechs
    for r in ("scores", "probs")
    if m != "none" or r == "scores"
]
# Non-slow subsets (the rest are marked slow: each case compiles a few shapes).
QUICK_OUT = {("sasrec", "value", "probs"), ("stosa", "stoc", "scores")}
QUICK_RANKS = {("stosa", "value", "probs")}


def _marked(quick):
    return [
        c if c in quick else pytest.param(*c, marks=pytest.mark.slow) for c in CASES
    ]


def _cfg(backbone, mech, refine_input, **kw):
    return mech_config(backbone, mech, refine_input, max_len=N, eval_chunk=16, **kw)


def _params(cfg, num_items, seed=0):
    """Initial parameters plus noise, so that scores are far from tied."""
    model = models.build(cfg, num_items)
    params = model.init(jax.random.PRNGKey(seed), jnp.ones((1, N), jnp.int32))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    noisy = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return model, jax.tree.unflatten(tree, noisy)


@functools.partial(jax.jit, static_argnums=2)
def _outputs_jit(params, seq, model):
    out = model.apply(params, seq)
    return jnp.concatenate(out, -1) if isinstance(out, tuple) else out


def _outputs(model, params, seq):
    return _outputs_jit(params, seq, model)


@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("backbone,mech,refine_input", _marked(QUICK_OUT))
def test_trimmed_input_gives_the_full_outputs(backbone, mech, refine_input, per_head):
    cfg = _cfg(backbone, mech, refine_input, per_head=per_head)
    model, params = _params(cfg, 50)
    rng = np.random.default_rng(0)
    for length in (1, 5, 8, 13):
        seq = np.zeros((3, N), np.int32)
        seq[:, N - length :] = rng.integers(1, 51, (3, length))
        full = _outputs(model, params, jnp.asarray(seq))[:, N - length :]
        cut = _outputs(model, params, jnp.asarray(seq[:, N - length :]))
        # Round-off only: the matmuls sum a different number of zeros.
        np.testing.assert_allclose(cut, full, rtol=1e-4, atol=5e-5)


def test_trim_params_shapes():
    from awrsr_jax.ops import refine

    w = {k: jnp.zeros((2, N, N)) for k in ("W_RQ", "W_RV", "W_mu")}
    cut = refine.trim_params(w, 5)
    assert cut["W_RQ"].shape == cut["W_mu"].shape == (2, 5, N)
    assert cut["W_RV"].shape == (2, 5, 5)


@pytest.fixture(scope="module")
def data():
    seqs = generate(num_users=70, num_items=80, min_len=3, max_len=30, seed=4)
    data, _ = dataset.build(seqs, N)
    return data


def test_buckets_cover_every_user_by_length(data):
    for inp, order, counts in (
        (data.valid_inp, data.valid_order, data.valid_counts),
        (data.test_inp, data.test_order, data.test_counts),
    ):
        lens = np.count_nonzero(np.asarray(inp), 1)[np.asarray(order)]
        assert sorted(np.asarray(order).tolist()) == list(range(data.num_eval))
        assert np.all(np.diff(lens) >= 0) and sum(counts) == data.num_eval
        start = 0
        for length, count in zip(dataset.bucket_lengths(N), counts):
            assert np.all(lens[start : start + count] <= length)
            start += count
    assert all(c > 0 for c in data.valid_counts)  # the test spans every bucket


def _check_ranks(data, backbone, mech, refine_input, **kw):
    cfg = _cfg(backbone, mech, refine_input)
    _, params = _params(cfg, data.num_items, seed=3)
    for split in ("valid", "test"):

        def ranks(trim, split=split):
            fn = jax.jit(
                lambda p, d: evaluate.eval_ranks(cfg, p, d, split, trim=trim, **kw)
            )
            return np.asarray(fn(params, data))

        np.testing.assert_array_equal(ranks(True), ranks(False))


@pytest.mark.parametrize(
    "backbone,mech,refine_input",
    _marked(QUICK_RANKS),
)
def test_bucketed_ranks_equal_full_length_ranks(data, backbone, mech, refine_input):
    _check_ranks(data, backbone, mech, refine_input)


@pytest.mark.slow
def test_bucketed_ranks_by_item_chunks(data):
    _check_ranks(data, "stosa", "value", "scores", item_chunk=16)
