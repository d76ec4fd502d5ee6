"""experiments.agreement: Jaccard agreement of hit sets, same seed against
other seeds, against numbers worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from awrsr_jax import files
from experiments import agreement
from tests.conftest import run_module

# Four users; a hit is a rank <= 5. Original: seed 0 hits users {0, 2},
# seed 1 {0, 1}, so J(none 0, none 1) = |{0}| / |{0, 1, 2}| = 1/3. The
# mechanism, its seeds listed 1 then 0: seed 1 hits {0, 1} (as Original's
# seed 1), seed 0 only {0} (rank 5 is a hit, 6 is not).
NONE = {0: [1, 7, 3, 9], 1: [2, 2, 8, 8]}
MECH = {1: [1, 1, 9, 9], 0: [5, 6, 6, 6]}


def test_jaccard_by_hand():
    assert agreement.jaccard([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(1 / 3)
    assert agreement.jaccard([1, 0], [1, 0]) == 1.0
    assert agreement.jaccard([0, 0], [0, 0]) == 1.0  # no hits in either
    assert agreement.jaccard([1, 0], [0, 1]) == 0.0


def _run(name, ranks_by_seed):
    return {"dir": name, "ranks": np.array(list(ranks_by_seed.values())),
            "config": {"seeds": list(ranks_by_seed), "config": {"patience": 60}}}  # fmt: skip


def _entry(mech):
    return dict(dataset="toy", backbone="sasrec", mech=mech, layers=1,
                refine_input="scores")  # fmt: skip


def test_same_and_other_seeds_by_hand():
    rows = agreement.block_agreement(
        [(_entry("none"), _run("n", NONE)), (_entry("add"), _run("a", MECH))]
    )
    none, add = rows
    assert none["mech"] == "none" and none["other"] == pytest.approx(1 / 3)
    assert add["seeds"] == [1, 0]  # paired by seed id, in the mechanism's order
    # seed 1: J({0,1}, {0,1}) = 1 and J({0,1}, {0,2}) = 1/3;
    # seed 0: J({0}, {0,2}) = 1/2 and J({0}, {0,1}) = 1/2
    assert add["same_per_seed"] == pytest.approx([1.0, 0.5])
    assert add["other_per_seed"] == pytest.approx([1 / 3, 0.5])
    assert add["same"] == pytest.approx(0.75)
    assert add["other"] == pytest.approx(5 / 12)
    # differences 2/3 and 0: mean 1/3, sd sqrt(2)/3, t = 1 on 1 df, p = 1/2
    assert add["test"]["t"] == pytest.approx(1.0)
    assert add["test"]["p"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="first cell must be none"):
        agreement.block_agreement([(_entry("add"), _run("a", MECH))])


def _table(root):
    entries = []
    for mech, ranks in (("none", NONE), ("add", MECH)):
        cell = root / "cells" / mech
        cell.mkdir(parents=True)
        seeds = list(ranks)
        files.write_json(cell / "config.json", dict(config={"patience": 60},
                         dataset="toy", seeds=seeds))  # fmt: skip
        files.write_json(cell / "results.json", dict(status="ok", seeds=seeds,
                         best_epoch=[5, 5], epochs_run=100))  # fmt: skip
        np.save(cell / "test_ranks.npy", np.array(list(ranks.values())))
        entries.append(_entry(mech) | {"cell": f"cells/{mech}"})
    files.write_json(root / "table2.json", dict(commands=["cmd"], entries=entries))


def test_the_command_writes_its_files(tmp_path):
    _table(tmp_path / "t")
    res = run_module("experiments.agreement", f"--from_results={tmp_path / 't'}",
                     f"--out={tmp_path / 'o'}")  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows = json.loads((tmp_path / "o" / "agreement_summary.json").read_text())
    assert [r["mech"] for r in rows] == ["none", "add"]
    md = (tmp_path / "o" / "agreement.md").read_text()
    assert "| add | 2 | 0.750 | 1.00 0.50 | 0.417 | 0.500 |" in md
    assert "| none | 2 | – | – | 0.333 | – |" in md
    res = run_module("experiments.agreement", f"--from_results={tmp_path / 't'}",
                     "--top=0")  # fmt: skip
    assert res.returncode != 0 and "--top=0: need at least 1" in res.stderr
    res = run_module("experiments.agreement", f"--from_results={tmp_path / 't'}",
                     "--rule")  # fmt: skip
    assert res.returncode != 0 and "trained with --report_patience" in res.stderr
