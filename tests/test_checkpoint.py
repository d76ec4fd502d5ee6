"""Checkpoints, resume, SIGTERM, NaN guards (RELIABILITY.md items 1, 2, 4-8;
item 3, partial checkpoints, is in test_hardening.py).

The fast tests resume in-process from checkpoints of one reference run; the
slow ones kill (SIGKILL) or stop (SIGTERM) child processes at seeded points and
check that the resumed run ends bit-identical to the uninterrupted one. The
epoch is the step boundary: one epoch is one compiled call.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awrsr_jax import checkpoint, datasets, evaluate, runner, train
from awrsr_jax.data import build
from tests.conftest import CKPT_CFG as CFG
from tests.conftest import REPO, final_state, run_tiny, strip_seconds, tiny_seqs


def run(workdir, cfg=CFG, **kw):
    return run_tiny(workdir, cfg, **kw)


def assert_same_run(a, b, cfg=CFG):
    """Bit-identical final state, history, metrics file and results."""
    (xa, ma), (xb, mb) = final_state(a, cfg), final_state(b, cfg)
    flat_a, flat_b = checkpoint._flat(xa), checkpoint._flat(xb)
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        assert flat_a[k].dtype == flat_b[k].dtype, k
        assert flat_a[k].tobytes() == flat_b[k].tobytes(), k
    assert ma["epoch"] == mb["epoch"]
    assert strip_seconds(ma["history"]) == strip_seconds(mb["history"])
    lines = [
        strip_seconds(json.loads(x) for x in open(os.path.join(d, "metrics.jsonl")))
        for d in (a, b)
    ]
    assert lines[0] == lines[1] == strip_seconds(ma["history"])
    res = [json.load(open(os.path.join(d, "results.json"))) for d in (a, b)]
    assert strip_seconds(res)[0] == strip_seconds(res)[1]


def clone_at(ref_dir, dest, step):
    """A workdir as a run killed after saving ``step`` leaves it (with a stale
    metrics line of an epoch that was not saved)."""
    os.makedirs(os.path.join(dest, "checkpoints"))
    shutil.copy(os.path.join(ref_dir, "config.json"), dest)
    shutil.copytree(
        os.path.join(ref_dir, "checkpoints", str(step)),
        os.path.join(dest, "checkpoints", str(step)),
    )
    with open(os.path.join(dest, "metrics.jsonl"), "w") as f:
        f.write('{"epoch": 99, "stale": true}\n')
    return str(dest)


@pytest.mark.parametrize("step", [1, 3])
def test_resume_from_a_kill_point_is_bit_identical(ref, tmp_path, step):
    wd = clone_at(ref, tmp_path / "wd", step)
    run(wd)
    assert_same_run(ref, wd)


def test_sigterm_saves_at_the_next_epoch_and_resumes_exactly(
    ref, tmp_path, monkeypatch
):
    saves = []
    real_save = checkpoint.Store.save

    def save_and_signal(self, loop, meta):
        real_save(self, loop, meta)
        saves.append(loop.epoch)
        if loop.epoch == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # lands inside this epoch boundary

    monkeypatch.setattr(checkpoint.Store, "save", save_and_signal)
    wd = tmp_path / "wd"
    with pytest.raises(runner.Preempted, match="after epoch 1"):
        run(wd)
    assert saves == [1, 2]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    assert not (wd / "results.json").exists()
    monkeypatch.undo()
    run(wd)
    assert_same_run(ref, str(wd))


def test_max_minutes_reports_the_best_so_far_and_the_same_call_goes_on(ref, tmp_path):
    wd = tmp_path / "wd"
    first = run(wd, max_minutes=1e-9)  # past the deadline after the first epoch
    assert first["stopped"] == "max_minutes"
    assert first["epochs_run"] == 1 and first["best_epoch"] == 0
    # Its test metrics are those of the reference run's epoch-0 parameters.
    history = final_state(ref, step=1)[1]["history"]
    assert first["valid"] == history[0]["valid"]
    done = run(wd)
    assert "stopped" not in done and done["epochs_run"] == CFG.epochs
    assert_same_run(ref, str(wd))


def test_same_seed_same_bytes_other_seed_differs(ref, tmp_path):
    run(tmp_path / "again")
    assert_same_run(ref, str(tmp_path / "again"))
    data, _ = build(tiny_seqs(), CFG.max_len)
    other = checkpoint._flat(train.fit(CFG, data, seeds=[1]).best_params)
    mine = checkpoint._flat(final_state(ref)[0]["best_params"])
    assert all(not np.array_equal(np.asarray(other[k]), mine[k]) for k in mine)


def test_latest_and_best_kept_together_and_nan_never_best(ref, tmp_path, monkeypatch):
    # Validation NDCG@5 is NaN after epoch 0, so epoch 0 stays best while only
    # the two newest steps are kept: restoring the latest still gives the best.
    real = evaluate.summarize
    calls = []

    def nan_after_first(ranks):
        out = real(ranks)
        calls.append(1)
        if len(calls) > 1:
            out[train.SELECT] = float("nan")
        return out

    monkeypatch.setattr(evaluate, "summarize", nan_after_first)
    wd = tmp_path / "wd"
    run(wd, keep_checkpoints=2)
    assert sorted(int(s) for s in os.listdir(wd / "checkpoints")) == [4, 5]
    arrays, meta = final_state(str(wd))
    assert arrays["best_epoch"].tolist() == [0]
    at_best = final_state(ref, step=1)[0]["state"]["params"]
    for k, v in checkpoint._flat(at_best).items():
        assert np.array_equal(checkpoint._flat(arrays["best_params"])[k], v), k


def _inject(monkeypatch, epoch, what):
    real = train.members.compiled

    def compiled(cfg, mesh=None):
        epoch_fn, eval_fn = real(cfg, mesh)

        def bad_epoch(state, hp, active, data, e):
            state, stats = epoch_fn(state, hp, active, data, e)
            if e == epoch and what == "parameters":
                p = state["params"]["params"]
                p["pos_emb"] = p["pos_emb"].at[0, 0, 0].set(jnp.inf)
            if e == epoch and what in ("training loss", "gradient"):
                key = "loss" if what == "training loss" else "grad_norm"
                stats = dict(stats, **{key: stats[key] * jnp.nan})
            return state, stats

        return bad_epoch, eval_fn

    monkeypatch.setattr(train.members, "compiled", compiled)


@pytest.mark.parametrize("what", ["training loss", "gradient", "parameters"])
def test_nan_stops_naming_the_epoch_and_is_never_saved(tmp_path, monkeypatch, what):
    _inject(monkeypatch, 2, what)
    wd = tmp_path / "wd"
    with pytest.raises(FloatingPointError, match=f"non-finite {what}.* at epoch 2"):
        run(wd)
    assert sorted(int(s) for s in os.listdir(wd / "checkpoints")) == [1, 2]
    monkeypatch.undo()
    for step in (1, 2):
        arrays, _ = final_state(str(wd), step=step)
        assert all(
            np.isfinite(x).all()
            for x in jax.tree.leaves(arrays)
            if x.dtype.kind == "f" and x.ndim > 1
        )


def test_real_divergence_is_caught(tmp_path):
    with pytest.raises(FloatingPointError, match=r"at epoch \d+; not saved"):
        run(tmp_path / "wd", sweep={"lr": [1e30]})


@pytest.mark.slow  # two model compiles, about 15 s each on a busy 2-core CPU
@pytest.mark.parametrize(
    "model", [dict(mech="value"), dict(backbone="stosa", mech="stoc")]
)
def test_all_padding_sequence_is_finite_forward_and_backward(model):
    from awrsr_jax import models

    cfg = CFG.replace(**model)
    try:
        net = models.build(cfg, 30)
    except ImportError:
        pytest.skip("backbone not available")
    seq = jnp.zeros((2, cfg.max_len), jnp.int32)
    params = net.init(jax.random.PRNGKey(0), seq)
    scores = jax.jit(lambda p: net.apply(p, seq, method="score_all"))(params)
    assert np.isfinite(np.asarray(scores)).all()

    def loss(p):
        return net.apply(p, seq, seq, seq, False, method="loss")

    val, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert np.isfinite(float(val))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
    "change, needle",
    [
        (
            dict(hidden=16),
            r"/ffn1/bias: checkpoint has \(1, 8\) float32, model expects \(1, 16\)",
        ),
        (dict(mech="simp"), r"W_R[QK]: missing from the checkpoint"),
        (dict(layers=2), r"block1.*missing from the checkpoint"),
    ],
)
def test_restoring_into_a_different_model_names_the_key(ref, change, needle):
    with pytest.raises(checkpoint.CheckpointError, match=needle):
        final_state(ref, CFG.replace(**change))


@pytest.mark.parametrize(
    "backbone, needle, config_change",
    [
        (
            "stosa",
            r"block0/dense_mu/bias: missing from the checkpoint",
            r"\(backbone: 'sasrec' -> 'stosa'\)",
        ),
        (
            "bert4rec",
            r"block0/ffn1/bias: checkpoint has \(1, 8\) float32, "
            r"model expects \(1, 32\) float32",
            r"\(backbone: 'sasrec' -> 'bert4rec';",
        ),
    ],
)
def test_restoring_into_another_backbone_names_the_key(
    ref, tmp_path, backbone, needle, config_change
):
    """A sasrec checkpoint restored into a stosa or bert4rec template names a
    mismatched key (stosa: its Gaussian layers are missing; bert4rec: its
    4x-wide feed-forward has another shape), at the store and through the
    runner when only the checkpoints are in the workdir (which quarantines
    none of them); with the workdir's config.json the runner refuses first,
    naming the backbone change."""
    other = CFG.replace(backbone=backbone)
    with pytest.raises(checkpoint.CheckpointError, match=needle):
        final_state(ref, other)
    bare = tmp_path / "bare"
    shutil.copytree(os.path.join(ref, "checkpoints"), bare / "checkpoints")
    steps = sorted(os.listdir(bare / "checkpoints"))
    with pytest.raises(checkpoint.CheckpointError, match=needle):
        run(bare, other)
    # Nothing quarantined, no config or result written.
    assert sorted(os.listdir(bare / "checkpoints")) == steps
    assert not {"config.json", "metrics.jsonl", "results.json"} & set(os.listdir(bare))
    with pytest.raises(ValueError, match="different run " + config_change):
        run(ref, other)


def test_restoring_with_other_item_count_names_the_shape(ref):
    store = checkpoint.Store(os.path.join(ref, "checkpoints"), read_only=True)
    with pytest.raises(checkpoint.CheckpointError, match=r"item_emb.*\(1, 41, 8\)"):
        store.restore(train.LoopState.template(CFG, 40, [0]))


def test_a_different_config_in_the_workdir_is_refused(ref):
    with pytest.raises(ValueError, match=r"different run \(lr: 0.001 -> 0.002\)"):
        run(ref, CFG.replace(lr=0.002))


def test_a_larger_epoch_cap_continues_the_run_exactly(ref, tmp_path):
    wd = tmp_path / "wd"
    run(wd, CFG.replace(epochs=3))
    run(wd, CFG)  # 3 -> 5 epochs: the same run as 5 from the start
    assert_same_run(ref, wd)
    with pytest.raises(ValueError, match=r"different run \(epochs: 5 -> 4\)"):
        run(ref, CFG.replace(epochs=4))
    # Validated every 2 epochs, a 3-epoch run validated its last epoch, which
    # a longer run would not have: continuing it would not be that run.
    odd = tmp_path / "odd"
    run(odd, CFG.replace(epochs=3, eval_every=2))
    with pytest.raises(ValueError, match=r"different run \(epochs: 3 -> 5\)"):
        run(odd, CFG.replace(eval_every=2))


CHILD = """
import sys, time
from awrsr_jax import train
from tests.conftest import run_tiny

