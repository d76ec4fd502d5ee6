"""SASRec invariants for every mechanism x refine_input: causality and padding.

Changing the item at any position after t leaves every output at positions <= t
unchanged; whatever embedding sits at a padded position never changes a real
position's output. ``value_literal`` is the leaking reading of Eq. 3 and must
fail the causality check.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awrsr_jax import models, registry
from awrsr_jax.config import Config

L, V = 7, 30
MECHS = list(registry.BACKBONES["sasrec"].table_mechs)


def _model_and_params(mech, refine_input, per_head=False):
    cfg = Config(
        mech=mech,
        refine_input=refine_input,
        per_head=per_head,
        hidden=8,
        max_len=L,
        layers=2,
        heads=2,
        dropout=0.0,
    )
    model = models.build(cfg, V)
    seq = jnp.ones((1, L), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), seq)
    # Random (not zero-ish) refinement and embedding weights, so that any leak shows.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    leaves = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return model, jax.tree.unflatten(tree, leaves)


def _seq():
    return jnp.asarray([[0, 0, 3, 17, 5, 9, 22]], jnp.int32)  # two padded positions


@pytest.mark.parametrize("refine_input", ["scores", "probs"])
@pytest.mark.parametrize("mech", MECHS)
def test_future_items_never_change_the_past(mech, refine_input):
    model, params = _model_and_params(mech, refine_input, per_head=(mech == "value"))
    apply = jax.jit(model.apply)
    seq = _seq()
    h = apply(params, seq)
    for t in range(2, L - 1):
        changed = seq.at[0, t + 1 :].set((seq[0, t + 1 :] + 7) % (V - 1) + 1)
        h2 = apply(params, changed)
        np.testing.assert_allclose(h2[0, : t + 1], h[0, : t + 1], atol=1e-5)
        assert not np.allclose(h2[0, t + 1 :], h[0, t + 1 :], atol=1e-4)


@pytest.mark.parametrize("refine_input", ["scores", "probs"])
@pytest.mark.parametrize("mech", MECHS)
def test_padding_content_never_reaches_real_positions(mech, refine_input):
    model, params = _model_and_params(mech, refine_input)
    seq = _seq()
    h = model.apply(params, seq)
    emb = params["params"]["item_emb"]
    poked = jax.tree.map(lambda x: x, params)
    poked["params"]["item_emb"] = emb.at[0].set(100.0 * jnp.arange(emb.shape[1]))
    h2 = model.apply(poked, seq)
    np.testing.assert_allclose(h2[0, 2:], h[0, 2:], atol=1e-5)


@pytest.mark.parametrize("mech", MECHS)
def test_gradient_causality(mech):
    """The output at position t has exactly zero gradient w.r.t. embeddings after t."""
    model, params = _model_and_params(mech, "scores")
    seq = _seq()
    t = 4

    def out_t(x_emb):
        p = {"params": {**params["params"], "item_emb": x_emb}}
        return jnp.sum(model.apply(p, seq)[0, t] ** 2)

    g = jax.grad(out_t)(params["params"]["item_emb"])
    later = np.asarray(seq[0, t + 1 :])
    earlier = np.asarray(seq[0, 2 : t + 1])
    assert np.all(np.asarray(g)[later] == 0.0)
    assert np.all(np.abs(np.asarray(g)[earlier]).sum(-1) > 0)


def test_value_literal_leaks_and_warns():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, params = _model_and_params("value_literal", "scores")
        seq = _seq()
        h = model.apply(params, seq)
        h2 = model.apply(params, seq.at[0, -1].set(1))
    assert any("later positions" in str(w.message) for w in caught)
    assert not np.allclose(h2[0, :-1], h[0, :-1], atol=1e-5)
