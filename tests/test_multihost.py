"""Several hosts, on one machine: two processes form one JAX runtime.

Two ``python -m experiments.main --mesh=batch`` processes join through
``jax.distributed`` on a localhost coordinator (CPU, gloo collectives, one
device each) and train one model with each batch split over the two
processes; a time limit (``--max_minutes=0``) stops both after epoch 0 and
the same command resumes them from the checkpoint they saved together. They
must give the metrics of one process that splits the same global batch over
two host devices (``--xla_force_host_platform_device_count=2``), and of one
process on one device, each trained without a stop.

Tolerance: the two-process run and the one-process, two-device run compile
the same partitioned program (the all-reduce of two partial gradients is one
commutative addition), so they agree exactly; the test allows 1e-6. One
device sums each batch's gradient in another order: float32 rounding (~1e-7
relative per step) then moves a validation/test metric by ~1e-6 at most, or
by a whole user (1/40 = 0.025 here) where a score tie flips; 1e-5 absolute
allows the first and catches the second, as in ``tests/test_parallel.py``.

The processes share one workdir (orbax checkpoints are written by all
processes together into one folder; separate folders deadlock in its save
barriers); process 0 alone writes the run's own files. All runs pass
``--trim_rows=0``: the one-device default trims rows with its own dropout
keys, a different (equally valid) training run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from awrsr_jax.data import generate, write_sequences
from tests.conftest import REPO

TIMEOUT = 600  # seconds for one run; the two processes run at once
COMMON = (
    "--dataset=file",
    "--epochs=2",
    "--hidden=8",
    "--max_len=8",
    "--batch_size=16",
    "--trim_rows=0",
)
SPLITS = ("valid", "test")
RUNS = ("two_processes", "two_devices", "one_device")


def _env(devices: int = 1) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _spawn(args: list[str], env: dict) -> subprocess.Popen:
    """``python args...`` from the repo root; stdout and stderr go to files
    (a pipe nobody reads while waiting could fill and stall the process)."""
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=env, stdout=out, stderr=err
    )
    proc.out_file, proc.err_file = out, err
    return proc


def _main(*args: str, env: dict) -> subprocess.Popen:
    return _spawn(["-m", "experiments.main", *COMMON, *args], env)


def _read(f) -> str:
    f.seek(0)
    return f.read()


def _wait(procs: list[subprocess.Popen]) -> list[tuple[str, str]]:
    """``(stdout, stderr)`` of each of ``procs`` once all have exited 0.
    Kills every one still running when one fails or the time is up (a
    process whose peer died waits in a collective until the coordinator's
    heartbeat gives up)."""
    deadline = time.monotonic() + TIMEOUT
    try:
        while True:
            codes = [p.poll() for p in procs]
            for i, code in enumerate(codes):
                if code not in (None, 0):
                    raise AssertionError(
                        f"process {i} exited {code}:\n"
                        + _read(procs[i].err_file)[-3000:]
                    )
            if None not in codes:
                return [(_read(p.out_file), _read(p.err_file)) for p in procs]
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {TIMEOUT} s")
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.out_file.close()
            p.err_file.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


_HELPERS = r"""
import sys
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from awrsr_jax import parallel

