"""Attention scores and masks, as pure JAX functions (no Flax).

Shape letters: B batch, L (= n) sequence length, H heads, D head dimension,
Q query positions, K key positions. Score tensors are ``[..., Q, K]``: row k is
query position k, column t is key position t. Sequences are left-padded, so
position L-1 holds the most recent item. Queries and keys come heads-last,
``[B, L, H, D]`` (Flax's layout); the score functions refuse what they can
tell is another layout.

Masks are boolean and ``True`` means "may attend". Masked logits never become
``-inf`` inside a product: :func:`masked_softmax` handles them with ``where``,
and a fully masked row gives all-zero weights instead of NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def causal_mask(n: int) -> jax.Array:
    """``[n, n]`` lower-triangular mask: query k sees keys t <= k.

    Args:
      n: the sequence length.
    """
    return jnp.tril(jnp.ones((n, n), dtype=bool))


def attention_mask(valid_BxL: jax.Array, *, causal: bool = True) -> jax.Array:
    """Boolean attention mask ``[B, 1, L, L]`` from a ``[B, L]`` validity mask.

    ``causal=True`` (sequential recommenders): query k sees the real keys
    t <= k. Rows of padded query positions keep their (fully padded) keys
    masked under left padding, so they come out all-False; their outputs are
    zeroed by the models anyway. ``causal=False`` (a bidirectional encoder):
    a real query sees every real key, a padded query nothing.

    Args:
      valid_BxL: boolean, True at real (non-padding) positions.
      causal: add the causal mask to the padding mask.
    """
    if not causal:
        return valid_BxL[:, None, :, None] & valid_BxL[:, None, None, :]
    n = valid_BxL.shape[-1]
    return causal_mask(n)[None, None] & valid_BxL[:, None, None, :]


def masked_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over the last axis in float32, restricted to ``mask``.

    Masked entries get probability exactly 0; a row with no allowed entry is all
    zeros (never NaN), so padded rows cannot poison gradients.

    Args:
      logits: ``[..., K]``.
      mask: boolean, broadcastable to ``logits``; True = allowed.
    """
    return _masked_softmax(logits.astype(jnp.float32), mask)


# The derivative is given in closed form, dp = p * (dx - sum(p * dx)): autodiff
# through the where/exp/sum/divide chain kept several [B, H, L, L] temporaries
# and spent ~20% of a SASRec training step (L=200, CPU) in their reductions.
@jax.custom_jvp
def _masked_softmax(x, mask):
    x = jnp.where(mask, x, jnp.finfo(jnp.float32).min)
    x = x - jnp.max(x, axis=-1, keepdims=True)
    e = jnp.where(mask, jnp.exp(x), 0.0)
    denom = jnp.sum(e, axis=-1, keepdims=True)
    return e / jnp.where(denom > 0, denom, 1.0)


@_masked_softmax.defjvp
def _masked_softmax_jvp(primals, tangents):
    x, mask = primals
    dx, _ = tangents
    p = _masked_softmax(x, mask)
    # Masked entries have p = 0, so their tangent is 0 whatever dx holds there.
    return p, p * (dx - jnp.sum(p * dx, axis=-1, keepdims=True))


