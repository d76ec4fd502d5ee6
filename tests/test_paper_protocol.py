"""experiments.protocol: the stage-3 rule on hand-made rows, the commands the
driver issues (whose ``--set`` strings fix the configs' hashes), and the
copying of finished runs."""

from __future__ import annotations

import json
import pathlib
import tarfile

import pytest

from experiments import protocol
from tests.conftest import run_module

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
    assert protocol.sync_cells(str(kept), str(fresh)) == [
        "add/seed-0", "none", "none/seed-4"
    ]  # fmt: skip
    assert json.loads((fresh / "cells" / "none" / "results.json").read_text()) == {
        "status": "ok"
    }
    # the longer manifest stays
    assert len(json.loads((fresh / "table2.json").read_text())["entries"]) == 5
    assert (fresh / "cells" / "add" / "seed-0" / "results.json").exists()


def _grid_row(h, ndcg, epochs_run=80, cap=200, **cfg):
    base = dict(layers=1, seed=0, patience=20, l2=0.01, dropout=0.5, max_len=50,
                hidden=64, heads=1, lr=1e-3)  # fmt: skip
    cfg = {**base, **cfg}
    return _row(h, cfg.pop("lr"), ndcg, epochs_run, cap, **cfg)


class FakeGrid:
    """Stands in for the subprocesses: records each command; a grid command
    adds the rows its stage "trains" (``trains[space]``) to ``--out`` and
    writes best.json and the summaries as the grid would."""

    def __init__(self, trains):
        self.trains, self.calls = trains, []

    def __call__(self, module, *args):
        self.calls.append((module, *args))
        if module != "experiments.grid":
            return
        opt = dict(a[2:].split("=", 1) for a in args)
        out = pathlib.Path(opt["out"])
        out.mkdir(parents=True, exist_ok=True)
        space = opt["space"].rsplit("/", 1)[1].removesuffix("_space.json")
        rows = protocol._rows(out) if (out / "results.jsonl").exists() else []
        rows += self.trains.get(space, [])
        _stage(out, rows, max(rows, key=protocol._ndcg))
        for n in ("summary.md", "summary.csv"):
            (out / n).write_text(n)


