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
  This is the paper's Eq. 3 with rows as queries, the inner attention masked
  by the same ``mask``: under a causal mask row k only mixes rows t <= k;
  under a padding-only mask (a bidirectional encoder) it mixes every real row.
* ``add``:   ``B = (R S^T / sqrt(d_h) + a) / 2``
* ``stoc``:  ``mu = a W_mu``, ``Sigma = ELU(a W_Sigma) + 1``,
  ``B_kt = -W2^2(N(mu_k, Sigma_k), N(mu_t, Sigma_t)) / sqrt(d_h)`` (STOSA only)
* ``value_literal``: Eq. 3 read literally, the inner attention unmasked over all
  rows. Row k then sees rows of later queries, which contain the scores of later
  items: it leaks the training target. Offered for study only; it warns.

Each mechanism has one :class:`Mechanism` record in :data:`MECHANISMS`; lists
of mechanisms elsewhere derive from it rather than retype it. Adding one
means: its function here (the signature of :func:`simp`), its record, and
tests (a naive reference in ``tests/test_refine.py``, the causality and
padding invariants).

The functions above are the bare math and check nothing.
:func:`refined_logits` and :func:`attention_weights` are the checked entry
points: they name the argument and the shapes when something does not fit, and
accept an input shorter than the matrices (``n < m``) when told on which side
it is padded (``padding=``, see :func:`trim_params`).

The final weights are ``P = masked_softmax(B, mask)``; see
:func:`attention_weights`. Example::

    >>> import jax.numpy as jnp
    >>> a = jnp.zeros((3, 3)); mask = jnp.tril(jnp.ones((3, 3), bool))
    >>> w = {k: jnp.eye(3) for k in param_names("simp")}
    >>> attention_weights(a, mask=mask, mech="simp", params=w, d_head=4)[2]
    Array([0.33333334, 0.33333334, 0.33333334], dtype=float32)
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from awrsr_jax.ops.attention import elu_plus_one, masked_softmax, w2_distance_sq

Params = Mapping[str, jax.Array]


def _rs_logits(a, params, d_head):
    # R S^T = a (W_RQ W_RK^T) a^T: with the n x n product formed once per call,
    # each batch row costs two n^3 products instead of three (six instead of
    # nine with the backward pass). Same function and gradients, other rounding.
    c = params["W_RQ"] @ jnp.swapaxes(params["W_RK"], -1, -2) / math.sqrt(d_head)
    return (a @ c) @ jnp.swapaxes(a, -1, -2)


def simp(a, *, mask, params: Params, d_head: int):
    """``B = (a W_RQ)(a W_RK)^T / sqrt(d_h)``, masked.

    Args:
      a: ``[..., n, n]`` zero-masked scores (or probabilities).
      mask: boolean, broadcastable to ``a``; True = may attend.
      params: ``W_RQ``, ``W_RK``: ``[..., n, n]``, broadcastable against ``a``.
      d_head: head dimension ``d_h``.

    Returns:
      ``B``: ``[..., n, n]``, 0 where ``mask`` is False.
    """
    return jnp.where(mask, _rs_logits(a, params, d_head), 0.0)


def value(a, *, mask, params: Params, d_head: int):
    """``B = softmax(mask(R S^T/sqrt(d_h))) (a W_RV)``, masked.

    The inner attention over the rows of ``a`` uses ``mask`` too: causal in a
    sequential model, padding-only in a bidirectional one. Arguments and
    result as in :func:`simp`, with ``params`` ``W_RQ``, ``W_RK``, ``W_RV``.
    """
    g = masked_softmax(_rs_logits(a, params, d_head), mask)
    return jnp.where(mask, g @ (a @ params["W_RV"]), 0.0)


def value_literal(a, *, mask, params: Params, d_head: int):
    """Eq. 3 read literally: the inner attention spans every row. Leaks the future.

    Arguments and result as in :func:`simp`, with ``params`` ``W_RQ``,
    ``W_RK``, ``W_RV``; ``mask`` masks the output only.
    """
    g = jax.nn.softmax(_rs_logits(a, params, d_head).astype(jnp.float32), axis=-1)
    return jnp.where(mask, g @ (a @ params["W_RV"]), 0.0)