def _check_heads_last(fn: str, queries: dict, keys: dict, num_heads) -> None:
    """Checks ``[B, Q, H, D]`` queries against ``[B, K, H, D]`` keys.

    ``queries`` and ``keys`` map argument names to arrays that must share one
    shape each. Heads-first arrays ``[B, H, L, D]`` fail here when their
    lengths differ or ``num_heads`` is given; with equal lengths and no
    ``num_heads`` they look the same as ``[B, L, H, D]``.
    """
    swap = "heads-first arrays [B, H, L, D] need jnp.swapaxes(x, 1, 2)"
    first = []
    for group in (queries, keys):
        shapes = {name: tuple(jnp.shape(x)) for name, x in group.items()}
        for name, s in shapes.items():
            if len(s) != 4:
                raise ValueError(
                    f"{fn}: {name} has shape {s}; expected [B, L, H, D] (batch, "
                    "positions, heads, head dimension)"
                )
            if num_heads is not None and s[2] != num_heads:
                raise ValueError(
                    f"{fn}: {name} has shape {s}, whose axis 2 is {s[2]}, not "
                    f"num_heads={num_heads}: expected [B, L, H, D]; {swap}"
                )
        if len(set(shapes.values())) > 1:
            raise ValueError(f"{fn}: {shapes} must have the same shape")
        first.append(next(iter(shapes.items())))
    (qn, qs), (kn, ks) = first
    if qs[0] != ks[0] or qs[2:] != ks[2:]:
        raise ValueError(
            f"{fn}: {qn} {qs} and {kn} {ks} must agree on batch B, heads H and "
            f"head dimension D of the layout [B, L, H, D] (only the lengths may "
            f"differ); {swap}"
        )


def dot_product_scores(
    q_BxQxHxD: jax.Array, k_BxKxHxD: jax.Array, *, num_heads: int | None = None
) -> jax.Array:
    """Scaled dot-product scores ``QK^T / sqrt(D)`` as ``[B, H, Q, K]``.

    Args:
      q_BxQxHxD: queries, heads on axis 2 (Flax's layout).
      k_BxKxHxD: keys, the same B, H and D.
      num_heads: H, if known: then heads-first input (``[B, H, L, D]``) is
        always refused; without it, only when Q != K or H differs.
    """
    _check_heads_last(
        "dot_product_scores", {"q": q_BxQxHxD}, {"k": k_BxKxHxD}, num_heads
    )
    d = q_BxQxHxD.shape[-1]
    s = jnp.einsum("bqhd,bkhd->bhqk", q_BxQxHxD, k_BxKxHxD)
    return s / jnp.sqrt(jnp.asarray(d, s.dtype))


def elu_plus_one(x: jax.Array) -> jax.Array:
    """``ELU(x) + 1``: STOSA's map from a linear output to a positive covariance.

    Args:
      x: any shape; the result has the same.
    """
    return jax.nn.elu(x) + 1.0


def w2_distance_sq(
    mu1: jax.Array, sigma1: jax.Array, mu2: jax.Array, sigma2: jax.Array
) -> jax.Array:
    """Squared 2-Wasserstein distance between diagonal Gaussians, all pairs.

    For ``N(mu1_i, diag(sigma1_i))`` and ``N(mu2_j, diag(sigma2_j))``::

        W2^2_ij = ||mu1_i - mu2_j||^2 + ||sqrt(sigma1_i) - sqrt(sigma2_j)||^2

    computed in the expanded matmul form
    ``|mu1|^2 + |mu2|^2 - 2 mu1.mu2 + sum(sigma1) + sum(sigma2)
    - 2 sqrt(sigma1).sqrt(sigma2)``, as cheap as a dot-product score. Inputs are
    ``[..., I, D]`` and ``[..., J, D]``; the result is ``[..., I, J]``, clipped at 0
    against round-off. No square root of the distance is taken, so gradients stay
    finite when two distributions coincide; the covariances are clamped at 1e-24
    before their square root (as in the STOSA authors' code), so a covariance
    that underflows to 0 (``ELU(x) + 1`` for very negative x) gives a finite
    gradient instead of inf/NaN.

    Args:
      mu1, sigma1: ``[..., I, D]`` means and diagonal covariances.
      mu2, sigma2: ``[..., J, D]``, leading axes broadcastable with the first.

    Returns:
      ``[..., I, J]``.
    """
    s1 = jnp.sqrt(jnp.maximum(sigma1, 1e-24))
    s2 = jnp.sqrt(jnp.maximum(sigma2, 1e-24))
    cross = jnp.einsum("...id,...jd->...ij", mu1, mu2) + jnp.einsum(
        "...id,...jd->...ij", s1, s2
    )
    n1 = jnp.sum(mu1 * mu1, -1) + jnp.sum(sigma1, -1)
    n2 = jnp.sum(mu2 * mu2, -1) + jnp.sum(sigma2, -1)
    return jnp.maximum(n1[..., :, None] + n2[..., None, :] - 2.0 * cross, 0.0)


