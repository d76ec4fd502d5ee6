"""Bad input fails early and clearly; nothing unpickles; nothing escapes the
workdir; partial or disk-full checkpoints are never trusted (RELIABILITY.md
items 3, 18 (file:line), 20-22, and flag validation)."""

from __future__ import annotations

import ast
import os
import pathlib
import pickle  # only to craft hostile payloads; the package never imports it
import shutil

import jax
import numpy as np
import pytest

from awrsr_jax import checkpoint, datasets, files, results, train
from awrsr_jax.data import DataFileError, read_sequences
from tests.conftest import CKPT_CFG as CFG
from tests.conftest import REPO, final_state, run_tiny

BAD_FILES = [
    # (name, bytes, fmt, line, needle)
    ("letters", b"1 2 3\n2 x 4\n", "auto", 2, "not a positive integer id"),
    ("negative", b"1 2 3\n2 -4 5\n", "auto", 2, "not a positive integer id"),
    ("zero id", b"1 2 0\n", "auto", 1, "reserved for padding"),
    ("header only", b"user item\n", "auto", 1, "not a positive integer id"),
    ("header", b"user items\n1 2 3\n", "auto", 1, "not a positive integer id"),
    ("latin-1", b"1 2 3\n2 3 4\n3 caf\xe9 1\n", "auto", 3, "non-ASCII"),
    ("commas", b"1 2 3\n2,3,4\n", "auto", 2, "not a positive integer id"),
    ("semicolons", b"1;2\n", "auto", 1, "not a positive integer id"),
    ("rating -1", b"1 2 -1\n", "auto", 1, "not a positive integer id"),
    ("float", b"1 2 3.5\n", "auto", 1, "not a positive integer id"),
    ("pair fields", b"1 2\n1 3\n1 4 5\n", "pairs", 3, "expected 'user item'"),
    ("pairs split user", b"1 2\n2 3\n1 4\n", "pairs", 3, "not contiguous"),
    ("user twice", b"1 2 3\n1 4 5\n", "user-line", 2, "appears twice"),
    ("user only", b"1 2 3\n7\n", "user-line", 2, "needs a user id and an item"),
    ("huge id", b"1 2 99999999999\n", "auto", 1, "larger than 2147483647"),
    ("crlf bad", b"1 2 3\r\n2 3 z\r\n", "auto", 2, "not a positive integer id"),
    ("bom bad", b"\xef\xbb\xbf1 2 3\n2 3 y\n", "auto", 2, "not a positive integer id"),
    ("truncated", b"1 2 3\n2 3 4\n3 4 5x", "auto", 3, "not a positive integer id"),
    ("pickle", pickle.dumps({"a": 1}), "auto", 1, "non-ASCII"),
]