def add(a, *, mask, params: Params, d_head: int):
    """``B = (R S^T / sqrt(d_h) + a) / 2``, masked.

    Arguments and result as in :func:`simp` (``params`` ``W_RQ``, ``W_RK``).
    """
    return jnp.where(mask, 0.5 * (_rs_logits(a, params, d_head) + a), 0.0)


def stoc(a, *, mask, params: Params, d_head: int):
    """``B_kt = -W2^2(N(mu_k, Sigma_k), N(mu_t, Sigma_t)) / sqrt(d_h)``, masked.

    ``mu = a W_mu`` and ``Sigma = ELU(a W_Sigma) + 1``, row by row. Arguments
    and result as in :func:`simp`, with ``params`` ``W_mu``, ``W_Sigma``.
    """
    mu = a @ params["W_mu"]
    sigma = elu_plus_one(a @ params["W_Sigma"])
    b = -w2_distance_sq(mu, sigma, mu, sigma) / math.sqrt(d_head)
    return jnp.where(mask, b, 0.0)


@dataclasses.dataclass(frozen=True)
class Mechanism:
    """One refinement's facts.

    Attributes:
      name: the ``mech`` / ``--mech`` value.
      fn: ``fn(a, *, mask, params, d_head) -> B`` (see :func:`simp`); ``None``
        for ``"none"`` (the backbone's own attention).
      param_names: its learnable ``n x n`` matrices, in ``params`` order.
      key_columns: those of ``param_names`` whose columns index key positions
        (masked afterwards): :func:`trim_params` cuts them on both axes.
      leaks: its inner attention sees later positions (``value_literal``): it
        warns when used and is never in the paper's tables.
      gaussian: needs Gaussian ``(mean, covariance)`` scores, i.e. a backbone
        with 2-Wasserstein attention (``stoc``: STOSA only).
    """

    name: str
    fn: Callable | None
    param_names: tuple[str, ...] = ()
    key_columns: frozenset[str] = frozenset()
    leaks: bool = False
    gaussian: bool = False

    def __post_init__(self):
        if not self.key_columns <= set(self.param_names):
            raise ValueError(f"{self.name}: key_columns not in param_names")


_RQK = ("W_RQ", "W_RK")

# In the paper's order (Table 2), the study-only leaking form last.
MECHANISMS: dict[str, Mechanism] = {
    m.name: m
    for m in (
        Mechanism("none", None),
        Mechanism("simp", simp, _RQK),
        Mechanism("value", value, _RQK + ("W_RV",), frozenset({"W_RV"})),
        Mechanism("add", add, _RQK),
        Mechanism("stoc", stoc, ("W_mu", "W_Sigma"), gaussian=True),
        Mechanism(
            "value_literal",
            value_literal,
            _RQK + ("W_RV",),
            frozenset({"W_RV"}),
            leaks=True,
        ),
    )
}
REFINE_INPUTS = ("scores", "probs")
PADDINGS = ("left", "right")

# A matrix name means the same in every mechanism that uses it, so trimming
# can go by name alone (tests/test_refine.py checks the records agree).
_KEY_COLUMNS = frozenset().union(*(m.key_columns for m in MECHANISMS.values()))


def mechanism(mech: str) -> Mechanism:
    """The record of ``mech``; ``ValueError`` naming the choices otherwise."""
    if mech not in MECHANISMS:
        raise ValueError(
            f"unknown refinement mech={mech!r}; choose from {tuple(MECHANISMS)}"
        )
    return MECHANISMS[mech]


def check_mech(mech: str) -> None:
    """``ValueError`` unless ``mech`` is a key of :data:`MECHANISMS`."""
    mechanism(mech)


def param_names(mech: str) -> tuple[str, ...]:
    """Names of the ``n x n`` matrices that ``mech`` learns (``()`` for none)."""
    return mechanism(mech).param_names


