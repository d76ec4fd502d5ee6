"""Shared test helpers: tiny configs and the benchmark-data path."""

from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One compilation cache per test session, shared by this process and the
# `python -m` children it starts: the tests compile the same small programs
# many times over (configs that differ only in epochs or seeds, every CLI
# child), and compiling costs most of their time. A new folder each session
# keeps sessions independent.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="awrsr-jax-test-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def tiny_config(**kw):
    from awrsr_jax.config import Config

    base = dict(hidden=8, max_len=6, layers=2, heads=2, dropout=0.0, batch_size=8)
    base.update(kw)
    return Config(**base)


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m module args...`` from the repo root, output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


# ---------------------------------------------------------------- tiny runs
# Shared by the checkpoint, hardening and experiment tests: one tiny config and
# dataset, the one experiment path called quietly, and a reference run.

CKPT_CFG = tiny_config(layers=1, epochs=5, patience=50)


def tiny_seqs():
    from awrsr_jax.data import generate

    return generate(num_users=40, num_items=30, min_len=3, max_len=9, seed=1)


def run_tiny(workdir, cfg=None, seqs=None, *, seeds=None, sweep=None, **options):
    """:func:`awrsr_jax.runner.run` on :func:`tiny_seqs` (or ``seqs``), quiet,
    keeping every checkpoint unless ``keep_checkpoints`` is given."""
    from awrsr_jax import runner
    from awrsr_jax.datasets import Dataset

    options.setdefault("keep_checkpoints", 10)
    options.setdefault("progress", "none")
    return runner.run(
        CKPT_CFG if cfg is None else cfg,
        workdir=str(workdir),
        data=Dataset("synthetic", tiny_seqs() if seqs is None else seqs),
        seeds=seeds,
        sweep=sweep,
        options=runner.Options(**options),
    )


def final_state(workdir, cfg=None, step=None):
    """``(arrays, meta)`` of the newest (or ``step``) checkpoint, restored."""
    import jax
    import numpy as np

    from awrsr_jax import checkpoint, train

    cfg = CKPT_CFG if cfg is None else cfg
    store = checkpoint.Store(os.path.join(workdir, "checkpoints"), read_only=True)
    try:
        template = train.LoopState.template(cfg, 30, [cfg.seed])
        if step is not None:
            store.steps = lambda: [step]
        loop, meta = store.restore(template)
    finally:
        store.close()
    arrays = {k: getattr(loop, k) for k in checkpoint.ARRAYS}
    return jax.tree.map(np.asarray, arrays), meta


TIMINGS = ("seconds", "eval_seconds", "seconds_per_epoch", "train_seconds")


def strip_seconds(records):
    """Records without their wall-clock timings (which never repeat)."""
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


@pytest.fixture(scope="session")
def ref(tmp_path_factory):
    """An uninterrupted tiny run that keeps every epoch's checkpoint."""
    wd = tmp_path_factory.mktemp("ref")
    run_tiny(wd)
    return str(wd)


# ---------------------------------------------------------------- shared checks
# Helpers that several test modules use (test modules never import each other).


def mech_config(backbone, mech, refine_input="scores", **kw):
    """A one-layer :func:`tiny_config` of ``backbone`` refined by ``mech``."""
    return tiny_config(
        backbone=backbone, mech=mech, refine_input=refine_input, layers=1, **kw
    )


def with_refine_params(params, cfg, n, scale):
    """``params`` with random ``[n, n]`` (``[H, n, n]`` per head) matrices of
    ``cfg.mech`` added to every block, drawn ``normal / scale`` from fixed keys."""
    import jax

    from awrsr_jax.ops import refine

    shape = (cfg.heads, n, n) if cfg.per_head else (n, n)
    names = refine.param_names(cfg.mech)
    for i in range(cfg.layers):
        keys = jax.random.split(jax.random.PRNGKey(10 + i), max(len(names), 1))
        extra = {m: jax.random.normal(k, shape) / scale for m, k in zip(names, keys)}
        params[f"block{i}"] = {**params[f"block{i}"], **extra}
    return params


def check_item_chunks_match_whole_catalogue(cfg, params, data):
    """Item-chunked ranks and top-k (chunks of 7 items) equal whole-catalogue
    ones; returns ``(score, scores)``: the chunked scorer of the test inputs and
    their whole-catalogue scores."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from awrsr_jax import evaluate, models

    full = evaluate.eval_ranks(cfg, params, data, "test")
    chunked = evaluate.eval_ranks(cfg, params, data, "test", item_chunk=7)
    np.testing.assert_array_equal(full, chunked)

    model = models.build(cfg, data.num_items)
    inp, hist = data.test_inp, data.eval_hist
    state = model.apply(params, inp, method="user_state")

    def score(ids):
        return model.apply(params, state, ids, method="score_items")

    top, ids = evaluate.top_k_items(score, hist, data.num_items, 5, ic=7)
    scores = model.apply(params, inp, method="score_all")
    where = evaluate.candidate_mask(hist, data.num_items)
    ref_top, ref_ids = jax.lax.top_k(jnp.where(where, scores, -jnp.inf), 5)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(top, ref_top, rtol=1e-6)
    return score, scores


def _ranks():
    import numpy as np

    return {  # [seeds, users]
        "none": np.array([[1, 2, 3, 6, 10, 1], [2, 2, 3, 7, 1, 4]]),
        "add": np.array([[1, 1, 2, 4, 10, 1], [1, 3, 2, 5, 1, 2]]),
    }


# Test ranks of two seeds x six users under Original and add (the statistics
# and experiment tests), and the NDCG@5 of a rank written out.
RANKS = _ranks()


def ndcg5(r):
    import numpy as np

    r = np.asarray(r, float)
    return np.where(r <= 5, 1 / np.log2(r + 1), 0.0)