def w2_scores(
    mu_q_BxQxHxD: jax.Array,
    sigma_q_BxQxHxD: jax.Array,
    mu_k_BxKxHxD: jax.Array,
    sigma_k_BxKxHxD: jax.Array,
    *,
    num_heads: int | None = None,
) -> jax.Array:
    """STOSA's attention scores ``-W2^2(q_k, k_t) / sqrt(D)`` as ``[B, H, Q, K]``.

    Args:
      mu_q_BxQxHxD, sigma_q_BxQxHxD: the queries' means and (positive)
        diagonal covariances, heads on axis 2.
      mu_k_BxKxHxD, sigma_k_BxKxHxD: the keys', the same B, H and D.
      num_heads: H, if known (see :func:`dot_product_scores`).
    """
    _check_heads_last(
        "w2_scores",
        {"mu_q": mu_q_BxQxHxD, "sigma_q": sigma_q_BxQxHxD},
        {"mu_k": mu_k_BxKxHxD, "sigma_k": sigma_k_BxKxHxD},
        num_heads,
    )
    d = mu_q_BxQxHxD.shape[-1]

    def heads_first(x):
        return jnp.swapaxes(x, -3, -2)  # [B, H, L, D]

    dist = w2_distance_sq(
        heads_first(mu_q_BxQxHxD),
        heads_first(sigma_q_BxQxHxD),
        heads_first(mu_k_BxKxHxD),
        heads_first(sigma_k_BxKxHxD),
    )
    return -dist / jnp.sqrt(jnp.asarray(d, dist.dtype))


def _fmix32(h: jax.Array) -> jax.Array:
    # A bijection on uint32 with full avalanche (murmur3's finaliser shape with
    # the "lowbias32" constants): each output bit depends on every input bit.
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x7FEB352D)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(0x846CA68B)
    return h ^ (h >> 16)


def hash_uniform(key: jax.Array, shape) -> jax.Array:
    """Uniform ``[0, 1)`` float32 draws (24-bit grid), a pure function of ``key``.

    Counter-based: element i gets ``fmix(fmix(i ^ k0) + k1)`` with two words
    ``k0, k1`` drawn from ``key`` by threefry. Threefry for every element costs
    ~27 ns per draw on the CPU, which made attention dropout ([B, H, L, L] draws
    per layer) the largest cost of a SASRec epoch at L=200; this costs ~1 ns
    and is the same on every backend. Good enough for dropout masks, not meant
    as a general-purpose generator.

    Args:
      key: a PRNG key.
      shape: the output shape.
    """
    size = 1
    for s in shape:
        size *= int(s)
    if size >= 2**32:  # the counter would wrap
        return jax.random.uniform(key, shape)
    k = jax.random.bits(key, (2,), jnp.uint32)
    i = jax.lax.iota(jnp.uint32, size).reshape(shape)
    h = _fmix32(_fmix32(i ^ k[0]) + k[1])
    return (h >> 8).astype(jnp.float32) * (1.0 / (1 << 24))


def dropout(x: jax.Array, rate, key: jax.Array | None) -> jax.Array:
    """Inverted dropout whose ``rate`` may be a traced scalar (for vmapped sweeps).

    ``key=None`` means deterministic (evaluation): ``x`` is returned unchanged.
    The mask comes from :func:`hash_uniform` (cheap, deterministic per key).

    Args:
      x: any shape.
      rate: drop probability in ``[0, 1)``, a float or a traced scalar.
      key: a PRNG key, or ``None`` for no dropout.
    """
    if key is None:
        return x
    keep = 1.0 - jnp.asarray(rate, jnp.float32)
    m = hash_uniform(key, x.shape) < keep
    return jnp.where(m, x / jnp.maximum(keep, 1e-6), 0.0).astype(x.dtype)
