"""One run's configuration: a frozen, hashable, JSON-round-trippable dataclass.

The experiment flags map 1:1 onto these fields (their ``--help`` is
:data:`HELP`); :func:`validate` checks them all before anything is compiled
and names the offending flag. Backbone and mechanism lists come from
:mod:`awrsr_jax.registry` and :data:`awrsr_jax.ops.refine.MECHANISMS`.
"""

from __future__ import annotations

import dataclasses
import json
import math

from awrsr_jax import registry
from awrsr_jax.ops.refine import REFINE_INPUTS

PROTOCOLS = ("full", "sampled100")


@dataclasses.dataclass(frozen=True)
class Config:
    backbone: str = "sasrec"
    mech: str = "none"  # refinement: none | simp | value | add | stoc (STOSA)
    refine_input: str = "scores"  # A = pre-softmax scores, or softmax probs
    per_head: bool = False  # refinement matrices per head instead of per layer
    hidden: int = 64  # D
    max_len: int = 50  # L = n
    layers: int = 2
    heads: int = 1
    dropout: float = 0.2  # hidden dropout (and SASRec's attention dropout)
    attn_dropout: float = 0.0  # STOSA's attention-probability dropout
    lr: float = 1e-3
    l2: float = 0.0  # SASRec, BERT4Rec: l2 * sum(emb^2)/2; STOSA: Adam weight decay
    loss: str = ""  # "" = the backbone's default (bce / bpr / ce)
    pvn_weight: float = 0.005  # STOSA's positive-vs-negative margin weight
    stosa_mean_passthrough: bool = False  # reproduce the authors' typo
    mask_prob: float = 0.2  # BERT4Rec: share of a row's items masked (cloze)
    mask_last: float = 0.1  # BERT4Rec: share of rows whose last item alone is masked
    batch_size: int = 128
    # A one-member run sorts each batch by length into groups of this many rows
    # and cuts each group to its own length (same gradient, less padding); 0 = off,
    # -1 = auto (16 on the CPU, where it was measured; off on accelerators).
    trim_rows: int = -1
    epochs: int = 200
    patience: int = 20  # epochs without a better validation NDCG@5
    # Also report each member as if it had stopped at this smaller patience
    # (0 = off): the paper's rule and a longer run from one training.
    report_patience: int = 0
    eval_every: int = 1
    eval_chunk: int = 256  # users scored per evaluation call
    protocol: str = "full"  # or sampled100 (SASRec paper's 100 negatives)
    seed: int = 0

    @property
    def loss_type(self) -> str:
        return self.loss or registry.backbone(self.backbone).losses[0]

    def identity(self) -> dict:
        """The fields that name this config (``config.json``, and through it
        resumed runs; :func:`awrsr_jax.search.config_hash`): all of them, but
        a :data:`LATER_FIELDS` field only where the backbone reads it or it
        differs from its default, so adding one renames no earlier result."""
        d = dataclasses.asdict(self)
        bb = registry.BACKBONES.get(self.backbone)
        reads = set(bb.extra.values()) if bb else set()
        for name in LATER_FIELDS:
            if name not in reads and d[name] == getattr(Config, name):
                del d[name]
        return d

    def to_json(self) -> str:
        return json.dumps(self.identity(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config keys: {unknown}")
        return cls(**d)

    def replace(self, **kw) -> Config:
        return dataclasses.replace(self, **kw)


# Backbone fields added after runs were first named by their config.
LATER_FIELDS = ("mask_prob", "mask_last", "report_patience")

HELP = {
    "backbone": f"model: {', '.join(registry.BACKBONES)}",
    "mech": "attention refinement: none (the original model), simp, value, add, "
    "stoc (Gaussian backbones: stosa), value_literal (leaks the future; study only)",
    "refine_input": "what the refinement attends to: scores (pre-softmax A) or "
    "probs (masked softmax of A)",
    "per_head": "one set of n x n refinement matrices per head instead of one per "
    "layer",
    "hidden": "embedding and hidden size D (a multiple of --heads)",
    "max_len": "sequence length n: a user's last n items are the input; also the "
    "size of the n x n refinement matrices (BERT4Rec: n + 1 positions, for "
    "n items and the [mask] after them)",
    "layers": "number of self-attention blocks",
    "heads": "attention heads per block",
    "dropout": "hidden dropout rate in [0, 1) (SASRec, BERT4Rec: also on attention "
    "weights)",
    "attn_dropout": "STOSA only: dropout rate on the attention weights, in [0, 1)",
    "lr": "Adam learning rate (> 0, finite)",
    "l2": "L2 strength (>= 0). SASRec, BERT4Rec: l2 * sum(embedding^2) / 2 "
    "added to the loss; STOSA: Adam weight decay, as in each authors' code",
    "loss": "'' = the backbone's default (sasrec: bce with one sampled negative; "
    "stosa: bpr + pvn; bert4rec: ce, full softmax cross-entropy at the masked "
    "positions); sasrec also takes ce (full softmax cross-entropy)",
    "pvn_weight": "STOSA only: weight of the positive-vs-negative margin term",
    "stosa_mean_passthrough": "STOSA only: reproduce the authors' code, whose "
    "mean stream is never updated by the layers (a typo)",
    "mask_prob": "BERT4Rec only: share of a training row's items replaced by "
    "[mask] for the cloze task (max(1, round(n * mask_prob)) of its n items), "
    "in (0, 1]",
    "mask_last": "BERT4Rec only: share of training rows, in [0, 1], whose last "
    "item alone is masked (as at evaluation) instead",
    "batch_size": "training sequences per step",
    "trim_rows": "rows per padding-trimmed group (same gradient, less padding); "
    "0 = off (members vmapped), -1 = auto (16 on the CPU when >= 20% of "
    "positions pad, off on accelerators)",
    "epochs": "at most this many training epochs (the cap)",
    "patience": "stop a member after this many validations without a better "
    "validation NDCG@5",
    "report_patience": "also report each member's result as if it had stopped "
    "after this many validations without a better validation NDCG@5 (below "
    "--patience; 0 = off): e.g. --patience=60 --report_patience=20 gives the "
    "paper's rule and a longer run from one training, exactly",
    "eval_every": "validate every this many epochs",
    "eval_chunk": "users scored per evaluation call (memory vs. speed)",
    "protocol": "full (rank all items) or sampled100 (the SASRec paper's 100 "
    "sampled negatives; labelled as such)",
    "seed": "first training seed (member m uses seed + m)",
}


def validate(cfg: Config) -> Config:
    """Raises ``ValueError("--flag: reason")`` for the first bad field."""

    def need(ok, flag, why):
        if not ok:
            raise ValueError(f"--{flag}={getattr(cfg, flag)!r}: {why}")

    for f in dataclasses.fields(cfg):
        if isinstance(getattr(cfg, f.name), float):
            need(math.isfinite(getattr(cfg, f.name)), f.name, "must be finite")
    need(cfg.backbone in registry.BACKBONES, "backbone",
         f"choose from {tuple(registry.BACKBONES)}")  # fmt: skip
    bb = registry.backbone(cfg.backbone)
    if cfg.mech == "stoc" and not bb.gaussian:
        need(False, "mech", "stoc needs Gaussian embeddings; it exists for STOSA only")
    need(cfg.mech in bb.mechs, "mech", f"choose from {bb.mechs}")
    need(cfg.refine_input in REFINE_INPUTS, "refine_input", f"one of {REFINE_INPUTS}")
    need(cfg.loss in ("",) + bb.losses, "loss", f"{cfg.backbone} supports {bb.losses}")
    need(cfg.max_len >= 2, "max_len", "must be >= 2")
    need(cfg.hidden >= 1, "hidden", "must be positive")
    need(cfg.layers >= 1, "layers", "must be >= 1")
    need(cfg.heads >= 1, "heads", "must be >= 1")
    need(cfg.hidden % cfg.heads == 0, "hidden", f"not divisible by --heads={cfg.heads}")
    need(0.0 <= cfg.dropout < 1.0, "dropout", "must be in [0, 1)")
    need(0.0 <= cfg.attn_dropout < 1.0, "attn_dropout", "must be in [0, 1)")
    need(cfg.lr > 0, "lr", "must be positive")
    need(cfg.l2 >= 0, "l2", "must be >= 0")
    need(cfg.pvn_weight >= 0, "pvn_weight", "must be >= 0")
    need(0.0 < cfg.mask_prob <= 1.0, "mask_prob", "must be in (0, 1]")
    need(0.0 <= cfg.mask_last <= 1.0, "mask_last", "must be in [0, 1]")
    need(cfg.batch_size >= 1, "batch_size", "must be >= 1")
    need(cfg.trim_rows >= -1, "trim_rows", "must be >= 0, or -1 (auto)")
    need(cfg.epochs >= 1, "epochs", "must be >= 1")
    need(cfg.patience >= 1, "patience", "must be >= 1")
    need(
        cfg.report_patience == 0 or 1 <= cfg.report_patience < cfg.patience,
        "report_patience",
        f"must be 0 (off) or in [1, --patience={cfg.patience})",
    )
    need(cfg.eval_every >= 1, "eval_every", "must be >= 1")
    need(cfg.eval_chunk >= 1, "eval_chunk", "must be >= 1")
    need(cfg.protocol in PROTOCOLS, "protocol", f"one of {PROTOCOLS}")
    need(cfg.seed >= 0, "seed", "must be >= 0")
    return cfg