def trim_params(params: Params, length: int, *, padding: str = "left") -> Params:
    """The ``[..., m, m]`` matrices cut for an input of ``length <= m`` positions.

    ``padding="left"`` (this project's layout: position ``m - 1`` holds the most
    recent item) takes the input to be the last ``length`` positions of the
    ``m``-position layout, ``padding="right"`` the first ``length``. Padded
    positions are masked as keys, so ``a`` is zero in their columns and ``a W``
    reads only ``W``'s rows at the input's positions: those rows, and all
    ``m`` columns (the features of ``R``, ``S``, ``mu``, ``Sigma``, which
    ``R S^T`` and the W2 distance sum over). Matrices whose columns are key
    positions (``W_RV``) are cut on both axes. The refined logits at the
    input's positions are then those of the input padded to ``m`` on that side
    (not for leaking mechanisms, whose inner attention also spans padded rows:
    :func:`refined_logits` pads their input back to ``m`` instead).

    Args:
      params: name -> ``[..., m, m]`` matrix.
      length: the input length ``n``, ``1 <= n <= m``.
      padding: ``"left"`` or ``"right"``: the side the padding is on.

    Returns:
      The same names: ``[..., n, m]``, or ``[..., n, n]`` for key-column ones.
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding={padding!r}: choose from {PADDINGS}")
    out = {}
    for name, w in params.items():
        m = w.shape[-1]
        lo = m - length if padding == "left" else 0
        w = w[..., lo : lo + length, :]
        out[name] = w[..., lo : lo + length] if name in _KEY_COLUMNS else w
    return out


def init_param(key, shape, dtype=jnp.float32):
    """Uniform(+-1/sqrt(n)) like a bias-free ``torch.nn.Linear(n, n)``.

    Args:
      key: a PRNG key.
      shape: ``(..., n, n)``, e.g. ``(n, n)`` or ``(H, n, n)`` per head.
      dtype: the array's dtype.
    """
    bound = 1.0 / math.sqrt(shape[-1])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _check_mask(mask, scores_shape):
    if mask is None:
        raise ValueError(
            "mask=None: pass a boolean mask broadcastable to the scores "
            f"{scores_shape} (True = may attend): causal & key padding for a "
            "sequential model (attention.attention_mask(valid_BxL)), padding only "
            "for a bidirectional one (attention_mask(valid_BxL, causal=False))"
        )
    shape = tuple(jnp.shape(mask))
    try:
        ok = np.broadcast_shapes(shape, scores_shape) == tuple(scores_shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"mask of shape {shape} does not broadcast to the scores' shape "
            f"{tuple(scores_shape)} ([..., queries, keys])"
        )


def _check_params(rec: Mechanism, params, scores_shape) -> int:
    """The matrices' size ``m``, after checking names, shapes and ``m >= n``."""
    names = rec.param_names
    n = scores_shape[-1]
    if not names:
        if params:
            raise ValueError(
                f"mech='none' learns no matrices; got params with {sorted(params)}"
            )
        return n
    _check_param_names(rec, params, scores_shape)
    shapes = {k: tuple(jnp.shape(params[k])) for k in names}
    for k, s in shapes.items():
        _check_param_shape(k, s, scores_shape)
    sizes = {s[-1] for s in shapes.values()}
    if len(sizes) > 1:
        raise ValueError(f"params matrices differ in size: {shapes}")
    m = sizes.pop()
    if m < n:
        raise ValueError(
            f"params are {m} x {m} ({shapes}) but the scores {tuple(scores_shape)} "
            f"have {n} positions: the matrices must cover the input (m >= n); make "
            "them for the longest input"
        )
    return m


def _check_param_names(rec: Mechanism, params, scores_shape) -> None:
    """``params`` is a dict of exactly ``rec``'s matrices; the message names
    the mechanism that owns a foreign set."""
    names = rec.param_names
    want = "{" + ", ".join(names) + "}"
    if params is None:
        raise ValueError(
            f"mech={rec.name!r} needs params=: a dict of its matrices {want}, each "
            f"[..., m, m] with m >= the input length {scores_shape[-1]} (scores "
            f"{scores_shape})"
        )
    if not isinstance(params, Mapping):
        raise ValueError(
            f"params must be a dict of the matrices {want}; "
            f"got a {type(params).__name__}"
        )
    if set(params) != set(names):
        owners = [
            o.name
            for o in MECHANISMS.values()
            if o.param_names and set(o.param_names) == set(params)
        ]
        hint = f" (the matrices of {', '.join(owners)})" if owners else ""
        raise ValueError(
            f"params for mech={rec.name!r} must be exactly {want}; "
            f"got {{{', '.join(sorted(params))}}}{hint}"
        )


