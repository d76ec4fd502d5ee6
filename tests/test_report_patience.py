"""``report_patience``: the paper's early-stopping rule and a longer run from
one training, and continuing a run at another patience.

A run at patience P with ``report_patience=R`` must report, per member,
exactly what a run at patience R gives (members are independent, so the
longer training is the shorter one continued); a checkpoint may go on at
another patience only while no member has waited that long.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from awrsr_jax import results, resume
from tests.conftest import CKPT_CFG, run_tiny, strip_seconds

SEEDS = [0, 1, 2]
SHORT = CKPT_CFG.replace(epochs=14, patience=2, lr=0.02)  # members stop early
LONG = SHORT.replace(patience=6, report_patience=2)


def _stops(workdir) -> list[int]:
    """Epochs each member trained (its last record's epoch + 1)."""
    last = {}
    for line in open(os.path.join(workdir, "metrics.jsonl")):
        r = json.loads(line)
        last[r["member"]] = max(last.get(r["member"], -1), r["epoch"])
    return [last[m] + 1 for m in sorted(last)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    short, long = (tmp_path_factory.mktemp(n) for n in ("short", "long"))
    return (
        (str(short), run_tiny(short, SHORT, seeds=SEEDS)),
        (str(long), run_tiny(long, LONG, seeds=SEEDS)),
    )


def test_the_reported_rule_is_the_run_at_that_patience(pair):
    (short_dir, short), (long_dir, long) = pair
    rule = long["rule"]
    stops = _stops(short_dir)
    assert min(stops) < SHORT.epochs  # the rule stopped a member: a real test
    assert rule["patience"] == 2
    assert rule["epochs_run"] == stops
    assert rule["best_epoch"] == short["best_epoch"]
    assert rule["valid"] == short["valid"]
    assert rule["test"] == short["test"]
    np.testing.assert_array_equal(
        np.load(os.path.join(long_dir, "test_ranks_rule.npy")),
        np.load(os.path.join(short_dir, "test_ranks.npy")),
    )
    # the longer patience trained on: its own result is the longer run's
    assert long["epochs_run"] > max(stops)
    assert "rule" not in short and not os.path.exists(
        os.path.join(short_dir, "test_ranks_rule.npy")
    )


def test_a_member_the_rule_never_stops_reports_the_whole_run(tmp_path):
    res = run_tiny(tmp_path, LONG.replace(epochs=2), seeds=SEEDS)
    # two validations: no member can have waited 2 without improving
    assert res["rule"]["epochs_run"] == [2, 2, 2]
    assert res["rule"]["test"] == res["test"]
    assert res["rule"]["best_epoch"] == res["best_epoch"]
    one = run_tiny(tmp_path / "one", LONG.replace(epochs=2))  # a dict, as "test"
    assert one["rule"]["test"] == one["test"] and one["rule"]["epochs_run"] == 2


def test_another_patience_continues_a_run_no_member_waited_that_long(pair, tmp_path):
    _, (long_dir, long) = pair
    wd = tmp_path / "wd"
    # 2 epochs at patience 20, no rule: the longest wait is at most 1
    run_tiny(wd, SHORT.replace(epochs=2, patience=20), seeds=SEEDS)
    res = run_tiny(wd, LONG, seeds=SEEDS)
    assert strip_seconds([res]) == strip_seconds([long])
    for name in ("test_ranks.npy", "test_ranks_rule.npy"):
        a, b = (np.load(os.path.join(d, name)) for d in (wd, long_dir))
        np.testing.assert_array_equal(a, b)
    lines = [
        strip_seconds(json.loads(x) for x in open(os.path.join(d, "metrics.jsonl")))
        for d in (wd, long_dir)
    ]
    assert lines[0] == lines[1]


def test_another_patience_is_refused_once_a_member_waited_that_long(pair, tmp_path):
    (short_dir, _), _ = pair
    longest = resume.longest_wait(resume.workdir_history(short_dir))
    assert longest == 2  # members stopped by patience 2
    with pytest.raises(ValueError, match=r"patience: 2 -> 6.*already waited 2"):
        run_tiny(short_dir, SHORT.replace(patience=6), seeds=SEEDS)
    old = json.load(open(os.path.join(short_dir, "config.json")))
    new = dict(old, config=dict(old["config"], patience=6))
    with pytest.raises(ValueError, match=r"no readable metrics.jsonl"):
        resume.check_same_run(old, new, "wd", history=None)
    assert resume.continue_from([short_dir], new, "unused") is None


def test_longest_wait_by_hand():
    ndcg = {0: [0.1, 0.2, 0.2, 0.15, 0.3, 0.1], 1: [0.3, 0.1, 0.1, 0.1, 0.2]}
    history = [
        {"member": m, "epoch": e, "valid": {"NDCG@5": v}}
        for m, vals in ndcg.items()
        for e, v in enumerate(vals)
    ]
    history.append({"member": 0, "epoch": 6})  # not validated: not counted
    # member 0 waits 0 0 1 2 0 1; member 1 waits 0 1 2 3 4
    assert resume.longest_wait(history) == 4
    assert resume.member_progress(history) == {
        0: dict(epochs=6, best=0.3, best_epoch=4, wait=1, longest=2),
        1: dict(epochs=5, best=0.3, best_epoch=0, wait=4, longest=4),
    }
    assert resume.longest_wait([]) == 0
    old, new = {"patience": 20}, {"patience": 6, "report_patience": 5}
    assert resume.same_so_far(old, new, history)  # 4 < min(20, 6, 5)
    assert not resume.same_so_far(old, {"patience": 4}, history)
    assert not resume.same_so_far(old, new, None)  # unknown history: refused


def test_report_patience_must_be_below_patience():
    from awrsr_jax.config import validate

    with pytest.raises(ValueError, match=r"--report_patience=6: .*\[1, --patience=6\)"):
        validate(SHORT.replace(patience=6, report_patience=6))
    validate(SHORT.replace(patience=6, report_patience=0))


def test_the_printed_table_shows_the_rule_rows():
    m = {"NDCG@5": 0.25, "Recall@5": 0.5}
    r = {"NDCG@5": 0.125, "Recall@5": 0.375}
    res = {"valid": m, "test": m, "rule": {"patience": 20, "valid": r, "test": r}}
    lines = results.results_table(res, names=["NDCG@5", "Recall@5"]).splitlines()
    assert lines[1:] == [
        "valid          0    0.2500    0.5000",
        "test           0    0.2500    0.5000",
        "valid@p20      0    0.1250    0.3750",
        "test@p20       0    0.1250    0.3750",
    ]
