"""Behaviour fingerprint: fixed-seed runs of ``experiments.main`` on the CPU.

Each case trains a tiny config for a few epochs through the command line and
reduces what it wrote to a fingerprint: the sha256 of ``test_ranks.npy``'s
array, every valid and test metric, the best epochs and the per-epoch losses.
The stored fingerprints (``tests/data/regression.json``) were made before the
one-experiment-path redesign; the redesign must leave them bit-identical.

Bit-identity holds for one jax version on one CPU model (XLA's CPU kernels
differ across instruction sets); elsewhere the check falls back to a
tolerance and says so. Regenerate (only after a deliberate numerical change):
``python -m tests.test_regression --write``.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import platform
import sys

import numpy as np
import pytest

from tests.conftest import REPO, run_module

STORED = REPO / "tests" / "data" / "regression.json"
COMMON = ["--hidden=8", "--max_len=8", "--batch_size=16", "--epochs=3"]
CASES = {
    "sasrec-none": ["--backbone=sasrec", "--mech=none"],
    "sasrec-value-2seeds": ["--backbone=sasrec", "--mech=value", "--seeds=2"],
    "sasrec-add-vmapped": ["--backbone=sasrec", "--mech=add", "--trim_rows=0"],
    "sasrec-simp-ce": ["--backbone=sasrec", "--mech=simp", "--loss=ce"],
    "stosa-stoc": ["--backbone=stosa", "--mech=stoc", "--heads=2"],
}


def machine() -> str:
    import jax

    model = "?"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"jax {jax.__version__} / {platform.machine()} / {model}"


def fingerprint(case: str, workdir: pathlib.Path, data_file: pathlib.Path) -> dict:
    r = run_module(
        "experiments.main",
        *CASES[case],
        *COMMON,
        "--dataset=file",
        f"--data_file={data_file}",
        f"--workdir={workdir}",
    )
    assert r.returncode == 0, r.stderr
    ranks = np.load(workdir / "test_ranks.npy", allow_pickle=False)
    res = json.loads((workdir / "results.json").read_text())
    lines = [
        json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()
    ]
    return {
        "ranks_sha256": hashlib.sha256(
            np.ascontiguousarray(ranks, dtype=np.int64).tobytes()
        ).hexdigest(),
        "ranks_shape": list(ranks.shape),
        "valid": res["valid"],
        "test": res["test"],
        "best_epoch": res["best_epoch"],
        "losses": [[r["epoch"], r["member"], r["loss"]] for r in lines],
    }


def _data(tmp: pathlib.Path) -> pathlib.Path:
    from awrsr_jax.data import generate, write_sequences

    f = tmp / "regression.txt"
    write_sequences(
        f, generate(num_users=60, num_items=40, min_len=3, max_len=12, seed=3)
    )
    return f


def _close(a, b, tol) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float):
        return abs(a - b) <= tol
    return a == b


QUICK = {"sasrec-none", "stosa-stoc"}  # the other three run with -m slow


@pytest.mark.parametrize(
    "case",
    [
        c if c in QUICK else pytest.param(c, marks=pytest.mark.slow)
        for c in sorted(CASES)
    ],
)
def test_fixed_seed_runs_match_the_stored_fingerprint(case, tmp_path):
    stored = json.loads(STORED.read_text())
    want = stored["cases"][case]
    got = fingerprint(case, tmp_path / "run", _data(tmp_path))
    if stored["machine"] == machine():
        assert got == want  # bit-identical ranks, metrics and losses
    else:  # another CPU or jax: same behaviour up to float rounding
        loose = {k: v for k, v in got.items() if k != "ranks_sha256"}
        ref = {k: v for k, v in want.items() if k != "ranks_sha256"}
        assert _close(loose, ref, 0.05), (machine(), stored["machine"])


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        out = {"machine": machine(), "cases": {}}
        for c in sorted(CASES):
            out["cases"][c] = fingerprint(c, tmp / c, _data(tmp))
    STORED.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {STORED} ({out['machine']})")