wd, mode, k, wait = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
real_fit = train.fit


def pause():
    print("AT", flush=True)
    time.sleep(wait)


def fit(*a, after_epoch, **kw):
    def hook(lp):
        if mode == "before" and lp.epoch == k:
            pause()
        out = after_epoch(lp)
        if mode == "after" and lp.epoch == k:
            pause()
        return out

    return real_fit(*a, after_epoch=hook, **kw)


train.fit = fit
if mode in ("create", "finalize"):  # pause inside orbax's save of step k
    from orbax.checkpoint._src.path import atomicity

    cls = atomicity.AtomicRenameTemporaryPath
    orig = getattr(cls, mode)

    async def patched(self, *a, **kw):
        if self.get_final().name == str(k):
            if mode == "create":
                await orig(self, *a, **kw)
            pause()
        return await orig(self, *a, **kw)

    setattr(cls, mode, patched)
if len(sys.argv) > 5:  # the real CLI, for SIGTERM
    from absl import app
    from experiments import main

    sys.argv = ["main", *sys.argv[5:]]
    app.run(main.main)
else:
    run_tiny(wd)
"""


def _child(tmp_root, *args):
    import subprocess
    import sys

    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(tmp_root / "jax-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *map(str, args)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


KILL_POINTS = [("before", k) for k in (1, 2, 3, 4)] + [
    ("after", k) for k in (1, 2, 3, 4)
]
KILL_POINTS += [("create", 2), ("finalize", 3)]  # two inside a save


@pytest.mark.slow
def test_sigkill_at_ten_points_resumes_bit_exactly(ref, tmp_path):
    import random
    import time

    rng = random.Random(0)
    survived = []
    for i, (mode, k) in enumerate(KILL_POINTS):
        wd = tmp_path / f"k{i}"
        child = _child(tmp_path, wd, mode, k, 60)
        assert child.stdout.readline().strip() == "AT", child.communicate()[1][-2000:]
        time.sleep(rng.uniform(0.0, 0.2))
        os.kill(child.pid, signal.SIGKILL)
        child.communicate()
        assert child.returncode == -signal.SIGKILL
        steps = sorted(int(s) for s in os.listdir(wd / "checkpoints") if s.isdigit())
        if mode in ("create", "finalize"):
            assert max(steps) == k - 1  # the interrupted save is never listed
        run(wd)
        assert_same_run(ref, str(wd))
        survived.append((mode, k))
    print(f"kill points survived bit-exactly: {len(survived)}/{len(KILL_POINTS)}")


@pytest.mark.slow
def test_sigterm_at_five_points_saves_exits_0_and_resumes(ref, tmp_path):
    from awrsr_jax.data import write_sequences

    data = tmp_path / "tiny.txt"
    write_sequences(data, tiny_seqs())
    flags = [f"--{k}={v}" for k, v in json.loads(CFG.to_json()).items()]
    points = [("after", 1), ("after", 2), ("after", 3), ("before", 2), ("before", 4)]
    saved = 0
    for i, (mode, k) in enumerate(points):
        wd = tmp_path / f"t{i}"
        argv = [*flags, "--dataset=file", f"--data_file={data}", f"--workdir={wd}"]
        child = _child(tmp_path, wd, mode, k, 2, *argv)
        assert child.stdout.readline().strip() == "AT", child.communicate()[1][-2000:]
        os.kill(child.pid, signal.SIGTERM)
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err[-2000:]
        assert "stopped by SIGTERM" in err
        latest = max(int(s) for s in os.listdir(wd / "checkpoints") if s.isdigit())
        assert latest == (k + 1 if mode == "after" else k)
        assert not (wd / "results.json").exists()
        runner.run(CFG, workdir=str(wd), data=datasets.from_flags(None, str(data)),
                   options=runner.Options(progress="none"))  # fmt: skip
        assert_same_run(ref, str(wd))
        saved += 1
    print(f"SIGTERM saves: {saved}/{len(points)}")


def test_results_without_a_readable_checkpoint_never_restart_silently(ref, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(ref, wd)
    shutil.move(wd / "checkpoints", tmp_path / "gone")
    before = (wd / "results.json").read_bytes()
    with pytest.raises(ValueError, match="holds an earlier run .*--restart"):
        run(wd)
    assert (wd / "results.json").read_bytes() == before
    run(wd, restart=True)  # the old files move aside, the run trains again
    assert (wd / "replaced-1" / "results.json").read_bytes() == before
    assert_same_run(ref, str(wd))


def test_quarantined_checkpoints_alone_also_block_a_restart(ref, tmp_path):
    wd = tmp_path / "wd"
    os.makedirs(wd / "checkpoints-unreadable" / "3")
    shutil.copy(os.path.join(ref, "config.json"), wd)
    with pytest.raises(ValueError, match=r"checkpoints-unreadable/\)"):
        run(wd)


def test_a_second_run_in_the_same_workdir_is_refused(ref, tmp_path):
    from awrsr_jax.files import WorkdirLock

    wd = tmp_path / "wd"
    wd.mkdir()
    with WorkdirLock(wd):  # what a live run holds
        with pytest.raises(ValueError, match=rf"{wd} is in use by another run"):
            run(wd)
    assert sorted(os.listdir(wd)) == [".lock"]


def test_code_version_ignores_docstrings_comments_and_layout(tmp_path):
    src = '''"""Module doc."""

X = 1  # a comment


def f(a):
    """Function doc."""
    return a + X


class C:
    """Class doc."""

    def g(self):
        return "not a docstring", 2
'''
    (tmp_path / "pkg").mkdir()

    def version(text, name="m.py"):
        for old in (tmp_path / "pkg").glob("*.py"):
            old.unlink()
        (tmp_path / "pkg" / name).write_text(text)
        checkpoint.source_hash.cache_clear()
        return checkpoint.source_hash(tmp_path / "pkg")

    base = version(src)
    assert len(base) == 12
    same = (
        src.replace("Module doc.", "Other words.")
        .replace('"""Function doc."""\n', "")
        .replace("# a comment", "")
        .replace("X = 1", "X = (\n    1\n)")
        .replace('"""Class doc."""', '"""Class doc.\n\n    Longer.\n    """')
    )
    assert version(same) == base
    assert version(src.replace("a + X", "a - X")) != base
    assert version(src.replace('"not a docstring"', '"changed"')) != base
    assert version(src, name="n.py") != base  # the path counts
    # the package's own version has this form
    package = pathlib.Path(checkpoint.__file__).parent
    assert checkpoint.code_version().endswith("+" + checkpoint.source_hash(package))