pid = int(sys.argv[2])
assert parallel.maybe_initialize_distributed(sys.argv[1], 2, pid)
mesh = parallel.mesh_for("batch")
assert jax.process_count() == 2 and mesh.devices.size == 2, jax.devices()
assert parallel.is_primary() == (pid == 0)
assert parallel.any_process(pid == 1) and not parallel.any_process(False)
parallel.barrier("helpers")
x = parallel.replicate(np.arange(8.0), mesh)
total = jax.jit(
    lambda x: parallel.constrain_batch(x, mesh).sum(),
    out_shardings=NamedSharding(mesh, P()),
)(x)
print("RESULT", float(total))
"""


def test_two_processes_share_collectives_and_decisions():
    """The helpers of :mod:`awrsr_jax.parallel` across two processes: the
    global mesh, a flag set on one process seen by both, a barrier, and a
    batch-sharded sum (an all-reduce over gloo)."""
    coordinator = f"localhost:{_free_port()}"
    out = _wait(
        [_spawn(["-c", _HELPERS, coordinator, str(i)], _env(1)) for i in range(2)]
    )
    for stdout, _ in out:
        assert "RESULT 28.0" in stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``name: (workdir, [stderr of each process])`` of every run, trained
    once per module: ``two_processes_0`` (stopped by ``--max_minutes=0``
    after epoch 0), ``two_processes_1`` (the same command: resumes, ends),
    ``two_processes`` (their workdir), ``two_devices``, ``one_device``; and
    ``stopped``: the results.json the stopped run wrote."""
    tmp = tmp_path_factory.mktemp("multihost")
    data = tmp / "tiny.txt"
    write_sequences(
        data, generate(num_users=40, num_items=30, min_len=3, max_len=9, seed=1)
    )
    out = {}
    wd = tmp / "two_processes"
    started = time.monotonic()
    for attempt in range(2):  # stopped after epoch 0 by the time limit, resumed
        coordinator = f"localhost:{_free_port()}"
        two = _wait(
            [
                _main(
                    f"--data_file={data}",
                    "--mesh=batch",
                    f"--coordinator_address={coordinator}",
                    "--num_processes=2",
                    f"--process_id={i}",
                    f"--workdir={wd}",
                    "--max_minutes=0",
                    env=_env(1),
                )
                for i in range(2)
            ]
        )
        out[f"two_processes_{attempt}"] = wd, [err for _, err in two]
        out[f"stdout_{attempt}"] = [o for o, _ in two]
        if attempt == 0:
            out["stopped"] = json.loads((wd / "results.json").read_text())
    out["two_processes"] = out["two_processes_1"]
    print(f"two processes, twice: {time.monotonic() - started:.0f} s")
    for name, devices, mesh in (("two_devices", 2, "batch"), ("one_device", 1, "none")):
        wd = tmp / name
        started = time.monotonic()
        [(_, err)] = _wait(
            [
                _main(
                    f"--data_file={data}",
                    f"--mesh={mesh}",
                    f"--workdir={wd}",
                    env=_env(devices),
                )
            ]
        )
        out[name] = wd, [err]
        print(f"{name}: {time.monotonic() - started:.0f} s")
    return out


def _results(runs, name) -> dict:
    return json.loads((runs[name][0] / "results.json").read_text())


def _close(got: dict, ref: dict, tol: float) -> list[str]:
    """The metrics that differ by more than ``tol``, with both values."""
    assert got["best_epoch"] == ref["best_epoch"]
    bad = []
    for split in SPLITS:
        assert set(got[split]) == set(ref[split])
        for name, value in ref[split].items():
            if abs(got[split][name] - value) > tol:
                bad.append(f"{split} {name}: {got[split][name]} vs {value}")
    return bad


@pytest.mark.slow
def test_two_processes_form_one_batch_mesh(runs):
    for err in runs["two_processes_0"][1]:
        assert "mesh {'batch': 2} over 2 devices (cpu; 2 process(es))" in err
    [err] = runs["two_devices"][1]
    assert "mesh {'batch': 2} over 2 devices (cpu; 1 process(es))" in err


@pytest.mark.slow
def test_two_processes_stop_together_and_resume(runs):
    assert runs["stopped"]["stopped"] == "max_minutes"
    assert runs["stopped"]["epochs_run"] == 1
    for err in runs["two_processes_1"][1]:
        assert "resumed at epoch 1" in err
    assert _results(runs, "two_processes")["epochs_run"] == 2


@pytest.mark.slow
def test_only_process_0_prints_the_results(runs):
    first, second = runs["stdout_1"]
    assert "best epoch" in first and "protocol:" in first
    assert "best epoch" not in second and "protocol:" not in second, second


@pytest.mark.slow
def test_two_processes_match_one_process(runs):
    two = _results(runs, "two_processes")
    assert not _close(two, _results(runs, "two_devices"), 1e-6)
    assert not _close(two, _results(runs, "one_device"), 1e-5)
    ranks = {n: np.load(runs[n][0] / "test_ranks.npy") for n in RUNS}
    np.testing.assert_array_equal(ranks["two_processes"], ranks["two_devices"])
    np.testing.assert_array_equal(ranks["two_processes"], ranks["one_device"])


@pytest.mark.slow
def test_two_processes_log_the_same_losses_as_one(runs):
    def losses(name):
        lines = (runs[name][0] / "metrics.jsonl").read_text().splitlines()
        return [(r["epoch"], r["loss"], r["grad_norm"]) for r in map(json.loads, lines)]

    two, ref = losses("two_processes"), losses("one_device")
    # One line per epoch: only process 0 writes metrics.jsonl.
    assert [e for e, _, _ in two] == [0, 1]
    assert two == losses("two_devices")
    np.testing.assert_allclose([x[1:] for x in two], [x[1:] for x in ref], rtol=1e-5)
