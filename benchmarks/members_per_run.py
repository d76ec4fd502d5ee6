"""Seconds per epoch of one Table 2 cell trained as a K-seed ensemble.

    python benchmarks/members_per_run.py K DATASET TAG MECH
    python benchmarks/members_per_run.py 2 ml-1m ml1m simp

Trains the cell at Original's tuned configuration
(``results/paper_protocol/search/TAG-sasrec-stage2/original.json``) with
seeds 0..K-1 for 4 epochs in a temporary folder (``experiments.reproduce``,
as ``experiments.protocol`` does) and prints seed 0's training and validation seconds of
epochs 1-3 (epoch 0 compiles). Compare K against K=1 times K: on the CPU the
members of a trimmed ensemble train one after another, so K seeds cost about
K single runs (``results/cpu_bench.md``).
"""

from __future__ import annotations

import glob
import json
import sys
import tempfile

from awrsr_jax import files
from experiments import reproduce


def main(k: int, dataset: str, tag: str, mech: str) -> None:
    tuned = files.read_json(
        f"results/paper_protocol/search/{tag}-sasrec-stage2/original.json"
    )
    (entry,) = reproduce.table_entries(
        "2", [dataset], ["sasrec"], "gpu", [tuned], [mech]
    )
    with tempfile.TemporaryDirectory() as out:
        reproduce.run_table("2", [entry], out, seeds=list(range(k)), epochs=4,
                            patience=60)  # fmt: skip
        (path,) = glob.glob(f"{out}/cells/*/metrics.jsonl")
        for line in open(path):
            r = json.loads(line)
            if r.get("member") == 0 and r["epoch"] > 0:
                print(json.dumps({"seeds": k, "dataset": dataset, "mech": mech,
                                  "epoch": r["epoch"],
                                  "train_s": round(r["seconds"], 1),
                                  "eval_s": round(r.get("eval_seconds", 0), 1)}))  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]), *sys.argv[2:5])
