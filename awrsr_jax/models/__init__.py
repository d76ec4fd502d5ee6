"""Flax Linen backbones, built from a config through their registry record.

Every backbone module offers the same methods, which :mod:`awrsr_jax.train`
and :mod:`awrsr_jax.evaluate` rely on: ``__call__(seq, train)``,
``score_all(seq) -> [B, V]`` (higher is better; ``V = num_items + 1``, id 0
included and masked by the evaluator), ``user_state(seq)`` and
``score_items(state, items)`` (its item-chunked form), ``loss(seq, pos,
neg, train) -> scalar`` and ``l2_penalty() -> scalar``. Backbones:
``sasrec.py`` and ``stosa.py`` (causal), ``bert4rec.py`` (bidirectional). Which module a backbone uses, and which config fields it takes
beyond the shared ones, is in :data:`awrsr_jax.registry.BACKBONES`.
"""

from __future__ import annotations

from awrsr_jax import registry
from awrsr_jax.config import Config


def build(cfg: Config, num_items: int, *, dropout=None, pvn_weight=None):
    """The backbone of ``cfg``. ``dropout`` and ``pvn_weight`` override the
    config's and may be traced per-member values (vmapped sweeps)."""
    record = registry.backbone(cfg.backbone)
    dropout = cfg.dropout if dropout is None else dropout
    traced = {"pvn_weight": cfg.pvn_weight if pvn_weight is None else pvn_weight}
    return record.module_class()(
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
        **{arg: traced.get(f, getattr(cfg, f)) for arg, f in record.extra.items()},
    )
