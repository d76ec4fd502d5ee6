"""STOSA (Fan et al., WWW 2022) with attention weight refinement.

Follows the authors' PyTorch code (zfan20/STOSA, ``DistSAModel``,
``DistSAEncoder``/``DistLayer``/``DistSelfAttention``/``DistIntermediate`` and
``DistSAModelTrainer``). Every item and position has a mean and a covariance
embedding; each position carries a diagonal Gaussian ``N(mu, diag(sigma))``.

* Embedding stage (one LayerNorm and one dropout shared by both streams):
  ``mu = ELU(dropout(LN(e_mu + p_mu)))`` and
  ``sigma = ELU(dropout(LN(e_sigma + p_sigma))) + 1`` (their order: LayerNorm,
  dropout, then ELU).
* Each layer: mean Q/K/V linear, covariance Q/K/V ``ELU(linear) + 1``; scores
  ``-W2^2(q_k, k_t) / sqrt(d_h)`` (squared, no square root); the weights ``P``
  go through the refinement (:func:`models.common.refined_weights`), then
  attention dropout (``attn_dropout``); contexts ``P V_mu`` and ``(P*P) V_sigma``;
  per stream ``LN(dropout(dense(ctx)) + input)`` with the LayerNorm shared by the
  two streams; then a per-stream feed-forward block
  ``LN(dropout(W2 ELU(W1 h)) + h)`` (4d inner size, own LayerNorm), whose
  covariance output passes ``ELU(.) + 1`` again. No final LayerNorm.
* Loss (their ``bpr_optimization``): element-wise squared W2 between the output
  at each position and the target's / the negative's Gaussian (item covariance
  ``ELU(e_sigma) + 1``), ``-log sigmoid(d_neg - d_pos) + pvn_weight *
  max(0, d_pos - d(pos, neg))``, averaged over real target positions.
* Ranking (their ``dist_predict_full``): ascending squared W2 (matmul form, no
  square root) from the last position's Gaussian to every item; ``score_all``
  returns ``-W2^2`` so that higher is better, as evaluation expects.
  ``user_state`` and ``score_items`` split it for item-chunked evaluation.
* Initialisation (their ``init_weights``): Linear and Embedding weights
  ``Normal(mean=0.01, std=0.02)`` (DistSAModel uses mean 0.01, unlike their
  SASRec's 0), biases 0, LayerNorm ``eps = 1e-12``. Refinement matrices use
  :func:`ops.refine.init_param`.
* ``mean_passthrough=True`` reproduces their encoder typo
  (``maen_hidden_states``): every layer reads the embedding-stage mean and the
  model outputs it unchanged; only the covariance stream is updated. Default off.
* ``l2_penalty`` is ``sum(w^2)/2`` over all parameters: ``l2`` then acts like
  torch Adam's ``weight_decay``, which their code uses.

Departure, unobservable at real positions: padded positions are held at
``mu = 0, sigma = 1`` after the embedding stage and after every layer (their
code lets them float; the key mask hides them either way), so no output depends
on what sits under the padding mask.

Shape letters: B batch, L max length, D hidden size, H heads, V = num_items + 1
(id 0 is padding). ``dropout`` and ``pvn_weight`` may be traced scalars.
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


def normal_init(key, shape, dtype=jnp.float32):
    """The authors' ``weight.normal_(mean=0.01, std=0.02)``."""
    return 0.01 + 0.02 * jax.random.normal(key, shape, dtype)


def _drop(module: nn.Module, x, rate, train: bool):
    # A Python zero (e.g. attn_dropout=0) skips the mask draw; traced rates
    # never reach the comparison.
    if not train or (isinstance(rate, (int, float)) and rate == 0):
        return x
    return att.dropout(x, rate, module.make_rng("dropout"))


def _dense(features: int, name: str):
    return nn.Dense(features, kernel_init=normal_init, name=name)


def w2_sq_paired(mu1, sigma1, mu2, sigma2):
    """Element-wise squared W2 ``[...]`` between ``[..., D]`` Gaussians (their
    ``wasserstein_distance``; sqrt of sigma clamped at 1e-24 as theirs)."""
    s1 = jnp.sqrt(jnp.maximum(sigma1, 1e-24))
    s2 = jnp.sqrt(jnp.maximum(sigma2, 1e-24))
    return jnp.sum((mu1 - mu2) ** 2, -1) + jnp.sum((s1 - s2) ** 2, -1)


def _hold_padding(mu_BxLxD, sigma_BxLxD, valid_BxL):
    v = valid_BxL[..., None]
    return jnp.where(v, mu_BxLxD, 0.0), jnp.where(v, sigma_BxLxD, 1.0)


