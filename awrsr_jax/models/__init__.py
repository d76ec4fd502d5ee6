"""Flax Linen backbones, picked by name.

Every backbone module offers the same methods, which ``train.py`` relies on:
``__call__(seq, train)``, ``score_all(seq) -> [B, V]`` (higher is better),
``loss(seq, pos, neg, train) -> scalar`` and ``l2_penalty() -> scalar``.
"""

from __future__ import annotations

from awrsr_jax.config import Config
from awrsr_jax.models.sasrec import SASRec


def build(cfg: Config, num_items: int, *, dropout=None, pvn_weight=None):
    """The backbone of ``cfg``. ``dropout`` and ``pvn_weight`` override the
    config's and may be traced per-member values (vmapped sweeps)."""
    dropout = cfg.dropout if dropout is None else dropout
    pvn_weight = cfg.pvn_weight if pvn_weight is None else pvn_weight
    common = dict(
        num_items=num_items,
        max_len=cfg.max_len,
        hidden=cfg.hidden,
        layers=cfg.layers,
        heads=cfg.heads,
        dropout=dropout,
        mech=cfg.mech,
        refine_input=cfg.refine_input,
        per_head=cfg.per_head,
        loss_type=cfg.loss_type,
    )
    if cfg.backbone == "sasrec":
        return SASRec(**common)
    if cfg.backbone == "stosa":
        from awrsr_jax.models.stosa import STOSA

        return STOSA(
            **common,
            attn_dropout=cfg.attn_dropout,
            pvn_weight=pvn_weight,
            mean_passthrough=cfg.stosa_mean_passthrough,
        )
    raise ValueError(f"unknown backbone {cfg.backbone!r}")
