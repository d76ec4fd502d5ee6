"""Significance of a mechanism against Original, and the summaries tables print.

Input: per-user test ranks ``int[K, U]`` (K seeds, U evaluation users, the same
users in the same order for every run on a dataset, as ``data.build`` makes
them). Per-user metric values come from :func:`awrsr_jax.ops.metrics.rank_metrics`.

The unit of replication is the training seed (DESIGN.md, "Statistics"): seed s
of a mechanism and seed s of Original share data order and negatives, so the
two arms pair by seed. A cell's evidence is

- :func:`seed_paired_test`: a paired t-test over the K per-seed differences of
  the seed means, ``d_s = m_new(s) - m_base(s)``;
- :func:`bootstrap_improvement`: a hierarchical bootstrap interval of the
  relative improvement ``mean_new / mean_base - 1`` (resample seeds, then users
  within each drawn seed, the same indices for both arms);
- :func:`cell_summary`: both, per seed metrics, mean +- sd, and the per-user
  paired test as a secondary entry (``"user_level_conditional"``).

The per-user test (:func:`paired_test` on :func:`per_user` values, each user's
value averaged over the K seeds) pairs users of one set of trained models: it is
conditional on those models and says nothing about training randomness, so it
never decides a star.

Letters in names: K seeds, U users, M metrics, B bootstrap resamples.

scipy is imported inside the test functions only: the GPU machines may lack it,
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


def holm(pvals) -> list:
    """Holm's step-down adjustment of a family of p-values (None entries
    are left out of the family and stay None): the i-th smallest of the m
    is multiplied by ``m - i`` (i from 0), made monotone, capped at 1. The
    family-wise error is held at the level of the adjusted p whatever the
    dependence between the tests (several mechanisms against one Original)."""
    idx = sorted((i for i, p in enumerate(pvals) if p is not None),
                 key=lambda i: pvals[i])  # fmt: skip
    out, run = list(pvals), 0.0
    for rank, i in enumerate(idx):
        run = max(run, min(1.0, (len(idx) - rank) * float(pvals[i])))
        out[i] = run
    return out


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
    each mean in percent, and the paired tests over users. Those tests are
    conditional on the trained models; the seed-level test and interval that
    decide a cell come from :func:`cell_summary`."""
    imp = {m: improvement(new["mean"][m], base["mean"].get(m)) for m in new["mean"]}
    return {"improvement_pct": imp, **paired_test(new["user"], base["user"]).as_dict()}


# --- seed-level evidence (the unit of replication is the training seed) ---


def user_values(ranks_KxU, metrics=("NDCG@5",)) -> dict[str, np.ndarray]:
    """``{metric: float64[K, U]}``: each (seed, user) cell's metric value."""
    import jax.numpy as jnp

    from awrsr_jax.ops.metrics import rank_metrics

    ranks = np.atleast_2d(np.asarray(ranks_KxU))
    vals = rank_metrics(jnp.asarray(ranks))
    unknown = [m for m in metrics if m not in vals]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {sorted(vals)}")
    return {m: np.asarray(vals[m], np.float64) for m in metrics}