class FeedForward(nn.Module):
    """Their ``DistIntermediate``: ``LN(dropout(W2 ELU(W1 h)) + h)``, 4d inner."""

    hidden: int
    dropout: Any

    @nn.compact
    def __call__(self, h_BxLxD, train: bool):
        y = jax.nn.elu(_dense(4 * self.hidden, "dense1")(h_BxLxD))
        y = _drop(self, _dense(self.hidden, "dense2")(y), self.dropout, train)
        return nn.LayerNorm(epsilon=LN_EPS, name="ln")(y + h_BxLxD)


class STOSABlock(nn.Module):
    """One Wasserstein self-attention layer plus the two feed-forward blocks.

    ``(mu_BxLxD, sigma_BxLxD, valid_BxL) -> (mu_BxLxD, sigma_BxLxD)`` (the
    last position only, ``Bx1xD`` each, with ``last=True``).
    """

    hidden: int
    heads: int
    dropout: Any
    attn_dropout: Any
    mech: str
    refine_input: str
    per_head: bool
    max_len: int | None = None  # refinement matrices' size (None: input length)

    @nn.compact
    def __call__(self, mu_BxLxD, sigma_BxLxD, valid_BxL, train: bool, last=False):
        b, n, d = mu_BxLxD.shape
        dh = d // self.heads

        def proj(name, inp, positive=False):
            y = _dense(d, name)(inp)
            y = att.elu_plus_one(y) if positive else y
            return y.reshape(b, n, self.heads, dh)

        q_mu, k_mu, v_mu = (proj(f"{c}_mu", mu_BxLxD) for c in "qkv")
        q_sg, k_sg, v_sg = (proj(f"{c}_sigma", sigma_BxLxD, True) for c in "qkv")
        p_BxHxLxL = refined_weights(
            self,
            att.w2_scores(q_mu, q_sg, k_mu, k_sg),
            att.attention_mask(valid_BxL),
            mech=self.mech,
            refine_input=self.refine_input,
            per_head=self.per_head,
        )
        p_BxHxLxL, mu_BxLxD, sigma_BxLxD, valid_BxL = query_rows(
            last, p_BxHxLxL, mu_BxLxD, sigma_BxLxD, valid_BxL
        )
        p_BxHxLxL = _drop(self, p_BxHxLxL, self.attn_dropout, train)
        shape = mu_BxLxD.shape
        ctx_mu = jnp.einsum("bhqk,bkhd->bqhd", p_BxHxLxL, v_mu).reshape(shape)
        ctx_sg = jnp.einsum("bhqk,bkhd->bqhd", p_BxHxLxL**2, v_sg).reshape(shape)
        # One LayerNorm instance for both streams, as in their DistSelfAttention.
        ln = nn.LayerNorm(epsilon=LN_EPS, name="ln_attn")

        def out(name, ctx, inp):
            return ln(_drop(self, _dense(d, name)(ctx), self.dropout, train) + inp)

        h_mu = out("dense_mu", ctx_mu, mu_BxLxD)
        h_sg = out("dense_sigma", ctx_sg, sigma_BxLxD)
        mu = FeedForward(d, self.dropout, name="ffn_mu")(h_mu, train)
        sigma = att.elu_plus_one(
            FeedForward(d, self.dropout, name="ffn_sigma")(h_sg, train)
        )
        return _hold_padding(mu, sigma, valid_BxL)


