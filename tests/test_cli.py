"""End to end: the main CLI on a tiny synthetic file, and its flag errors."""

from __future__ import annotations

import json

import pytest

from awrsr_jax.data import generate, write_sequences
from tests.conftest import run_module


def _main(*args):
    return run_module("experiments.main", *args)


@pytest.fixture
def tiny_file(tmp_path):
    f = tmp_path / "tiny.txt"
    write_sequences(
        f, generate(num_users=40, num_items=30, min_len=3, max_len=9, seed=1)
    )
    return f


def test_main_writes_config_metrics_results(tmp_path, tiny_file):
    wd = tmp_path / "run"
    r = _main(
        "--dataset=file",
        f"--data_file={tiny_file}",
        "--mech=value",
        "--epochs=2",
        "--hidden=8",
        "--max_len=8",
        "--batch_size=16",
        f"--workdir={wd}",
    )
    assert r.returncode == 0, r.stderr
    assert "full ranking over all 30 items" in r.stdout
    res = json.loads((wd / "results.json").read_text())
    for split in ("valid", "test"):
        assert set(res[split]) >= {"Recall@1", "Recall@5", "NDCG@5", "NDCG@10", "MRR"}
        assert 0.0 <= res[split]["NDCG@5"] <= res[split]["Recall@5"] <= 1.0
    lines = (wd / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1]
    cfg = json.loads((wd / "config.json").read_text())
    assert cfg["config"]["mech"] == "value" and len(cfg["data_sha256"]) == 64


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--mech=stoc"], "--mech='stoc': stoc needs Gaussian"),
        (["--hidden=10", "--heads=3"], "--hidden=10: not divisible by --heads=3"),
        (["--max_len=1"], "--max_len=1: must be >= 2"),
        (["--dataset=file", "--data_file=/no/such/file"], "/no/such/file: cannot read"),
        (["--num_processes=2"], "--num_processes > 1 needs --coordinator_address"),
    ],
)
def test_bad_flags_give_one_line_errors(tmp_path, args, needle):
    r = _main(*args, f"--workdir={tmp_path / 'w'}")
    assert r.returncode != 0
    assert needle in r.stderr
    assert len([x for x in r.stderr.splitlines() if x.startswith("error:")]) == 1
