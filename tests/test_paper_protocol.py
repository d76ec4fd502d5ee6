"""results/paper_protocol/protocol.py: the stage-3 rule on hand-made rows."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "protocol", REPO / "results" / "paper_protocol" / "protocol.py"
)
protocol = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(protocol)

CFG = {"max_len": 50, "hidden": 128, "heads": 2}


def _row(h, lr, ndcg, epochs_run, cap=200, **cfg):
    return {
        "hash": h,
        "status": "ok",
        "epochs_run": epochs_run,
        "config": {**CFG, **cfg, "lr": lr, "epochs": cap},
        "valid": {"NDCG@5": ndcg},
        "test": {"NDCG@5": ndcg / 2},
    }


def test_searched_says_what_the_rows_searched(tmp_path):
    """Stage 1 a 2 x 2 product; stage 2 one key at a time (3 configs, the
    lr 1e-4 one twice, continued under a larger cap: one config)."""
    fix = dict(layers=1, seed=0, patience=20, max_len=50, hidden=64, heads=1)
    one = [_row(f"s{i}", 1e-3, 0.02, 80, **fix, l2=l2, dropout=dr)
           for i, (l2, dr) in enumerate([(0.1, 0.3), (0.1, 0.5), (0.001, 0.3),
                                         (0.001, 0.5)])]  # fmt: skip
    two = [_row("a", 1e-3, 0.02, 80, **{**fix, "max_len": 20}, l2=0.001, dropout=0.5),
           _row("b", 1e-3, 0.02, 80, **fix, l2=0.001, dropout=0.5),
           _row("c", 1e-4, 0.02, 200, **fix, l2=0.001, dropout=0.5),
           _row("d", 1e-4, 0.02, 230, cap=400, **fix, l2=0.001, dropout=0.5)]  # fmt: skip
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    s1, s2 = _stage(tmp_path / "1", one, one[0]), _stage(tmp_path / "2", two, two[0])
    assert protocol.searched(s1, s2) == (
        "Original searched on validation NDCG@5, one run per config (layers 1, "
        "seed 0, epochs 200/400, patience 20); stage 1 (4 configs): l2 0.001/0.1 "
        "x dropout 0.3/0.5 at max_len 50, hidden 64, heads 1, lr 0.001; stage 2 "
        "(3 configs): one key at a time from the previous best: max_len 20/50, "
        "lr 0.0001/0.001 at l2 0.001, dropout 0.5, hidden 64, heads 1"
    )


def _stage(tmp_path, rows, best):
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = {"dataset": "beauty", "backbone": "sasrec", **best}
    (tmp_path / "best.json").write_text(json.dumps(info))
    return str(tmp_path)


@pytest.mark.parametrize(
    "lr4, run4, cont, pick",
    [
        (0.0273, 200, True, "b"),  # at the cap, 0.0017 above: go on
        (0.0262, 200, False, "a"),  # at the cap within 0.001: tie -> lr 1e-3
        (0.0250, 200, False, "a"),  # at the cap, below
        (0.0262, 150, False, "b"),  # early-stopped, above: the better one
        (0.0250, 150, False, "a"),  # early-stopped, below
    ],
)
def test_stage3_rule(tmp_path, lr4, run4, cont, pick):
    rows = [
        _row("a", 1e-3, 0.0256, 80),
        _row("b", 1e-4, lr4, run4),
        _row("x", 1e-4, 0.05, 200, hidden=64),  # another config: ignored
    ]
    d = _stage(tmp_path, rows, rows[2])
    assert protocol.should_continue(d, 50, 128, 2) is cont
    got = protocol.original(d, "50", "128", "2")
    assert got["hash"] == pick and got["dataset"] == "beauty"
    assert got["config"] == next(r["config"] for r in rows if r["hash"] == pick)


def test_stage3_after_the_longer_cap(tmp_path):
    rows = [
        _row("a", 1e-3, 0.0256, 80),
        _row("b", 1e-4, 0.0273, 200),
        _row("c", 1e-4, 0.0285, 226, cap=400),
    ]
    d = _stage(tmp_path, rows, rows[2])
    assert protocol.should_continue(d, 50, 128, 2) is False  # already continued
    assert protocol.original(d, 50, 128, 2)["hash"] == "c"
    rows[2] = _row("c", 1e-4, 0.0260, 400, cap=400)  # cut again, within 0.001
    d = _stage(tmp_path, rows, rows[0])
    assert protocol.original(d, 50, 128, 2)["hash"] == "a"


def test_seed_stage2_copies_stage1_best_row(tmp_path):
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    s1.mkdir()
    rows = [_row("p", 1e-3, 0.02, 90), _row("q", 1e-3, 0.03, 95)]
    _stage(s1, rows, rows[1])
    assert protocol.main(["seed-stage2", str(s1), str(s2)]) == 0
    got = [json.loads(x) for x in (s2 / "results.jsonl").read_text().splitlines()]
    assert got == [rows[1]]


def _run(cell, results=None):
    (cell / "checkpoints" / "7").mkdir(parents=True)
    (cell / "config.json").write_text(json.dumps({"config": {"mech": cell.name}}))
    (cell / "metrics.jsonl").write_text('{"epoch": 0}\n')
    (cell / ".lock").write_text("123")
    if results is not None:
        (cell / "results.json").write_text(json.dumps(results))
        (cell / "test_ranks.npy").write_bytes(b"ranks")


def _cell(root, name, results=None):
    _run(root / "cells" / name, results)


def _manifest(root, names):
    entries = [{"mech": n, "cell": f"cells/{n}"} for n in names]
    (root / "table2.json").write_text(json.dumps({"entries": entries}))


def test_sync_cells_copies_finished_cells_without_checkpoints(tmp_path):
    runs, kept = tmp_path / "runs", tmp_path / "committed"
    _cell(runs, "none", {"status": "ok"})
    _run(runs / "cells" / "none" / "seed-4", {"status": "ok"})  # the last seed
    _cell(runs, "simp", {"status": "ok", "stopped": True})  # a time limit ended it
    _cell(runs, "value")  # training
    _run(runs / "cells" / "add" / "seed-0", {"status": "ok"})  # seed by seed
    _run(runs / "cells" / "add" / "seed-1")  # training
    _manifest(runs, ["none", "simp", "value", "add"])
    assert protocol.sync_cells(str(runs), str(kept)) == [
        "add/seed-0", "none", "none/seed-4"
    ]  # fmt: skip
    assert sorted(p.name for p in (kept / "cells").iterdir()) == ["add", "none"]
    assert [p.name for p in (kept / "cells" / "add").iterdir()] == ["seed-0"]
    got = sorted(p.name for p in (kept / "cells" / "none").iterdir())
    files = ["config.json", "metrics.jsonl", "results.json", "test_ranks.npy"]
    assert got == sorted(files + ["seed-4"])
    assert sorted(p.name for p in (kept / "cells/none/seed-4").iterdir()) == files
    assert len(json.loads((kept / "table2.json").read_text())["entries"]) == 4
    assert protocol.sync_cells(str(runs), str(kept)) == []  # already there

    fresh = tmp_path / "fresh"  # a new checkout: committed cells back into runs/
    fresh.mkdir()
    _manifest(fresh, ["none", "simp", "value", "add", "x"])
    assert protocol.main(["sync-cells", str(kept), str(fresh)]) == 0
    assert json.loads((fresh / "cells" / "none" / "results.json").read_text()) == {
        "status": "ok"
    }
    # the longer manifest stays
    assert len(json.loads((fresh / "table2.json").read_text())["entries"]) == 5
    assert (fresh / "cells" / "add" / "seed-0" / "results.json").exists()