class STOSA(nn.Module):
    """STOSA over left-padded item sequences.

    Attributes:
      num_items: catalogue size; ids are ``1..num_items``, 0 pads.
      max_len: L, the positions the model sees.
      hidden, layers, heads: D, number of layers, heads (D % heads == 0).
      dropout: hidden dropout (embeddings, dense outputs, feed-forward).
      mech: refinement name (``none``, ``simp``, ``value``, ``add``, ``stoc``).
      refine_input: ``scores`` (pre-softmax A) or ``probs``.
      per_head: one set of refinement matrices per head instead of per layer.
      loss_type: only ``bpr`` (BPR + pvn).
      attn_dropout: dropout on the attention weights P.
      pvn_weight: weight of the positive-vs-negative margin term.
      mean_passthrough: reproduce the authors' typo (mean stream never updated).
    """

    num_items: int
    max_len: int
    hidden: int = 64
    layers: int = 1
    heads: int = 4
    dropout: Any = 0.3
    mech: str = "none"
    refine_input: str = "scores"
    per_head: bool = False
    loss_type: str = "bpr"
    attn_dropout: Any = 0.0
    pvn_weight: Any = 0.005
    mean_passthrough: bool = False

    def setup(self):
        if self.loss_type != "bpr":
            raise ValueError(f"STOSA supports loss 'bpr' only, got {self.loss_type!r}")
        v, d = self.num_items + 1, self.hidden
        self.item_mu = self.param("item_mu", normal_init, (v, d))
        self.item_sigma = self.param("item_sigma", normal_init, (v, d))
        self.pos_mu = self.param("pos_mu", normal_init, (self.max_len, d))
        self.pos_sigma = self.param("pos_sigma", normal_init, (self.max_len, d))
        self.ln_emb = nn.LayerNorm(epsilon=LN_EPS)
        self.blocks = [
            STOSABlock(
                d,
                self.heads,
                self.dropout,
                self.attn_dropout,
                self.mech,
                self.refine_input,
                self.per_head,
                max_len=self.max_len,
                name=f"block{i}",
            )
            for i in range(self.layers)
        ]

    def embed(self, seq_BxL, train: bool = False):
        """Embedding-stage Gaussians ``(mu, sigma)``, each ``BxLxD``."""
        n = seq_BxL.shape[1]
        x_mu = self.item_mu[seq_BxL] + self.pos_mu[None, -n:]
        x_sg = self.item_sigma[seq_BxL] + self.pos_sigma[None, -n:]
        mu = jax.nn.elu(_drop(self, self.ln_emb(x_mu), self.dropout, train))
        sigma = att.elu_plus_one(_drop(self, self.ln_emb(x_sg), self.dropout, train))
        return _hold_padding(mu, sigma, seq_BxL > 0)

    def __call__(self, seq_BxL, train: bool = False, last_only: bool = False):
        """Output Gaussians ``(mu_BxLxD, sigma_BxLxD)``; padding holds (0, 1).
        With ``last_only``, the last position's (``Bx1xD`` each; the last layer
        computes no other)."""
        valid = seq_BxL > 0
        mu_in, sigma = self.embed(seq_BxL, train)
        mu = mu_in
        for i, block in enumerate(self.blocks):
            last = last_only and i == self.layers - 1
            new_mu, sigma = block(mu, sigma, valid, train, last=last)
            # Their encoder assigns the new mean to a misspelt name, so every
            # layer reads, and the model returns, the embedding-stage mean.
            mu = mu_in[:, -sigma.shape[1] :] if self.mean_passthrough else new_mu
        return mu, sigma

    def item_gaussians(self, ids=None):
        """Item means and covariances ``ELU(e_sigma) + 1`` (all items, or ``ids``)."""
        mu, sg = self.item_mu, self.item_sigma
        if ids is not None:
            mu, sg = mu[ids], sg[ids]
        return mu, att.elu_plus_one(sg)

    def score_all(self, seq_BxL):
        """``-W2^2`` ``BxV`` from the last position to every item (no dropout)."""
        item_mu, item_sg = self.item_gaussians()
        return -att.w2_distance_sq(*self.user_state(seq_BxL), item_mu, item_sg)

    def user_state(self, seq_BxL):
        """``(mu_BxD, sigma_BxD)``, the last position's Gaussian: what
        :meth:`score_items` scores against (no dropout)."""
        mu, sigma = self(seq_BxL, train=False, last_only=True)
        return mu[:, -1], sigma[:, -1]

    def score_items(self, state, items):
        """``-W2^2`` from each user state to ``items`` (``[I]`` for every row,
        or ``[B, I]``): the item-chunked form of :meth:`score_all`."""
        mu_BxD, sigma_BxD = state
        item_mu, item_sg = self.item_gaussians(items)
        if items.ndim == 1:
            return -att.w2_distance_sq(mu_BxD, sigma_BxD, item_mu, item_sg)
        d = att.w2_distance_sq(mu_BxD[:, None], sigma_BxD[:, None], item_mu, item_sg)
        return -d[:, 0]

    def loss(self, seq_BxL, pos_BxL, neg_BxL, train: bool = True):
        """BPR + pvn over the positions whose target is not padding."""
        mu, sigma = self(seq_BxL, train=train)
        p_mu, p_sg = self.item_gaussians(pos_BxL)
        n_mu, n_sg = self.item_gaussians(neg_BxL)
        return losses.bpr_pvn(
            w2_sq_paired(mu, sigma, p_mu, p_sg),
            w2_sq_paired(mu, sigma, n_mu, n_sg),
            w2_sq_paired(p_mu, p_sg, n_mu, n_sg),
            where=pos_BxL > 0,
            pvn_weight=self.pvn_weight,
        )

    def l2_penalty(self):
        """``sum(w^2) / 2`` over every parameter (torch Adam ``weight_decay``)."""
        leaves = jax.tree_util.tree_leaves(self.variables["params"])
        return 0.5 * sum(jnp.sum(w**2) for w in leaves)
