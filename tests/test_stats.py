"""Statistics: seed-level paired t-test, hierarchical bootstrap, a cell's
summary, the per-user (conditional) test, and the paper's published values.

Expected numbers are derived by hand and written as formulas.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from scipy import stats as sps

from awrsr_jax import paper, registry, stats
from tests.conftest import RANKS, ndcg5

# --- per-user helpers and the per-user (conditional) test ---


def test_per_user_and_mean_std():
    np.testing.assert_allclose(
        stats.per_user(RANKS["none"]), ndcg5(RANKS["none"]).mean(0), rtol=1e-6
    )
    np.testing.assert_allclose(stats.per_seed([[1, 9]], "Recall@5"), [0.5])
    assert stats.mean_std([1.0, 3.0]) == (2.0, math.sqrt(2.0))
    assert stats.mean_std([4.0]) == (4.0, 0.0)
    with pytest.raises(ValueError, match="unknown metric"):
        stats.per_user(RANKS["none"], "NDCG@7")


def test_paired_test_matches_formulas():
    x = np.array([0.5, 0.9, 0.3, 0.8, 0.7, 0.6])
    y = np.array([0.4, 0.5, 0.2, 0.6, 0.65, 0.1])
    d = x - y
    res = stats.paired_test(x, y)
    assert res.n == 6 and res.mean_diff == pytest.approx(d.mean())
    assert res.t == pytest.approx(d.mean() / (d.std(ddof=1) / math.sqrt(6)))
    # All six differences are positive and distinct: the exact two-sided
    # signed-rank p is 2 / 2^6.
    assert res.p_wilcoxon == pytest.approx(2 / 64)
    assert 0 < res.p_t < 0.05
    same = stats.paired_test(x, x)
    assert (same.t, same.p_t, same.p_wilcoxon) == (0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="equal"):
        stats.paired_test(x, y[:3])


def test_improvement_and_stars():
    assert stats.improvement(0.11, 0.1) == pytest.approx(10.0)
    assert stats.improvement(0.1, 0.0) is None and stats.improvement(None, 1) is None
    assert [stats.stars(p) for p in (0.001, 0.03, 0.2, None)] == ["**", "*", "", ""]


# --- seed-level paired t-test ---


def test_holm_hand_numbers():
    """p = 0.01, 0.04, 0.03 (m = 3): 0.01 * 3 = 0.03; 0.03 * 2 = 0.06;
    0.04 * 1 = 0.04, raised to 0.06 to keep the order; None stays out of the
    family; a product above 1 is capped."""
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    a, b, c, d = stats.holm([None, 0.027, 0.33, None])
    assert a is None and d is None and (b, c) == pytest.approx((0.054, 0.33))
    assert stats.holm([0.6, 0.5]) == [1.0, 1.0]
    assert stats.holm([]) == [] and stats.holm([None]) == [None]


def test_seed_paired_test_hand_numbers():
    base = np.array([0.10, 0.20, 0.30])
    new = base + np.array([0.01, 0.02, 0.03])
    # d = (0.01, 0.02, 0.03): mean 0.02, sd 0.01, t = 0.02 / (0.01 / sqrt 3)
    t = 2 * math.sqrt(3)
    res = stats.seed_paired_test(new, base)
    assert res.n == 3
    assert res.mean_diff == pytest.approx(0.02)
    assert res.sd_diff == pytest.approx(0.01)
    assert res.t == pytest.approx(t)
    assert res.p == pytest.approx(2 * sps.t.sf(t, 2))
    assert res.p == pytest.approx(sps.ttest_rel(new, base).pvalue)
    assert res.mean_new == pytest.approx(0.22) and res.mean_base == pytest.approx(0.2)
    assert res.improvement_pct == pytest.approx(100 * (0.22 / 0.20 - 1))  # 10 %
    # a negative difference flips the sign of t, not p
    flip = stats.seed_paired_test(base, new)
    assert (flip.t, flip.p) == (pytest.approx(-t), pytest.approx(res.p))


def test_detectable_difference_has_the_power_it_claims():
    """At the returned difference the test's power is 0.8: by scipy's
    noncentral t, and by simulating the test itself; it scales with the sd,
    is 0 at sd 0, and tends to (z_0.975 + z_0.8) sd / sqrt(n) for many pairs."""
    for n in (3, 5, 10):
        d = stats.detectable_difference(1.0, n)
        c, nc = sps.t.ppf(0.975, n - 1), d * math.sqrt(n)
        got = sps.nct.sf(c, n - 1, nc) + sps.nct.cdf(-c, n - 1, nc)
        assert got == pytest.approx(0.8, abs=1e-6)
    rng = np.random.default_rng(0)  # 20,000 paired t-tests over 5 seeds
    diffs = rng.normal(stats.detectable_difference(0.002, 5), 0.002, (20000, 5))
    t = diffs.mean(1) / (diffs.std(1, ddof=1) / math.sqrt(5))
    assert np.mean(np.abs(t) > sps.t.ppf(0.975, 4)) == pytest.approx(0.8, abs=0.012)
    assert stats.detectable_difference(0.5, 5) == pytest.approx(
        stats.detectable_difference(1.0, 5) / 2
    )
    assert stats.detectable_difference(0.0, 5) == 0.0
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)  # 2.8016
    big = stats.detectable_difference(1.0, 5000) * math.sqrt(5000)
    assert big == pytest.approx(z, rel=1e-3)
    assert stats.detectable_difference(1.0, 2) > stats.detectable_difference(1.0, 3)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        stats.detectable_difference(1.0, 1)
    with pytest.raises(ValueError, match="power"):
        stats.detectable_difference(1.0, 5, power=0.01)


def test_seed_paired_test_reports_the_detectable_change():
    """detectable_pct = 100 * detectable_difference(sd_diff, n) / mean_base,
    on the hand case of test_seed_paired_test_hand_numbers (sd 0.01, n 3,
    base mean 0.2)."""
    base = np.array([0.10, 0.20, 0.30])
    res = stats.seed_paired_test(base + np.array([0.01, 0.02, 0.03]), base)
    want = 100 * stats.detectable_difference(0.01, 3) / 0.2
    assert res.detectable_pct == pytest.approx(want)
    # noncentrality 5.6535 (power 0.8 by scipy.stats.nct, df 2): 5.6535 * 0.01
    # / sqrt(3) = 0.032640, 16.32% of 0.2
    assert res.detectable_pct == pytest.approx(16.32, abs=0.005)


def test_seed_paired_test_pairs_by_seed_id():
    base = np.array([0.10, 0.20, 0.30, 0.25])
    new = base + np.array([0.01, 0.03, -0.01, 0.02])
    ref = stats.seed_paired_test(new, base)
    order = [2, 0, 3, 1]
    res = stats.seed_paired_test(
        new, base[order], seeds=[10, 11, 12, 13], base_seeds=[12, 10, 13, 11]
    )
    assert res == ref


def test_seed_paired_test_zero_and_constant_differences():
    base = np.array([0.25, 0.5, 0.75])
    zero = stats.seed_paired_test(base, base.copy())
    assert (zero.t, zero.p, zero.mean_diff, zero.sd_diff) == (0.0, 1.0, 0.0, 0.0)
    # 0.125 is exact in binary, so every difference is exactly 0.125: sd = 0,
    # and t, p take their limits as sd -> 0
    up = stats.seed_paired_test(base + 0.125, base)
    assert (up.t, up.p, up.sd_diff, up.mean_diff) == (math.inf, 0.0, 0.0, 0.125)
    down = stats.seed_paired_test(base - 0.125, base)
    assert (down.t, down.p) == (-math.inf, 0.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(new_K=[0.1], base_K=[0.2]), "at least 2"),
        (dict(new_K=[0.1, 0.2, 0.3], base_K=[0.1, 0.2]), "unequal"),
        (dict(new_K=[[0.1, 0.2]], base_K=[[0.1, 0.2]]), "1-d"),
        (dict(new_K=[0.1, 0.2], base_K=[0.1, 0.2], seeds=[0, 1]), "both arms"),
        (dict(new_K=[0.1, 0.2], base_K=[0.1, 0.2], seeds=[0, 1], base_seeds=[0, 2]),
         "unpaired seeds: only in new \\[1\\], only in base \\[2\\]"),
        (dict(new_K=[0.1, 0.2], base_K=[0.1, 0.2], seeds=[0, 0], base_seeds=[0, 1]),
         "repeated seed"),
        (dict(new_K=[0.1, 0.2], base_K=[0.1, 0.2], seeds=[0], base_seeds=[0, 1]),
         "1 seed ids for 2"),
        (dict(new_K=[0.1, np.nan], base_K=[0.1, 0.2]), "non-finite"),
    ],
)  # fmt: skip
def test_seed_paired_test_refuses(kwargs, match):
    with pytest.raises(ValueError, match=match):
        stats.seed_paired_test(kwargs.pop("new_K"), kwargs.pop("base_K"), **kwargs)


# --- hierarchical bootstrap ---


def _noisy(seed, k=5, u=3000, lift=0.1):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.0, 1.0, size=(k, u))
    return base * (1 + lift) + rng.normal(0.0, 0.3, size=(k, u)), base


@pytest.mark.parametrize("levels", ["continuous", "two levels"])
def test_bootstrap_collapses_when_every_ratio_is_equal(levels):
    rng = np.random.default_rng(0)
    if levels == "continuous":  # the index-gather path
        base = rng.uniform(0.1, 1.0, size=(4, 500))
    else:  # two distinct rows per seed: the multinomial-count path
        base = rng.choice([0.5, 1.0], size=(4, 500))
    new = 1.25 * base  # every user of every seed improves by 25 %
    res = stats.bootstrap_improvement(new, base, n_boot=300, seed=1)
    for key in ("point_pct", "low_pct", "high_pct"):
        assert res[key] == pytest.approx(25.0, abs=1e-9)
    assert res["n_undefined"] == 0 and res["n_boot"] == 300 and res["level"] == 0.95


def test_bootstrap_interval_contains_point_estimate():
    new, base = _noisy(3)
    res = stats.bootstrap_improvement(new, base, n_boot=500, seed=0)
    assert res["point_pct"] == pytest.approx(100 * (new.mean() / base.mean() - 1))
    assert res["low_pct"] < res["point_pct"] < res["high_pct"]
    wider = stats.bootstrap_improvement(new, base, n_boot=500, seed=0, level=0.99)
    assert wider["low_pct"] < res["low_pct"] and wider["high_pct"] > res["high_pct"]


def test_bootstrap_is_deterministic_for_a_fixed_seed():
    new, base = _noisy(4, k=3, u=800)
    a = stats.bootstrap_improvement(new, base, n_boot=400, seed=7)
    assert stats.bootstrap_improvement(new, base, n_boot=400, seed=7) == a
    b = stats.bootstrap_improvement(new, base, n_boot=400, seed=8)
    assert (b["low_pct"], b["high_pct"]) != (a["low_pct"], a["high_pct"])


def test_bootstrap_seeds_that_disagree_in_sign_straddle_zero():
    # Two seeds +20 %, two seeds -20 %, users noise-free: the user stage adds
    # nothing, the seed stage gives resamples from -20 % to +20 %.
    base = np.random.default_rng(5).uniform(0.2, 1.0, size=(4, 1000))
    new = base * np.array([1.2, 1.2, 0.8, 0.8])[:, None]
    res = stats.bootstrap_improvement(new, base, n_boot=2000, seed=0)
    assert res["low_pct"] < 0 < res["high_pct"]
    assert res["low_pct"] < -5 and res["high_pct"] > 5
    # each seed alone improves or worsens consistently over its users
    one = stats.bootstrap_improvement(new[:1], base[:1], n_boot=200, seed=0)
    assert one["low_pct"] == pytest.approx(20.0)


def test_bootstrap_count_and_gather_paths_agree(monkeypatch):
    # NDCG@5 of random ranks: few distinct values, so the count path runs;
    # forcing the gather path must give the same interval up to Monte Carlo
    # noise (both draw from the same resampling distribution).
    rng = np.random.default_rng(11)
    base_r = rng.integers(1, 12, size=(3, 4000))
    new_r = np.maximum(1, base_r - rng.integers(-1, 3, size=(3, 4000)))
    new, base = ndcg5(new_r), ndcg5(base_r)
    count = stats.bootstrap_improvement(new, base, n_boot=2000, seed=0)
    monkeypatch.setattr(stats, "_FEW", 10**9)
    gather = stats.bootstrap_improvement(new, base, n_boot=2000, seed=0)
    assert gather["point_pct"] == count["point_pct"]
    width = count["high_pct"] - count["low_pct"]
    for key in ("low_pct", "high_pct"):
        assert gather[key] == pytest.approx(count[key], abs=0.1 * width)


def test_bootstrap_full_size_runs_in_seconds():
    # 22,363 users x 5 seeds x 2,000 resamples of NDCG@5-like values
    rng = np.random.default_rng(2)
    base = ndcg5(rng.integers(1, 60, size=(5, 22363)))
    new = ndcg5(rng.integers(1, 55, size=(5, 22363)))
    start = time.perf_counter()
    res = stats.bootstrap_improvement(new, base, n_boot=2000, seed=0)
    assert time.perf_counter() - start < 10.0
    assert res["low_pct"] < res["point_pct"] < res["high_pct"]


def test_bootstrap_refuses_bad_input():
    ok = np.ones((2, 3))
    with pytest.raises(ValueError, match="equal non-empty"):
        stats.bootstrap_improvement(ok, np.ones((2, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        stats.bootstrap_improvement(np.full((2, 3), np.nan), ok)
    with pytest.raises(ValueError, match="level"):
        stats.bootstrap_improvement(ok, ok, level=1.0)


def test_bootstrap_zero_base_resamples_are_counted():
    base = np.zeros((2, 5))
    res = stats.bootstrap_improvement(base + 1, base, n_boot=50)
    assert res["point_pct"] is None and res["low_pct"] is None
    assert res["n_undefined"] == 50


# --- one table cell ---


def _recall(r, k):
    return (np.asarray(r) <= k).astype(float)


def test_cell_summary_values_and_pairing():
    rng = np.random.default_rng(0)
    base = rng.integers(1, 9, size=(3, 40))
    new = np.maximum(1, base - rng.integers(-1, 3, size=(3, 40)))
    seeds = [0, 1, 2]
    out = stats.cell_summary(new, seeds, base, seeds, n_boot=200, boot_seed=3)
    assert out["seeds"] == seeds and out["n_users"] == 40
    want = {"Recall@1": _recall(new, 1), "Recall@5": _recall(new, 5),
            "NDCG@5": ndcg5(new)}  # fmt: skip
    for m, v in want.items():
        for k, s in enumerate(seeds):
            assert out["per_seed"][str(s)][m] == pytest.approx(v[k].mean(), rel=1e-6)
        assert out["mean"][m] == pytest.approx(v.mean(), rel=1e-6)
        assert out["sd"][m] == pytest.approx(v.mean(1).std(ddof=1), rel=1e-5)
    ref = stats.seed_paired_test(ndcg5(new).mean(1), ndcg5(base).mean(1))
    got = out["seed_test"]["NDCG@5"]
    assert got["t"] == pytest.approx(ref.t, rel=1e-5)
    assert out["p"]["NDCG@5"] == pytest.approx(ref.p, rel=1e-5)
    assert out["stars"]["NDCG@5"] == stats.stars(out["p"]["NDCG@5"])
    boot = out["bootstrap"]["NDCG@5"]
    assert boot["point_pct"] == pytest.approx(got["improvement_pct"], rel=1e-6)
    assert boot["low_pct"] <= boot["point_pct"] <= boot["high_pct"]
    user = out["user_level_conditional"]
    ref_u = stats.paired_test(ndcg5(new).mean(0), ndcg5(base).mean(0))
    assert user["metric"] == "NDCG@5" and "conditional" in user["note"]
    assert user["p_t"] == pytest.approx(ref_u.p_t, rel=1e-5)
    assert json.loads(json.dumps(out)) == out
    # Original's rows in another order, paired by seed id: the same cell
    order = [2, 0, 1]
    again = stats.cell_summary(
        new, seeds, base[order], [2, 0, 1], n_boot=200, boot_seed=3
    )
    assert again == out
    with pytest.raises(ValueError, match="unpaired seeds"):
        stats.cell_summary(new, seeds, base, [0, 1, 5], n_boot=10)


@pytest.mark.filterwarnings("ignore:Precision loss")  # the per-user test
def test_cell_summary_stars_come_from_seeds_not_users():
    # Original ranks every target 10th (NDCG@5 = 0). The mechanism ranks every
    # target 1st under seeds 0 and 1, 10th under seed 2: per-seed differences
    # (1, 1, 0), t = (2/3) / (sqrt(1/3) / sqrt(3)) = 2, p = 2 P(T_2 >= 2) ~ 0.18;
    # yet every user gains exactly 2/3 on average, so the per-user test has
    # t = inf, p = 0.
    base = np.full((3, 50), 10)
    new = np.array([[1] * 50, [1] * 50, [10] * 50])
    out = stats.cell_summary(new, [0, 1, 2], base, [0, 1, 2], n_boot=100)
    assert out["seed_test"]["NDCG@5"]["t"] == pytest.approx(2.0)
    assert out["p"]["NDCG@5"] == pytest.approx(2 * sps.t.sf(2.0, 2))
    assert out["stars"]["NDCG@5"] == ""
    assert out["user_level_conditional"]["p_t"] == 0.0


def test_cell_summary_original_row_and_single_seed():
    own = stats.cell_summary(RANKS["none"], [0, 1])
    assert set(own) == {"seeds", "n_users", "metrics", "per_seed", "mean", "sd"}
    assert own["mean"]["NDCG@5"] == pytest.approx(ndcg5(RANKS["none"]).mean())
    one = stats.cell_summary(RANKS["add"][:1], [4], RANKS["none"][1:], [4])
    assert one["seed_test"]["NDCG@5"] is None and one["bootstrap"]["NDCG@5"] is None
    assert one["stars"]["NDCG@5"] == "" and "1 seed" in one["note"]
    assert one["user_level_conditional"]["n"] == 6


# --- the paper's published values ---


def test_paper_tables_layout_and_known_values():
    assert set(paper.DATASETS) == {"ml-1m", "beauty", "anime"}
    assert set(paper.BACKBONES) == set(paper.MECHS) <= set(registry.BACKBONES)
    for bb, mechs in paper.MECHS.items():  # the paper's rows are rows we can run
        assert mechs[0] == "none"
        assert set(mechs) <= set(registry.BACKBONES[bb].table_mechs)
    assert "stoc" in paper.MECHS["stosa"] and "stoc" not in paper.MECHS["sasrec"]
    cells = paper.table2_cells()
    assert len(cells) == 3 * (4 + 5)
    for key, row in paper.PAPER_TABLE2.items():
        assert key in cells and row and set(row) <= set(paper.TABLE2_METRICS)
        assert all(isinstance(v, float) and 0 < v < 1 for v in row.values())
    for (ds, bb, mech, layers), row in paper.PAPER_TABLE3.items():
        assert (ds, bb, mech) in cells and layers in paper.TABLE3_LAYERS
        assert all(isinstance(v, float) and 0 < v < 1 for v in row.values())
    assert paper.PAPER_TABLE2[("ml-1m", "sasrec", "none")] == {
        "Recall@5": 0.0959, "NDCG@5": 0.0616}  # fmt: skip
    assert paper.PAPER_TABLE2[("beauty", "stosa", "none")] == {"NDCG@5": 0.0285}
    read = sum(len(row) for row in paper.PAPER_TABLE2.values())
    assert len(paper.unread_table2()) == len(cells) * len(paper.TABLE2_METRICS) - read
