"""Backbones registered in one place: one :class:`Backbone` record each.

Everything the rest of the code asks about a backbone is in its record: the
Flax module and how a config builds it, its losses (the first is the
default), Adam's beta2 in its reference code, whether its attention scores
are Gaussian (2-Wasserstein; the ``gaussian`` mechanisms need that), its
reference configurations, and how a batch of training sequences becomes
inputs and targets. The mechanisms a backbone allows are derived from
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

from awrsr_jax.ops import refine


def next_item_targets(batch_BxL1, real_B):
    """``(seq, pos)``: inputs ``batch[:, :-1]`` and next items ``batch[:, 1:]``.

    A target counts only where its input holds an item (as in the SASRec
    code, a user's first item is never a target: its input would be padding)
    and the row is real (not the padding of the last batch).
    """
    seq = batch_BxL1[:, :-1]
    return seq, batch_BxL1[:, 1:] * (real_B[:, None] & (seq > 0))


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
      targets: ``(batch [B, L+1], real [B]) -> (seq [B, L], pos [B, L])``.
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
    targets: Callable = next_item_targets

    @property
    def mechs(self) -> tuple[str, ...]:
        """Every mechanism this backbone can run (leaking ones included)."""
        return tuple(
            m.name
            for m in refine.MECHANISMS.values()
            if self.gaussian or not m.gaussian
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
    ),
}


def backbone(name: str) -> Backbone:
    """The record of ``name``; ``ValueError`` naming ``--backbone`` otherwise."""
    if name not in BACKBONES:
        raise ValueError(f"--backbone={name!r}: choose from {tuple(BACKBONES)}")
    return BACKBONES[name]
