"""A grid search killed anywhere goes on where it stopped, and its table is
replaced atomically (RELIABILITY.md item 24): a table write cut by an error
or a kill leaves the previous table as it was; a grid SIGKILLed after a
checkpoint or in the middle of a table write, then rerun, records every
config of its space exactly once. The grid that trains is marked slow."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys

import pytest

from awrsr_jax import results
from tests.conftest import REPO

# ---------------------------------------------------------------- the table
# A child process adds records to a table after lowering RLIMIT_FSIZE to half
# the new file's size: the write really stops midway, with an EFBIG error
# ("raises") or killed by SIGXFSZ ("killed", no cleanup runs, as under
# SIGKILL); or it is SIGKILLed once every byte is written, before the rename
# ("sigkill before rename", at the fsync that precedes it).

TABLE_CHILD = """
import errno, json, os, resource, signal, sys
from awrsr_jax import results
path, mode, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
table = results.ResultTable(path)
new = [{"hash": f"new{i}", "pad": "x" * 1000} for i in range(100)]
if mode == "sigkill before rename":
    real_fsync = os.fsync
    def fsync(fd):
        real_fsync(fd)
        os.kill(os.getpid(), signal.SIGKILL)
    os.fsync = fsync
else:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN if mode == "raises" else signal.SIG_DFL)
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
try:
    table.add(new)
except OSError as e:
    print(json.dumps({"errno": e.errno}))
    sys.exit(3)
"""

MODES = {  # mode: (return code, bytes of the temporary file left)
    "raises": (3, None),
    "killed": (-signal.SIGXFSZ, "limit"),
    "sigkill before rename": (-signal.SIGKILL, "all"),
}


def _old_table(tmp_path):
    path = tmp_path / "results.jsonl"
    old = [{"hash": "a", "status": "ok", "v": 1}, {"hash": "b", "status": "failed"}]
    results.ResultTable(path).add(old)
    return path, path.read_bytes(), {r["hash"]: r for r in old}


def _table_temps(path):
    return sorted(p for p in path.parent.iterdir() if p.name != path.name)


def _cut_write(path, mode, limit):
    return subprocess.run(
        [sys.executable, "-c", TABLE_CHILD, str(path), mode, str(limit)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("mode", list(MODES))
def test_a_table_write_cut_midway_leaves_the_previous_table(tmp_path, mode):
    path, before, old = _old_table(tmp_path)
    limit = 50_000  # about half of the new table (~105 kB), above the old one
    assert len(before) < limit
    r = _cut_write(path, mode, limit)
    code, left = MODES[mode]
    assert r.returncode == code, r.stderr[-3000:]
    if mode == "raises":
        assert json.loads(r.stdout) == {"errno": errno.EFBIG}
    assert path.read_bytes() == before  # byte for byte, readable
    assert results.ResultTable(path).records == old
    temps = _table_temps(path)
    if left is None:  # an error: the temporary file is removed
        assert temps == []
    else:  # a kill: the cut write's temporary file, never read as the table
        (tmp,) = temps
        assert tmp.name.startswith(f".{path.name}.") and tmp.name.endswith(".tmp")
        size = tmp.stat().st_size
        assert size == limit if left == "limit" else size > 100_000
    table = results.ResultTable(path)  # the next write goes through
    table.add([{"hash": "c", "status": "ok"}])
    assert list(results.ResultTable(path).records) == ["a", "b", "c"]


def test_a_killed_table_writes_temporary_file_is_removed_by_the_next_write(tmp_path):
    path, _, _ = _old_table(tmp_path)
    r = _cut_write(path, "killed", 50_000)
    assert r.returncode == -signal.SIGXFSZ, r.stderr[-3000:]
    results.ResultTable(path).add([{"hash": "c", "status": "ok"}])
    assert _table_temps(path) == []


# ---------------------------------------------------------------- the grid
# The smoke grid (4 configs in 2 shape groups of 2 members, 2 epochs) under
# a wrapper that SIGKILLs it at the n-th new checkpoint step ("save", once
# the step is committed) or in the n-th write of results.jsonl ("table":
# half of the new table is written to the temporary file, then the kill).

KILL_GRID = """
import contextlib, os, signal, sys
from absl import app
from awrsr_jax import checkpoint, files
import experiments.grid as grid
where, nth = sys.argv[1], int(sys.argv[2])
count = 0
def due(kind):
    global count
    count += kind == where
    return kind == where and count == nth