@dataclasses.dataclass(frozen=True)
class SeedTest:
    """A mechanism (``new``) against Original (``base``) over the same K seeds."""

    n: int  # seeds (pairs)
    mean_diff: float  # mean of d_s = new_s - base_s
    sd_diff: float  # sample sd of d_s (ddof 1)
    t: float  # paired t statistic, n - 1 degrees of freedom
    p: float  # two-sided p
    mean_new: float
    mean_base: float
    improvement_pct: float | None  # 100 (mean_new / mean_base - 1)
    # the change, in % of mean_base, that a test over these n seeds would find
    # (p < 0.05) 80% of the time, at the observed sd_diff
    detectable_pct: float | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def detectable_difference(sd_diff, n, *, alpha=0.05, power=0.8) -> float:
    """The smallest true mean difference that a two-sided paired t-test at
    level ``alpha`` over ``n`` pairs detects with probability ``power``,
    when the differences are normal with standard deviation ``sd_diff``.

    With ``c = t_{1-alpha/2, n-1}`` and ``T`` noncentral t with ``n - 1``
    degrees of freedom and noncentrality ``delta sqrt(n) / sd_diff``, it is
    the ``delta`` solving ``P(|T| > c) = power`` (0 when ``sd_diff`` is 0).
    Read with the observed ``sd_diff``, it says what size of effect a table
    of this many seeds could have shown; a difference "within seed noise" is
    only informative beside it."""
    from scipy import optimize
    from scipy import stats as sps

    if n < 2:
        raise ValueError(f"a paired t-test needs at least 2 pairs, got {n}")
    if not alpha < power < 1:
        raise ValueError(f"power must lie in (alpha, 1): {power}")
    if sd_diff == 0:
        return 0.0
    df = n - 1
    c = sps.t.ppf(1 - alpha / 2, df)

    # P(|T| > c) for T = (Z + nc) / sqrt(V / df), V ~ chi2(df), as an integral
    # over V's quantiles q in (0, 1) (bounded for every df), Gauss-Legendre
    q, w = np.polynomial.legendre.leggauss(400)
    q, w = (q + 1) / 2, w / 2
    s = c * np.sqrt(sps.chi2.ppf(q, df) / df)

    def gap(nc):
        return float(w @ (sps.norm.sf(s - nc) + sps.norm.cdf(-s - nc))) - power

    hi = 1.0
    while gap(hi) < 0:
        hi *= 2
        if hi > 1e6:
            raise ValueError(f"no noncentrality up to 1e6 reaches power {power}")
    return float(optimize.brentq(gap, hi / 2 if hi > 1 else 0.0, hi, xtol=1e-10)
                 * sd_diff / math.sqrt(n))  # fmt: skip


def _check_seeds(name: str, seeds, k: int) -> list:
    seeds = list(seeds)
    if len(seeds) != k:
        raise ValueError(f"{name}: {len(seeds)} seed ids for {k} per-seed values")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{name}: repeated seed id in {seeds}")
    return seeds


def _pair_order(seeds_new, seeds_base) -> list[int]:
    """Positions in ``seeds_base`` of each of ``seeds_new`` (same seed sets)."""
    only_new = sorted(set(seeds_new) - set(seeds_base), key=str)
    only_base = sorted(set(seeds_base) - set(seeds_new), key=str)
    if only_new or only_base:
        raise ValueError(
            f"unpaired seeds: only in new {only_new}, only in base {only_base}; "
            "seed s of both arms must share data order and negatives"
        )
    where = {s: i for i, s in enumerate(seeds_base)}
    return [where[s] for s in seeds_new]


def seed_paired_test(new_K, base_K, *, seeds=None, base_seeds=None) -> SeedTest:
    """Paired t-test over seeds of a mechanism's per-seed metric vs Original's.

    ``new_K[i]`` and ``base_K[i]`` are the test metric (mean over users) of seed
    i's run of each arm. With ``seeds`` and ``base_seeds`` (the seed id of each
    value) the arms are paired by id, whatever the order; without them, by
    position. With ``d_s = new_s - base_s`` over the n seeds::

        dbar = sum_s d_s / n,   sd = sqrt(sum_s (d_s - dbar)^2 / (n - 1))
        t = dbar / (sd / sqrt(n)),   p = 2 P(T_{n-1} >= |t|)

    and ``improvement_pct = 100 (mean(new) / mean(base) - 1)`` (None when
    mean(base) = 0).

    Defined edge cases:

    - every ``d_s = 0``: ``t = 0``, ``p = 1`` (no evidence of any difference;
      scipy returns NaN there);
    - every ``d_s`` equal and non-zero (``sd = 0``): ``t = +-inf``, ``p = 0``.
      That is the limit of t and p as sd -> 0 with dbar fixed (scipy 1.17's
      ``ttest_rel`` answers the same), and it agrees with the nearby case of differences
      equal up to rounding (huge t, p ~ 0). With real metrics over thousands
      of users it only happens when one arm is the other shifted exactly.

    Raises ValueError for fewer than 2 seeds, per-seed arrays of unequal length
    or not 1-d, seed id lists given for one arm only, of the wrong length, with
    a repeated id, or naming different seeds, and for non-finite values.
    """
    from scipy import stats as sps

    new = np.asarray(new_K, np.float64)
    base = np.asarray(base_K, np.float64)
    if new.ndim != 1 or base.ndim != 1:
        raise ValueError(f"per-seed values must be 1-d: {new.shape} {base.shape}")
    if (seeds is None) != (base_seeds is None):
        raise ValueError("give the seed ids of both arms, or of neither")
    if seeds is not None:
        seeds = _check_seeds("new", seeds, new.size)
        base_seeds = _check_seeds("base", base_seeds, base.size)
        base = base[_pair_order(seeds, base_seeds)]
    elif new.size != base.size:
        raise ValueError(f"unequal numbers of seeds: {new.size} new, {base.size} base")
    n = new.size
    if n < 2:
        raise ValueError(f"a seed-level test needs at least 2 paired seeds, got {n}")
    if not (np.isfinite(new).all() and np.isfinite(base).all()):
        raise ValueError("non-finite per-seed metric value")
    d = new - base
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    m_new, m_base = float(new.mean()), float(base.mean())
    if not np.any(d != 0):
        t, p = 0.0, 1.0
    elif np.all(d == d[0]):
        t, p, sd = math.copysign(math.inf, d[0]), 0.0, 0.0
    else:
        t = mean / (sd / math.sqrt(n))
        p = min(1.0, float(2.0 * sps.t.sf(abs(t), n - 1)))
    mde = detectable_difference(sd, n)
    return SeedTest(n, mean, sd, float(t), p, m_new, m_base, improvement(m_new, m_base),
                    improvement(m_base + mde, m_base))  # fmt: skip


