"""Evaluation computes only the last position in the last block.

``user_state`` (and so ``score_all``, evaluation and recommendations) runs the
last block on the last query row only (:func:`models.common.query_rows`). It
must equal the last row of the full forward pass for every backbone and
refinement, at two layers, on left-padded sequences of several lengths, with
random (not near-zero) weights so that any row mixing would show.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awrsr_jax import models
from tests.conftest import tiny_config

L, V = 7, 30
QUICK = [
    ("sasrec", "value", {"per_head": True}),
    ("stosa", "add", {"mean_passthrough": True}),
    ("bert4rec", "value", {}),
]
SLOW = [
    ("sasrec", "none", {}),
    ("sasrec", "simp", {}),
    ("sasrec", "add", {"refine_input": "probs"}),
    ("stosa", "none", {}),
    ("stosa", "stoc", {}),
    ("stosa", "value", {}),
    ("bert4rec", "simp", {}),
]
CASES = QUICK + [pytest.param(*c, marks=pytest.mark.slow) for c in SLOW]


@pytest.mark.parametrize("backbone, mech, kw", CASES)
def test_last_position_alone_equals_the_full_forward(backbone, mech, kw):
    if "mean_passthrough" in kw:
        kw = dict(kw, stosa_mean_passthrough=kw.pop("mean_passthrough"))
    cfg = tiny_config(backbone=backbone, mech=mech, max_len=L, **kw)
    model = models.build(cfg, V)
    width = L + 1 if backbone == "bert4rec" else L  # [mask] appended
    params = model.init(jax.random.PRNGKey(0), jnp.ones((1, width), jnp.int32))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    leaves = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    params = jax.tree.unflatten(tree, leaves)
    seq = jnp.asarray(
        [[0, 0, 0, 0, 0, 4, 9], [0, 0, 3, 17, 5, 9, 22], [1, 2, 3, 4, 5, 6, 7]],
        jnp.int32,
    )
    state = jax.jit(lambda p, s: model.apply(p, s, method="user_state"))(params, seq)
    if backbone == "bert4rec":
        seq = jnp.concatenate([seq, jnp.full((3, 1), V + 1, jnp.int32)], 1)
    full = jax.jit(model.apply)(params, seq)
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(full)):
        assert got.shape == want[:, -1].shape
        np.testing.assert_allclose(got, want[:, -1], rtol=1e-5, atol=1e-5)
    # The rows are not all alike, so a wrong row would not pass.
    assert not np.allclose(
        jax.tree.leaves(full)[0][:, -1], jax.tree.leaves(full)[0][:, -2]
    )
