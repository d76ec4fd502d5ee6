"""Experiment scripts: statistics, grid resume/divergence, tables, figures.

Fast tests use hand-made result folders and a fake ``train.fit``; the
end-to-end smoke runs (real training on tiny data) are marked slow.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from awrsr_jax import analysis, checkpoint, datasets, files, results, search, stats
from awrsr_jax import train as train_lib
from awrsr_jax.config import Config
from experiments import complexity, figures, grid, reproduce, tables
from tests.conftest import RANKS, REPO, ndcg5, run_module


def test_parse_set_types():
    got = grid.parse_set("hidden=64, lr=1e-4,per_head=true,loss=ce")
    assert got == {"hidden": 64, "lr": 1e-4, "per_head": True, "loss": "ce"}
    with pytest.raises(ValueError, match="hiden"):
        grid.parse_set("hiden=3")


def fake_fit(calls):
    """A ``train.fit`` stand-in: valid NDCG@5 = lr; any lr > 1 diverges."""

    def fit(cfg, data, *, seeds=None, sweep=None, on_epoch=None, after_epoch=None, **_):
        calls.append(list(sweep["lr"]))
        if any(lr > 1 for lr in sweep["lr"]):
            raise FloatingPointError("non-finite training loss at epoch 0")
        m = len(seeds)
        for i in range(m):
            valid = {"NDCG@5": sweep["lr"][i]}
            on_epoch({"epoch": 0, "member": i, "seconds": 0.1, "valid": valid})
        for epoch in (1, 10):  # the loop after epochs 0 and 9
            loop = types.SimpleNamespace(epoch=epoch, best=np.array(sweep["lr"]),
                                         active=np.arange(m) == 0)  # fmt: skip
            assert after_epoch(loop) is False
        vals = [
            {n: lr for n in ("Recall@1", "Recall@5", "NDCG@5")} for lr in sweep["lr"]
        ]
        return train_lib.FitResult(
            best_epoch=[0] * m, epochs_run=1, valid=vals, test=vals,
            test_ranks=np.ones((m, data.num_eval), np.int32), best_params=None,
            seconds_per_epoch=0.1,
        )  # fmt: skip

    return fit


def test_grid_resumes_and_records_divergence(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train_lib, "fit", fake_fit(calls))
    monkeypatch.setattr(checkpoint.Store, "save", lambda *a: None)
    monkeypatch.setattr(analysis, "count_params", lambda *a: {"params": 1})
    base = Config(hidden=8, max_len=6, layers=1)
    configs, _ = search.expand(base, {"lr": [0.01, 0.02, 5.0], "layers": [1, 2]})
    data = datasets.load("smoke")
    log = io.StringIO()
    table = grid.run_search(configs, data, str(tmp_path), log=log)
    # Per shape: the ensemble diverges, then each member runs alone.
    assert len(calls) == 2 * (1 + 3)
    # A progress line every 10 epochs of each run that trained (2 per shape).
    progress = [ln for ln in log.getvalue().splitlines() if "best valid" in ln]
    assert len(progress) == 4 and all(ln.startswith("  epoch 10 (") for ln in progress)
    assert "1 training): best valid NDCG@5 per member 0.0100" in progress[0]
    recs = list(table.records.values())
    assert sorted(r["status"] for r in recs) == ["failed"] * 2 + ["ok"] * 4
    assert all(r["config"]["lr"] == 5.0 for r in recs if r["status"] == "failed")
    calls.clear()
    again = grid.run_search(configs, data, str(tmp_path))
    assert calls == [] and len(again) == 6
    best = grid.write_outputs(again, str(tmp_path), label=data.name, backbone="sasrec",
                              space="test")  # fmt: skip
    assert best["config"]["lr"] == 0.02
    saved = json.loads((tmp_path / "best.json").read_text())
    assert saved["hash"] == best["hash"] and saved["dataset"] == "smoke"
    md = (tmp_path / "summary.md").read_text()
    assert "4 finished, 2 failed" in md and "| layers | lr |" in md
    csv_lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert len(csv_lines) == 7 and csv_lines[0].startswith("hash,status,backbone")
    # Records name their config as its hash does: a field the backbone does not
    # read is left out at its default, so records written before the field
    # existed and after it sit in one table.
    assert all("mask_prob" not in r["config"] for r in recs)
    later = dict(recs[0], hash="later", config=dict(recs[0]["config"], mask_prob=0.3))
    rows = grid.summary_csv([recs[0], later]).splitlines()
    assert rows[1].split(",")[0] == recs[0]["hash"] and ",0.3," in rows[2]
    assert "mask_prob" in rows[0] and "mask_prob" not in csv_lines[0]


def test_grid_with_a_larger_epoch_cap_continues_the_shorter_group(tmp_path):
    from tests.conftest import tiny_config, tiny_seqs

    data = datasets.Dataset("synthetic", tiny_seqs())
    short = [tiny_config(layers=1, epochs=2, patience=50, lr=lr) for lr in (1e-3, 2e-3)]
    grid.run_search(short, data, str(tmp_path), log=io.StringIO())
    (old,) = (tmp_path / "groups").iterdir()
    before = (old / "metrics.jsonl").read_text()
    log = io.StringIO()
    table = grid.run_search([c.replace(epochs=4) for c in short], data,
                            str(tmp_path), log=log)  # fmt: skip
    assert f"continues {old} (epochs: 2 -> 4)" in log.getvalue()
    new = [d for d in (tmp_path / "groups").iterdir() if d != old]
    assert len(new) == 1 and (old / "metrics.jsonl").read_text() == before
    lines = (new[0] / "metrics.jsonl").read_text().splitlines()
    assert lines[:4] == before.splitlines() and len(lines) == 8  # 2 members
    assert len(table) == 4 and {r["epochs_run"] for r in table.records.values()} == {
        2,
        4,
    }


def test_grid_keeps_a_group_its_patience_ended_under_a_larger_cap(tmp_path):
    """A group whose members all stopped by patience is the group a larger cap
    trains: its records come back unchanged, without its checkpoints too."""
    from tests.conftest import tiny_config, tiny_seqs

    data = datasets.Dataset("synthetic", tiny_seqs())
    short = [tiny_config(layers=1, epochs=40, patience=1, lr=lr) for lr in (1e-3, 2e-3)]
    first = grid.run_search(short, data, str(tmp_path), log=io.StringIO())
    (old,) = (tmp_path / "groups").iterdir()
    assert max(r["epochs_run"] for r in first.records.values()) < 40
    shutil.rmtree(old / "checkpoints")
    log = io.StringIO()
    table = grid.run_search([c.replace(epochs=80) for c in short], data,
                            str(tmp_path), log=log)  # fmt: skip
    assert f"stands for {old} (epochs: 40 -> 80)" in log.getvalue()
    new = {
        r["config"]["lr"]: r
        for r in table.records.values()
        if r["config"]["epochs"] == 80
    }
    for r in first.records.values():
        got = new[r["config"]["lr"]]
        assert (got["valid"], got["test"], got["best_epoch"], got["epochs_run"]) == (
            r["valid"], r["test"], r["best_epoch"], r["epochs_run"])  # fmt: skip


def test_table_entries_gpu_budget():
    ds, bb = ["ml-1m", "beauty"], ["sasrec", "stosa"]
    t2 = reproduce.table_entries("2", ds, bb, "gpu")
    assert len(t2) == 2 * (4 + 5)
    ml = [c for d, c in t2 if d == "ml-1m" and c.backbone == "sasrec"]
    assert {(c.max_len, c.hidden, c.layers, c.dropout) for c in ml} == {
        (200, 50, 2, 0.2)
    }
    t3 = reproduce.table_entries("3", ds, bb, "gpu")
    assert len(t3) == (4 + 5) * 4 and {d for d, _ in t3} == {"beauty"}
    ab = reproduce.table_entries("refine", ds, bb, "gpu")
    assert len(ab) == 2 * (3 + 4) * 2
    assert {c.refine_input for _, c in ab} == {"scores", "probs"}
    tuned = [{"dataset": "beauty", "backbone": "sasrec",
              "config": dataclasses.asdict(Config(hidden=128))}]  # fmt: skip
    cfg = reproduce.base_config("beauty", "sasrec", "gpu", tuned)
    assert cfg.hidden == 128


def test_mechs_that_fit_no_backbone_are_refused():
    # a typo or stoc without STOSA once gave an empty table without a word
    for mechs, bbs, bad in [(["none", "vlaue"], ["sasrec"], "vlaue"),
                            (["stoc"], ["sasrec"], "stoc"),
                            (["value_literal"], ["sasrec"], "value_literal")]:  # fmt: skip
        with pytest.raises(ValueError) as e:
            reproduce.table_entries("2", ["smoke"], bbs, "smoke", mechs=mechs)
        assert str(e.value).startswith(
            f"--mechs={','.join(mechs)}: {bad!r} is not a mechanism of sasrec; "
            "choose from ['add', 'none', 'simp', 'value']"
        )
    both = reproduce.table_entries("2", ["smoke"], ["sasrec", "stosa"], "smoke",
                                   mechs=["stoc"])  # fmt: skip
    assert [(c.backbone, c.mech) for _, c in both] == [("stosa", "stoc")]


def test_a_tuned_file_for_a_dataset_path_is_used_and_a_stray_one_refused(tmp_path):
    # grid records a file's stem as best.json's dataset; reproduce is given the
    # path: the two must meet, never fall back silently to another config
    path = str(tmp_path / "anime.txt")
    (tmp_path / "anime.txt").write_text("1 1\n")
    assert datasets.label(path) == "anime" and datasets.label("ml-1m") == "ml-1m"
    tuned = [{"dataset": "anime", "backbone": "sasrec",
              "config": dataclasses.asdict(Config(hidden=128, max_len=30))}]  # fmt: skip
    cfg = reproduce.base_config(path, "sasrec", "gpu", tuned)
    assert (cfg.hidden, cfg.max_len) == (128, 30)
    reproduce.check_tuned(["best.json"], tuned, [path], ["sasrec"])
    with pytest.raises(ValueError) as e:
        reproduce.base_config(path, "sasrec", "gpu")
    assert str(e.value).startswith(f"--datasets={path}: no sasrec configuration")
    assert "--tuned=" in str(e.value)
    assert (
        reproduce.base_config(path, "sasrec", "smoke").hidden
        == reproduce.SMOKE["hidden"]
    )
    for dss, bbs in [(["ml-1m"], ["sasrec"]), ([path], ["stosa"])]:
        with pytest.raises(ValueError) as e:
            reproduce.check_tuned(["runs/a/best.json"], tuned, dss, bbs)
        assert str(e.value).startswith(
            "--tuned=runs/a/best.json: its dataset 'anime' / backbone 'sasrec' is not in"
        )


def test_manifest_merges_commands(tmp_path):
    def specs(ds, mechs):
        return [(ds, Config(mech=m), f"{ds}-{m}") for m in mechs]

    kw = dict(budget="gpu", seeds=[0])
    reproduce.write_manifest(
        tmp_path, "2", specs("a", ["none", "add"]), command="1", **kw
    )
    reproduce.write_manifest(tmp_path, "2", specs("b", ["none"]), command="2", **kw)
    path = reproduce.write_manifest(
        tmp_path, "2", specs("a", ["add"]), command="1", **kw
    )
    info = json.loads(open(path).read())
    assert [e["cell"] for e in info["entries"]] == ["cells/a-none", "cells/a-add",
                                                    "cells/b-none"]  # fmt: skip
    assert info["commands"] == ["1", "2"]  # a command run again keeps its place


def write_fake_cells(root, table="2", specs=None):
    """A results folder for ``table``: cells (mech, layers, refine_input, ranks)
    of 2 seeds; by default Table 2's none and add at 2 layers."""
    from awrsr_jax.ops.metrics import rank_metrics

    entries = []
    specs = specs or [(m, 2, "scores", r) for m, r in RANKS.items()]
    for mech, layers, ri, ranks in specs:
        name = f"{mech}-{layers}-{ri}"
        cell = root / "cells" / name
        cell.mkdir(parents=True)
        vals = rank_metrics(ranks)
        test = [{k: float(v[s].mean()) for k, v in vals.items()} for s in range(2)]
        cfg = dataclasses.asdict(Config(mech=mech, hidden=8, max_len=16))
        res = dict(status="ok", seeds=[0, 1], test=test, valid=test, epochs_run=60,
                   best_epoch=[30, 30], train_seconds=1.0, device="cpu",
                   platform="cpu", jax="x", params=100,
                   refine_params=0 if mech == "none" else 512,
                   seconds_per_epoch=0.5)  # fmt: skip
        (cell / "results.json").write_text(json.dumps(res))
        ident = dict(config=cfg, dataset="toy", data_sha256="0", seeds=[0, 1])
        (cell / "config.json").write_text(json.dumps(ident))
        np.save(cell / "test_ranks.npy", ranks.astype(np.int32))
        with open(cell / "metrics.jsonl", "w") as f:
            for e in range(60):
                for m in range(2):
                    rec = {"epoch": e, "member": m, "loss": 1.0, "grad_norm": e + m}
                    rec["valid"] = {"NDCG@5": 0.01 * e + m}
                    f.write(json.dumps(rec) + "\n")
        seq = np.arange(16) - 2
        amat = np.arange(16 * 16, dtype=float).reshape(1, 1, 16, 16)
        np.savez(cell / "attention.npz", A=amat, B=-amat, seq=seq, row=np.int64(0))
        entries.append({"dataset": "toy", "backbone": "sasrec", "mech": mech,
                        "layers": layers, "refine_input": ri,
                        "cell": f"cells/{name}"})  # fmt: skip
    info = {"table": table, "budget": "smoke", "seeds": [0, 1], "commands": ["cmd"],
            "wall_s": 2.0, "entries": entries}  # fmt: skip
    (root / f"table{table}.json").write_text(json.dumps(info))