def test_driver_issues_the_protocol_commands(tmp_path, monkeypatch):
    """The search's commands, each ``--set`` from the previous stage's best,
    stage 2 seeded with stage 1's best row, lr 1e-4 continued to a 400 cap
    by the rule, original.json in runs/ and committed; then Table 2 seed by
    seed, and as ensembles with --pack."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    best1 = _grid_row("s1b", 0.030, l2=0.001, dropout=0.3)
    trains = {
        "stage1": [_grid_row("s1a", 0.020), best1],
        "stage2a": [_grid_row("ml20", 0.031, l2=0.001, dropout=0.3, max_len=20)],
        "stage2b": [
            _grid_row("h128", 0.029, l2=0.001, dropout=0.3, max_len=20, hidden=128)
        ],  # fmt: skip
        "stage2c": [
            _grid_row("hd2", 0.032, l2=0.001, dropout=0.3, max_len=20, heads=2)
        ],  # fmt: skip
        "stage3": [
            _grid_row(
                "lr4", 0.0335, 200, l2=0.001, dropout=0.3, max_len=20, heads=2, lr=1e-4
            )
        ],  # fmt: skip
        "stage3b": [
            _grid_row(
                "lr4b",
                0.036,
                310,
                400,
                l2=0.001,
                dropout=0.3,
                max_len=20,
                heads=2,
                lr=1e-4,
            )
        ],  # fmt: skip
    }
    fake = FakeGrid(trains)
    tuned = protocol.search("ml1m", "ml-1m", runs, call=fake)
    fix = "layers=1,l2=0.001,dropout=0.3,batch_size=128"
    P = protocol.P
    s1, s2 = runs / "search/ml1m-sasrec", runs / "search/ml1m-sasrec-stage2"
    assert fake.calls == [
        ("experiments.grid", "--backbone=sasrec", "--dataset=ml-1m",
         f"--space={P}/{space}_space.json", f"--set={fixed}", f"--out={out}")
        for space, fixed, out in [
            ("stage1", "layers=1,hidden=64,max_len=50,heads=1,lr=0.001,"
                       "batch_size=128", s1),
            ("stage2a", f"{fix},hidden=64,heads=1,lr=0.001", s2),
            ("stage2b", f"{fix},max_len=20,heads=1,lr=0.001", s2),
            ("stage2c", f"{fix},max_len=20,hidden=64,lr=0.001", s2),
            ("stage3", f"{fix},max_len=20,hidden=64,heads=2", s2),
            ("stage3b", f"{fix},max_len=20,hidden=64,heads=2,epochs=400", s2),
        ]
    ]  # fmt: skip
    assert protocol._rows(s2)[0] == best1  # stage 2 starts from stage 1's best
    info = json.loads((s2 / "original.json").read_text())
    assert info["hash"] == "lr4b" and info["search"].startswith("Original searched")
    assert tuned == f"{P}/search/ml1m-sasrec-stage2/original.json"
    assert (tmp_path / tuned).read_text() == (s2 / "original.json").read_text()
    committed = tmp_path / P / "search/ml1m-sasrec-stage1/results.jsonl"
    assert committed.read_text() == (s1 / "results.jsonl").read_text()

    fake.calls.clear()  # done: the same command trains nothing again
    protocol.search("ml1m", "ml-1m", runs, call=FakeGrid({}))
    assert json.loads((s2 / "original.json").read_text()) == info

    kept = tmp_path / "kept"
    protocol.table2("ml-1m", tuned, "r", str(kept), ["none", "add"], draw=False,
                    call=fake)  # fmt: skip
    common = ("experiments.reproduce", "--table=2", "--datasets=ml-1m",
              "--backbones=sasrec", "--seeds=5", f"--tuned={tuned}",
              "--epochs=1000", "--patience=60", "--report_patience=20")  # fmt: skip
    assert fake.calls == [
        (*common, f"--mechs={m}", "--seed_runs", "--out=r") for m in ("none", "add")
    ]
    fake.calls.clear()
    _cell(tmp_path / "g", "none", {"status": "ok"})  # a finished ensemble cell
    protocol.table2("ml-1m", tuned, str(tmp_path / "g"), str(kept), ["none"],
                    epochs=400, cell_minutes=30, ensemble=True,
                    pack=str(tmp_path / "out"), tag="ml1m", draw=False,
                    call=fake)  # fmt: skip
    assert fake.calls[0][-3:] == (
        "--checkpoint_every=50", f"--out={tmp_path / 'g'}", "--cell_minutes=30"
    )  # fmt: skip
    with tarfile.open(tmp_path / "out" / "ml1m.tgz") as tar:
        names = tar.getnames()
    assert f"{str(kept).lstrip('/')}/cells/none/results.json" in names
    assert not any("checkpoints" in n for n in names)


def test_render_draws_strata_agreement_and_figures_once_every_cell_has_finished(
    tmp_path,
):
    kept = tmp_path / "kept"
    _cell(kept, "none", {"status": "ok"})
    _run(kept / "cells" / "add" / "seed-0", {"status": "ok"})  # cell unfinished
    _manifest(kept, ["none", "add"])
    fake = FakeGrid({})
    protocol.render(str(kept), call=fake)
    table = ("experiments.reproduce", "--table=2", f"--from_results={kept}",
             f"--out={kept}")  # fmt: skip
    assert fake.calls == [table]
    (kept / "cells" / "add" / "results.json").write_text('{"status": "ok"}')
    fake.calls.clear()
    protocol.render(str(kept), call=fake)
    strata = ("experiments.strata", f"--from_results={kept}", f"--out={kept}")
    agree = ("experiments.agreement", *strata[1:])
    assert fake.calls == [
        table, strata, (*strata, "--rule"), agree, (*agree, "--rule"),
        ("experiments.figures", f"--from_results={kept}", f"--out={kept}/figures"),
    ]  # fmt: skip


def test_render_all_joins_the_datasets_that_have_a_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake = FakeGrid({})
    protocol.render_all(call=fake)  # no table yet: nothing to render
    assert fake.calls == []
    out = f"{protocol.P}/table2"
    for tag in ("anime", "ml1m"):
        (tmp_path / out / tag).mkdir(parents=True)
        _manifest(tmp_path / out / tag, ["none"])
    protocol.render_all(call=fake)
    assert fake.calls == [
        ("experiments.reproduce", "--table=2",
         f"--from_results={out}/ml1m,{out}/anime", f"--out={out}")
    ]  # fmt: skip


def test_protocol_refuses_bad_flags_naming_them():
    """Refused before anything runs: a mechanism SASRec lacks, a dataset
    outside the protocol's three."""
    got = run_module("experiments.protocol", "--dataset=ml-1m", "--mechs=none,stoc")
    assert got.returncode != 0 and "--mechs=none,stoc: 'stoc' is not" in got.stderr
    got = run_module("experiments.protocol", "--dataset=steam")
    assert got.returncode != 0 and "--dataset" in got.stderr