def kill():
    os.kill(os.getpid(), signal.SIGKILL)
real_save = checkpoint.Store.save
def save(self, loop, meta):
    new = loop.epoch not in self.steps()
    real_save(self, loop, meta)
    if new and due("save"):
        kill()
checkpoint.Store.save = save
class HalfThenKill:
    def __init__(self, f):
        self.f = f
    def write(self, text):
        self.f.write(text[: len(text) // 2])
        self.f.flush()
        os.fsync(self.f.fileno())
        kill()
real_open = files.atomic_open
@contextlib.contextmanager
def atomic_open(path, mode="w", **kw):
    with real_open(path, mode, **kw) as f:
        table = os.path.basename(path) == "results.jsonl"
        yield HalfThenKill(f) if table and due("table") else f
files.atomic_open = atomic_open
grid.define_flags()
sys.argv = ["grid", *sys.argv[3:]]
app.run(grid.main)
"""

EPOCHS = 2


def _smoke_hashes() -> list[str]:
    """The hash of every config of the smoke space, as ``grid.main`` builds
    them for ``--budget=smoke --set=epochs=2``."""
    from awrsr_jax import datasets, search
    from awrsr_jax.config import Config
    from experiments import grid

    base = Config(backbone="sasrec", mech="none", epochs=200, patience=20)
    base = base.replace(**grid.SMOKE_BASE).replace(epochs=EPOCHS)
    configs, dropped = search.expand(base, search.load_space("smoke", "sasrec"))
    assert dropped == [] and len(configs) == 4
    sha = datasets.load("smoke").sha256
    return sorted(search.config_hash(c, sha) for c in configs)


@pytest.mark.slow
def test_a_grid_sigkilled_four_times_records_every_config_once(tmp_path):
    out = tmp_path / "grid"
    table = out / "results.jsonl"
    want = _smoke_hashes()

    def grid(where, nth=1):
        args = ["--budget=smoke", f"--set=epochs={EPOCHS}", f"--out={out}"]
        return subprocess.run(
            [sys.executable, "-c", KILL_GRID, where, str(nth), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )

    def killed(where, done):
        r = grid(where)
        assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
        assert f"4 configs, {done} already done" in r.stderr
        return r.stderr

    # 1. Killed once group 1 has committed its first epoch.
    killed("save", done=0)
    assert not table.exists()
    # 2. Group 1 resumes and finishes; killed halfway through the first table
    # write: there is no table yet, and none half-written.
    log = killed("table", done=0)
    assert "resumed at epoch 1 " in log
    assert not table.exists()
    # 3. Group 1 is taken from its finished run and recorded; group 2 is
    # killed once it has committed its first epoch.
    log = killed("save", done=0)
    assert f"resumed at epoch {EPOCHS} " in log
    first = table.read_bytes()
    group1 = [json.loads(line)["hash"] for line in first.decode().splitlines()]
    assert len(group1) == 2 and set(group1) < set(want)
    # 4. Group 1 is skipped, group 2 resumes and finishes; killed halfway
    # through the table write: the table of step 3 is left as it was.
    log = killed("table", done=2)
    assert "resumed at epoch 1 " in log
    assert table.read_bytes() == first
    # 5. The same command to the end.
    r = grid("none")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "4 configs, 2 already done" in r.stderr
    assert "4 configs in the table" in r.stdout

    lines = table.read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    assert sorted(r["hash"] for r in recs) == want  # every config, exactly once
    for rec in recs:
        assert rec["status"] == "ok", rec
        assert rec["epochs_run"] == EPOCHS and len(rec["valid_curve"]) == EPOCHS
        assert 0 <= rec["valid"]["NDCG@5"] <= 1
    configs = sorted((r["config"]["layers"], r["config"]["lr"]) for r in recs)
    assert configs == [(1, 1e-3), (1, 1e-2), (2, 1e-3), (2, 1e-2)]
    rows = (out / "summary.csv").read_text().splitlines()[1:]
    assert sorted(row.split(",")[0] for row in rows) == want
    assert json.loads((out / "best.json").read_text())["hash"] in want
    assert "4 finished, 0 failed" in (out / "summary.md").read_text()
    # Nothing half-written anywhere: no orbax temporary step, and the
    # temporary files of the killed table writes went with the next write.
    temps = [p for p in out.rglob("*") if p.name.endswith(".tmp") or "-tmp" in p.name]
    assert temps == []
