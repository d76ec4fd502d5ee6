"""Search spaces, hashes and shape groups; result tables, cells and dataset names."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from awrsr_jax import datasets, results, search
from awrsr_jax.config import Config


def test_paper_space_size_and_dropped_heads():
    space = search.load_space("paper", "sasrec")
    assert space["hidden"] == [64, 128] and space["max_len"] == [20, 30, 50, 100]
    assert search.load_space("paper", "stosa")["hidden"] == [32, 64]
    configs, dropped = search.expand(Config(), space)
    full = 2 * 4 * 2 * 3 * 3 * 4 * 4
    # 3 heads divide neither 64 nor 128: a quarter of the product is dropped.
    assert len(configs) == full * 3 // 4 and len(dropped) == full // 4
    assert all("--hidden" in d for d in dropped)
    assert {c.heads for c in configs} == {1, 2, 4}


def test_space_from_json_file(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(
        json.dumps({"stosa": {"lr": [1e-3, 1e-4]}, "sasrec": {"l2": [0.1]}})
    )
    assert search.load_space(str(path), "stosa") == {"lr": [1e-3, 1e-4]}
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"dropout": [0.1, 0.2]}))
    assert search.load_space(str(flat), "sasrec") == {"dropout": [0.1, 0.2]}
    flat.write_text(json.dumps({"dropot": [0.1]}))
    with pytest.raises(ValueError, match="dropot"):
        search.load_space(str(flat), "sasrec")
    with pytest.raises(ValueError, match="not one of"):
        search.load_space(str(tmp_path / "missing.json"), "sasrec")


def test_config_hash_is_stable_and_sensitive():
    h = search.config_hash(Config(), "abc")
    assert h == search.config_hash(Config(), "abc") and len(h) == 16
    assert int(h, 16) >= 0
    assert h != search.config_hash(Config(lr=1e-4), "abc")
    assert h != search.config_hash(Config(), "abd")
    assert h != search.config_hash(Config(), "abc", seeds=[0, 1])


def test_shape_groups_pool_hparams_and_split():
    base = Config(hidden=16, max_len=8)
    configs, _ = search.expand(
        base, {"layers": [1, 2], "lr": [1e-3, 1e-4], "dropout": [0.1, 0.3, 0.5]}
    )
    groups = search.shape_groups(configs, max_members=4)
    # 2 shapes x 6 members, split into chunks of at most 4: 4 + 2 per shape.
    assert sorted(len(m) for _, _, m in groups) == [2, 2, 4, 4]
    for cfg, sweep, members in groups:
        assert {c.layers for c in members} == {cfg.layers}
        assert sweep["lr"] == [c.lr for c in members]
        assert sweep["dropout"] == [c.dropout for c in members]
        assert sweep["pvn_weight"] == [base.pvn_weight] * len(members)
    assert sum(len(m) for _, _, m in groups) == 12


def test_result_table_roundtrip_replace_and_atomic(tmp_path):
    path = tmp_path / "t" / "results.jsonl"
    table = results.ResultTable(path)
    assert len(table) == 0
    table.add([{"hash": "a", "v": 1}, {"hash": "b", "v": 2}])
    table.add([{"hash": "a", "v": 3}])
    again = results.ResultTable(path)
    assert "a" in again and len(again) == 2 and again.records["a"]["v"] == 3
    assert len(path.read_text().splitlines()) == 2
    assert os.listdir(path.parent) == ["results.jsonl"]  # no temporary left over
    path.write_text(path.read_text() + "{broken\n")
    with pytest.raises(ValueError, match=r"results.jsonl:3"):
        results.ResultTable(path)


def test_best_record_uses_validation_only():
    recs = [
        {
            "hash": "a",
            "status": "ok",
            "valid": {"NDCG@5": 0.2},
            "test": {"NDCG@5": 0.9},
        },
        {
            "hash": "b",
            "status": "ok",
            "valid": {"NDCG@5": 0.3},
            "test": {"NDCG@5": 0.1},
        },
        {"hash": "c", "status": "failed"},
    ]
    assert results.best_record(recs)["hash"] == "b"
    assert results.best_record(recs[2:]) is None


def test_varying_fields():
    recs = [{"config": {"lr": 0.1, "l2": 0.0}}, {"config": {"lr": 0.2, "l2": 0.0}}]
    assert results.varying_fields(recs) == ["lr"]


def test_cells_and_manifest(tmp_path):
    from experiments.reproduce import cell_name

    cfg = Config(mech="add", layers=3)
    name = cell_name("beauty", cfg, "sha", [0, 1])
    assert name.startswith("beauty-sasrec-add-L3-scores-")
    assert name != cell_name("beauty", cfg, "sha", [0, 1, 2])
    assert cell_name("/data/x/mine.txt", cfg, "sha", [0]).startswith("mine.txt-")
    cell = tmp_path / "cells" / name
    cell.mkdir(parents=True)
    assert not results.is_done(cell)
    np.save(cell / "test_ranks.npy", np.array([[1, 5], [2, 7]], np.int32))
    (cell / "config.json").write_text(json.dumps({"config": {}}))
    (cell / "results.json").write_text(json.dumps({"status": "ok", "test": {"a": 1}}))
    run = results.read_run(cell)
    assert run["results"] == {"status": "ok", "test": [{"a": 1}]}
    assert run["ranks"].tolist() == [[1, 5], [2, 7]]
    key = dict(dataset="beauty", backbone="sasrec", refine_input="scores")
    entries = [  # read back in the paper's mechanism order: none before add
        dict(key, mech="add", layers=3, cell=f"cells/{name}"),
        dict(key, mech="none", layers=3, cell="cells/missing"),
    ]
    (tmp_path / "table2.json").write_text(json.dumps({"entries": entries}))
    info, cells = results.load_manifest(tmp_path, "2")
    assert [e["mech"] for e, _ in cells] == ["none", "add"]
    assert cells[1][1]["results"]["status"] == "ok" and cells[0][1] is None


def test_sample_is_a_seeded_subset_in_order():
    configs, _ = search.expand(Config(), {"lr": [1e-3, 1e-4], "l2": [0.1, 0.01, 0.0]})
    picked = search.sample(configs, 3, seed=1)
    assert len(picked) == 3 and picked == search.sample(configs, 3, seed=1)
    assert [configs.index(c) for c in picked] == sorted(
        configs.index(c) for c in picked
    )
    assert search.sample(configs, 10) == configs
    with pytest.raises(ValueError, match="--sample=0"):
        search.sample(configs, 0)


def test_dataset_names(tmp_path):
    ds = datasets.load("smoke")
    assert ds.name == "smoke" and len(ds.sequences) == datasets.SMOKE_DATA["num_users"]
    assert datasets.load("smoke").sequences == ds.sequences  # seeded
    f = tmp_path / "mine.txt"
    f.write_text("1 3 4 5\n2 4 5 6\n")
    mine = datasets.load(str(f))
    assert (mine.name, mine.sequences) == ("mine", {1: [3, 4, 5], 2: [4, 5, 6]})
    with pytest.raises(ValueError, match="choose from"):
        datasets.load("netflix")


def test_a_data_file_given_is_the_data_used(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("1 3 4 5\n2 4 5 6\n")
    assert datasets.from_flags(None, str(f)).sequences == {1: [3, 4, 5], 2: [4, 5, 6]}
    assert datasets.from_flags("file", str(f)).path == str(f)
    with pytest.raises(ValueError, match="--dataset=synthetic and --data_file="):
        datasets.from_flags("synthetic", str(f))
    with pytest.raises(ValueError, match="is a directory"):
        datasets.from_flags(None, str(tmp_path))
    with pytest.raises(ValueError, match="--data_file: required"):
        datasets.from_flags("file", None)


def test_benchmark_beauty_is_found(shared_data):
    ds = datasets.load("beauty")
    assert ds.name == "beauty" and len(ds.sequences) == 22363
