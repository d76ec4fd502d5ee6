"""One batch: the model of a member, its loss and the optimizer.

Pure functions of (params, batch, key) that :mod:`awrsr_jax.train.epoch` scans
over; per-member hyper-parameters ``hp`` (see :mod:`awrsr_jax.train.members`)
may be traced values, so one compiled program serves a whole sweep.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from awrsr_jax import models, registry
from awrsr_jax.config import Config


def optimizer(cfg: Config):
    """Adam with the backbone's beta2 (its registry record). The learning rate
    is applied outside, so it can differ per member."""
    b2 = registry.backbone(cfg.backbone).adam_b2
    return optax.scale_by_adam(b1=0.9, b2=b2, eps=1e-8)


def global_norm(tree):
    # Written out: optax renamed its helper across the versions we support.
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def model_of(cfg: Config, num_items: int, hp):
    """The backbone with the member's (possibly traced) dropout and pvn weight."""
    return models.build(
        cfg, num_items, dropout=hp["dropout"], pvn_weight=hp["pvn_weight"]
    )


def loss_fn(params, cfg, num_items, hp, seq, pos, neg, key):
    """``(loss + l2 penalty, loss)`` of one batch: the first is differentiated."""
    model = model_of(cfg, num_items, hp)
    loss = model.apply(
        params, seq, pos, neg, True, rngs={"dropout": key}, method="loss"
    )
    penalty = model.apply(params, method="l2_penalty")
    return loss + hp["l2"] * penalty, loss