def test_render_table2_values(tmp_path):
    from scipy import stats as sps

    write_fake_cells(tmp_path)
    md_path, sum_path = tables.render(tmp_path, "2", tmp_path / "out")
    summary = json.loads(open(sum_path).read())
    none, add = summary
    seeds_none = ndcg5(RANKS["none"]).mean(1)  # per-seed test NDCG@5
    seeds_add = ndcg5(RANKS["add"]).mean(1)
    for row in summary:  # what every cell of the JSON summary names
        assert {"dataset", "backbone", "mech", "layers", "seeds", "per_seed"} <= set(
            row
        )
    assert none["mean"]["NDCG@5"] == pytest.approx(seeds_none.mean(), rel=1e-5)
    assert add["per_seed"]["1"]["NDCG@5"] == pytest.approx(seeds_add[1], rel=1e-5)
    t = add["seed_test"]["NDCG@5"]
    want = 100 * (seeds_add.mean() / seeds_none.mean() - 1)
    assert t["improvement_pct"] == pytest.approx(want, rel=1e-4)
    # Seed-level p: a paired t-test over the 2 seeds, by hand.
    d = seeds_add - seeds_none
    p = 2 * sps.t.sf(abs(d.mean() / (d.std(ddof=1) / np.sqrt(2))), 1)
    assert add["p"]["NDCG@5"] == pytest.approx(p, rel=1e-5)
    user = stats.paired_test(ndcg5(RANKS["add"]).mean(0), ndcg5(RANKS["none"]).mean(0))
    assert add["user_level_conditional"]["p_t"] == pytest.approx(user.p_t, rel=1e-5)
    assert none.get("p") is None and add["cut_seeds"] == []
    md = open(md_path).read()
    assert "| add | 2 | " in md and f"{seeds_add.mean():.4f} ± " in md
    assert f"{want:+.1f}%" in md and "[" in md.split("| add |")[1]
    assert "## toy / sasrec" in md and "Hardware: cpu (cpu, jax x)" in md
    assert "(patience 20, at most 200 epochs)" in md