@pytest.mark.parametrize("case", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_data_files_name_path_and_line(tmp_path, case):
    name, raw, fmt, line, needle = case
    path = tmp_path / "seqs.txt"
    path.write_bytes(raw)
    with pytest.raises(DataFileError, match=needle) as e:
        read_sequences(path, fmt)
    assert str(e.value).startswith(f"{path}:{line}: "), str(e.value)
    assert e.value.line == line


def test_item_outside_the_catalogue_names_the_line(tmp_path):
    path = tmp_path / "users.txt"
    path.write_bytes(b"1 3 4\n\n2 5 31\n")
    with pytest.raises(DataFileError, match=rf"^{path}:3: item 31 is not in"):
        read_sequences(path, "user-line", max_item=30)


@pytest.mark.parametrize(
    "raw", [b"1 2 3\n\n2 3 4", b"\xef\xbb\xbf1 2 3\r\n2 3 4\r\n", b"1\t2 3\n2 3  4\n"]
)
def test_tolerated_layouts_read_the_same(tmp_path, raw):
    path = tmp_path / "ok.txt"
    path.write_bytes(raw)
    assert read_sequences(path) == {1: [2, 3], 2: [3, 4]}


@pytest.mark.parametrize(
    "change, flag",
    [
        (dict(mech="stoc"), "--mech='stoc'"),
        (dict(max_len=1), "--max_len=1"),
        (dict(hidden=10, heads=3), "--hidden=10: not divisible by --heads=3"),
        (dict(backbone="bert"), "--backbone='bert'"),
        (dict(loss="bpr"), "--loss='bpr'"),
    ],
)
def test_flags_are_checked_before_anything_compiles(
    tmp_path, monkeypatch, change, flag
):
    def boom(*a, **k):
        raise AssertionError("compiled before validation")

    monkeypatch.setattr(train.members, "compiled", boom)
    monkeypatch.setattr(train.members, "init_fn", boom)
    wd = tmp_path / "wd"
    with pytest.raises(ValueError, match=flag.replace("(", r"\(")) as e:
        run_tiny(wd, CFG.replace(**change))
    assert "\n" not in str(e.value)
    assert not wd.exists()


def test_missing_data_file_and_bad_options_are_named(tmp_path):
    wd = str(tmp_path / "wd")
    with pytest.raises(ValueError, match="/nope.txt: cannot read"):
        datasets.from_flags(None, "/nope.txt")
    with pytest.raises(ValueError, match="--checkpoint_every=0"):
        run_tiny(wd, checkpoint_every=0)
    assert not os.path.exists(wd)


def test_no_pickle_in_the_package_and_every_np_load_refuses_it():
    roots = [REPO / d for d in ("awrsr_jax", "experiments", "data_prep")]
    for path in (p for r in roots if r.is_dir() for p in r.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", "")]
                assert not any("pickle" in (n or "") for n in names), path
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "np.load":
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                assert kw.get("allow_pickle") == "False", f"{path}:{node.lineno}"


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_crafted_pickles_are_refused_and_never_run(ref, tmp_path):
    marker = tmp_path / "PWNED"
    wd = tmp_path / "wd"
    wd.mkdir()
    np.save(wd / "test_ranks.npy", np.array([_Payload(str(marker))], object))
    with pytest.raises(ValueError, match="allow_pickle"):
        results.read_ranks(str(wd))
    # A pickle where a checkpoint's files belong: refused, older step used.
    ck = wd / "checkpoints"
    for s in (2, 3):
        shutil.copytree(os.path.join(ref, "checkpoints", str(s)), ck / str(s))
    blob = pickle.dumps(_Payload(str(marker)))
    (ck / "3" / "meta" / "metadata").write_bytes(blob)
    (ck / "3" / "state" / "_METADATA").write_bytes(blob)
    store = checkpoint.Store(str(ck))
    loop, _ = store.restore(train.LoopState.template(CFG, 30, [0]))
    store.close()
    assert loop.epoch == 2
    data = tmp_path / "data.txt"
    data.write_bytes(blob)
    with pytest.raises(DataFileError):
        read_sequences(data)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", "..", ""])
def test_output_names_that_leave_the_workdir_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="refusing"):
        files.output_path(str(tmp_path), name)


def test_a_symlinked_output_is_refused_and_its_target_untouched(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "metrics.jsonl").symlink_to(outside)
    with pytest.raises(ValueError, match="refusing to write through the symlink"):
        run_tiny(wd)
    assert outside.read_text() == "keep me"


def test_a_run_writes_only_inside_its_workdir(tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.chdir(root)
    run_tiny(root / "wd")
    assert [p.name for p in root.iterdir()] == ["wd"]
    names = {p.name for p in (root / "wd").iterdir()}
    assert names == {
        "config.json",
        "metrics.jsonl",
        "results.json",
        "test_ranks.npy",
        "checkpoints",
        ".lock",
    }


# Partial checkpoints (item 3): what a kill or a full disk leaves behind.


def _damages(step_dir):
    """Twenty ways a save can be left partial: uncommitted, missing or
    truncated files (what a kill or a full disk leaves)."""
    files = sorted(
        os.path.relpath(os.path.join(r, f), step_dir)
        for r, _, fs in os.walk(step_dir)
        for f in fs
        if f != "commit_success.txt" and not f.startswith("_CHECKPOINT")
    )
    out = [("tmp folder", None), ("empty folder", None)]
    out += [(f"no commit marker in {d or 'step'}", d) for d in ("", "state", "meta")]
    out += [("no state item", "state"), ("no meta item", "meta")]
    out += [(f"truncated {f}", f) for f in files]
    out += [(f"deleted {f}", f) for f in files]
    return out[:20]


def _damage(step_dir, kind, arg):
    if kind == "tmp folder":
        os.rename(step_dir, step_dir + ".orbax-checkpoint-tmp-1234")
    elif kind == "empty folder":
        shutil.rmtree(step_dir)
        os.mkdir(step_dir)
    elif kind.startswith("no commit marker"):
        os.remove(os.path.join(step_dir, arg, "commit_success.txt"))
    elif kind.startswith("no ") and kind.endswith(" item"):
        shutil.rmtree(os.path.join(step_dir, arg))
    elif kind.startswith("truncated"):
        path = os.path.join(step_dir, arg)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    else:
        os.remove(os.path.join(step_dir, arg))


def test_partial_checkpoints_are_never_trusted(ref, tmp_path):
    good = {s: final_state(ref, step=s)[0] for s in (2, 3)}
    cases = _damages(os.path.join(ref, "checkpoints", "3"))
    assert len(cases) == 20
    trusted, restored = [], []
    for i, (kind, arg) in enumerate(cases):
        ck = tmp_path / f"c{i}" / "checkpoints"
        for s in (2, 3):
            shutil.copytree(os.path.join(ref, "checkpoints", str(s)), ck / str(s))
        _damage(str(ck / "3"), kind, arg)
        store = checkpoint.Store(str(ck))
        try:
            loop, meta = store.restore(train.LoopState.template(CFG, 30, [0]))
        finally:
            store.close()
        got = jax.tree.map(np.asarray, {k: getattr(loop, k) for k in checkpoint.ARRAYS})
        # Restoring the damaged step is fine only if the damage touched no
        # byte it reads (e.g. a file orbax does not use); else step 2 it is.
        want = jax.tree.leaves(good.get(loop.epoch, {}))
        leaves = jax.tree.leaves(got)
        if len(want) != len(leaves) or any(
            a.tobytes() != b.tobytes() for a, b in zip(leaves, want)
        ):
            trusted.append(kind)
        restored.append(loop.epoch)
    print(
        f"partial checkpoints trusted: {len(trusted)}/{len(cases)}; restored {restored}"
    )
    assert trusted == []


DISK_FULL_STATE = """
import numpy as np, jax.numpy as jnp
from awrsr_jax import train
def big_loop(epoch):
    # Incompressible arrays whose every value depends on the step.
    w = np.random.default_rng(epoch).random((1, 50_000), np.float32)
    state = {"params": {"w": jnp.asarray(w)}, "opt_state": {},
             "key": jnp.full((1, 2), epoch, jnp.uint32)}
    return train.LoopState(epoch, state, {"w": jnp.asarray(w + 1)},
                           np.full(1, 0.1 * epoch), np.full(1, epoch - 1, np.int64),
                           np.zeros(1, np.int64), np.ones(1, bool), [0.5] * epoch)
"""

DISK_FULL_CHILD = (
    DISK_FULL_STATE
    + """
import json, resource, signal, sys
from awrsr_jax import checkpoint
store = checkpoint.Store(sys.argv[1])
store.save(big_loop(1), {"history": ["epoch 1"]})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of a kill
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
try:
    store.save(big_loop(2), {"history": ["epoch 2"]})
except Exception as e:
    mro = [c.__name__ for c in type(e).__mro__]
    print(json.dumps({"types": mro, "message": str(e)}))
    sys.exit(3)
"""
)


@pytest.mark.slow
def test_disk_full_surfaces_and_the_previous_step_restores(tmp_path):
    """A save that hits a full disk (RLIMIT_FSIZE in a child) raises the
    file system's EFBIG from Store.save; the partial step is never listed and
    the previous step restores with its own values, bit for bit."""
    import errno
    import json
    import subprocess
    import sys

    ck = tmp_path / "checkpoints"
    r = subprocess.run(
        [sys.executable, "-c", DISK_FULL_CHILD, str(ck)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert r.returncode == 3, r.stderr[-3000:]  # 3: Store.save raised
    err = json.loads(r.stdout.strip().splitlines()[-1])
    assert "ValueError" in err["types"], err  # tensorstore's error, not swallowed
    efbig = f"{os.strerror(errno.EFBIG)} [os_error_code='{errno.EFBIG}']"
    assert err["message"].endswith(efbig), err["message"]
    assert f"{ck}/2.orbax-checkpoint-tmp/" in err["message"]  # the step being saved

    ns: dict = {}
    exec(DISK_FULL_STATE, ns)
    want = ns["big_loop"](1)
    store = checkpoint.Store(str(ck))
    try:
        assert store.steps() == [1]
        loop, meta = store.restore(ns["big_loop"](2))  # a template: shapes only
    finally:
        store.close()
    assert os.listdir(ck) == ["1"]  # the partial step 2 is gone
    assert loop.epoch == 1 and loop.seconds == [0.5]
    assert meta["history"] == ["epoch 1"] and meta["epoch"] == 1
    got, ref = (
        jax.tree.map(np.asarray, {k: getattr(x, k) for k in checkpoint.ARRAYS})
        for x in (loop, want)
    )
    assert jax.tree.structure(got) == jax.tree.structure(ref)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize(
    "seqs, needle",
    [
        ({1: [2], 2: [3], 3: [4]}, "no training targets"),
        ({1: [2, 3], 2: [3, 4]}, "nothing to validate or test"),
        ({1: [2, 3, 2_000_000_000], 2: [3, 4, 5]}, "item ids are sparse"),
    ],
)
def test_untrainable_data_is_refused_before_anything_is_written(tmp_path, seqs, needle):
    wd = tmp_path / "wd"
    with pytest.raises(ValueError, match=needle):
        run_tiny(wd, seqs=seqs)
    assert not wd.exists()  # a corrected rerun is never "a different run"
