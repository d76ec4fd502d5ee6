"""The refinement as an attention_fn inside flax.linen.MultiHeadDotProductAttention."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awrsr_jax.models.flax_attention import refined_attention_fn
from awrsr_jax.ops import refine

B, L, F = 2, 6, 8


def _x():
    return jax.random.normal(jax.random.PRNGKey(0), (B, L, F))


def _mha(**kw):
    return nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=F, **kw)


def test_none_equals_flax_default_attention():
    x, mask = _x(), nn.make_causal_mask(jnp.ones((B, L)))
    ref = _mha()
    params = ref.init(jax.random.PRNGKey(1), x, x, mask=mask)
    ours = _mha(attention_fn=refined_attention_fn("none"))
    np.testing.assert_allclose(
        ours.apply(params, x, x, mask=mask),
        ref.apply(params, x, x, mask=mask),
        atol=1e-5,
    )


class Block(nn.Module):
    """A user's own block: the refinement matrices live on the block."""

    mech: str

    @nn.compact
    def __call__(self, x):
        w = {
            k: self.param(k, refine.init_param, (L, L))
            for k in refine.param_names(self.mech)
        }
        attn = _mha(attention_fn=refined_attention_fn(self.mech, params=w))
        return attn(x, x, mask=nn.make_causal_mask(jnp.ones(x.shape[:2])))


@pytest.mark.parametrize("mech", ["simp", "value", "add"])
def test_refined_mha_is_causal_and_uses_the_matrices(mech):
    x = _x()
    model = Block(mech)
    params = model.init(jax.random.PRNGKey(2), x)
    y = model.apply(params, x)
    x2 = x.at[:, 4:].add(1.0)
    np.testing.assert_allclose(model.apply(params, x2)[:, :4], y[:, :4], atol=1e-5)
    # The matrices matter: scaling W_RQ changes the output.
    p2 = jax.tree_util.tree_map_with_path(
        lambda path, v: v * 3.0 if "W_RQ" in jax.tree_util.keystr(path) else v, params
    )
    assert not np.allclose(model.apply(p2, x), y, atol=1e-4)


def test_params_created_on_the_module_with_sow_weights():
    x, mask = _x(), nn.make_causal_mask(jnp.ones((B, L)))
    attn = _mha(attention_fn=refined_attention_fn("value"))
    variables = attn.init(jax.random.PRNGKey(3), x, x, mask=mask, sow_weights=True)
    assert variables["params"]["W_RV"].shape == (L, L)
    _, state = attn.apply(
        variables, x, x, mask=mask, sow_weights=True, mutable=["intermediates"]
    )
    (p,) = state["intermediates"]["attention_weights"]
    np.testing.assert_allclose(np.asarray(p).sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(np.asarray(p)[0, 0], 1) == 0.0)


def test_missing_params_without_module_is_a_clear_error():
    x = _x()
    attn = _mha(attention_fn=refined_attention_fn("simp"))
    with pytest.raises(ValueError, match="sow_weights=True"):
        attn.init(jax.random.PRNGKey(0), x, x)
