"""``experiments.compare``: the table of finished runs and its paired tests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import compare


def _run(
    path, mech, ranks, tests, *, sha="abc", epochs_run=10, stopped=False, seed=0, lr=1
):
    path.mkdir()
    config = {
        "config": {"mech": mech, "epochs": 200, "seed": seed, "lr": lr},
        "data_sha256": sha,
        "seeds": list(range(seed, seed + len(tests))),
    }
    results = {
        "test": tests if len(tests) > 1 else tests[0],
        "valid": [{"NDCG@5": 0.5}] * len(tests) if len(tests) > 1 else {"NDCG@5": 0.5},
        "best_epoch": list(range(len(tests))) if len(tests) > 1 else 3,
        "epochs_run": epochs_run,
        "seconds_per_epoch": 1.25,
    }
    if stopped:
        results["stopped"] = "max_minutes"
    (path / "config.json").write_text(json.dumps(config))
    (path / "results.json").write_text(json.dumps(results))
    np.save(path / "test_ranks.npy", np.asarray(ranks, np.int32))
    return str(path)


def _rows(md):
    return [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()]


def test_table_values_and_paired_difference(tmp_path):
    # 1-based ranks: rank 1 has NDCG@5 = 1, rank 20 has 0. Per user, "none" is
    # [1, 0, 0, 0] and "value" (mean of its two seeds) [1, 1, 0.5, 0]: +0.375
    # on average, +150% over the baseline mean 0.25.
    base = _run(tmp_path / "a", "none", [[1, 20, 20, 20]], [{"NDCG@5": 0.25}])
    new = _run(
        tmp_path / "b",
        "value",
        [[1, 1, 1, 20], [1, 1, 20, 20]],
        [{"NDCG@5": 0.75}, {"NDCG@5": 0.5}],
        epochs_run=200,
        stopped=True,
    )
    runs = [compare.load_run(base), compare.load_run(f"mine={new}")]
    rows = _rows(compare.table(runs, "", ["NDCG@5"], "NDCG@5"))
    assert rows[0][:2] == ["run", "seeds"] and rows[0][-5] == "Δ NDCG@5"
    assert rows[3][10] == "–"  # one shared seed: no seed-level test
    assert rows[2][:8] == [
        "none",
        "1",
        "10",
        "3",
        "early stopping",
        "1.2",
        "0.5000",
        "0.2500",
    ]
    assert rows[2][8] == "(baseline)"
    assert rows[3][:4] == ["mine", "2", "200", "0, 1"]
    assert rows[3][4] == "time limit"
    assert rows[3][7] == "0.6250 ± 0.1768"  # mean, sample sd of 0.75 and 0.5
    assert rows[3][8:10] == ["+0.3750", "+150.0"]
    # Against "mine" the signs flip: -0.375 is -60% of its mean 0.625.
    rows = _rows(compare.table(runs, "mine", ["NDCG@5"], "NDCG@5"))
    assert rows[2][8:10] == ["-0.3750", "-60.0"]
    assert rows[3][8] == "(baseline)"


def test_refuses_runs_on_other_data_and_names_missing_files(tmp_path):
    a = _run(tmp_path / "a", "none", [[1, 2]], [{"NDCG@5": 0.8}])
    b = _run(tmp_path / "b", "simp", [[1, 2]], [{"NDCG@5": 0.8}], sha="other")
    runs = [compare.load_run(a), compare.load_run(b)]
    with pytest.raises(SystemExit, match="different data"):
        compare.table(runs, "", ["NDCG@5"], "NDCG@5")
    with pytest.raises(SystemExit, match="no run has that label"):
        compare.table(runs, "stoc", ["NDCG@5"], "NDCG@5")
    with pytest.raises(SystemExit, match="share a label"):
        compare.table([runs[0], runs[0]], "", ["NDCG@5"], "NDCG@5")
    (tmp_path / "c").mkdir()
    with pytest.raises(SystemExit, match="c/config.json: not found"):
        compare.load_run(str(tmp_path / "c"))


def test_runs_sharing_a_label_are_the_seeds_of_one_row(tmp_path):
    # Seeds trained as separate runs give the row that one 2-seed run gives
    # (the values of test_table_values_and_paired_difference).
    base = _run(tmp_path / "a", "none", [[1, 20, 20, 20]], [{"NDCG@5": 0.25}])
    s0 = _run(tmp_path / "s0", "value", [[1, 1, 1, 20]], [{"NDCG@5": 0.75}])
    s1 = _run(
        tmp_path / "s1", "value", [[1, 1, 20, 20]], [{"NDCG@5": 0.5}], seed=1,
        epochs_run=200, stopped=True,
    )  # fmt: skip
    runs = [compare.load_run(a) for a in (base, s0, s1)]
    rows = _rows(compare.table(runs, "", ["NDCG@5"], "NDCG@5"))
    assert len(rows) == 4
    assert rows[3][:5] == [
        "value",
        "2",
        "10, 200",
        "3, 3",
        "early stopping, time limit",
    ]
    assert rows[3][7] == "0.6250 ± 0.1768"
    assert rows[3][8:10] == ["+0.3750", "+150.0"]
    other = compare.load_run(
        _run(tmp_path / "lr", "value", [[1, 1, 1, 1]], [{"NDCG@5": 1}], seed=2, lr=2)
    )
    with pytest.raises(SystemExit, match="share a label .value. but differ in lr"):
        compare.table(runs + [other], "", ["NDCG@5"], "NDCG@5")


def test_seed_level_p_pairs_the_shared_seeds(tmp_path):
    from scipy import stats as sps

    # Per seed NDCG@5 (mean over 2 users): none 0.5 and 0, add 1.0 and 0.75
    # (rank 3 has NDCG@5 = 1/log2(4) = 0.5).
    base = _run(
        tmp_path / "a", "none", [[1, 20], [20, 20]], [{"NDCG@5": 0.5}, {"NDCG@5": 0}]
    )
    base_s1 = _run(tmp_path / "a1", "none", [[1, 20]], [{"NDCG@5": 0.5}], seed=1)
    new = _run(
        tmp_path / "b", "add", [[1, 1], [1, 3]], [{"NDCG@5": 1}, {"NDCG@5": 0.75}]
    )
    runs = [compare.load_run(a) for a in (base, new)]
    rows = _rows(compare.table(runs, "", ["NDCG@5"], "NDCG@5"))
    d = np.array([1.0 - 0.5, 0.75 - 0.0])  # per-seed differences, seeds 0 and 1
    p = 2 * sps.t.sf(d.mean() / (d.std(ddof=1) / np.sqrt(2)), 1)
    assert rows[3][10] == f"{p:.2g}"
    # Seeds pair by id: a baseline of seeds 0 (run a) and 1 (run a1).
    runs = [compare.load_run(a) for a in (base, new)]
    runs[0] = compare.merge_seeds([compare.load_run(_run(
        tmp_path / "a0", "none", [[1, 20]], [{"NDCG@5": 0.5}])),
        compare.load_run(base_s1)])  # fmt: skip
    rows = _rows(compare.table(runs, "", ["NDCG@5"], "NDCG@5"))
    d = np.array([1.0 - 0.5, 0.75 - 0.5])
    p = 2 * sps.t.sf(d.mean() / (d.std(ddof=1) / np.sqrt(2)), 1)
    assert rows[3][10] == f"{p:.2g}"


def test_learning_curves_average_the_seeds_of_a_row(tmp_path):
    a = _run(tmp_path / "a", "none", [[1, 2]], [{"NDCG@5": 0.8}])
    b0 = _run(tmp_path / "b0", "add", [[1, 2]], [{"NDCG@5": 0.8}], seed=0)
    b1 = _run(tmp_path / "b1", "add", [[1, 2]], [{"NDCG@5": 0.8}], seed=1)

    def metrics(path, values):
        lines = [{"epoch": e, "member": 0, "valid": {"NDCG@5": v}}
                 for e, v in enumerate(values)]  # fmt: skip
        lines.insert(1, {"epoch": 0, "member": 1, "loss": 1.0})  # no validation
        (tmp_path / path / "metrics.jsonl").write_text(
            "\n".join(json.dumps(x) for x in lines) + "\n"
        )

    metrics("a", [0.1, 0.2, 0.3])
    metrics("b0", [0.2, 0.4])
    metrics("b1", [0.4, 0.6, 0.5])
    runs = [compare.load_run(x) for x in (a, b0, b1)]
    got = compare.curve_data(runs)
    assert list(got) == ["none", "add"]
    np.testing.assert_allclose(got["none"][1], [0.1, 0.2, 0.3])
    np.testing.assert_array_equal(got["add"][0], [0, 1, 2])
    np.testing.assert_allclose(got["add"][1], [0.3, 0.5, 0.5])  # epoch 2: b1 only
    assert got["add"][2] == [3, 3] and got["none"][2] == [3]
    path = compare.curves(runs, str(tmp_path / "curves.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["curves.png"]