def _check_param_shape(name: str, shape, scores_shape) -> None:
    """One matrix is square and its leading axes broadcast against the scores'."""
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise ValueError(
            f"params[{name!r}] has shape {shape}: refinement matrices are square, "
            "[..., m, m]"
        )
    try:
        np.broadcast_shapes(shape[:-2], tuple(scores_shape[:-2]))
    except ValueError:
        raise ValueError(
            f"params[{name!r}] has shape {shape}, whose leading axes {shape[:-2]} do "
            f"not broadcast against the scores' {tuple(scores_shape[:-2])} (scores "
            f"{tuple(scores_shape)}); per-head matrices are [H, m, m]"
        ) from None


def _checked_shape(scores, refine_input: str, padding: str | None) -> tuple:
    """The shape of ``scores``, after checking the options and its rank."""
    if refine_input not in REFINE_INPUTS:
        raise ValueError(f"refine_input={refine_input!r}: choose from {REFINE_INPUTS}")
    if padding is not None and padding not in PADDINGS:
        raise ValueError(f"padding={padding!r}: choose from {PADDINGS} or None")
    shape = tuple(jnp.shape(scores))
    if len(shape) < 2:
        raise ValueError(f"scores of shape {shape}: expected [..., queries, keys]")
    return shape


def _check_self_attention(mech: str, shape) -> None:
    n = shape[-1]
    if shape[-2] != n:
        raise ValueError(
            f"mech={mech!r} refines self-attention: scores must be [..., n, n], "
            f"queries and keys at the same n positions; got {shape} ({shape[-2]} "
            f"queries, {n} keys). Cross-attention and one-query decoding against "
            "cached keys are not supported: the refinement attends over the rows "
            "of A, one per key position"
        )


def _check_padding_given(mech: str, shape, m: int, padding: str | None) -> None:
    n = shape[-1]
    if m > n and padding is None:
        raise ValueError(
            f"scores {shape} have n={n} positions but the {mech!r} matrices are "
            f"{m} x {m}: pass padding='left' (left-padded input: the matrices' "
            f"last {n} positions are used) or padding='right' (right-padded: the "
            f"first {n})"
        )


def _refinement_input(scores, mask, refine_input: str):
    """``a``: the zero-masked scores, or their masked softmax."""
    if refine_input == "probs":
        return masked_softmax(scores, mask)
    return jnp.where(mask, scores, 0.0).astype(jnp.float32)


def _apply(rec: Mechanism, a, mask, params, *, d_head: int, m: int, padding):
    """``B = rec.fn(a, ...)`` for ``a`` of ``n <= m`` positions: with the
    matrices cut to the input (:func:`trim_params`), or, for a leaking
    mechanism, on ``a`` padded back to ``m`` on the ``padding`` side."""
    n = a.shape[-1]
    if m == n:
        return rec.fn(a, mask=mask, params=params, d_head=d_head)
    if not rec.leaks:
        params = trim_params(params, n, padding=padding)
        return rec.fn(a, mask=mask, params=params, d_head=d_head)
    # A leaking inner attention also spans the padded rows (zero rows of ``a``,
    # whose logits are 0), so the matrices cannot be cut: pad back to m.
    side = (m - n, 0) if padding == "left" else (0, m - n)
    widths = [(0, 0)] * (a.ndim - 2) + [side, side]
    b = rec.fn(
        jnp.pad(a, widths),
        mask=jnp.pad(mask, widths, constant_values=False),
        params=params,
        d_head=d_head,
    )
    lo = side[0]
    return b[..., lo : lo + n, lo : lo + n]


