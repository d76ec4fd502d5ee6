"""BERT4Rec (Sun et al., CIKM 2019) with attention weight refinement.

Follows the authors' TensorFlow code (FeiSun/BERT4Rec, which is BERT's
``modeling.py``):

* Tables: items ``[num_items + 2, D]`` (id 0 pads, ``1..num_items`` are
  items, ``num_items + 1`` is ``[mask]``) and positions ``[max_len + 1, D]``,
  read from the end (inputs are left-padded). The input is
  ``dropout(LN(e + p))``, padding zeroed.
* Each layer is BERT's post-LN encoder block: Q/K/V projections with bias;
  scores ``QK^T / sqrt(d_h)`` under a padding-only mask
  (``attention_mask(valid, causal=False)``: a real position attends to every
  real position, before and after it); the weights go through the refinement
  (:func:`models.common.refined_weights`, whose ``value`` inner attention is
  then masked for padding only), then dropout; context -> dense -> dropout ->
  ``LN(. + input)``; feed-forward ``dense(4D) -> GELU (tanh form) -> dense(D)
  -> dropout -> LN(. + input)``; padding zeroed.
* Output (tied): the module's output states are ``LN(GELU(dense(h)))`` of
  the last block's ``h``; they are dotted with the item table, plus a
  per-item bias. Scores cover ids ``0..num_items`` (``V``), never ``[mask]``.
* Training: the cloze targets of :func:`awrsr_jax.registry.cloze_targets`
  (``mask_prob``, ``mask_last``) on the user's last ``max_len + 1`` training
  items; full-softmax cross-entropy over the items at the masked positions
  (:func:`ops.losses.softmax_ce`). Sampled negatives are not used.
* Ranking: :meth:`BERT4Rec.score_all` appends ``[mask]`` after the history
  (``[B, L]`` -> ``L + 1`` positions) and scores the catalogue from that
  position's output.
* Initialisation: truncated normal, std 0.02 (BERT's ``initializer_range``),
  biases 0, LayerNorm ``eps = 1e-12``. Refinement matrices use
  :func:`ops.refine.init_param`. At this scale and a small D the attention
  path starts almost inert (scores near 0, so every mechanism's weights are
  near uniform and the scores near popularity): training sits on a plateau
  for some hundreds of steps before attention forms (a few hundred on the
  tests' synthetic data; more at lr 1e-4), which early stopping's patience
  must outlast.
* ``l2_penalty`` is ``sum(w^2) / 2`` over the item and position tables, as
  SASRec's. The authors decay every weight but LayerNorms and biases by 0.01
  outside Adam's scaling (BERT's ``AdamWeightDecay``); the project's ``l2``
  is a penalty on the loss, so the reference configuration leaves it at 0.

"Causal" does not apply: every real position sees the whole sequence, later
items included, which the cloze task allows because a target is hidden
behind ``[mask]`` at its own position. The invariant that remains is that
whatever sits at a padded position never reaches a real one.

Shape letters: B batch, L input length (``<= max_len + 1``), D hidden size,
H heads, V = num_items + 1 (id 0 is padding), I items scored.
``dropout`` may be a traced scalar (vmapped sweeps); it applies to the
embeddings, the attention weights and each block's two outputs.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from awrsr_jax.models.common import query_rows, refined_weights
from awrsr_jax.ops import attention as att
from awrsr_jax.ops import losses

LN_EPS = 1e-12
init = nn.initializers.truncated_normal(stddev=0.02)


def cloze_cap(length: int, mask_prob: float) -> int:
    """Most masked items per row of ``length`` positions that
    :func:`awrsr_jax.registry.cloze_targets` makes: ``floor(length * mask_prob)
    + 1``, never below its ``max(1, round(n * mask_prob))`` for ``n <= length``
    items, whether computed in float32 or float64."""
    return int(length * mask_prob) + 1


def _drop(module: nn.Module, x, rate, train: bool):
    # A Python zero skips the mask draw; traced rates never reach the test.
    if not train or (isinstance(rate, (int, float)) and rate == 0):
        return x
    return att.dropout(x, rate, module.make_rng("dropout"))


def _dense(features: int, name: str):
    return nn.Dense(features, kernel_init=init, name=name)


class BERT4RecBlock(nn.Module):
    """One bidirectional encoder block. ``x_BxLxD``, ``valid_BxL`` -> ``BxLxD``."""

    hidden: int
    heads: int
    dropout: Any
    mech: str
    refine_input: str
    per_head: bool
    max_len: int | None = None  # refinement matrices' size (None: input length)

    @nn.compact
    def __call__(self, x_BxLxD, valid_BxL, train: bool, last: bool = False):
        b, n, d = x_BxLxD.shape

        def proj(name):
            return _dense(d, name)(x_BxLxD).reshape(b, n, self.heads, d // self.heads)

        q, k, v = proj("q"), proj("k"), proj("v")
        p = refined_weights(
            self,
            att.dot_product_scores(q, k),
            att.attention_mask(valid_BxL, causal=False),
            mech=self.mech,
            refine_input=self.refine_input,
            per_head=self.per_head,
        )
        p, x_BxLxD, valid_BxL = query_rows(last, p, x_BxLxD, valid_BxL)
        p = _drop(self, p, self.dropout, train)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", p, v).reshape(x_BxLxD.shape)
        ctx = _drop(self, _dense(d, "out")(ctx), self.dropout, train)
        x = nn.LayerNorm(epsilon=LN_EPS, name="ln_attn")(x_BxLxD + ctx)
        h = jax.nn.gelu(_dense(4 * d, "ffn1")(x))
        h = _drop(self, _dense(d, "ffn2")(h), self.dropout, train)
        return nn.LayerNorm(epsilon=LN_EPS, name="ln_ffn")(x + h) * valid_BxL[..., None]


class BERT4Rec(nn.Module):
    """BERT4Rec over left-padded item sequences.

    Attributes:
      num_items: catalogue size; ids are ``1..num_items``, 0 pads,
        ``num_items + 1`` is ``[mask]``.
      max_len: L, the history length; the model has ``max_len + 1`` positions
        (the history and a ``[mask]`` after it), as do its refinement matrices.
      hidden, layers, heads: D, number of blocks, heads (D % heads == 0).
      dropout: rate on embeddings, attention weights and block outputs.
      mech: refinement name (``none``, ``simp``, ``value``, ``add``).
      refine_input: ``scores`` (pre-softmax A) or ``probs``.
      per_head: one set of refinement matrices per head instead of per layer.
      loss_type: ``ce`` (full softmax cross-entropy), the only one.
      mask_prob, mask_last: the cloze task's masking (read by
        :func:`awrsr_jax.registry.cloze_targets`, not by the module).
    """

    num_items: int
    max_len: int
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    dropout: Any = 0.1
    mech: str = "none"
    refine_input: str = "scores"
    per_head: bool = False
    loss_type: str = "ce"
    mask_prob: float = 0.2
    mask_last: float = 0.1

    def setup(self):
        n, d = self.max_len + 1, self.hidden
        self.item_emb = self.param("item_emb", init, (self.num_items + 2, d))
        self.pos_emb = self.param("pos_emb", init, (n, d))
        self.ln_emb = nn.LayerNorm(epsilon=LN_EPS)
        self.blocks = [
            BERT4RecBlock(
                d,
                self.heads,
                self.dropout,
                self.mech,
                self.refine_input,
                self.per_head,
                max_len=n,
                name=f"block{i}",
            )
            for i in range(self.layers)
        ]
        self.head = _dense(d, "head")
        self.ln_head = nn.LayerNorm(epsilon=LN_EPS)
        self.out_bias = self.param(
            "out_bias", nn.initializers.zeros, (self.num_items + 1,)
        )

    def __call__(self, seq_BxL, train: bool = False, last_only: bool = False):
        """Output states ``BxLxD``, ``L <= max_len + 1``: the encoder's, through
        the output transform, which :meth:`score_items` dots with the items
        (zero rows at padding); ``Bx1xD``, the last position's, with
        ``last_only`` (the last block computes no other)."""
        if seq_BxL.shape[1] > self.max_len + 1:
            raise ValueError(
                f"input length {seq_BxL.shape[1]} exceeds max_len + 1 = "
                f"{self.max_len + 1} (score_all appends [mask] to at most max_len)"
            )
        valid = seq_BxL > 0
        x = self.item_emb[seq_BxL] + self.pos_emb[None, -seq_BxL.shape[1] :]
        x = _drop(self, self.ln_emb(x), self.dropout, train) * valid[..., None]
        for i, block in enumerate(self.blocks):
            x = block(x, valid, train, last=last_only and i == self.layers - 1)
        valid = valid[:, -x.shape[1] :]
        return self.ln_head(jax.nn.gelu(self.head(x))) * valid[..., None]

    def _logits(self, state_xD):
        return state_xD @ self.item_emb[: self.num_items + 1].T + self.out_bias

    def user_state(self, seq_BxL):
        """``BxD``: the output at a ``[mask]`` appended after the history
        ``seq_BxL`` (no dropout); what :meth:`score_items` scores."""
        mask = jnp.full((seq_BxL.shape[0], 1), self.num_items + 1, seq_BxL.dtype)
        seq = jnp.concatenate([seq_BxL, mask], 1)
        return self(seq, train=False, last_only=True)[:, -1]

    def score_all(self, seq_BxL):
        """Scores ``BxV`` of every id ``0..num_items`` at the ``[mask]`` after
        the history (no dropout); ``[mask]`` itself is never scored."""
        return self._logits(self.user_state(seq_BxL))

    def score_items(self, state_BxD, items):
        """Scores of ``items`` (``[I]`` for every row, or ``[B, I]``) for each
        user state: the item-chunked form of :meth:`score_all`."""
        emb, bias = self.item_emb[items], self.out_bias[items]
        if items.ndim == 1:
            return state_BxD @ emb.T + bias
        return jnp.einsum("bd,bid->bi", state_BxD, emb) + bias

    def loss(self, seq_BxL, pos_BxL, neg_BxL, train: bool = True):
        """Mean cross-entropy over the masked positions (``pos > 0``); the
        sampled negatives ``neg_BxL`` are not used.

        Items are scored only at the first ``K = cloze_cap(L, mask_prob)``
        masked positions of each row, which is every one of them for targets
        from :func:`awrsr_jax.registry.cloze_targets` (``K`` is 41 of 201
        positions on ML-1M's settings: the full-softmax cost falls to a fifth).
        Rows holding more targets than ``K`` are refused in eager mode.
        """
        del neg_BxL
        states = self(seq_BxL, train=train)
        where = pos_BxL > 0
        k = min(seq_BxL.shape[1], cloze_cap(seq_BxL.shape[1], self.mask_prob))
        try:  # eager calls only: traced targets come from cloze_targets
            most = int(where.sum(1).max())
        except (
            jax.errors.ConcretizationTypeError,
            jax.errors.TracerIntegerConversionError,
        ):
            most = 0
        if most > k:
            raise ValueError(
                f"a row holds more than {k} targets, the most this loss scores "
                f"per row at length {seq_BxL.shape[1]} and mask_prob "
                f"{self.mask_prob}"
            )
        _, cols = jax.lax.top_k(where.astype(jnp.float32), k)  # targets first
        pos = jnp.take_along_axis(pos_BxL, cols, 1)
        states = jnp.take_along_axis(states, cols[..., None], 1)
        return losses.softmax_ce(self._logits(states), pos, where=pos > 0)

    def l2_penalty(self):
        """``sum(w^2) / 2`` over the item and position tables (as SASRec's)."""
        return 0.5 * (jnp.sum(self.item_emb**2) + jnp.sum(self.pos_emb**2))
