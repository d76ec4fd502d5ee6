"""Backbones registered in one place: one :class:`Backbone` record each.

Everything the rest of the code asks about a backbone is in its record: the
Flax module and how a config builds it, its losses (the first is the
default), Adam's beta2 in its reference code, whether its attention scores
are Gaussian (2-Wasserstein; the ``gaussian`` mechanisms need that), its
reference configurations, its own values in the paper's search space, and
how a batch of training sequences becomes inputs and targets (next items, or
BERT4Rec's cloze task). The mechanisms a backbone allows are derived from
:data:`awrsr_jax.ops.refine.MECHANISMS`, never listed here.

Adding a backbone: its module under ``awrsr_jax/models/``, one record in
:data:`BACKBONES`, and tests. Modules are imported only when built, so this
file (and :mod:`awrsr_jax.config`, which validates against it) loads without
flax.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from awrsr_jax.ops import refine


def next_item_targets(batch_BxL1, real_B, key, model):
    """``(seq, pos)``: inputs ``batch[:, :-1]`` and next items ``batch[:, 1:]``.

    A target counts only where its input holds an item (as in the SASRec
    code, a user's first item is never a target: its input would be padding)
    and the row is real (not the padding of the last batch). Deterministic:
    ``key`` and ``model`` are not read.
    """
    del key, model
    seq = batch_BxL1[:, :-1]
    return seq, batch_BxL1[:, 1:] * (real_B[:, None] & (seq > 0))


def cloze_targets(batch_BxL1, real_B, key, model):
    """BERT4Rec's cloze task: ``(seq, pos)`` over the whole row ``[B, L+1]``.

    With probability ``model.mask_last`` a row has its last item, and only
    that one, replaced by the ``[mask]`` id ``model.num_items + 1`` (the
    authors' extra last-item instances, shaped like evaluation input). Every
    other row of ``n`` items has ``max(1, round(n * model.mask_prob))`` of
    them masked, chosen uniformly at random (the authors' data generator,
    whose cap ``max_predictions_per_seq`` is never reached at their
    settings: at most :func:`awrsr_jax.models.bert4rec.cloze_cap` a row).
    ``pos`` holds the original item at the masked positions and 0
    elsewhere; padding and the rows that only pad the last batch (``real``
    False) are never masked.
    """
    valid = (batch_BxL1 > 0) & real_B[:, None]
    k_pos, k_row = jax.random.split(key)
    u = jnp.where(valid, jax.random.uniform(k_pos, batch_BxL1.shape), 2.0)
    rank = jnp.argsort(jnp.argsort(u, axis=1), axis=1)  # 0 = smallest draw
    n = jnp.sum(valid, 1)
    count = jnp.maximum(1, jnp.round(n * jnp.float32(model.mask_prob)))
    masked = valid & (rank < count[:, None])
    cols = jnp.arange(batch_BxL1.shape[1])
    last_only = jax.random.uniform(k_row, real_B.shape) < model.mask_last
    masked = jnp.where(last_only[:, None], valid & (cols == cols[-1]), masked)
    seq = jnp.where(masked, model.num_items + 1, batch_BxL1)
    return seq, jnp.where(masked, batch_BxL1, 0)


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One backbone's facts.

    Attributes:
      name: the ``--backbone`` value.
      module: ``"package.module:Class"`` of its Flax Linen module, which offers
        ``__call__(seq, train)``, ``score_all(seq) -> [B, V]`` (higher is
        better), ``loss(seq, pos, neg, train)`` and ``l2_penalty()``.
      losses: the ``--loss`` values it supports; the first is its default.
      adam_b2: Adam's beta2 in the backbone's reference code.
      gaussian: its attention scores are -W2^2 between Gaussians (allows the
        ``gaussian`` mechanisms, e.g. ``stoc``).
      extra: config fields passed to the module under their module names
        (``{"module_arg": "config_field"}``), beyond the shared ones.
      reference: the authors' configuration (Config overrides).
      per_dataset: the configurations ``experiments.reproduce --budget=gpu``
        starts from, per dataset name (Config overrides).
      paper_space: its own values in the paper's search space (Section 3.1,
        ``experiments.grid --space=paper``), beyond the shared ones.
      targets: ``(batch [B, L+1], real [B], key, model) -> (seq [B, L'],
        pos [B, L'])``: a step's training rows (left-padded, the last training
        item last), which of them are real, a PRNG key of the step (for random
        targets) and the built module (its static fields, e.g. ``num_items``)
        -> the module's input and its targets (0: no target). ``L'`` is ``L``
        for next-item targets, ``L + 1`` for the cloze task.
      causal: its attention is causal. A bidirectional encoder sees later
        positions anyway, so the mechanisms whose only difference is to leak
        them (``value_literal``) are not offered (on it they would only let
        padding in).
    """

    name: str
    module: str
    losses: tuple[str, ...]
    adam_b2: float
    gaussian: bool = False
    extra: Mapping[str, str] = dataclasses.field(default_factory=dict)
    reference: Mapping[str, object] = dataclasses.field(default_factory=dict)
    per_dataset: Mapping[str, Mapping[str, object]] = dataclasses.field(
        default_factory=dict
    )
    paper_space: Mapping[str, list] = dataclasses.field(default_factory=dict)
    targets: Callable = next_item_targets
    causal: bool = True

    @property
    def mechs(self) -> tuple[str, ...]:
        """Every mechanism this backbone can run (leaking ones included where
        the backbone is causal)."""
        return tuple(
            m.name
            for m in refine.MECHANISMS.values()
            if (self.gaussian or not m.gaussian) and (self.causal or not m.leaks)
        )

    @property
    def table_mechs(self) -> tuple[str, ...]:
        """The mechanisms of the paper's tables: those that do not leak."""
        return tuple(m for m in self.mechs if not refine.MECHANISMS[m].leaks)

    def module_class(self):
        path, _, cls = self.module.partition(":")
        return getattr(importlib.import_module(path), cls)


# Reference configurations: SASRec's authors' ML-1M command (kang205/SASRec)
# and STOSA's authors' Beauty command (zfan20/STOSA). STOSA on ML-1M is our
# choice (the STOSA paper has no ML-1M run): SASRec's length, STOSA's width.
_SASREC_ML1M = dict(max_len=200, hidden=50, layers=2, heads=1, dropout=0.2,
                    lr=1e-3, batch_size=128)  # fmt: skip
_STOSA_BEAUTY = dict(max_len=100, hidden=64, layers=1, heads=4, dropout=0.3,
                     attn_dropout=0.0, pvn_weight=0.005, lr=1e-3, batch_size=256)  # fmt: skip
# BERT4Rec's authors' ML-1M script (FeiSun/BERT4Rec, run_ml-1m.sh; Beauty:
# length 50, masking 0.6). They train 400k steps at lr 1e-4; an epoch here is
# one pass over the users with one draw of masks, so the per-dataset starting
# points use lr 1e-3 (our choice, as the PyTorch re-implementations do).
_BERT4REC_ML1M = dict(max_len=200, hidden=64, layers=2, heads=2, dropout=0.1,
                      mask_prob=0.2, lr=1e-4, batch_size=256)  # fmt: skip

BACKBONES: dict[str, Backbone] = {
    "sasrec": Backbone(
        name="sasrec",
        module="awrsr_jax.models.sasrec:SASRec",
        losses=("bce", "ce"),
        adam_b2=0.98,  # SASRec's TensorFlow code
        reference=_SASREC_ML1M,
        per_dataset={
            "ml-1m": _SASREC_ML1M,
            "beauty": dict(_SASREC_ML1M, max_len=50, dropout=0.5),
        },
        paper_space={"hidden": [64, 128]},
    ),
    "stosa": Backbone(
        name="stosa",
        module="awrsr_jax.models.stosa:STOSA",
        losses=("bpr",),
        adam_b2=0.999,  # STOSA's PyTorch code
        gaussian=True,
        extra={
            "attn_dropout": "attn_dropout",
            "pvn_weight": "pvn_weight",
            "mean_passthrough": "stosa_mean_passthrough",
        },
        reference=_STOSA_BEAUTY,
        per_dataset={
            "beauty": _STOSA_BEAUTY,
            "ml-1m": dict(
                _STOSA_BEAUTY, max_len=200, layers=2, heads=1, dropout=0.2
            ),  # fmt: skip
        },
        paper_space={"hidden": [32, 64]},
    ),
    "bert4rec": Backbone(
        name="bert4rec",
        module="awrsr_jax.models.bert4rec:BERT4Rec",
        losses=("ce",),
        adam_b2=0.999,  # BERT4Rec's TensorFlow code (BERT's AdamWeightDecay)
        extra={"mask_prob": "mask_prob", "mask_last": "mask_last"},
        reference=_BERT4REC_ML1M,
        per_dataset={
            "ml-1m": dict(_BERT4REC_ML1M, lr=1e-3),
            "beauty": dict(_BERT4REC_ML1M, lr=1e-3, max_len=50, mask_prob=0.6),
        },
        paper_space={"hidden": [64, 128]},  # our choice: SASRec's widths
        targets=cloze_targets,
        causal=False,
    ),
}


def backbone(name: str) -> Backbone:
    """The record of ``name``; ``ValueError`` naming ``--backbone`` otherwise."""
    if name not in BACKBONES:
        raise ValueError(f"--backbone={name!r}: choose from {tuple(BACKBONES)}")
    return BACKBONES[name]


def check_table_mechs(mechs, backbones) -> None:
    """Refuses a ``--mechs`` name that is a table mechanism of none of
    ``backbones`` (a typo, or ``stoc`` without STOSA), which the tables would
    otherwise skip without a word; one that fits some of them (``stoc`` with
    SASRec and STOSA) runs where it fits."""
    allowed = {m for bb in backbones for m in backbone(bb).table_mechs}
    for m in mechs or ():
        if m not in allowed:
            raise ValueError(
                f"--mechs={','.join(mechs)}: {m!r} is not a mechanism of "
                f"{'/'.join(backbones)}; choose from {sorted(allowed)}"
            )