def refined_logits(
    scores,
    *,
    mask,
    mech: str = "none",
    params: Params | None = None,
    refine_input: str = "scores",
    d_head: int,
    padding: str | None = None,
):
    """The logits ``B`` ``[..., n, n]`` whose masked softmax is the attention.

    ``mech="none"`` returns ``scores`` unchanged. Otherwise the refinement input
    ``a`` is the zero-masked ``scores`` (or, with ``refine_input="probs"``, the
    masked softmax probabilities) and ``B = MECHANISMS[mech].fn(a, ...)``.

    Args:
      scores: ``[..., n, n]`` scores ``A`` before the softmax, e.g. ``[B, H, n,
        n]`` from :func:`~awrsr_jax.ops.attention.dot_product_scores`; row k =
        query k, column t = key t. Refinements need self-attention (as many
        queries as keys); ``mech="none"`` also takes ``[..., Q, K]``.
      mask: boolean, broadcastable to ``scores`` (e.g. ``[B, 1, n, n]``); True =
        may attend. Causal and key-padding for a sequential model; padding only
        for a bidirectional encoder. ``value`` masks its inner attention with it.
      mech: a key of :data:`MECHANISMS`.
      params: exactly the matrices :func:`param_names` lists for ``mech``, each
        ``[..., m, m]`` with ``m >= n``: ``[m, m]`` shared by the heads, ``[H, m,
        m]`` per head (leading axes broadcast against those of ``scores``).
        ``None`` (or empty) for ``"none"`` only.
      refine_input: ``"scores"`` (``A``) or ``"probs"`` (its masked softmax).
      d_head: head dimension ``d_h`` of the ``sqrt(d_h)`` scale.
      padding: needed only when ``n < m``: ``"left"`` if the input is
        left-padded (this project's layout; its positions are the last ``n`` of
        the ``m``), ``"right"`` if right-padded (the first ``n``). The matrices
        are then cut by :func:`trim_params`: ``B`` at the input's positions is
        that of the input padded to ``m`` on that side, exactly, when the mask
        masks padded positions as keys (for ``value_literal``, whose input is
        padded back to ``m`` instead, as queries too). The side cannot be
        inferred from the data and a wrong one gives other weights silently,
        hence no default.

    Returns:
      ``B``: ``[..., n, n]`` (the broadcast of the leading axes of ``scores``
      and ``params``), 0 where ``mask`` is False.

    Raises:
      ValueError: naming the argument and the shapes, for an unknown ``mech``
        or ``refine_input``, a missing or ill-fitting mask, queries and keys of
        different lengths, missing, foreign or wrongly sized matrices, or
        ``n < m`` without ``padding``.
    """
    rec = mechanism(mech)
    shape = _checked_shape(scores, refine_input, padding)
    _check_mask(mask, shape)
    if rec.fn is None:
        _check_params(rec, params, shape)
        return scores
    _check_self_attention(mech, shape)
    m = _check_params(rec, params, shape)
    _check_padding_given(mech, shape, m, padding)
    if rec.leaks:
        warnings.warn(
            f"mech={mech!r} lets position k see later positions", stacklevel=2
        )
    mask = jnp.broadcast_to(mask, shape)
    a = _refinement_input(scores, mask, refine_input)
    return _apply(rec, a, mask, params, d_head=d_head, m=m, padding=padding)


def attention_weights(scores, *, mask, **kwargs):
    """``P = masked_softmax(refined_logits(scores, ...), mask)``: the weights
    that multiply the values. Attention dropout, if any, belongs on ``P``.

    Args:
      scores: ``[..., n, n]`` scores ``A`` before the softmax.
      mask: boolean, broadcastable to ``scores``; True = may attend.
      **kwargs: ``mech``, ``params``, ``refine_input``, ``d_head``, ``padding``
        as in :func:`refined_logits`.

    Returns:
      ``P``: ``[..., n, n]`` float32; rows sum to 1, or are all 0 where the
      mask allows nothing.
    """
    return masked_softmax(refined_logits(scores, mask=mask, **kwargs), mask)