def test_the_search_of_a_tuned_file_reaches_the_header(tmp_path):
    """A --tuned file's ``search`` is kept in the manifest (a later command
    without it keeps it) and printed in the table's header."""
    write_fake_cells(tmp_path)
    tuned = [{"dataset": "toy", "backbone": "sasrec", "search": "stage 1 (9 configs)"}]
    kw = dict(budget="smoke", seeds=[0, 1])
    reproduce.write_manifest(tmp_path, "2", [], command="a", tuned=tuned, **kw)
    reproduce.write_manifest(tmp_path, "2", [], command="b", **kw)
    info = json.loads((tmp_path / "table2.json").read_text())
    assert info["search"] == {"toy / sasrec": "stage 1 (9 configs)"}
    assert len(info["entries"]) == 2 and info["commands"][-2:] == ["a", "b"]
    md = open(tables.render(tmp_path, "2", tmp_path / "out")[0]).read()
    assert "\n- search toy / sasrec: stage 1 (9 configs)\n" in md


def test_table2_adjusts_the_seed_p_over_its_mechanisms(tmp_path):
    """p Holm over a block's two mechanisms, by hand: the smaller p doubled,
    the larger kept unless below that (Original has none); a mechanism
    without a result yet counts as p = 1."""
    both = np.minimum(RANKS["add"], RANKS["none"])
    write_fake_cells(tmp_path, specs=[("none", 1, "scores", RANKS["none"]),
                                      ("add", 1, "scores", RANKS["add"]),
                                      ("simp", 1, "scores", both)])  # fmt: skip
    md_path, sum_path = tables.render(tmp_path, "2", tmp_path / "out")
    rows = {r["mech"]: r for r in json.loads(open(sum_path).read())}
    pa, ps = rows["add"]["p"]["NDCG@5"], rows["simp"]["p"]["NDCG@5"]
    lo, hi = sorted([pa, ps])
    want = {lo: min(1.0, 2 * lo), hi: max(min(1.0, 2 * lo), hi)}
    assert rows["add"]["p_holm_NDCG@5"] == pytest.approx(want[pa])
    assert rows["simp"]["p_holm_NDCG@5"] == pytest.approx(want[ps])
    assert rows["none"]["p_holm_NDCG@5"] is None
    md = open(md_path).read()
    assert "| p seeds | p Holm | p users |" in md
    assert f"| {pa:.3f} | {want[pa]:.3f} |" in md.split("| add |")[1]

    shutil.rmtree(tmp_path / "cells" / "simp-1-scores")  # its result is missing
    md_path, sum_path = tables.render(tmp_path, "2", tmp_path / "out")
    rows = {r["mech"]: r for r in json.loads(open(sum_path).read())}
    assert rows["add"]["p_holm_NDCG@5"] == pytest.approx(min(1.0, 2 * pa))
    assert rows["simp"]["p_holm_NDCG@5"] is None


def test_a_prepared_dataset_says_whether_it_is_the_papers(tmp_path):
    def prepared(name, users, items, interactions):
        d = tmp_path / name
        d.mkdir()
        (d / f"{name}.txt").write_text("1 1 2 3\n")
        (d / "stats.json").write_text(json.dumps({
            "dataset": name, "users": users, "items": items,
            "interactions": interactions, "time_order": "file order",
            "source": {"file": "raw.dat", "format": "caserec anime table"},
            "paper_table1": {"users": "73.5k", "items": "12.2k", "interactions": "1.0M"},
        }))  # fmt: skip
        return str(d / f"{name}.txt")

    small = prepared("anime", 4566, 5128, 514935)
    full = prepared("full", 73460, 12240, 1049999)  # 73.5k / 12.2k / 1.0M
    alone = tmp_path / "alone.txt"  # no stats.json: nothing to say
    alone.write_text("1 1 2 3\n")
    got = tables._data_lines([small, full, str(alone), "ml-1m"])
    assert len(got) == 2
    assert got[0].startswith(f"- data {small}: made by `data_prep` from raw.dat")
    assert "4,566 users, 5,128 items, 514,935 interactions" in got[0]
    assert "73.5k / 12.2k / 1.0M; this is a stand-in" in got[0]
    assert "(users, items, interactions differ)" in got[0]
    assert got[1].endswith("73.5k / 12.2k / 1.0M; the same counts")

    # the manifest keeps the description, so the table says it without the
    # data beside it (a fresh checkout); the block's heading says it too
    path = reproduce.write_manifest(tmp_path / "t", "2", [(small, Config(), "c")],
                                    budget="gpu", seeds=[0], command="c")  # fmt: skip
    known = json.loads(open(path).read())["data"]
    assert list(known) == [small]
    os.remove(os.path.join(os.path.dirname(small), "stats.json"))
    assert tables._data_lines([small]) == []
    assert tables._data_lines([small], known) == got[:1]
    write_fake_cells(tmp_path / "fake")
    info = json.loads((tmp_path / "fake" / "table2.json").read_text())
    info["data"] = {"toy": known[small]}
    (tmp_path / "fake" / "table2.json").write_text(json.dumps(info))
    md = open(tables.render(tmp_path / "fake", "2", tmp_path / "out")[0]).read()
    assert "## toy / sasrec (a stand-in, not the paper's data)" in md
    assert "- data toy: made by `data_prep` from raw.dat" in md


def test_a_table_without_finished_cells_says_so(tmp_path):
    write_fake_cells(tmp_path)
    for cell in (tmp_path / "cells").iterdir():
        (cell / "results.json").unlink()
    md = open(tables.render(tmp_path, "2", tmp_path / "out")[0]).read()
    assert "(patience and epoch cap: no cell has finished)" in md
    assert "None" not in md and "Hardware: –." in md


