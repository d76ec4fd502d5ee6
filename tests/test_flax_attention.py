"""The refinement as an attention_fn inside flax.linen.MultiHeadDotProductAttention."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awrsr_jax.models.flax_attention import refined_attention_fn
from awrsr_jax.ops import attention as att
from awrsr_jax.ops import refine

B, L, F = 2, 6, 8


def _x():
    return jax.random.normal(jax.random.PRNGKey(0), (B, L, F))


def _mha(**kw):
    return nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=F, **kw)


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_none_equals_flax_default_attention(cross):
    # No refinement: queries and keys may differ in length, as in Flax.
    kv = _x()
    q = kv[:, :3] if cross else kv
    if cross:
        mask = jnp.ones((B, 1, 3, L), bool)
    else:
        mask = nn.make_causal_mask(jnp.ones((B, L)))
    ref = _mha()
    params = ref.init(jax.random.PRNGKey(1), q, kv, mask=mask)
    ours = _mha(attention_fn=refined_attention_fn("none"))
    np.testing.assert_allclose(
        ours.apply(params, q, kv, mask=mask),
        ref.apply(params, q, kv, mask=mask),
        atol=1e-5,
    )


class Block(nn.Module):
    """A user's own block: the refinement matrices (for L positions) live on
    the block; ``valid`` marks real positions (default: all)."""

    mech: str
    padding: str | None = None

    @nn.compact
    def __call__(self, x, valid=None):
        w = {
            k: self.param(k, refine.init_param, (L, L))
            for k in refine.param_names(self.mech)
        }
        fn = refined_attention_fn(self.mech, params=w, padding=self.padding)
        valid = jnp.ones(x.shape[:2], bool) if valid is None else valid
        mask = nn.combine_masks(
            nn.make_causal_mask(valid), nn.make_attention_mask(valid, valid)
        )
        return _mha(attention_fn=fn)(x, x, mask=mask)


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
    x, mask = _x(), nn.make_causal_mask(jnp.ones((B, L)))
    attn = _mha(attention_fn=refined_attention_fn("simp"))
    with pytest.raises(ValueError, match="sow_weights=True"):
        attn.init(jax.random.PRNGKey(0), x, x, mask=mask)


def _valid():
    """Two left-padded positions in row 0, none in row 1."""
    return jnp.asarray([[False, False] + [True] * (L - 2), [True] * L])


@pytest.mark.parametrize("mech", ["none", "simp", "value", "add"])
def test_bidirectional_mask_padding_never_reaches_real_positions(mech):
    # An encoder (BERT4Rec-like): a padding-only mask, no causal one. value's
    # inner attention is masked by the same mask, so padding stays out of it.
    x, valid = _x(), _valid()
    mask = att.attention_mask(valid, causal=False)
    attn = _mha(attention_fn=refined_attention_fn(mech))
    variables = attn.init(jax.random.PRNGKey(4), x, x, mask=mask, sow_weights=True)
    variables = jax.tree.map(
        lambda v: v + 0.3 * jax.random.normal(jax.random.PRNGKey(5), v.shape),
        variables,
    )

    def run(x):
        return attn.apply(variables, x, x, mask=mask, sow_weights=True)

    y = run(x)
    noise = 5.0 * jax.random.normal(jax.random.PRNGKey(6), x.shape)
    y_pad = run(jnp.where(valid[..., None], x, noise))
    np.testing.assert_allclose(y_pad[valid], y[valid], atol=1e-5)
    # Bidirectional: the last item changes the first real position's output.
    y_late = run(x.at[:, -1].add(1.0))
    assert not np.allclose(y_late[:, 2], y[:, 2], atol=1e-4)


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("mech", ["simp", "value"])
def test_shorter_input_with_owned_matrices(mech, padding):
    # Matrices for L positions; the first (right: last) two positions of the
    # full input are padding, and the shorter input is the rest.
    model = Block(mech, padding=padding)
    x = _x()
    valid = jnp.arange(L) >= 2 if padding == "left" else jnp.arange(L) < L - 2
    keep = slice(2, L) if padding == "left" else slice(0, L - 2)
    params = model.init(jax.random.PRNGKey(7), x)
    full = model.apply(params, x, jnp.broadcast_to(valid, (B, L)))
    short = model.apply(params, x[:, keep], jnp.ones((B, L - 2), bool))
    np.testing.assert_allclose(short, full[:, keep], atol=1e-5)
    with pytest.raises(ValueError, match=r"n=4 .*6 x 6: pass padding="):
        Block(mech).apply(params, x[:, keep])


def test_shorter_input_with_matrices_on_the_module():
    # sow_weights mode: the matrices made at init (length L) are cut at apply.
    x = _x()
    attn = _mha(attention_fn=refined_attention_fn("value", padding="left"))
    full_mask = att.attention_mask(jnp.broadcast_to(jnp.arange(L) >= 2, (B, L)))
    variables = attn.init(jax.random.PRNGKey(8), x, x, mask=full_mask, sow_weights=True)
    assert variables["params"]["W_RV"].shape == (L, L)
    full = attn.apply(variables, x, x, mask=full_mask, sow_weights=True)
    short_mask = att.attention_mask(jnp.ones((B, L - 2), bool))
    xs = x[:, 2:]
    short = attn.apply(variables, xs, xs, mask=short_mask, sow_weights=True)
    np.testing.assert_allclose(short, full[:, 2:], atol=1e-5)
    # max_len makes the matrices larger than the init input.
    big = _mha(attention_fn=refined_attention_fn("simp", max_len=10, padding="left"))
    v = big.init(jax.random.PRNGKey(9), x, x, mask=full_mask, sow_weights=True)
    assert v["params"]["W_RQ"].shape == (10, 10)
