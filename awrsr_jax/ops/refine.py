"""Attention weight refinement (AWRSR): attention over the attention matrix.

Contract: every refinement takes ``a`` of shape ``[..., n, n]`` (row k = query
position k, column t = key position t; leading axes are batch and head axes), a
boolean ``mask`` broadcastable to it (True = may attend), a ``params`` dict of
``[..., n, n]`` matrices broadcastable against ``a`` (shared by the heads when
they have no head axis), and ``d_head``. It returns the refined logits ``B``
(masked entries hold 0 and must be excluded by the softmax that follows).

``a`` is the backbone's scaled score matrix before the softmax (SASRec
``QK^T/sqrt(d_h)``, STOSA ``-W2^2/sqrt(d_h)``) with masked entries set to 0, or,
with ``refine_input="probs"``, the masked softmax probabilities.

With ``R = a W_RQ`` and ``S = a W_RK`` (right-multiplication: row k mixes only
query k's own weights, which is what keeps the model causal):

* ``simp``:  ``B = R S^T / sqrt(d_h)``
* ``value``: ``B = softmax(mask(R S^T / sqrt(d_h))) (a W_RV)``, then masked.
  This is the paper's Eq. 3 with rows as queries and a causal mask on the inner
  attention, so row k only mixes rows t <= k.
* ``add``:   ``B = (R S^T / sqrt(d_h) + a) / 2``
* ``stoc``:  ``mu = a W_mu``, ``Sigma = ELU(a W_Sigma) + 1``,
  ``B_kt = -W2^2(N(mu_k, Sigma_k), N(mu_t, Sigma_t)) / sqrt(d_h)`` (STOSA only)
* ``value_literal``: Eq. 3 read literally, the inner attention unmasked over all
  rows. Row k then sees rows of later queries, which contain the scores of later
  items: it leaks the training target. Offered for study only; it warns.

The final weights are ``P = masked_softmax(B, mask)``; see
:func:`attention_weights`. Example::

    >>> import jax.numpy as jnp
    >>> a = jnp.zeros((3, 3)); mask = jnp.tril(jnp.ones((3, 3), bool))
    >>> w = {k: jnp.eye(3) for k in param_names("simp")}
    >>> attention_weights(a, mask=mask, mech="simp", params=w, d_head=4)[2]
    Array([0.33333334, 0.33333334, 0.33333334], dtype=float32)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from awrsr_jax.ops.attention import elu_plus_one, masked_softmax, w2_distance_sq

Params = Mapping[str, jax.Array]


def _rs_logits(a, params, d_head):
    # R S^T = a (W_RQ W_RK^T) a^T: with the n x n product formed once per call,
    # each batch row costs two n^3 products instead of three (six instead of
    # nine with the backward pass). Same function and gradients, other rounding.
    c = params["W_RQ"] @ jnp.swapaxes(params["W_RK"], -1, -2) / math.sqrt(d_head)
    return (a @ c) @ jnp.swapaxes(a, -1, -2)


def simp(a, *, mask, params: Params, d_head: int):
    """``B = (a W_RQ)(a W_RK)^T / sqrt(d_h)``, masked."""
    return jnp.where(mask, _rs_logits(a, params, d_head), 0.0)


def value(a, *, mask, params: Params, d_head: int):
    """``B = softmax(mask(R S^T/sqrt(d_h))) (a W_RV)``, masked (causal form)."""
    g = masked_softmax(_rs_logits(a, params, d_head), mask)
    return jnp.where(mask, g @ (a @ params["W_RV"]), 0.0)


def value_literal(a, *, mask, params: Params, d_head: int):
    """Eq. 3 read literally: the inner attention spans every row. Leaks the future."""
    g = jax.nn.softmax(_rs_logits(a, params, d_head).astype(jnp.float32), axis=-1)
    return jnp.where(mask, g @ (a @ params["W_RV"]), 0.0)


def add(a, *, mask, params: Params, d_head: int):
    """``B = (R S^T / sqrt(d_h) + a) / 2``, masked."""
    return jnp.where(mask, 0.5 * (_rs_logits(a, params, d_head) + a), 0.0)


def stoc(a, *, mask, params: Params, d_head: int):
    """``B_kt = -W2^2(N(a W_mu)_k, N(ELU(a W_Sigma)+1)_t) / sqrt(d_h)``, masked."""
    mu = a @ params["W_mu"]
    sigma = elu_plus_one(a @ params["W_Sigma"])
    b = -w2_distance_sq(mu, sigma, mu, sigma) / math.sqrt(d_head)
    return jnp.where(mask, b, 0.0)


REFINERS: dict[str, Callable | None] = {
    "none": None,
    "simp": simp,
    "value": value,
    "add": add,
    "stoc": stoc,
    "value_literal": value_literal,
}
PARAM_NAMES = {
    "none": (),
    "simp": ("W_RQ", "W_RK"),
    "value": ("W_RQ", "W_RK", "W_RV"),
    "add": ("W_RQ", "W_RK"),
    "stoc": ("W_mu", "W_Sigma"),
    "value_literal": ("W_RQ", "W_RK", "W_RV"),
}
REFINE_INPUTS = ("scores", "probs")
LEAKY = frozenset({"value_literal"})


def param_names(mech: str) -> tuple[str, ...]:
    """Names of the ``n x n`` matrices that ``mech`` learns."""
    check_mech(mech)
    return PARAM_NAMES[mech]


def check_mech(mech: str) -> None:
    if mech not in REFINERS:
        raise ValueError(f"unknown refinement {mech!r}; choose from {sorted(REFINERS)}")


# Matrices whose columns index key positions (masked afterwards); the others'
# columns are features that span all ``n`` (see :func:`trim_params`).
KEY_COLUMNS = frozenset({"W_RV"})


def trim_params(params: Params, length: int) -> Params:
    """The ``[..., n, n]`` matrices cut for an input of its last ``length`` positions.

    With left padding, ``a`` is zero in the padded columns, so ``a W`` reads only
    ``W``'s rows at real positions: rows ``W[-length:]`` and all ``n`` columns
    (the features of ``R``, ``S``, ``mu``, ``Sigma``, which ``R S^T`` and the W2
    distance sum over). ``W_RV``'s columns are key positions that the mask cuts
    per key, so it is cut on both axes. The refined logits at the last ``length``
    positions are then those of the full-length input (not for ``LEAKY``
    mechanisms, whose inner attention also spans padded rows).
    """
    out = {}
    for name, w in params.items():
        w = w[..., w.shape[-2] - length :, :]
        out[name] = w[..., w.shape[-1] - length :] if name in KEY_COLUMNS else w
    return out


def init_param(key, shape, dtype=jnp.float32):
    """Uniform(+-1/sqrt(n)) like a bias-free ``torch.nn.Linear(n, n)``."""
    bound = 1.0 / math.sqrt(shape[-1])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def refined_logits(
    scores,
    *,
    mask,
    mech: str = "none",
    params: Params | None = None,
    refine_input: str = "scores",
    d_head: int,
):
    """The logits ``B`` ``[..., n, n]`` whose masked softmax is the attention.

    ``mech="none"`` returns ``scores``. Otherwise the refinement input ``a`` is the
    zero-masked ``scores`` (or, with ``refine_input="probs"``, the masked softmax
    probabilities) and ``B = REFINERS[mech](a, ...)``.
    """
    check_mech(mech)
    if refine_input not in REFINE_INPUTS:
        raise ValueError(f"refine_input must be one of {REFINE_INPUTS}")
    if mech == "none":
        return scores
    if mech in LEAKY:
        warnings.warn(
            f"mech={mech!r} lets position k see later positions", stacklevel=2
        )
    mask = jnp.broadcast_to(mask, scores.shape)
    if refine_input == "probs":
        a = masked_softmax(scores, mask)
    else:
        a = jnp.where(mask, scores, 0.0).astype(jnp.float32)
    return REFINERS[mech](a, mask=mask, params=params, d_head=d_head)


def attention_weights(scores, *, mask, **kwargs):
    """``P = masked_softmax(refined_logits(scores, ...), mask)``: the weights that
    multiply the values. Attention dropout, if any, belongs on ``P``."""
    return masked_softmax(refined_logits(scores, mask=mask, **kwargs), mask)