def test_a_cell_cut_while_improving_is_marked(tmp_path):
    write_fake_cells(tmp_path)
    path = tmp_path / "cells" / "add-2-scores" / "results.json"
    res = json.loads(path.read_text())
    res["best_epoch"] = [30, 45]  # patience 20: seed 1 still within it at 60
    path.write_text(json.dumps(res))
    md_path, sum_path = tables.render(tmp_path, "2", tmp_path / "out")
    add = json.loads(open(sum_path).read())[1]
    assert add["cut_seeds"] == [1]
    md = open(md_path).read()
    assert "| 60 / 30, 45 † |" in md and "no conclusion rests on these" in md


def test_the_rule_table_is_rendered_beside_the_longer_run(tmp_path):
    """Cells trained with report_patience=20 give a second table from their
    rule block and test_ranks_rule.npy; seeds stop apart under the rule."""
    write_fake_cells(tmp_path)
    for mech, ranks in RANKS.items():
        cell = tmp_path / "cells" / f"{mech}-2-scores"
        res = json.loads((cell / "results.json").read_text())
        res["rule"] = dict(patience=20, epochs_run=[51, 60], best_epoch=[30, 45],
                           valid=res["valid"], test=res["test"])  # fmt: skip
        (cell / "results.json").write_text(json.dumps(res))
        np.save(cell / "test_ranks_rule.npy", (ranks + 1).astype(np.int32))
    paths = tables.render(tmp_path, "2", tmp_path / "out")
    assert [p.rsplit("/", 1)[1] for p in paths] == [
        "table2.md", "table2_summary.json",
        "table2_patience20.md", "table2_patience20_summary.json"]  # fmt: skip
    main, rule = (json.loads(open(p).read()) for p in paths[1::2])
    seeds_add = ndcg5(RANKS["add"] + 1).mean(1)  # from the rule's ranks
    assert rule[1]["per_seed"]["1"]["NDCG@5"] == pytest.approx(seeds_add[1], rel=1e-5)
    assert main[1]["per_seed"]["1"]["NDCG@5"] == pytest.approx(
        ndcg5(RANKS["add"]).mean(1)[1], rel=1e-5
    )
    # seed 1: best 45 + patience 20 >= 60, its stop: cut; seed 0 stopped at 51
    assert rule[1]["cut_seeds"] == [1] and main[1]["cut_seeds"] == []
    md = open(paths[2]).read()
    assert "| 51, 60 / 30, 45 † |" in md
    assert "The same trainings as table2.md (patience 20)" in md
    assert "patience 20, at most 200 epochs" in md


def test_several_result_folders_render_as_one_table(tmp_path):
    write_fake_cells(tmp_path / "a")
    write_fake_cells(tmp_path / "b")
    info = json.loads((tmp_path / "b" / "table2.json").read_text())
    for e in info["entries"]:
        e["dataset"] = "toy2"
    info["commands"] = ["cmd2"]
    info["search"] = {"toy2 / sasrec": "stage 1 (4 configs)"}
    (tmp_path / "b" / "table2.json").write_text(json.dumps(info))
    for cfg in (tmp_path / "b" / "cells").glob("*/config.json"):  # a higher cap
        ident = json.loads(cfg.read_text())
        ident["config"]["epochs"] = 1000
        cfg.write_text(json.dumps(ident))
    dirs = f"{tmp_path / 'a'},{tmp_path / 'b'}"
    md_path, sum_path = tables.render(dirs, "2", tmp_path / "out")
    rows = json.loads(open(sum_path).read())
    assert [(r["dataset"], r["mech"]) for r in rows] == [
        ("toy", "none"), ("toy", "add"), ("toy2", "none"), ("toy2", "add")]  # fmt: skip
    assert rows[3]["p"] == rows[1]["p"]  # the same cells, paired within each
    md = open(md_path).read()
    assert "## toy / sasrec" in md and "## toy2 / sasrec" in md
    assert "first run (a later one resumes or adds cells):\n- `cmd`\n- `cmd2`\n" in md
    assert "Budget `smoke`, seeds [0, 1]. Hardware: cpu (cpu, jax x)." in md
    assert "(patience 20, at most 200/1000 epochs)" in md
    assert "\n- search toy2 / sasrec: stage 1 (4 configs)\n" in md
    twice = f"{tmp_path / 'a'},{tmp_path / 'b'},{tmp_path / 'a'}"  # a row twice
    for make in (lambda: tables.render(twice, "2", tmp_path / "x"),
                 lambda: figures._panels(twice)):  # fmt: skip
        with pytest.raises(ValueError, match=r"toy / sasrec / none / 2 / scores: "
                           r"a cell of both .*a and .*a; give one"):  # fmt: skip
            make()
    assert not (tmp_path / "x").exists()


def test_status_reads_each_cell_without_training(tmp_path):
    write_fake_cells(tmp_path)
    (tmp_path / "cells" / "add-2-scores" / "results.json").unlink()  # unfinished
    info = json.loads((tmp_path / "table2.json").read_text())
    info["entries"].append(dict(info["entries"][0], mech="value", cell="cells/v"))
    (tmp_path / "table2.json").write_text(json.dumps(info))
    lines = tables.progress(str(tmp_path), "2")
    # metrics: valid NDCG@5 = 0.01 * epoch + member over epochs 0..59 (patience 20)
    assert lines[2:] == [
        "| toy | sasrec | none | 2 | done | 60 | 0.0 | 0.5900 1.5900 | 59 59 | 0 0 | 0/2 |",
        "| toy | sasrec | value | 2 | not started | 0 | 0.0 | – | – | – | – |",
        "| toy | sasrec | add | 2 | unfinished | 60 | 0.0 | 0.5900 1.5900 | 59 59 | 0 0 | 0/2 |",
    ]  # fmt: skip


def test_cell_hours_count_each_seed_run_and_an_ensemble_epoch_once(tmp_path):
    def run(d, seeds, rows):
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"config": {}, "seeds": seeds}))
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def rows(members, seconds):  # two epochs, each timed 10 s + 2 s
        return [{"epoch": e, "member": m, "seconds": seconds, "eval_seconds": 2.0}
                for e in (0, 1) for m in members]  # fmt: skip

    ensemble = tmp_path / "ensemble"  # two members trained together
    run(ensemble, [0, 1], rows([0, 1], 10.0))
    assert tables.cell_progress(str(ensemble))["hours"] * 3600 == 24.0
    merged = tmp_path / "merged"  # written from two seed runs, one after the other
    run(merged, [0, 1], rows([0, 1], 10.0))
    for s in (0, 1):
        run(merged / f"seed-{s}", [s], rows([0], 10.0))
    assert tables.cell_progress(str(merged))["hours"] * 3600 == 48.0
    (merged / "seed-1" / "config.json").unlink()  # not every seed run there
    assert tables.cell_progress(str(merged))["hours"] * 3600 == 24.0


