"""Several devices: the batch-sharded and member-sharded epochs, and the main
CLI's ``--mesh=batch``, give one device's results.

The multi-device checks run in a subprocess with four forced host devices
(``XLA_FLAGS`` must be set before JAX initialises, and this process has
already started it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awrsr_jax import parallel
from awrsr_jax.data import generate, write_sequences
from tests.conftest import REPO

_SCRIPT = r"""
import json, jax, jax.numpy as jnp, numpy as np
from awrsr_jax import parallel, train
from awrsr_jax.data import build, generate
from tests.conftest import tiny_config

assert jax.device_count() == 4, jax.devices()
data, _ = build(generate(num_users=60, num_items=40, min_len=4, max_len=12), 8)
# trim_rows=0: the CPU default trims one-device batches and draws dropout
# per row group, a different (equally valid) run from the sharded one.
cfg = tiny_config(max_len=8, batch_size=8, dropout=0.2, eval_chunk=16, trim_rows=0)

def run(seeds, mesh, place):
    epoch_fn, eval_fn = train.compiled(cfg, mesh)
    state = train.init_state(cfg, data.num_items, seeds)
    hp = train.hparams(cfg, len(seeds))
    active = jnp.ones(len(seeds), bool)
    d = data
    if mesh is not None:
        state, hp, active = place((state, hp, active), mesh)
        d = parallel.replicate(data, mesh)
    losses = []
    for e in range(2):
        state, stats = epoch_fn(state, hp, active, d, e)
        losses.append(np.asarray(stats["loss"]).tolist())
    ranks = np.asarray(eval_fn(state["params"], d, "valid", jax.random.PRNGKey(0)))
    return {"loss": losses, "ranks": ranks.tolist()}

out = {
    "one": run([0], None, None),
    "batch": run([0], parallel.mesh_for("batch"), parallel.replicate),
    "four": run([0, 1, 2, 3], None, None),
    "members": run([0, 1, 2, 3], parallel.mesh_for("members"), parallel.shard_members),
}
print("RESULT " + json.dumps(out))
"""


def _four_devices(*args):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_four_devices_match_one_device():
    proc = _four_devices("-c", _SCRIPT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT ") :])
    np.testing.assert_allclose(out["batch"]["loss"], out["one"]["loss"], rtol=1e-4)
    np.testing.assert_allclose(out["members"]["loss"], out["four"]["loss"], rtol=1e-4)
    # Ranks are integers from float scores: allow a rare tie flip.
    for a, b in (("batch", "one"), ("members", "four")):
        got, ref = np.asarray(out[a]["ranks"]), np.asarray(out[b]["ranks"])
        assert np.mean(got == ref) >= 0.97, (a, b)


@pytest.mark.slow
def test_main_with_a_batch_mesh_matches_one_device(tmp_path):
    data = tmp_path / "tiny.txt"
    write_sequences(
        data, generate(num_users=40, num_items=30, min_len=3, max_len=9, seed=1)
    )
    results = {}
    for mesh in ("none", "batch"):
        wd = tmp_path / mesh
        proc = _four_devices(
            "-m",
            "experiments.main",
            "--dataset=file",
            f"--data_file={data}",
            "--epochs=2",
            "--hidden=8",
            "--max_len=8",
            "--batch_size=16",
            "--trim_rows=0",  # as one device trims by default (see _SCRIPT)
            f"--mesh={mesh}",
            f"--workdir={wd}",
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[mesh] = json.loads((wd / "results.json").read_text())
    assert "mesh {'batch': 4} over 4 devices" in proc.stderr
    one, four = results["none"], results["batch"]
    assert four["best_epoch"] == one["best_epoch"]
    for split in ("valid", "test"):
        assert set(four[split]) == set(one[split])
        for name, value in one[split].items():
            assert abs(four[split][name] - value) <= 1e-5, (split, name)


def test_mesh_for_names_its_axis_and_refuses_others():
    mesh = parallel.mesh_for("batch")
    assert mesh.axis_names == ("batch",)
    assert mesh.devices.size == jax.device_count()
    with pytest.raises(ValueError, match="mesh axis"):
        parallel.mesh_for("model")


def test_constrain_batch_is_identity_without_a_batch_axis():
    x = jnp.arange(8)
    assert parallel.constrain_batch(x, None) is x
    assert parallel.constrain_batch(x, parallel.mesh_for("members")) is x


def test_distributed_is_skipped_without_a_coordinator():
    assert parallel.maybe_initialize_distributed(None) is False
    with pytest.raises(ValueError, match="coordinator"):
        parallel.maybe_initialize_distributed(None, num_processes=2)


def test_replicate_and_shard_members_keep_values():
    mesh = parallel.mesh_for("members")
    tree = {"a": np.arange(6.0).reshape(jax.device_count() * 2, -1)[:2], "s": 3}
    if jax.device_count() != 1:
        pytest.skip("one-device process")
    for place in (parallel.replicate, parallel.shard_members):
        got = place(tree, mesh)
        np.testing.assert_array_equal(got["a"], tree["a"])
        assert int(got["s"]) == 3


def test_one_process_agrees_with_itself():
    assert parallel.is_primary()
    assert parallel.any_process(True) is True
    assert parallel.any_process(False) is False
    parallel.barrier("nothing to wait for")


@pytest.mark.parametrize(
    "num_processes, process_id, needle",
    [(2, None, "give both"), (None, 0, "give both"), (2, 2, r"in \[0, 2\)")],
)
def test_distributed_flags_are_checked_before_joining(
    num_processes, process_id, needle
):
    with pytest.raises(ValueError, match=needle):
        parallel.maybe_initialize_distributed("localhost:1", num_processes, process_id)
