"""Recommendations and evaluation share one scorer (RELIABILITY.md 12-14, 20).

A trained tiny run's checkpoint feeds both :mod:`awrsr_jax.recommend` and
``evaluate.eval_ranks``; a plain numpy ranking of ``score_all`` is the reference.
"""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from awrsr_jax import evaluate, models
from awrsr_jax.data import build
from awrsr_jax.recommend import Recommender, UnknownItemError, check_items
from tests.conftest import CKPT_CFG as CFG
from tests.conftest import run_module, tiny_seqs


@pytest.fixture(scope="module")
def rec(ref):  # noqa: F811
    return Recommender.from_workdir(ref)


@pytest.fixture(scope="module")
def split():
    seqs = tiny_seqs()
    data, users = build(seqs, CFG.max_len)
    return seqs, data, users


def numpy_ranks(rec, seqs, users):
    """Pessimistic rank of each test target among items outside the history."""
    net = models.build(CFG, rec.num_items)
    inp = np.zeros((len(users), CFG.max_len), np.int32)
    for r, u in enumerate(users):
        recent = seqs[u][:-1][-CFG.max_len :]
        inp[r, CFG.max_len - len(recent) :] = recent
    scores = np.asarray(net.apply(rec.params, inp, method="score_all"))
    out = []
    for s, u in zip(scores, users):
        hist, target = seqs[u][:-1], seqs[u][-1]
        cand = np.ones(rec.num_items + 1, bool)
        cand[0] = False
        cand[hist] = False
        cand[target] = False
        out.append(1 + np.sum(cand & (s >= s[target])))
    return np.asarray(out)


def test_eval_chunk_size_changes_no_rank_and_every_user_counts(rec, split):
    seqs, data, users = split
    eligible = [u for u, s in seqs.items() if len(s) >= 3]
    assert sorted(users.tolist()) == sorted(eligible)
    ranks = {}
    for chunk in (1, 7, 256):
        cfg = CFG.replace(eval_chunk=chunk)
        fn = jax.jit(lambda p, d, cfg=cfg: evaluate.eval_ranks(cfg, p, d, "test"))
        ranks[chunk] = np.asarray(fn(rec.params, data))
    assert len(ranks[7]) == len(eligible) and len(eligible) % 7 != 0
    assert np.array_equal(ranks[1], ranks[7]) and np.array_equal(ranks[7], ranks[256])
    assert np.array_equal(ranks[256], numpy_ranks(rec, seqs, users))


def test_recommend_ranks_like_evaluation_and_skips_history(rec, split):
    seqs, data, users = split
    net = models.build(CFG, rec.num_items)
    raw = np.asarray(
        net.apply(rec.params, np.asarray(data.test_inp), method="score_all")
    )
    assert raw.min() < 0 < raw.max()  # masking with 0 instead of -inf would show
    ranks = numpy_ranks(rec, seqs, users)
    outs = rec.recommend([seqs[u][:-1] for u in users], top_n=rec.num_items)
    for u, out, r in zip(users, outs, ranks):
        hist = set(seqs[u][:-1])
        assert 0 not in out["items"] and not hist & set(out["items"])
        assert sorted(out["items"]) == sorted(set(range(1, 31)) - hist)
        assert out["scores"] == sorted(out["scores"], reverse=True)
        assert out["items"].index(seqs[u][-1]) + 1 == r
    top3 = rec.recommend([seqs[users[0]][:-1]], top_n=3)[0]
    assert top3["items"] == outs[0]["items"][:3]


@pytest.mark.parametrize("bad", [0, 31, -3, "abc", 2**40, 1.5, True])
def test_unknown_item_ids_are_refused_on_the_host(rec, bad):
    with pytest.raises(UnknownItemError, match=f"item {bad!r} is not in the catalogue"):
        rec.recommend([[1, 2], [3, bad]], names=["a", "b"])
    with pytest.raises(UnknownItemError, match="^b: "):
        check_items([3, bad], 30, "b")


def test_build_refuses_items_outside_the_catalogue():
    with pytest.raises(ValueError, match="user 2: item 31 outside 1..30"):
        build({1: [1, 2, 3], 2: [4, 31, 5]}, 6, num_items=30)
    with pytest.raises(ValueError, match="user 1: item -1"):
        build({1: [1, -1, 3]}, 6)


def _cli(*args):
    return run_module("experiments.recommend", *args)


def test_cli_errors_name_the_id_or_the_line(ref, tmp_path):  # noqa: F811
    r = _cli(f"--workdir={ref}", "--history=3 999 4")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        "error: --history: item 999 is not in the catalogue (ids 1..30)"
    )
    assert "warning" not in r.stderr  # a finished run
    r = _cli(f"--workdir={ref}", "--history=3 \u0663")  # Arabic-Indic three
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        "error: --history: item '\u0663' is not in the catalogue: ids are written "
        "in ASCII digits 0-9"
    )
    users = tmp_path / "users.txt"
    users.write_text("1 3 4\n2 5 77\n")
    r = _cli(f"--workdir={ref}", f"--users_file={users}")
    assert r.returncode == 1
    assert f"{users}:2: item 77 is not in the catalogue" in r.stderr
    r = _cli(f"--workdir={ref}", f"--users_file={tmp_path}")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path}: is a directory, not a sequence file"
    )


def test_cli_on_an_unfinished_run_answers_with_a_warning(ref, tmp_path):  # noqa: F811
    wd = tmp_path / "wd"  # as a run still training (or killed) leaves it
    shutil.copytree(ref, wd, ignore=shutil.ignore_patterns("results.json"))
    r = _cli(f"--workdir={wd}", "--history=3 4", "--top_n=2")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["items"]) == 2
    warnings = [x for x in r.stderr.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"warning: {wd} has no results.json: training has not finished; answering "
        f"with the best params so far (checkpoint after {CFG.epochs} epochs, best "
        "validation at epoch "
    )
    assert not Recommender.from_workdir(str(wd)).finished


@pytest.mark.slow
def test_cli_prints_top_n_as_json(ref, rec, tmp_path):  # noqa: F811
    r = _cli(f"--workdir={ref}", "--history=12 7 3", "--top_n=5")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    want = rec.recommend([[12, 7, 3]], top_n=5)[0]
    assert out["history"] == [12, 7, 3] and out["items"] == want["items"]
    np.testing.assert_allclose(out["scores"], want["scores"], rtol=1e-6)
    users = tmp_path / "users.txt"
    users.write_text("1 3 4\n2 5 6 7\n")
    r = _cli(f"--workdir={ref}", f"--users_file={users}", "--top_n=2")
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["user"] for x in lines] == [1, 2] and all(
        len(x["items"]) == 2 for x in lines
    )