def test_render_table3_and_refine(tmp_path):
    specs = [(m, n, "scores", r + n - 1) for n in (1, 2) for m, r in RANKS.items()]
    write_fake_cells(tmp_path, "3", specs)
    md_path, sum_path = tables.render(tmp_path, "3", tmp_path)
    rows = json.loads(open(sum_path).read())
    assert [(r["mech"], r["layers"]) for r in rows] == [
        ("none", 1), ("none", 2), ("add", 1), ("add", 2)]  # fmt: skip
    deeper = ndcg5(RANKS["add"] + 1).mean()
    assert rows[3]["mean"]["NDCG@5"] == pytest.approx(deeper, rel=1e-5)
    assert rows[0].get("seed_test") is None
    assert rows[3]["seed_test"]["NDCG@5"]["n"] == 2
    assert "| toy | sasrec | add | " in open(md_path).read()
    # every seed ranks every target 5 places lower: significantly lower
    top = np.array([[1, 1, 2, 1, 1, 3], [1, 2, 1, 1, 3, 1]])
    write_fake_cells(tmp_path / "low", "3", [("none", 1, "scores", top),
                                             ("value", 1, "scores", top + 5)])  # fmt: skip
    md = open(tables.render(tmp_path / "low", "3", tmp_path / "low")[0]).read()
    assert "| toy | sasrec | value | 0.0000 ± 0.0000** (lower) |" in md
    specs = [("add", 2, "scores", RANKS["none"]), ("add", 2, "probs", RANKS["add"])]
    write_fake_cells(tmp_path / "ab", "refine", specs)
    _, sum_path = tables.render(tmp_path / "ab", "refine", tmp_path / "ab")
    (row,) = json.loads(open(sum_path).read())
    imp = row["seed_test"]["NDCG@5"]["improvement_pct"]
    want = 100 * (ndcg5(RANKS["add"]).mean() / ndcg5(RANKS["none"]).mean() - 1)
    assert imp == pytest.approx(want, rel=1e-4)


def test_figure_helpers():
    ranks = np.array([[1, 3], [2, 30]])
    want = [np.mean(np.where(ranks <= n, 1 / np.log2(ranks + 1), 0)) for n in (1, 2, 3)]
    np.testing.assert_allclose(analysis.ndcg_at(ranks, (1, 2, 3)), want, rtol=1e-6)
    seq = np.array([0, 0, 5, 6])
    tail = figures.masked_tail(np.ones((4, 4)), seq, last=3)
    assert np.isnan(tail[0]).all()  # query at a padded position
    # Padded key column, then the causal mask above the diagonal.
    assert np.isnan(tail[1:]).tolist() == [[True, False, True], [True, False, False]]
    recs = [{"epoch": e, "member": 0, "grad_norm": float(e)} for e in range(80)]
    x, y = figures.grad_tail(recs)
    assert x.tolist() == list(range(-49, 1)) and y[-1] == 79.0
    recs = [{"epoch": 0, "member": m, "valid": {"NDCG@5": m}} for m in (0, 1)]
    assert figures.valid_curve(recs)[1].tolist() == [0.5]


def test_best_validation_by_epoch_by_hand():
    recs = [{"epoch": e, "member": 0, "valid": {"NDCG@5": v}}
            for e, v in enumerate([0.1, 0.3, 0.2, 0.25])]  # fmt: skip
    recs += [{"epoch": e, "member": 1, "valid": {"NDCG@5": v}}
             for e, v in enumerate([0.05, 0.04])]  # stopped after epoch 1  # fmt: skip
    recs += [{"epoch": 5, "member": 2, "valid": {"NDCG@5": 0.5}}]  # first at epoch 5
    got = figures.best_by_epoch(recs, epochs=(1, 2, 3, 10))
    np.testing.assert_array_equal(got, [[0.1, 0.3, 0.3, 0.3],
                                        [0.05, 0.05, 0.05, 0.05],
                                        [np.nan, np.nan, np.nan, 0.5]])  # fmt: skip


def test_valid_by_epoch_pairs_seeds_against_original(tmp_path):
    write_fake_cells(tmp_path)  # valid NDCG@5 = 0.01 epoch + member, epochs 0-59
    recs = results.read_metrics(tmp_path / "cells" / "add-2-scores")
    for r in recs:  # add: seed 0 0.02 above Original's, seed 1 0.04 above
        r["valid"]["NDCG@5"] += 0.02 * (r["member"] + 1)
    files.write_lines(tmp_path / "cells" / "add-2-scores" / "metrics.jsonl", recs)
    lines = figures.valid_by_epoch(figures._panels(tmp_path))
    # before epoch 10: Original .09 and 1.09, add .11 and 1.13 (+5.1% of the
    # means); differences .02 and .04: t = 3 on 1 df, p = 0.205 at every
    # epoch (after 59 each seed keeps its last value), Holm over 5 epochs: 1
    assert ("| 10 | 0.5900 ± 0.7071 | 0.6200 ± 0.7212 (+5.1%, p 0.205, Holm 1.000) |"
            in lines)  # fmt: skip
    assert lines[-2].startswith("| 200 | 1.0900 ± 0.7071 | 1.1200 ± 0.7212 (+2.8%")


def test_make_figures_and_complexity_from_results(tmp_path):
    # add's cell listed first (as when another command trained it): the
    # manifest is read back in the paper's order
    write_fake_cells(
        tmp_path, specs=[(m, 2, "scores", RANKS[m]) for m in ("add", "none")]
    )
    paths = figures.make_figures(tmp_path, tmp_path / "fig", mech="add")
    assert [p.rsplit("/", 1)[1] for p in paths] == [
        "fig2_ndcg_at_n.png", "fig3_attention.png", "fig4_valid_by_epoch.md",
        "fig4_valid_ndcg.png", "fig5_grad_norm.png"]  # fmt: skip
    pngs = [p for p in paths if p.endswith(".png")]
    assert all(open(p, "rb").read(4) == b"\x89PNG" for p in pngs)
    rows = complexity.from_results(tmp_path)
    assert [(r["mech"], r["refine_params"], r["members"]) for r in rows] == [
        ("none", 0, 2), ("add", 512, 2)]  # fmt: skip
    md = complexity.markdown(rows, "cpu")
    assert (
        "| toy | sasrec | add | 16 | 2 | 100 | 512 | +0.0% | 2 | 0.5000 | 1.00x |" in md
    )


