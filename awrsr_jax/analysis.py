"""What the experiment commands compute from trained models and their files.

Shared by ``experiments.reproduce``, ``complexity`` and ``figures`` (and the
one experiment path, :mod:`awrsr_jax.runner`), so that none imports another:
parameter counts, attention maps, NDCG@N curves, and Markdown table cells.
"""

from __future__ import annotations

import numpy as np

LAST = 15  # positions shown in an attention map


def count_params(cfg, params, members: int = 1) -> dict:
    """Total and refinement parameter counts of one member of ``params``
    (a variables dict whose leaves may carry a leading member axis)."""
    from flax import traverse_util

    from awrsr_jax.ops import refine

    flat = traverse_util.flatten_dict(params["params"])
    names = set(refine.param_names(cfg.mech))
    total = sum(v.size for v in flat.values()) // members
    ref = sum(v.size for k, v in flat.items() if k[-1] in names) // members
    return {"params": int(total), "refine_params": int(ref)}


def param_shapes(cfg, num_items: int) -> dict:
    """:func:`count_params` from abstract shapes (nothing is allocated)."""
    import jax

    from awrsr_jax import train

    state = jax.eval_shape(lambda: train.init_member(cfg, num_items, 0))
    return count_params(cfg, state["params"])


def attention_maps(cfg, params, data) -> dict:
    """A and B (``[layers, H, L, L]``) of member 0 on the first test user with
    at least 15 real positions (else the longest), with the user's sequence."""
    import jax
    from flax import traverse_util

    from awrsr_jax import models

    inp = np.asarray(data.test_inp)
    real = (inp > 0).sum(1)
    enough = np.flatnonzero(real >= min(LAST, inp.shape[1]))
    row = int(enough[0]) if enough.size else int(real.argmax())
    one = jax.tree.map(lambda x: x[0], params)
    model = models.build(cfg, data.num_items)
    _, state = model.apply(one, inp[row][None], False, mutable=["intermediates"])
    flat = sorted(traverse_util.flatten_dict(state["intermediates"]).items())
    a = np.stack([np.asarray(v[0][0]) for k, v in flat if k[-1] == "A"])
    b = np.stack([np.asarray(v[0][0]) for k, v in flat if k[-1] == "B"])
    return {"A": a, "B": b, "seq": inp[row], "row": np.int64(row)}


def ndcg_at(ranks_KxU, ns=range(1, 21)) -> np.ndarray:
    """Mean NDCG@N over seeds and users for each N (one relevant item)."""
    import jax.numpy as jnp

    from awrsr_jax.ops.metrics import rank_metrics

    vals = rank_metrics(jnp.asarray(ranks_KxU), recall_ks=(), ndcg_ks=tuple(ns))
    return np.array([float(np.mean(vals[f"NDCG@{n}"])) for n in ns])


def fmt(x, digits: int = 4, signed: bool = False) -> str:
    """A table cell: ``x`` with ``digits`` decimals, or an en dash for None."""
    return "–" if x is None else f"{x:{'+' if signed else ''}.{digits}f}"


def markdown_table(header, rows) -> list[str]:
    """A Markdown table's lines."""
    out = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return out + ["| " + " | ".join(map(str, r)) + " |" for r in rows]


# -------------------------------------------------------------- user groups

USER_FEATURES = {
    "history": "test input length (items before the test target, before "
    "truncation to max_len)",
    "popularity": "the test target's count in what training and validation "
    "show (every sequence without its test target)",
}


def user_features(seqs: dict) -> dict[str, np.ndarray]:
    """``{name: int64[Ue]}`` for each of :data:`USER_FEATURES`, over the
    evaluated users in the order of their test ranks (``data.build``'s: the
    users with at least 3 items, in ``seqs`` order)."""
    from collections import Counter

    from awrsr_jax.data.dataset import leave_one_out

    _, _, test = leave_one_out(seqs)
    counts = Counter(i for s in seqs.values() for i in s)
    counts.subtract(tgt for _, tgt in test.values())
    return {
        "history": np.array([len(inp) for inp, _ in test.values()], np.int64),
        "popularity": np.array([counts[t] for _, t in test.values()], np.int64),
    }


def quantile_groups(values, n: int) -> tuple[np.ndarray, list]:
    """Users split at the ``k/n`` quantiles of ``values`` (k = 1..n-1): group
    ``g`` holds ``cut[g-1] < v <= cut[g]``, so equal values share a group
    and ties may leave fewer than ``n`` groups (repeated cuts are dropped).
    Returns ``(int[U] group of each user, [(min, max) of each group]))``."""
    v = np.asarray(values)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values must be a non-empty 1-d array, got shape {v.shape}")
    if n < 1:
        raise ValueError(f"need at least 1 group, got {n}")
    qs = np.quantile(v, np.arange(1, n) / n, method="lower") if n > 1 else []
    cuts = np.unique([c for c in qs if c < v.max()])
    group = np.searchsorted(cuts, v, side="left")
    ranges = [(v[group == g].min().item(), v[group == g].max().item())
              for g in range(len(cuts) + 1)]  # fmt: skip
    return group, ranges
