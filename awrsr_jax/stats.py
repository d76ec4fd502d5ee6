"""Paired significance tests over users, and the summaries the tables print.

Input: per-user test ranks ``int[K, U]`` (K seeds, U evaluation users, the same
users in the same order for every run on a dataset, as ``data.build`` makes
them). Per-user metric values come from :func:`awrsr_jax.ops.metrics.rank_metrics`;
a user's value is averaged over the K seeds before two methods are compared, so
the test pairs users, not (user, seed) cells, and seed noise shrinks instead of
inflating the sample size.

scipy is imported inside :func:`paired_test` only: the GPU machines may lack it,
and the training commands must not need it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


def per_user(ranks_KxU, metric: str = "NDCG@5") -> np.ndarray:
    """``float64[U]``: each user's ``metric`` averaged over the K runs."""
    import jax.numpy as jnp

    from awrsr_jax.ops.metrics import rank_metrics

    ranks = np.atleast_2d(np.asarray(ranks_KxU))
    vals = rank_metrics(jnp.asarray(ranks))
    if metric not in vals:
        raise ValueError(f"unknown metric {metric!r}; choose from {sorted(vals)}")
    return np.asarray(vals[metric], np.float64).mean(0)


def per_seed(ranks_KxU, metric: str = "NDCG@5") -> np.ndarray:
    """``float64[K]``: each run's mean ``metric`` over users."""
    import jax.numpy as jnp

    from awrsr_jax.ops.metrics import rank_metrics

    ranks = np.atleast_2d(np.asarray(ranks_KxU))
    return np.asarray(rank_metrics(jnp.asarray(ranks))[metric], np.float64).mean(1)


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def improvement(new: float | None, base: float | None) -> float | None:
    """``100 * (new - base) / base``; None when either is missing or base is 0."""
    if new is None or base is None or base == 0:
        return None
    return 100.0 * (new - base) / base


@dataclasses.dataclass(frozen=True)
class PairedTest:
    """``x`` against ``y`` over the same users (``diff = x - y``)."""

    n: int
    mean_diff: float
    t: float  # paired t statistic
    p_t: float  # two-sided p of the paired t-test
    p_wilcoxon: float  # two-sided p of the Wilcoxon signed-rank test

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def paired_test(x, y) -> PairedTest:
    """Paired t-test and Wilcoxon signed-rank test of ``x`` vs ``y`` (per user).

    Identical inputs give ``t = 0`` and ``p = 1`` (scipy returns NaN there).
    Wilcoxon drops zero differences ("wilcox"), as most users have NDCG@5 = 0
    under both models.
    """
    from scipy import stats as sps

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired samples need equal 1-d shapes: {x.shape} {y.shape}")
    d = x - y
    n = d.size
    if n < 2 or not np.any(d != 0):
        return PairedTest(n, float(d.mean()) if n else 0.0, 0.0, 1.0, 1.0)
    sd = d.std(ddof=1)
    if sd == 0:  # a constant non-zero shift: infinitely significant
        return PairedTest(n, float(d.mean()), math.copysign(math.inf, d[0]), 0.0, 0.0)
    t = float(d.mean() / (sd / math.sqrt(n)))
    p_t = float(sps.ttest_rel(x, y).pvalue)
    p_w = float(sps.wilcoxon(x, y, zero_method="wilcox").pvalue)
    return PairedTest(n, float(d.mean()), t, p_t, p_w)


def stars(p: float | None) -> str:
    """``*`` p < 0.05, ``**`` p < 0.01 (blank for None or larger p)."""
    if p is None or not np.isfinite(p):
        return ""
    return "**" if p < 0.01 else "*" if p < 0.05 else ""


def summarize(
    test_dicts,
    ranks_KxU,
    metrics=("Recall@1", "Recall@5", "NDCG@5"),
    paired: str = "NDCG@5",
) -> dict:
    """One run group (K seeds): ``{"mean", "sd"}`` per metric over the seeds'
    test values, and ``"user"``: per-user ``paired`` values for tests."""
    ms = {m: mean_std([t[m] for t in test_dicts]) for m in metrics}
    return {
        "mean": {m: v[0] for m, v in ms.items()},
        "sd": {m: v[1] for m, v in ms.items()},
        "user": per_user(ranks_KxU, paired),
    }


def compare(new: dict, base: dict) -> dict:
    """``new`` against ``base`` (both from :func:`summarize`): improvement of
    each mean in percent, and the paired tests over users."""
    imp = {m: improvement(new["mean"][m], base["mean"].get(m)) for m in new["mean"]}
    return {"improvement_pct": imp, **paired_test(new["user"], base["user"]).as_dict()}