def test_figures_from_several_folders_skip_figure3_until_its_cells_finish(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_fake_cells(a)  # none and add
    write_fake_cells(b, specs=[("none", 2, "scores", RANKS["none"])])
    log = io.StringIO()
    paths = figures.make_figures(b, tmp_path / "fig", log=log)
    assert [p.rsplit("/", 1)[1] for p in paths] == [
        "fig2_ndcg_at_n.png", "fig4_valid_by_epoch.md", "fig4_valid_ndcg.png",
        "fig5_grad_norm.png"]  # fmt: skip
    assert log.getvalue() == (
        "Figure 3 needs finished none and add cells for ('toy', 'sasrec'): skipped\n"
    )
    with pytest.raises(ValueError, match="Figure 3 needs finished none and add"):
        figures.make_figures(b, tmp_path / "fig", dataset="toy", backbone="sasrec")
    with pytest.raises(ValueError, match="toy / sasrec / none / 2 / scores: a cell of"):
        figures._panels(f"{b},{a}")  # one row in two folders would be drawn twice
    info = json.loads((b / "table2.json").read_text())
    for e in info["entries"]:
        e["dataset"] = "toy2"
    (b / "table2.json").write_text(json.dumps(info))
    panels = figures._panels(f"{b},{a}")  # both folders' cells, by their own paths
    assert [e["cell"] for e, _ in panels[("toy2", "sasrec")]] == [
        str(b / "cells" / "none-2-scores")]  # fmt: skip
    assert [e["cell"] for e, _ in panels[("toy", "sasrec")]] == [
        str(a / "cells" / "none-2-scores"), str(a / "cells" / "add-2-scores")]  # fmt: skip
    assert len(figures.make_figures([a, b], tmp_path / "fig2")) == 5


def test_param_counts_from_shapes():
    cfg = Config(hidden=8, max_len=6, layers=2, mech="add")
    got = analysis.param_shapes(cfg, num_items=20)
    refine = 2 * 6 * 6  # W_RQ and W_RK, n x n, per layer
    # LayerNorms 2x8, q/k/v and two FFN denses 8x8 + 8, refinement matrices.
    block = 2 * 16 + 5 * (64 + 8) + refine
    embeddings = 21 * 8 + 6 * 8  # items (with padding id 0) and positions
    assert got == {"params": embeddings + 2 * block + 16, "refine_params": 2 * refine}


@pytest.mark.slow
def test_smoke_pipeline_end_to_end(tmp_path):
    """Real training on tiny data: Table 2 cells, resume, tables, figures."""
    b = reproduce.BUDGETS["smoke"]
    entries = reproduce.table_entries("2", ["smoke"], ["sasrec"], "smoke",
                                      mechs=["none", "add"])  # fmt: skip
    kw = dict(seeds=[0, 1], epochs=b["epochs"], patience=b["patience"], budget="smoke")
    reproduce.run_table("2", entries, str(tmp_path), **kw)
    cells = sorted((tmp_path / "cells").iterdir())
    assert len(cells) == 2
    res = json.loads((cells[0] / "results.json").read_text())
    assert res["status"] == "ok" and len(res["test"]) == 2
    ranks = np.load(cells[0] / "test_ranks.npy", allow_pickle=False)
    assert ranks.shape[0] == 2 and ranks.min() >= 1
    att = np.load(cells[0] / "attention.npz")
    assert att["A"].shape == (1, 1, 10, 10)
    stamp = (cells[0] / "results.json").stat().st_mtime_ns
    reproduce.run_table("2", entries, str(tmp_path), **kw)  # resumes: no retraining
    assert (cells[0] / "results.json").stat().st_mtime_ns == stamp
    md_path, _ = tables.render(tmp_path, "2", tmp_path)
    assert "## smoke / sasrec" in open(md_path).read()
    assert len(figures.make_figures(tmp_path, tmp_path / "fig")) == 5


def test_cell_minutes_ends_a_cell_after_its_first_epoch(tmp_path):
    """A cell past its time limit stops training (test metrics at the best
    epoch so far) and the table row says so; another cell runs to its cap."""
    entries = reproduce.table_entries("2", ["smoke"], ["sasrec"], "smoke",
                                      mechs=["none"])  # fmt: skip
    kw = dict(seeds=[0], epochs=3, patience=3, budget="smoke")
    reproduce.run_table("2", entries, str(tmp_path), cell_minutes=0, **kw)
    (cell,) = (tmp_path / "cells").iterdir()
    res = json.loads((cell / "results.json").read_text())
    assert res["stopped"] == "max_minutes" and res["epochs_run"] == 1
    assert res["best_epoch"] == 0 and res["status"] == "ok"
    epochs = [json.loads(x)["epoch"] for x in open(cell / "metrics.jsonl")]
    assert epochs == [0]
    md = open(tables.render(tmp_path, "2", tmp_path)[0]).read()
    assert "| 1 / 0 † |" in md
    (row,) = tables.progress(str(tmp_path), "2")[2:]
    assert row.startswith("| smoke | sasrec | none | 1 | unfinished | 1 | ")
    assert (
        "no conclusion rests on these cells: smoke / sasrec / none, 1 layer(s), "
        "scores (seeds [0], 1 epochs)." in md
    )
    # The same command later goes on from the cell's checkpoint to its cap.
    reproduce.run_table("2", entries, str(tmp_path), **kw)
    res = json.loads((cell / "results.json").read_text())
    assert res["epochs_run"] == 3 and "stopped" not in res
    assert [json.loads(x)["epoch"] for x in open(cell / "metrics.jsonl")] == [0, 1, 2]
    (row,) = tables.progress(str(tmp_path), "2")[2:]
    assert row.startswith("| smoke | sasrec | none | 1 | done | 3 | ")
    done = {"epochs_run": 30, "best_epoch": [2, 1], "seeds": [0, 1],
            "config": {"patience": 3, "eval_every": 1}}  # fmt: skip
    assert tables._epochs(done) == "30 / 2, 1"
    # Under a rule the seeds stop apart: each seed's epochs beside its best.
    done |= {"epochs_run": [115, 100], "best_epoch": [94, 79]}
    assert tables._epochs(done) == "115, 100 / 94, 79"


SIGTERM_AFTER_FIRST_SAVE = """
import os, signal, sys
from absl import app
from awrsr_jax import checkpoint
import experiments.{module} as mod
real = checkpoint.Store.save
def save(self, loop, meta):
    real(self, loop, meta)
    os.kill(os.getpid(), signal.SIGTERM)
checkpoint.Store.save = save
mod.define_flags()
sys.argv = ["x", *{args!r}]
app.run(mod.main)
"""


@pytest.mark.parametrize(
    "module, args",
    [
        ("reproduce", ["--budget=smoke", "--mechs=none", "--seeds=1", "--epochs=2"]),
        pytest.param(
            "grid", ["--budget=smoke", "--set=epochs=2"], marks=pytest.mark.slow
        ),
    ],
)
def test_sigterm_stops_a_chain_of_runs_with_143_and_no_traceback(
    tmp_path, module, args
):
    """A SIGTERM'd grid or table exits 143 (a script chaining commands stops)
    saying how to resume, and the same command then goes on."""
    args = [*args, f"--out={tmp_path}"]
    code = SIGTERM_AFTER_FIRST_SAVE.format(module=module, args=args)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    assert r.returncode == 143, r.stderr
    assert "run the same command again to resume" in r.stderr
    assert "Traceback" not in r.stderr
    if module == "grid":  # (resuming a table's cell: test_cell_minutes_...)
        r = run_module(f"experiments.{module}", *args)
        assert r.returncode == 0, r.stderr


def test_checkpoint_every_spaces_the_saves_of_a_cell(tmp_path, monkeypatch):
    """--checkpoint_every=2 saves a 3-epoch cell after epochs 2 and 3 (the
    last), not after each; 0 is refused before anything is written."""
    from awrsr_jax import checkpoint

    saved, real = [], checkpoint.Store.save
    monkeypatch.setattr(checkpoint.Store, "save",
                        lambda self, lp, meta: saved.append(int(lp.epoch)) or real(self, lp, meta))  # fmt: skip
    (none,) = reproduce.table_entries("2", ["smoke"], ["sasrec"], "smoke",
                                      mechs=["none"])  # fmt: skip
    reproduce.run_table("2", [none], str(tmp_path / "t"), seeds=[0], epochs=3,
                        patience=9, budget="smoke", checkpoint_every=2)  # fmt: skip
    assert saved == [2, 3]
    r = run_module("experiments.reproduce", "--budget=smoke", "--checkpoint_every=0",
                   f"--out={tmp_path / 'r'}")  # fmt: skip
    assert r.returncode != 0 and "error: --checkpoint_every=0: must be >= 1" in r.stderr
    assert not (tmp_path / "r").exists()


def test_time_sliced_cells_train_least_trained_first(tmp_path):
    """With --cell_minutes each command starts with the cell that has trained
    the fewest hours, so a later cell is not starved by restarts."""
    none, add = reproduce.table_entries("2", ["smoke"], ["sasrec"], "smoke",
                                        mechs=["none", "add"])  # fmt: skip
    kw = dict(seeds=[0], epochs=3, patience=3, budget="smoke", cell_minutes=0)
    reproduce.run_table("2", [none], str(tmp_path), **kw)  # none: one epoch
    log = io.StringIO()
    reproduce.run_table("2", [none, add], str(tmp_path), log=log, **kw)
    order = [x.split("training ")[1].split("-")[2] for x in log.getvalue().splitlines()
             if "] training " in x]  # fmt: skip
    assert order == ["add", "none"]
    rows = tables.progress(str(tmp_path), "2")[2:]  # the manifest's order
    assert [r.split(" | ")[2] for r in rows] == ["none", "add"]
    assert [r.split(" | ")[5] for r in rows] == ["2", "1"]


def test_seed_runs_write_the_cell_the_ensemble_writes(tmp_path):
    """--seed_runs trains each seed alone, then writes the cell from them:
    the ensemble's members (to rounding), ranks, rule and curves. A time
    limit leaves the cell unfinished, a finished seed is not retrained."""
    from awrsr_jax import results

    (none,) = reproduce.table_entries("2", ["smoke"], ["sasrec"], "smoke",
                                      mechs=["none"])  # fmt: skip
    kw = dict(seeds=[0, 1], epochs=3, patience=3, report_patience=1, budget="smoke")
    whole, split = tmp_path / "whole", tmp_path / "split"
    reproduce.run_table("2", [none], str(whole), **kw)
    reproduce.run_table("2", [none], str(split), seed_runs=True, cell_minutes=0, **kw)
    (cell,) = (split / "cells").iterdir()
    assert sorted(p.name for p in cell.iterdir()) == ["seed-0"]
    (row,) = tables.progress(str(split), "2")[2:]
    assert row.startswith("| smoke | sasrec | none | 1 | unfinished | 1 | ")
    reproduce.run_table("2", [none], str(split), seed_runs=True, **kw)  # goes on
    (a,), (b,) = (list((d / "cells").iterdir()) for d in (whole, split))
    a, b = results.read_run(a), results.read_run(b)
    assert b["config"]["seeds"] == [0, 1] and b["results"]["status"] == "ok"
    assert b["results"]["cpus"] == len(os.sched_getaffinity(0))  # the hardware
    assert b["results"]["epochs_run"] == [3, 3] and a["results"]["epochs_run"] == 3
    assert b["results"]["best_epoch"] == a["results"]["best_epoch"]
    for k in ("best_epoch", "epochs_run", "patience"):
        assert b["results"]["rule"][k] == a["results"]["rule"][k]
    for x, y in zip(a["results"]["test"], b["results"]["test"], strict=True):
        assert x == pytest.approx(y, abs=1e-6)
    np.testing.assert_array_equal(a["ranks"], b["ranks"])
    np.testing.assert_array_equal(a["rule_ranks"], b["rule_ranks"])
    curves = [(r["member"], r["epoch"]) for r in results.read_metrics(b["dir"])]
    assert curves == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    (row,) = tables.progress(str(split), "2")[2:]
    assert row.startswith("| smoke | sasrec | none | 1 | done | 3 | ")
    assert "## smoke / sasrec" in open(tables.render(split, "2", split)[0]).read()

    other = tmp_path / "other"  # another config is refused, naming the run
    (other / "seed-1").mkdir(parents=True)
    for f in (cell / "seed-1").iterdir():
        if f.is_file():
            (other / "seed-1" / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((other / "seed-1" / "config.json").read_text())
    cfg["config"]["lr"] *= 2
    (other / "seed-1" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="seed-1: another run than"):
        results.merge_runs([cell / "seed-0", other / "seed-1"], tmp_path / "m")
    with pytest.raises(ValueError, match="repeat"):
        results.merge_runs([cell / "seed-0", cell / "seed-0"], tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_a_seed_another_command_trains_is_left_to_it(tmp_path):
    """Two commands on one table share a cell's seeds: a seed whose workdir
    another run holds is skipped (the others train), the cell is not written
    until every seed has finished, and the command that finishes the last
    one writes it."""
    from awrsr_jax import files

    (none,) = reproduce.table_entries("2", ["smoke"], ["sasrec"], "smoke",
                                      mechs=["none"])  # fmt: skip
    kw = dict(seeds=[0, 1], epochs=2, patience=2, budget="smoke", seed_runs=True)
    reproduce.run_table("2", [none], str(tmp_path), cell_minutes=0, **kw)
    (cell,) = (tmp_path / "cells").iterdir()  # seed 0 started, then stopped
    log = io.StringIO()
    with files.WorkdirLock(cell / "seed-0"):  # the other command's seed
        reproduce.run_table("2", [none], str(tmp_path), log=log, **kw)
    assert "left to the other run" in log.getvalue()
    assert results.is_finished(cell / "seed-1")
    assert not results.is_finished(cell / "seed-0")  # stopped by the time limit
    assert not (cell / "results.json").exists()
    reproduce.run_table("2", [none], str(tmp_path), **kw)  # the other one ends
    res = json.loads((cell / "results.json").read_text())
    assert res["status"] == "ok" and res["epochs_run"] == [2, 2]


def test_a_raised_cap_continues_the_seed_runs(tmp_path):
    """A seed run ended by the epoch cap goes on under a raised cap in the new
    cell (from its checkpoint), and gives the run a higher cap gives at once."""
    from awrsr_jax import results

    (none,) = reproduce.table_entries("2", ["smoke"], ["sasrec"], "smoke",
                                      mechs=["none"])  # fmt: skip
    kw = dict(seeds=[0], patience=5, budget="smoke", seed_runs=True)
    reproduce.run_table("2", [none], str(tmp_path / "a"), epochs=2, **kw)
    log = io.StringIO()
    reproduce.run_table("2", [none], str(tmp_path / "a"), epochs=4, log=log, **kw)
    assert "continues " in log.getvalue() and "epochs: 2 -> 4" in log.getvalue()
    reproduce.run_table("2", [none], str(tmp_path / "b"), epochs=4, **kw)
    (a,) = [c for c in (tmp_path / "a" / "cells").iterdir()
            if results.read_run(c)["config"]["config"]["epochs"] == 4]  # fmt: skip
    (b,) = (tmp_path / "b" / "cells").iterdir()
    a, b = results.read_run(a), results.read_run(b)
    assert a["results"]["epochs_run"] == b["results"]["epochs_run"] == [4]
    np.testing.assert_array_equal(a["ranks"], b["ranks"])
    epochs = [r["epoch"] for r in results.read_metrics(a["dir"]) if "epoch" in r]
    assert epochs == [0, 1, 2, 3]


def test_a_raised_cap_keeps_seed_runs_their_patience_ended(tmp_path):
    """A seed run its patience ended below the cap is the run a higher cap
    gives: under a raised cap it stands as it is, without its checkpoints
    too (committed runs have none), and nothing trains; a run the cap cut
    has to go on, and without a checkpoint it trains again from epoch 0."""
    from awrsr_jax import results

    (none,) = reproduce.table_entries("2", ["smoke"], ["sasrec"], "smoke",
                                      mechs=["none"])  # fmt: skip
    kw = dict(seeds=[0], patience=1, budget="smoke", seed_runs=True)
    reproduce.run_table("2", [none], str(tmp_path / "a"), epochs=30, **kw)
    (old,) = (tmp_path / "a" / "cells").iterdir()
    before = results.read_run(old / "seed-0")
    assert before["results"]["epochs_run"] < 30  # its patience ended it
    shutil.rmtree(old / "seed-0" / "checkpoints")
    log = io.StringIO()
    reproduce.run_table("2", [none], str(tmp_path / "a"), epochs=60, log=log, **kw)
    assert f"stands for {old} (epochs: 30 -> 60)" in log.getvalue()  # the cell
    assert "  seed 0" not in log.getvalue()
    (new,) = [c for c in (tmp_path / "a" / "cells").iterdir() if c != old]
    after = results.read_run(new / "seed-0")
    assert after["config"]["config"]["epochs"] == 60
    assert results.read_run(new)["config"]["config"]["epochs"] == 60
    assert not (new / "seed-0" / "checkpoints").exists()
    assert after["results"] == before["results"]
    np.testing.assert_array_equal(after["ranks"], before["ranks"])
    assert results.read_run(new)["results"]["epochs_run"] == [
        before["results"]["epochs_run"]
    ]
    # Cut by the cap, its checkpoints gone: trained again, not refused.
    kw = dict(kw, patience=5)
    reproduce.run_table("2", [none], str(tmp_path / "b"), epochs=2, **kw)
    (cut,) = (tmp_path / "b" / "cells").iterdir()
    shutil.rmtree(cut / "seed-0" / "checkpoints")
    log = io.StringIO()
    reproduce.run_table("2", [none], str(tmp_path / "b"), epochs=3, log=log, **kw)
    assert "continues" not in log.getvalue() and "  seed 0" in log.getvalue()
    (new,) = [c for c in (tmp_path / "b" / "cells").iterdir() if c != cut]
    epochs = [r["epoch"] for r in results.read_metrics(new / "seed-0") if "epoch" in r]
    assert epochs == [0, 1, 2]


def test_a_bad_report_patience_is_refused_before_the_manifest(tmp_path):
    entries = reproduce.table_entries("2", ["smoke"], ["sasrec"], "smoke",
                                      mechs=["none"])  # fmt: skip
    with pytest.raises(ValueError, match=r"--report_patience=3: "):
        reproduce.run_table("2", entries, str(tmp_path), seeds=[0], epochs=2,
                            patience=3, report_patience=3)  # fmt: skip
    assert not (tmp_path / "table2.json").exists()


def test_a_raised_patience_continues_the_table_cells(tmp_path):
    """A table run again with a larger patience (and a rule at the old one)
    continues its cells from their checkpoints instead of starting over."""
    entries = reproduce.table_entries("2", ["smoke"], ["sasrec"], "smoke",
                                      mechs=["none"])  # fmt: skip
    kw = dict(seeds=[0, 1], budget="smoke")
    reproduce.run_table("2", entries, str(tmp_path), epochs=2, patience=3, **kw)
    (old,) = (tmp_path / "cells").iterdir()
    log = io.StringIO()
    reproduce.run_table("2", entries, str(tmp_path), epochs=4, patience=5,
                        report_patience=3, log=log, **kw)  # fmt: skip
    new = next(c for c in (tmp_path / "cells").iterdir() if c != old)
    assert f"continues {old} (epochs: 2 -> 4, patience: 3 -> 5, " in log.getvalue()
    assert "resumed at epoch 2" in log.getvalue()
    first = [json.loads(x) for x in open(old / "metrics.jsonl")]
    went_on = [json.loads(x) for x in open(new / "metrics.jsonl")]
    assert went_on[: len(first)] == first and went_on[-1]["epoch"] == 3
    res = json.loads((new / "results.json").read_text())
    assert res["epochs_run"] == 4 and res["rule"]["patience"] == 3
    assert json.loads((old / "results.json").read_text())["epochs_run"] == 2


def test_bench_ensemble_split_hand_numbers():
    from experiments.bench import ensemble_split

    # t(M) = o + w M with o = w = 0.5: t(1) = 1, t(4) = 2.5.
    assert ensemble_split(4, 1.0, 2.5) == {
        "speedup_vs_sequential": 1.6,
        "shared_share": 0.5,
    }
    # The H200 figures of results/gpu_2026-11-27.md: t(1) 0.0607 s, t(5) 0.204 s.
    assert ensemble_split(5, 0.0607, 0.204) == {
        "speedup_vs_sequential": 1.49,
        "shared_share": 0.41,
    }
    # A ratio of 10 at 16 members is a share of 0.96: o = 24 w.
    assert ensemble_split(16, 25.0, 40.0)["speedup_vs_sequential"] == 10.0
    assert ensemble_split(16, 25.0, 40.0)["shared_share"] == 0.96


@pytest.mark.parametrize(
    "only",
    [
        "sasrec-value",
        pytest.param("", marks=pytest.mark.slow),  # every quick case
    ],
)
def test_bench_quick_prints_one_json_line_per_case(only):

    out = run_module("experiments.bench", "--quick", "--epochs=1", f"--only={only}")
    assert out.returncode == 0, out.stderr[-2000:]
    recs = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    want = ["sasrec-none", "sasrec-value", "stosa-stoc"]
    assert [r["case"] for r in recs] == ([only] if only else want)
    for r in recs:
        assert r["sec_per_epoch"] > 0 and r["eval_s"] > 0 and r["compile_s"] > 0
        assert r["seq_per_s"] == pytest.approx(
            r["users"] / r["sec_per_epoch"], rel=1e-3
        )
        # The auto row-group size: 16 on the CPU where >= 20% of positions pad.
        auto = train_lib.trim_rows(Config())
        assert 0 < r["fill"] < 1 and r["ensemble"] == 1
        assert r["trim_rows"] == (auto if r["fill"] <= train_lib.TRIM_MAX_FILL else 0)
        assert math.isfinite(r["loss"])


def test_a_dataset_path_never_puts_cells_outside_out(tmp_path):
    from awrsr_jax.data import generate, write_sequences

    data_dir, out = tmp_path / "data", tmp_path / "out"
    data_dir.mkdir()
    write_sequences(data_dir / "mine.txt", generate(num_users=30, num_items=20,
                                                    min_len=3, max_len=8, seed=2))  # fmt: skip
    path = str(data_dir / "mine.txt")
    entries = reproduce.table_entries("2", [path], ["sasrec"], "smoke", mechs=["none"])
    reproduce.run_table("2", entries, str(out), seeds=[0], epochs=1, patience=1,
                        budget="smoke")  # fmt: skip
    assert sorted(p.name for p in data_dir.iterdir()) == ["mine.txt"]
    (cell,) = (out / "cells").iterdir()
    assert cell.name.startswith("mine.txt-sasrec-none-L1-scores-")
    assert (cell / "results.json").exists()
