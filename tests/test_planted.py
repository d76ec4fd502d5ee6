"""The planted benchmark: generator, oracle ceiling, popularity floor, CLI.

The oracle's ranks on a tiny world are derived by hand below; a trained model
never beats the ceiling by more than sampling noise (slow); the CLI renders a
table from hand-made cells (fast) and runs end to end at ``--budget=smoke``
(slow).
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from awrsr_jax import data as data_lib
from awrsr_jax import evaluate, files, planted
from tests.conftest import run_module

# Items 1..4: clusters 0, 0, 1, 1; popularity .4, .2, .2, .2 (a tie on
# purpose); rule (k = 1): cluster 0 -> 1, cluster 1 -> 0; p = 1/2.
HAND = planted.World(
    cluster=np.array([-1, 0, 0, 1, 1]),
    pop=np.array([0.0, 0.4, 0.2, 0.2, 0.2]),
    rule=np.array([1, 0]),
    order=1,
    p=0.5,
)
# User 1: valid [1] -> 3, test [1, 3] -> 4. User 2: valid [2, 1] -> 4,
# test [2, 1, 4] -> 3.
HAND_SEQS = {1: [1, 3, 4], 2: [2, 1, 4, 3]}


def test_oracle_probabilities_by_hand():
    """P(j | h) = (1 - p) pop_j / Z + p [c_j = c*] pop_j / Z_c*."""
    got = planted.next_probs(HAND, [[0, 1], [1, 3], [2, 1]])
    want = [
        # h = [1] (padded): Z = .6; c* = 1: {3, 4}, Z_c = .4
        [0, 0, 0.5 * 0.2 / 0.6, 0.5 * 0.2 / 0.6 + 0.5 * 0.5, 0.5 * 0.2 / 0.6 + 0.25],
        # h = [1, 3]: Z = .4; c* = 0: {2}, Z_c = .2
        [0, 0, 0.5 * 0.5 + 0.5 * 1.0, 0, 0.5 * 0.5],
        # h = [2, 1]: Z = .4; c* = 1: {3, 4}, Z_c = .4
        [0, 0, 0, 0.5, 0.5],
    ]
    np.testing.assert_allclose(got, want, atol=1e-12)
    # c* = 0 has no unseen item left: the rule's draw is the popularity draw.
    np.testing.assert_allclose(planted.next_probs(HAND, [[2, 1, 4]]), [[0, 0, 0, 1, 0]])


def test_oracle_and_floor_ranks_by_hand():
    """Pessimistic ties under the project's protocol: valid, user 1: P(3) =
    P(4) = 5/12 -> rank 2; user 2: P(3) = P(4) -> 2. Test, user 1: P(2) = 3/4
    > P(4) -> 2; user 2: only item 3 left -> 1. Popularity (all .2): ranks
    3, 2 (valid) and 2, 1 (test)."""
    d, _ = data_lib.build(HAND_SEQS, max_len=4)
    np.testing.assert_array_equal(planted.oracle_ranks(HAND, d, "valid"), [2, 2])
    np.testing.assert_array_equal(planted.oracle_ranks(HAND, d, "test"), [2, 1])
    np.testing.assert_array_equal(planted.popularity_ranks(HAND, d, "valid"), [3, 2])
    np.testing.assert_array_equal(planted.popularity_ranks(HAND, d, "test"), [2, 1])
    test = planted.bounds(HAND, d)["ceiling"]["test"]
    assert test["Recall@1"] == pytest.approx(0.5)
    assert test["NDCG@5"] == pytest.approx((1 / math.log2(3) + 1) / 2)
    assert test["MRR"] == pytest.approx(0.75)


def test_rule_of_order_two_reads_the_last_two_clusters_in_order():
    """Code = c_{t-2} C + c_{t-1}; with p = 1 the next item is in c*."""
    world = planted.World(HAND.cluster, HAND.pop, np.array([0, 0, 1, 0]), 2, 1.0)
    got = planted.next_probs(world, [[3, 1], [1, 3], [0, 1]])
    np.testing.assert_allclose(got[0], [0, 0, 0, 0, 1])  # code 2 -> cluster 1
    np.testing.assert_allclose(got[1], [0, 0, 1, 0, 0])  # code 1 -> cluster 0
    np.testing.assert_allclose(got[2], [0, 0, 1 / 3, 1 / 3, 1 / 3])  # < k items


SMALL = planted.Spec(num_users=300, num_items=60, num_clusters=4, order=2,
                     p=0.8, min_len=6, max_len=12, seed=3)  # fmt: skip


def test_generator_is_seeded_and_follows_its_rule():
    world, seqs = planted.sample(SMALL)
    assert planted.sample(SMALL)[1] == seqs
    assert len(seqs) == SMALL.num_users
    for s in seqs.values():
        assert SMALL.min_len <= len(s) <= SMALL.max_len
        assert len(set(s)) == len(s) and min(s) >= 1 and max(s) <= SMALL.num_items
    # P(next in c*) = p + (1 - p) * (popularity share of c*), about .8 + .05.
    hits = [
        world.cluster[s[t]] == world.rule[world.cluster[s[t - 2]] * 4
                                          + world.cluster[s[t - 1]]]
        for s in seqs.values() for t in range(2, len(s))
    ]  # fmt: skip
    assert 0.8 < np.mean(hits) < 0.92


def test_without_a_rule_the_ceiling_is_the_floor():
    spec = dataclasses.replace(SMALL, p=0.0)
    world, seqs = planted.sample(spec)
    d, _ = data_lib.build(seqs, max_len=12)
    for split in ("valid", "test"):
        np.testing.assert_array_equal(
            planted.oracle_ranks(world, d, split),
            planted.popularity_ranks(world, d, split),
        )


def _counted_popularity(spec):
    """Test NDCG@5 per user of ranking by item counts in the training parts,
    of the floor and of the ceiling."""
    world, seqs = planted.sample(spec)
    d, _ = data_lib.build(seqs, max_len=spec.max_len)
    train, _, _ = data_lib.leave_one_out(seqs)
    counts = np.bincount(np.concatenate(list(train.values())), minlength=201)
    hist, tgt = planted.split_history(d, "test")
    scores = np.tile(counts, (d.num_eval, 1))
    return (
        _ndcg5(planted.ranks_of_scores(scores, hist, tgt, spec.num_items)),
        _ndcg5(planted.popularity_ranks(world, d, "test")),
        _ndcg5(planted.oracle_ranks(world, d, "test")),
    )


def test_counted_popularity_stays_near_the_floor():
    """Without a rule, popularity counted from the data is the floor up to
    sampling noise; with one (p = .8), the rule tilts the item marginals a
    little towards the clusters it picks, and counted popularity closes
    under a fifth of the gap between floor and ceiling."""
    spec = dataclasses.replace(SMALL, num_users=1500, num_items=200,
                               num_clusters=8, p=0.0)  # fmt: skip
    count, floor, _ = _counted_popularity(spec)
    diff = count - floor
    assert abs(diff.mean()) <= 3 * diff.std(ddof=1) / math.sqrt(diff.size)
    count, floor, ceiling = _counted_popularity(dataclasses.replace(spec, p=0.8))
    gap = ceiling.mean() - floor.mean()
    assert gap > floor.mean()  # the ceiling is over twice the floor
    assert count.mean() - floor.mean() < 0.2 * gap


def _ndcg5(ranks):
    return np.where(ranks <= 5, 1 / np.log2(ranks + 1.0), 0.0)


def test_spec_check_names_the_problem():
    with pytest.raises(ValueError, match="order \\+ 2 <= min_len"):
        planted.Spec(order=3, min_len=4, max_len=10).check()
    with pytest.raises(ValueError, match="p=1.5"):
        planted.Spec(p=1.5).check()


def test_write_and_read_round_trip(tmp_path):
    path = planted.write(SMALL, tmp_path)
    info, ds = planted.read(path)
    assert info["spec"]["order"] == 2 and ds.name == SMALL.name
    assert info["bounds"]["ceiling"]["test"]["NDCG@5"] > 0
    stamp = (tmp_path / f"{SMALL.name}.txt").stat().st_mtime_ns
    assert planted.write(SMALL, tmp_path) == path  # exists: not rewritten
    assert (tmp_path / f"{SMALL.name}.txt").stat().st_mtime_ns == stamp


@pytest.mark.slow  # trains SASRec for 40 epochs: about 30 s on a busy CPU
def test_a_trained_model_never_beats_the_ceiling(tmp_path):
    from awrsr_jax import runner
    from awrsr_jax.config import Config
    from awrsr_jax.datasets import Dataset

    spec = planted.Spec(num_users=600, num_items=40, num_clusters=4, order=1,
                        p=0.9, min_len=6, max_len=10, seed=5)  # fmt: skip
    world, seqs = planted.sample(spec)
    data = Dataset(spec.name, seqs)
    cfg = Config(hidden=16, max_len=10, layers=1, heads=1, dropout=0.1, lr=5e-3,
                 batch_size=64, epochs=40, patience=10)  # fmt: skip
    runner.run(cfg, workdir=str(tmp_path), data=data, seeds=[0],
               options=runner.Options(progress="none"))  # fmt: skip
    model = _ndcg5(np.load(tmp_path / "test_ranks.npy")[0])
    built = data.build(cfg.max_len)
    oracle = _ndcg5(planted.oracle_ranks(world, built, "test"))
    floor = _ndcg5(planted.popularity_ranks(world, built, "test"))
    diff = model - oracle
    se = diff.std(ddof=1) / math.sqrt(diff.size)
    assert diff.mean() < 2 * se  # one-sided: at most noise above the ceiling
    assert model.mean() > floor.mean()  # and it learned the rule in part


# ---------------------------------------------------------------- the command


def _fake_cell(out, name, ranks_KxU, *, mech, dataset, epochs_run=30):
    cell = out / "cells" / name
    cell.mkdir(parents=True)
    k = len(ranks_KxU)
    cfg = {"patience": 20, "eval_every": 1, "max_len": 8}
    files.write_json(cell / "config.json", {"config": cfg, "dataset": name})
    test = [evaluate.summarize(r) for r in ranks_KxU]
    files.write_json(cell / "results.json", dict(
        status="ok", seeds=list(range(k)), test=test, valid=test,
        best_epoch=[5] * k, epochs_run=epochs_run, seconds_per_epoch=0.5,
        train_seconds=15.0, params=1000, refine_params=128 if mech != "none" else 0,
        device="cpu"))  # fmt: skip
    np.save(cell / "test_ranks.npy", np.asarray(ranks_KxU))
    files.write_lines(cell / "metrics.jsonl", [  # member 1 outlives member 0
        dict(member=0, epoch=0, seconds=10.0, eval_seconds=2.0),
        dict(member=1, epoch=0, seconds=11.0, eval_seconds=2.0),
        dict(member=1, epoch=1, seconds=5.0)])  # fmt: skip
    return {"dataset": dataset, "backbone": "sasrec", "mech": mech, "layers": 1,
            "refine_input": "scores", "cell": f"cells/{name}"}  # fmt: skip


def test_render_fractions_from_hand_made_cells(tmp_path):
    """Fraction of the ceiling = a seed's test NDCG@5 / the oracle's; the
    p of the seed-paired test against none; a cell cut while improving."""
    from experiments import planted as cli

    spec = planted.Spec(num_users=4, num_items=40, num_clusters=4, min_len=5,
                        max_len=8)  # fmt: skip
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    bounds = {"ceiling": {"test": {"NDCG@5": 0.5, "Recall@10": 0.8}},
              "floor": {"test": {"NDCG@5": 0.1, "Recall@10": 0.2}}}  # fmt: skip
    files.write_json(data_dir / f"{spec.name}.json",
                     {"spec": dataclasses.asdict(spec), "bounds": bounds})  # fmt: skip
    ds = str(data_dir / f"{spec.name}.txt")
    none = [[1, 1, 30, 30], [1, 30, 30, 30]]  # NDCG@5 per seed: .5, .25
    add = [[1, 1, 1, 30], [1, 1, 30, 30]]  # .75, .5
    entries = [_fake_cell(tmp_path, "a", none, mech="none", dataset=ds),
               _fake_cell(tmp_path, "b", add, mech="add", dataset=ds, epochs_run=25)]  # fmt: skip
    files.write_json(tmp_path / "tableplanted.json",
                     {"commands": ["cmd"], "entries": entries})  # fmt: skip
    paths = cli.render(tmp_path, tmp_path / "out")
    rows = json.loads(open(paths[1]).read())["cells"]
    by = {r["mech"]: r for r in rows}
    assert by["none"]["fraction_per_seed"]["NDCG@5"] == pytest.approx([1.0, 0.5])
    assert by["add"]["fraction_per_seed"]["NDCG@5"] == pytest.approx([1.5, 1.0])
    assert by["add"]["p_vs_none"]["NDCG@5"] == 0.0  # the same +.25 on both seeds
    assert by["add"]["cut_seeds"] == [0, 1] and by["none"]["cut_seeds"] == []
    assert by["add"]["order"] == 2 and by["add"]["refine_params"] == 128
    assert by["add"]["wall_seconds"] == 18.0  # the slowest member per epoch
    md = open(paths[0]).read()
    assert "| add | 1.250 ± 0.354 † +0.500 (p=0.000**) |" in md
    assert "| popularity floor | 0.200 |" in md
    assert paths[2].endswith(".png")


def test_max_minutes_zero_starts_no_cell(tmp_path, capsys):
    import io

    from experiments import planted as cli
    from tests.conftest import tiny_config

    log = io.StringIO()
    cli.run_sweep([("x.txt", tiny_config())], str(tmp_path), max_minutes=0,
                  log=log, seeds=[0], epochs=1, patience=1)  # fmt: skip
    assert "time limit: not starting none on x.txt" in log.getvalue()
    assert not (tmp_path / "cells").exists()


def test_cli_refuses_unknown_mechs_before_writing_anything(tmp_path):
    out = tmp_path / "p"
    res = run_module("experiments.planted", "--budget=smoke", f"--out={out}",
                     "--mechs=none,ad")  # fmt: skip
    assert res.returncode == 1
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .startswith("error: --mechs=none,ad: 'ad' is not a mechanism of sasrec")
    )
    assert not out.exists()


@pytest.mark.slow  # two tiny cells, compiled: about 40 s on a busy 2-core CPU
def test_cli_smoke_end_to_end_and_resume(tmp_path):
    out = tmp_path / "p"
    res = run_module("experiments.planted", "--budget=smoke", f"--out={out}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "fraction of the ceiling" in res.stdout
    rows = json.loads((out / "planted_summary.json").read_text())["cells"]
    assert {r["mech"] for r in rows} == {"none", "add"}
    assert all(len(r["fraction_per_seed"]["NDCG@5"]) == 2 for r in rows)
    assert (out / "planted_fraction.png").exists()
    cells = sorted((out / "cells").iterdir())
    stamps = [(c / "results.json").stat().st_mtime_ns for c in cells]
    res = run_module("experiments.planted", "--budget=smoke", f"--out={out}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert [(c / "results.json").stat().st_mtime_ns for c in cells] == stamps
