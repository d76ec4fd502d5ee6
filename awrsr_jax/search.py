"""Hyper-parameter search: spaces, config hashes and shape groups.

Nothing here trains, reads flags or writes files: ``experiments.grid`` does.

* A *space* maps :class:`Config` field names to lists of values. ``paper`` is
  the search of the paper's Section 3.1; ``small`` and ``smoke`` are cut-down
  versions; a JSON file gives any other (``{"field": [values]}``, optionally
  nested per backbone: ``{"sasrec": {...}, "stosa": {...}}``).
* :func:`expand` makes the Cartesian product of a space; :func:`sample`
  draws a seeded random subset of it.
* :func:`config_hash` names one (config, dataset, extras) triple; results are
  keyed by it, so a finished config is recognised whatever order it ran in.
* :func:`shape_groups` gathers configs that differ only in the per-member
  hyper-parameters of ``train.HPARAMS`` (which keep shapes): each group trains
  as one ensemble (one :func:`awrsr_jax.runner.run` with a ``sweep``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json

import numpy as np

from awrsr_jax import registry
from awrsr_jax.config import Config, validate
from awrsr_jax.train.members import HPARAMS

# Section 3.1 of the paper. heads x hidden combinations that do not divide are
# dropped by :func:`expand` (e.g. 3 heads never divide 32/64/128).
_PAPER_COMMON = {
    "max_len": [20, 30, 50, 100],
    "lr": [1e-3, 1e-4],
    "l2": [1e-1, 1e-2, 1e-3],
    "dropout": [0.3, 0.5, 0.7],
    "heads": [1, 2, 3, 4],
    "layers": [1, 2, 3, 4],
}
# The same for every backbone; ``paper`` adds each backbone's own values (its
# registry record's ``paper_space``: the hidden sizes).
SPACES = {
    "paper": _PAPER_COMMON,
    # A subset of the paper's values that one GPU finishes in minutes.
    "small": {"lr": [1e-3], "l2": [1e-2, 1e-3], "dropout": [0.3, 0.5, 0.7]},
    # Two shape groups of two members: exercises grouping and resuming on CPU.
    "smoke": {"layers": [1, 2], "lr": [1e-3, 1e-2]},
}


def load_space(name_or_path: str, backbone: str) -> dict[str, list]:
    """The space ``paper``/``small``/``smoke`` or a JSON file, for ``backbone``."""
    if name_or_path in SPACES:
        space = dict(SPACES[name_or_path])
        if name_or_path == "paper":
            space = {**registry.backbone(backbone).paper_space, **space}
    else:
        try:
            with open(name_or_path) as f:
                space = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(
                f"--space={name_or_path!r}: not one of {sorted(SPACES)} and not a "
                f"readable JSON file ({e})"
            ) from None
        if backbone in space and isinstance(space[backbone], dict):
            space = space[backbone]
    fields = {f.name for f in dataclasses.fields(Config)}
    for key, vals in space.items():
        if key not in fields:
            raise ValueError(f"--space: {key!r} is not a config field")
        if not isinstance(vals, list) or not vals:
            raise ValueError(f"--space: {key!r} needs a non-empty list of values")
    return dict(space)


def expand(base: Config, space: dict[str, list]) -> tuple[list[Config], list[str]]:
    """The Cartesian product of ``space`` over ``base``: (valid configs, reasons
    why the others were dropped). Order is deterministic (sorted keys)."""
    keys = sorted(space)
    configs, dropped = [], []
    for values in itertools.product(*(space[k] for k in keys)):
        cfg = base.replace(**dict(zip(keys, values)))
        try:
            configs.append(validate(cfg))
        except ValueError as e:
            dropped.append(str(e))
    return configs, dropped


def config_hash(cfg: Config, data_id: str = "", **extra) -> str:
    """16 hex digits naming ``cfg`` on the dataset ``data_id`` (plus ``extra``)."""
    blob = json.dumps(
        {"config": cfg.identity(), "data": data_id, **extra},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def shape_key(cfg: Config) -> Config:
    """``cfg`` with the per-member hyper-parameters reset: equal keys share shapes."""
    return cfg.replace(**{k: getattr(Config, k) for k in HPARAMS})


def shape_groups(configs: list[Config], max_members: int = 32):
    """``[(shared_cfg, sweep, members)]``: configs that can train as one ensemble.

    ``sweep`` maps each name of ``HPARAMS`` to the members' values, as
    ``train.fit(sweep=...)`` takes it; groups larger than ``max_members`` are
    split so that one ensemble fits in device memory.
    """
    groups: dict[Config, list[Config]] = {}
    for cfg in configs:
        groups.setdefault(shape_key(cfg), []).append(cfg)
    out = []
    for members in groups.values():
        for i in range(0, len(members), max_members):
            chunk = members[i : i + max_members]
            sweep = {k: [getattr(c, k) for c in chunk] for k in HPARAMS}
            out.append((chunk[0], sweep, chunk))
    return out


def sample(configs: list[Config], n: int, seed: int = 0) -> list[Config]:
    """``n`` of ``configs`` drawn without replacement by a seeded generator, in
    their original order (all of them when ``n >= len(configs)``)."""
    if n < 1:
        raise ValueError(f"--sample={n}: must be >= 1")
    if n >= len(configs):
        return list(configs)
    keep = np.random.default_rng(seed).choice(len(configs), n, replace=False)
    return [configs[i] for i in sorted(keep)]