# Resamples per chunk of the index-gather path: about this many index draws.
_BOOT_CHUNK = 1 << 20
# Count path when a seed's users take at most U / _FEW distinct value rows.
_FEW = 16


def _boot_means(new_KxUxM, base_KxUxM, n_boot: int, rng) -> tuple:
    """Means over the hierarchical resample: ``(float64[B, M], float64[B, M])``.

    Resample b draws K seed slots with replacement, ``s_bj``, and within each
    slot U users with replacement, ``u_bji`` (the same indices for both arms);
    its mean is ``sum_j sum_i x[s_bj, u_bji] / (K U)``.

    Only how often each user is drawn matters. Users of seed s whose rows
    ``(new values, base values)`` are equal are interchangeable, so with C
    distinct rows of multiplicities ``n_c`` the draw counts per row are
    ``Multinomial(U, n_c / U)``: the same distribution as U index draws, at C
    binomial draws per slot. Full-ranking metrics with cut-offs give few
    distinct rows (a user's Recall@k / NDCG@k depend on min(rank, k + 1) only),
    so this path runs in milliseconds. Otherwise (e.g. MRR, or continuous
    values) U indices per slot are drawn and each of the 2M value columns
    gathered, a chunk of resamples at a time.
    """
    k, u, m = new_KxUxM.shape
    table_KxUx2M = np.concatenate([new_KxUxM, base_KxUxM], axis=-1)
    slots_BxK = rng.integers(0, k, size=(n_boot, k))
    sums = np.zeros((n_boot, 2 * m))
    groups = [np.unique(table_KxUx2M[s], axis=0, return_counts=True) for s in range(k)]
    if max(len(c) for _, c in groups) * _FEW <= u:
        for s, (rows_Cx2M, counts_C) in enumerate(groups):
            b_N, _ = np.nonzero(slots_BxK == s)
            draws_NxC = rng.multinomial(u, counts_C / u, size=b_N.size)
            np.add.at(sums, b_N, draws_NxC @ rows_Cx2M)
    else:
        # one contiguous column per gather: much faster than gathering rows
        columns = np.ascontiguousarray(table_KxUx2M.reshape(k * u, 2 * m).T)
        step = max(1, _BOOT_CHUNK // (k * u))
        for lo in range(0, n_boot, step):
            hi = min(n_boot, lo + step)
            users = rng.integers(0, u, size=(hi - lo, k, u), dtype=np.int32)
            rows = (slots_BxK[lo:hi, :, None] * u + users).reshape(hi - lo, -1)
            for c, col in enumerate(columns):
                sums[lo:hi, c] = col[rows].sum(axis=1)
    means = sums / (k * u)
    return means[:, :m], means[:, m:]


def _interval(new_BxM, base_BxM, point_new, point_base, level, n_boot, seed) -> list:
    """Per metric: percentile interval of ``100 (new / base - 1)`` (JSON dict)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(base_BxM > 0, 100.0 * (new_BxM / base_BxM - 1.0), np.nan)
    q = [50.0 * (1.0 - level), 50.0 * (1.0 + level)]
    out = []
    for j in range(ratio.shape[1]):
        r = ratio[:, j]
        ok = np.isfinite(r)
        lo, hi = np.percentile(r[ok], q) if ok.any() else (None, None)
        out.append({
            "point_pct": improvement(float(point_new[j]), float(point_base[j])),
            "low_pct": None if lo is None else float(lo),
            "high_pct": None if hi is None else float(hi),
            "level": level, "n_boot": n_boot, "seed": seed,
            "n_undefined": int((~ok).sum()),
        })  # fmt: skip
    return out


def _check_boot(new, base, n_boot, level):
    if new.shape != base.shape or new.ndim != 3 or 0 in new.shape:
        raise ValueError(
            f"need equal non-empty [K, U] values: {new.shape} {base.shape}"
        )
    if not (np.isfinite(new).all() and np.isfinite(base).all()):
        raise ValueError("non-finite per-user metric value")
    if n_boot < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1: {n_boot}, {level}")


def bootstrap_improvement(
    new_KxU, base_KxU, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> dict:
    """Hierarchical bootstrap interval of the relative improvement, in percent.

    ``new_KxU[s, i]`` and ``base_KxU[s, i]`` are user i's metric under seed s's
    run of each arm (rows paired by seed, columns by user). The estimate is
    ``100 (mean(new) / mean(base) - 1)`` over all K U cells, which equals the
    improvement of the seed means since every seed has the same U users. Each
    of ``n_boot`` resamples draws K seeds with replacement (the same draws for
    both arms, keeping the pairing), then within each drawn seed U users with
    replacement (the same users for both arms of that seed), and recomputes
    the estimate; the interval is the ``(1 -+ level) / 2`` percentiles of the
    resampled estimates (numpy's linear interpolation). The seed stage carries
    training randomness, the user stage the finite test set; with K = 1 only
    the latter is left, and the interval is conditional on that one run.

    A resample whose base mean is 0 has no ratio: it is dropped and counted in
    ``n_undefined``; if all are, ``low_pct = high_pct = None``.

    Returns ``{"point_pct", "low_pct", "high_pct", "level", "n_boot", "seed",
    "n_undefined"}``; deterministic for a fixed ``seed`` (numpy
    ``default_rng``). Vectorised (no loop over users): metric values with
    few distinct levels (Recall@k, NDCG@k) are resampled by counts, in
    milliseconds; otherwise ``n_boot * K * U`` index draws are gathered in
    chunks (2,000 x 5 x 22,363: seconds to tens of seconds on a loaded CPU).
    """
    new = np.asarray(new_KxU, np.float64)[..., None]
    base = np.asarray(base_KxU, np.float64)[..., None]
    _check_boot(new, base, n_boot, level)
    b_new, b_base = _boot_means(new, base, n_boot, np.random.default_rng(seed))
    point_new, point_base = new.mean(axis=(0, 1)), base.mean(axis=(0, 1))
    return _interval(b_new, b_base, point_new, point_base, level, n_boot, seed)[0]


def cell_summary(
    ranks_KxU,
    seeds,
    base_ranks_KxU=None,
    base_seeds=None,
    *,
    metrics=("Recall@1", "Recall@5", "NDCG@5"),
    user_metric: str = "NDCG@5",
    n_boot: int = 2000,
    level: float = 0.95,
    boot_seed: int = 0,
) -> dict:
    """One table cell (a mechanism's K seeds) against Original, JSON-ready.

    ``ranks_KxU``: the cell's test ranks, row k from seed ``seeds[k]``;
    ``base_ranks_KxU`` / ``base_seeds``: Original's, paired by seed id (the
    seed sets must be equal; rows may come in any order). Without a base (the
    Original row itself) only the per-seed values and mean / sd are returned.

    Keys: ``seeds``; ``n_users``; ``metrics``; ``per_seed`` ``{str(seed):
    {metric: mean over users}}`` (string keys, so the dict survives a JSON
    round trip); ``mean`` and ``sd`` (ddof 1) over seeds per metric; with a
    base also ``base_per_seed``, ``seed_test`` ``{metric:`` :class:`SeedTest`
    ``dict}``, ``p`` and ``stars`` ``{metric: ...}`` from the seed-level test
    only, ``bootstrap`` ``{metric:`` :func:`bootstrap_improvement` ``dict}``
    (all metrics share the resample draws), and ``user_level_conditional``:
    :func:`paired_test` over users of ``user_metric`` (each user's value
    averaged over seeds), labelled as conditional on these trained models.
    With fewer than 2 seeds the seed-level entries are None and ``note`` says
    why; unpaired seed lists raise ValueError.
    """
    metrics = tuple(metrics)
    need = metrics + ((user_metric,) if user_metric not in metrics else ())
    ranks = np.atleast_2d(np.asarray(ranks_KxU))
    seeds = [s.item() if isinstance(s, np.generic) else s for s in seeds]  # JSON
    seeds = _check_seeds("new", seeds, ranks.shape[0])
    vals = user_values(ranks, need)
    per_seed_KxM = np.stack([vals[m].mean(1) for m in metrics], axis=1)
    ms = [mean_std(per_seed_KxM[:, j]) for j in range(len(metrics))]
    out = {
        "seeds": seeds,
        "n_users": int(ranks.shape[1]),
        "metrics": list(metrics),
        "per_seed": _per_seed_dict(seeds, per_seed_KxM, metrics),
        "mean": {m: v[0] for m, v in zip(metrics, ms)},
        "sd": {m: v[1] for m, v in zip(metrics, ms)},
    }
    if base_ranks_KxU is None:
        return out
    base_vals = _paired_base_values(base_ranks_KxU, base_seeds, ranks, seeds, need)
    base_KxM = np.stack([base_vals[m].mean(1) for m in metrics], axis=1)
    out["base_per_seed"] = _per_seed_dict(seeds, base_KxM, metrics)
    out["user_level_conditional"] = _user_level(vals, base_vals, user_metric)
    if len(seeds) < 2:
        out |= {"seed_test": dict.fromkeys(metrics), "p": dict.fromkeys(metrics),
                "stars": dict.fromkeys(metrics, ""), "bootstrap": dict.fromkeys(metrics),
                "note": f"{len(seeds)} seed: no seed-level test or interval"}  # fmt: skip
        return out
    tests = [
        seed_paired_test(per_seed_KxM[:, j], base_KxM[:, j])
        for j in range(len(metrics))
    ]
    out |= {
        "seed_test": {m: t.as_dict() for m, t in zip(metrics, tests)},
        "p": {m: t.p for m, t in zip(metrics, tests)},
        "stars": {m: stars(t.p) for m, t in zip(metrics, tests)},
        "bootstrap": _cell_bootstrap(
            vals, base_vals, metrics, n_boot=n_boot, level=level, seed=boot_seed
        ),
    }
    return out


def _paired_base_values(base_ranks_KxU, base_seeds, ranks_KxU, seeds, need) -> dict:
    """Original's per-user values of the ``need`` metrics, its rows put in the
    order of ``seeds`` (same seed set and user count, or ValueError)."""
    base = np.atleast_2d(np.asarray(base_ranks_KxU))
    base_seeds = _check_seeds("base", base_seeds, base.shape[0])
    if base.shape[1] != ranks_KxU.shape[1]:
        raise ValueError(
            f"different user counts: {ranks_KxU.shape[1]} vs {base.shape[1]}"
        )
    return user_values(base[_pair_order(seeds, base_seeds)], need)


def _user_level(vals, base_vals, user_metric: str) -> dict:
    """:func:`paired_test` over users of each user's seed-mean ``user_metric``,
    labelled as conditional on the trained models."""
    pt = paired_test(vals[user_metric].mean(0), base_vals[user_metric].mean(0))
    return {
        "metric": user_metric,
        "unit": "user; each user's value averaged over the seeds",
        "note": "conditional on these trained models: says nothing about "
        "training randomness; never used for stars",
        **pt.as_dict(),
    }


def _cell_bootstrap(vals, base_vals, metrics, *, n_boot, level, seed) -> dict:
    """``{metric:`` :func:`bootstrap_improvement` ``dict}``, all metrics on
    the same resample draws."""
    new_KxUxM = np.stack([vals[m] for m in metrics], axis=-1)
    base_KxUxM = np.stack([base_vals[m] for m in metrics], axis=-1)
    _check_boot(new_KxUxM, base_KxUxM, n_boot, level)
    rng = np.random.default_rng(seed)
    b_new, b_base = _boot_means(new_KxUxM, base_KxUxM, n_boot, rng)
    boots = _interval(b_new, b_base, new_KxUxM.mean(axis=(0, 1)),
                      base_KxUxM.mean(axis=(0, 1)), level, n_boot, seed)  # fmt: skip
    return dict(zip(metrics, boots))


def _per_seed_dict(seeds, values_KxM, metrics) -> dict:
    return {
        str(s): {m: float(values_KxM[k, j]) for j, m in enumerate(metrics)}
        for k, s in enumerate(seeds)
    }
