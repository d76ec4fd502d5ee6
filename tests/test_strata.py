"""experiments.strata: user features, quantile groups and the per-group
seed-level tests, against numbers worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from awrsr_jax import analysis, datasets, files
from experiments import strata
from tests.conftest import run_module


def test_user_features_by_hand():
    seqs = {1: [1, 2, 3, 4], 2: [2, 3], 3: [3, 1, 2]}
    f = analysis.user_features(seqs)
    # evaluated: users 1 and 3 (>= 3 items); test inputs [1, 2, 3] and [3, 1]
    assert f["history"].tolist() == [3, 2]
    # item counts 1:2, 2:3, 3:3, 4:1, less the test targets 4 and 2
    assert f["popularity"].tolist() == [0, 2]


def test_quantile_groups_keep_equal_values_together():
    g, r = analysis.quantile_groups([1, 2, 3, 4, 5, 6], 3)
    assert g.tolist() == [0, 0, 1, 1, 2, 2] and r == [(1, 2), (3, 4), (5, 6)]
    g, r = analysis.quantile_groups([5, 1, 1, 1, 1, 6], 3)  # both cuts at 1
    assert g.tolist() == [1, 0, 0, 0, 0, 1] and r == [(1, 1), (5, 6)]
    g, r = analysis.quantile_groups([2, 2, 2], 3)
    assert g.tolist() == [0, 0, 0] and r == [(2, 2)]
    with pytest.raises(ValueError, match="non-empty 1-d"):
        analysis.quantile_groups([], 3)


# Six evaluated users with test inputs of 2, 2, 3, 3, 5 and 5 items: three
# history groups of two users. Ranks 1 / 3 / 30 give NDCG@5 1 / 0.5 / 0.
SEQS = {1: [1, 2, 3], 2: [4, 5, 6], 3: [1, 2, 3, 4], 4: [2, 3, 4, 5],
        5: [1, 2, 3, 4, 5, 6], 6: [6, 5, 4, 3, 2, 1]}  # fmt: skip
NONE = {
    0: [1, 30, 3, 30, 3, 30],
    1: [1, 30, 1, 30, 3, 30],
}  # groups .5 .25 .25 / .5 .5 .25
ADD = {1: [1, 30, 1, 30, 1, 3], 0: [1, 30, 3, 30, 1, 30]}  # .5 .5 .75 / .5 .25 .5
P_T3_DF1 = 1 - 2 * math.atan(3) / math.pi  # two-sided p of t = 3 on 1 df


def _cell(root, name, ranks_by_seed, *, mech, data_file, sha, best=(5, 5)):
    cell = root / "cells" / name
    cell.mkdir(parents=True)
    seeds = list(ranks_by_seed)
    files.write_json(cell / "config.json", dict(
        config={"patience": 60}, dataset="toy", data_file=data_file,
        data_sha256=sha, seeds=seeds))  # fmt: skip
    files.write_json(cell / "results.json", dict(status="ok", seeds=seeds,
                     best_epoch=list(best), epochs_run=100))  # fmt: skip
    np.save(cell / "test_ranks.npy", np.array(list(ranks_by_seed.values())))
    return dict(dataset=data_file, backbone="sasrec", mech=mech, layers=1,
                refine_input="scores", cell=f"cells/{name}")  # fmt: skip


def _table(root, sha=None):
    path = root / "toy.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(" ".join(map(str, [u, *s])) + "\n" for u, s in SEQS.items())
    )
    sha = sha or datasets.load(str(path)).sha256
    entries = [_cell(root, "n", NONE, mech="none", data_file=str(path), sha=sha),
               _cell(root, "a", ADD, mech="add", data_file=str(path), sha=sha,
                     best=(50, 5))]  # seed 1 within patience 60 at the end  # fmt: skip
    files.write_json(root / "table2.json", dict(commands=["cmd"], entries=entries))


def test_groups_of_history_by_hand(tmp_path):
    _table(tmp_path)
    md, rows = strata.render(str(tmp_path), by=("history",))
    add = {r["group"]: r for r in rows if r["mech"] == "add"}
    none = {r["group"]: r for r in rows if r["mech"] == "none"}
    assert [none[k]["range"] for k in range(3)] == [[2, 2], [3, 3], [5, 5]]
    assert none[2]["per_seed"] == [0.25, 0.25] and none[1]["per_seed"] == [0.25, 0.5]
    assert add[2]["seeds"] == [1, 0] and add[2]["per_seed"] == [0.75, 0.5]
    # group 2: differences .25 and .5 paired by seed id: t = 3 on 1 df
    assert add[2]["improvement_pct"] == pytest.approx(150.0)  # .625 / .25 - 1
    assert add[2]["p"] == pytest.approx(P_T3_DF1)
    assert add[0]["p"] == add[1]["p"] == 1.0  # no difference at all
    assert add[2]["p_holm"] == pytest.approx(3 * P_T3_DF1)
    # relative change per seed, last group minus first: 1 - 0 and 2 - 0
    last = add["last vs first"]
    assert last["mean_diff_pts"] == pytest.approx(150.0)
    assert last["p"] == last["p_holm"] == pytest.approx(P_T3_DF1)
    assert "| 5 | 2 | 0.2500 ± 0.0000 | +150.0% (p 0.205, Holm 0.614) |" in md
    assert "| last vs first |  |  | +150.0 pts (p 0.205, Holm 0.205) |" in md
    assert "/toy.txt / add: seeds [1] cut by the epoch cap" in md


def test_the_command_writes_its_files_and_refuses_other_data(tmp_path):
    _table(tmp_path / "t")
    res = run_module("experiments.strata", f"--from_results={tmp_path / 't'}",
                     "--by=popularity", f"--out={tmp_path / 'o'}")  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows = json.loads((tmp_path / "o" / "strata_summary.json").read_text())
    assert {r["by"] for r in rows} == {"popularity"}
    assert "by popularity" in (tmp_path / "o" / "strata.md").read_text()
    _table(tmp_path / "u", sha="0" * 64)
    res = run_module("experiments.strata", f"--from_results={tmp_path / 'u'}")
    assert res.returncode != 0
    assert "cells/n: the data it trained on is not here" in res.stderr
    assert "other data (sha256" in res.stderr
    res = run_module("experiments.strata", f"--from_results={tmp_path / 't'}",
                     "--by=age")  # fmt: skip
    assert "--by=age: choose from history, popularity" in res.stderr


def test_a_zero_original_group_gives_no_relative_change():
    def run(name, ranks):
        cfg = dict(data_sha256="x", seeds=[0, 1], config={"patience": 60})
        return {"dir": name, "config": cfg, "ranks": np.array(ranks)}

    def entry(mech):
        return dict(dataset="toy", backbone="sasrec", mech=mech, layers=1)

    zero_last = [[1, 30, 3, 30, 30, 30], [1, 30, 1, 30, 3, 30]]  # seed 0: group 2 is 0
    rows = strata.block_strata(
        [(entry("none"), run("n", zero_last)), (entry("add"), run("a", list(ADD.values())))],
        analysis.user_features(SEQS), "history", 3,
    )  # fmt: skip
    add = {r["group"]: r for r in rows if r["mech"] == "add"}
    assert "last vs first" not in add  # no relative change against a 0
    # group 2 means: add (.75 + .5) / 2 against none (0 + .25) / 2
    assert add[2]["improvement_pct"] == pytest.approx(100 * (0.625 / 0.125 - 1))
