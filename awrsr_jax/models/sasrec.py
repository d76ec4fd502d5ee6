"""SASRec (Kang & McAuley, ICDM 2018) with attention weight refinement.

Follows the authors' TensorFlow code (kang205/SASRec): item embedding times
sqrt(d) plus a learned position embedding, dropout, padding zeroed; each block
is [LayerNorm on the queries only -> causal multi-head attention (Q, K, V
projections with bias, no output projection, dropout on the weights) -> residual
onto the normalised queries; LayerNorm -> ReLU feed-forward (d -> d, dropout
after each layer) -> residual; zero padding]; a final LayerNorm; logits are dot
products with the shared item table. Glorot-uniform initialisation as in TF.

Shape letters: B batch, L max length, D hidden size, H heads, V = num_items + 1
(id 0 is padding), K candidates per position.

``dropout`` may be a traced scalar, so models that differ only in dropout can be
vmapped together. Dropout keys come from the ``dropout`` RNG stream
(``apply(..., rngs={"dropout": key})``) when ``train=True``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from awrsr_jax.models.common import query_rows, refined_weights
from awrsr_jax.ops import attention as att
from awrsr_jax.ops import losses

glorot = nn.initializers.glorot_uniform()


def _drop(module: nn.Module, x, rate, train: bool):
    return att.dropout(x, rate, module.make_rng("dropout") if train else None)


class SASRecBlock(nn.Module):
    """One self-attention block. ``x_BxLxD``, ``valid_BxL`` -> ``BxLxD``
    (``Bx1xD``, the last position only, with ``last=True``)."""

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
        dh = d // self.heads
        q_in = nn.LayerNorm(epsilon=1e-8, name="ln_attn")(x_BxLxD)

        def proj(name, inp):
            y = nn.Dense(d, kernel_init=glorot, name=name)(inp)
            return y.reshape(b, n, self.heads, dh)

        q, k, v = proj("q", q_in), proj("k", x_BxLxD), proj("v", x_BxLxD)
        p = refined_weights(
            self,
            att.dot_product_scores(q, k),
            att.attention_mask(valid_BxL),
            mech=self.mech,
            refine_input=self.refine_input,
            per_head=self.per_head,
        )
        p, q_in, valid_BxL = query_rows(last, p, q_in, valid_BxL)
        p = _drop(self, p, self.dropout, train)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", p, v).reshape(q_in.shape)
        x = q_in + ctx
        ff_in = nn.LayerNorm(epsilon=1e-8, name="ln_ffn")(x)
        h = jax.nn.relu(nn.Dense(d, kernel_init=glorot, name="ffn1")(ff_in))
        h = _drop(self, h, self.dropout, train)
        h = _drop(
            self, nn.Dense(d, kernel_init=glorot, name="ffn2")(h), self.dropout, train
        )
        return (ff_in + h) * valid_BxL[..., None]


class SASRec(nn.Module):
    """SASRec over left-padded item sequences.

    Attributes:
      num_items: catalogue size; ids are ``1..num_items``, 0 pads.
      max_len: L, the positions the model sees.
      hidden, layers, heads: D, number of blocks, heads (D % heads == 0).
      dropout: rate on embeddings, attention weights and feed-forward outputs.
      mech: refinement name (``none``, ``simp``, ``value``, ``add``).
      refine_input: ``scores`` (pre-softmax A) or ``probs``.
      per_head: one set of refinement matrices per head instead of per layer.
      loss_type: ``bce`` (one sampled negative per position) or ``ce`` (full
        softmax over the catalogue).
    """

    num_items: int
    max_len: int
    hidden: int = 50
    layers: int = 2
    heads: int = 1
    dropout: Any = 0.2
    mech: str = "none"
    refine_input: str = "scores"
    per_head: bool = False
    loss_type: str = "bce"

    def setup(self):
        self.item_emb = self.param(
            "item_emb", glorot, (self.num_items + 1, self.hidden)
        )
        self.pos_emb = self.param("pos_emb", glorot, (self.max_len, self.hidden))
        self.blocks = [
            SASRecBlock(
                self.hidden,
                self.heads,
                self.dropout,
                self.mech,
                self.refine_input,
                self.per_head,
                max_len=self.max_len,
                name=f"block{i}",
            )
            for i in range(self.layers)
        ]
        self.ln_final = nn.LayerNorm(epsilon=1e-8)

    def __call__(self, seq_BxL, train: bool = False, last_only: bool = False):
        """Hidden states ``BxLxD`` (zero rows at padding); ``Bx1xD``, the last
        position's, with ``last_only`` (the last block computes no other)."""
        valid = seq_BxL > 0
        x = self.item_emb[seq_BxL] * jnp.sqrt(float(self.hidden))
        x = x + self.pos_emb[None, -seq_BxL.shape[1] :]
        x = _drop(self, x, self.dropout, train) * valid[..., None]
        for i, block in enumerate(self.blocks):
            x = block(x, valid, train, last=last_only and i == self.layers - 1)
        return self.ln_final(x)

    def score_all(self, seq_BxL):
        """Scores ``BxV`` of every item after the last position (no dropout)."""
        return self.user_state(seq_BxL) @ self.item_emb.T

    def user_state(self, seq_BxL):
        """``BxD``: what :meth:`score_items` scores against (no dropout)."""
        return self(seq_BxL, train=False, last_only=True)[:, -1]

    def score_items(self, state_BxD, items):
        """Scores of ``items`` (``[I]`` for every row, or ``[B, I]``) for each
        user state: the item-chunked form of :meth:`score_all`."""
        emb = self.item_emb[items]
        if items.ndim == 1:
            return state_BxD @ emb.T
        return jnp.einsum("bd,bid->bi", state_BxD, emb)

    def loss(self, seq_BxL, pos_BxL, neg_BxL, train: bool = True):
        """Mean training loss over the positions whose target is not padding."""
        h = self(seq_BxL, train=train)
        where = pos_BxL > 0
        if self.loss_type == "ce":
            return losses.softmax_ce(h @ self.item_emb.T, pos_BxL, where=where)
        pos = jnp.sum(h * self.item_emb[pos_BxL], -1)
        neg = jnp.sum(h * self.item_emb[neg_BxL], -1)
        return losses.bce(pos, neg, where=where)

    def l2_penalty(self):
        """TF's ``l2_regularizer`` on both embedding tables: ``sum(w^2) / 2``."""
        return 0.5 * (jnp.sum(self.item_emb**2) + jnp.sum(self.pos_emb**2))
