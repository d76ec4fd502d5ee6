"""experiments.ablate: evaluation-time ablations of a trained run, checked
against the run's own files and an invariance of uniform attention."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from awrsr_jax.datasets import Dataset
from awrsr_jax.recommend import Recommender
from experiments import ablate
from tests.conftest import CKPT_CFG, run_module, run_tiny, tiny_seqs


@pytest.fixture(scope="module")
def simp_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("ablate") / "run"
    res = run_tiny(wd, dataclasses.replace(CKPT_CFG, mech="simp"))
    return str(wd), res


def test_trained_is_the_run_and_uniform_ignores_queries_and_keys(simp_run):
    wd, res = simp_run
    data = Dataset("synthetic", tiny_seqs())
    row = ablate.ablate(wd, data)  # raises if "trained" is not test_ranks.npy
    assert row["mech"] == "simp" and row["finished"]
    assert row["trained"]["NDCG@5"] == pytest.approx(res["test"]["NDCG@5"])
    # Uniform weights make the scores q.k irrelevant: other query and key
    # kernels give the same uniform ranks, and other trained ranks.
    rec = Recommender.from_workdir(wd)
    built = data.build(rec.cfg.max_len)

    def scramble(path, leaf):
        names = [getattr(k, "key", None) for k in path]
        hit = ("q" in names or "k" in names) and names[-1] == "kernel"
        return leaf[::-1, ::-1] * 3.0 if hit else leaf

    other = jax.tree_util.tree_map_with_path(scramble, rec.params)
    assert not jax.tree_util.tree_all(
        jax.tree_util.tree_map(lambda a, b: bool((a == b).all()), rec.params, other)
    )
    for variant, same in (("uniform", True), ("trained", False)):
        a = ablate.variant_ranks(rec.cfg, rec.params, built, variant)
        b = ablate.variant_ranks(rec.cfg, other, built, variant)
        assert np.array_equal(a, b) == same, variant
    with pytest.raises(ValueError, match="variant 'x'"):
        ablate.variant_ranks(rec.cfg, rec.params, built, "x")


def test_the_command_refuses_other_data(simp_run, tmp_path):
    wd, _ = simp_run
    res = run_module("experiments.ablate", f"--workdirs={wd}", "--dataset=synthetic")
    assert res.returncode != 0
    assert f"{wd}: trained on other data (sha256" in res.stderr
    res = run_module("experiments.ablate", f"--workdirs={tmp_path / 'none'}",
                     "--dataset=synthetic")  # fmt: skip
    assert res.returncode != 0 and "error:" in res.stderr
