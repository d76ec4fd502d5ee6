"""Shared test helpers: tiny configs and the benchmark-data path."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
