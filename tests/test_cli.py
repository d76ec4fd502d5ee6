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
        (["--lr=inf"], "--lr=inf: must be finite"),
        (["--dropout=nan"], "--dropout=nan: must be finite"),
        (["--max_minutes=nan"], "--max_minutes=nan: must be a number >= 0"),
        (["--max_minutes=-1"], "--max_minutes=-1.0: must be a number >= 0"),
        (["--dataset=synthetic", "--data_file=/x.txt"], "name two datasets"),
        (["--data_file=/tmp"], "/tmp: is a directory"),
    ],
)
def test_bad_flags_give_one_line_errors(tmp_path, args, needle):
    r = _main(*args, f"--workdir={tmp_path / 'w'}")
    assert r.returncode != 0
    assert needle in r.stderr
    assert len([x for x in r.stderr.splitlines() if x.startswith("error:")]) == 1


def test_a_data_file_given_alone_is_the_data_trained_on(tmp_path, tiny_file):
    wd = tmp_path / "run"
    r = _main(f"--data_file={tiny_file}", "--epochs=1", "--hidden=8", "--max_len=8",
              "--batch_size=16", f"--workdir={wd}")  # fmt: skip
    assert r.returncode == 0, r.stderr
    cfg = json.loads((wd / "config.json").read_text())
    assert cfg["data_file"] == str(tiny_file) and cfg["num_items"] == 30
    assert "full ranking over all 30 items" in r.stdout


def test_every_flag_says_what_it_does():
    import dataclasses

    from awrsr_jax.config import HELP, Config

    for f in dataclasses.fields(Config):
        text = HELP[f.name]
        assert len(text) > 15 and text != f.name.replace("_", " "), f.name
    assert "-1" in HELP["trim_rows"] and "STOSA" in HELP["l2"]


def test_figures_reads_and_writes_the_folder_it_is_given(tmp_path):
    import types

    from experiments import figures

    f = types.SimpleNamespace(results=None, from_results=str(tmp_path), budget="smoke")
    assert figures._results_dir(f) == str(tmp_path)
    f = types.SimpleNamespace(results=str(tmp_path), from_results=None, budget="smoke")
    assert figures._results_dir(f) == str(tmp_path)  # the old name still works
    f = types.SimpleNamespace(results=None, from_results=None, budget="smoke")
    assert figures._results_dir(f) == "runs/smoke/reproduce"
