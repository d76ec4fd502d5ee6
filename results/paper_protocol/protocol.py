"""Helpers of run.sh, reading a grid's ``results.jsonl`` / ``best.json``.

python results/paper_protocol/protocol.py field DIR KEY
    DIR/best.json's config[KEY]
python results/paper_protocol/protocol.py seed-stage2 STAGE1 STAGE2
    writes stage 1's best row as STAGE2/results.jsonl (stage 2a's max
    length 50 is that config, so the grid skips it)
python results/paper_protocol/protocol.py continue STAGE2 MAX_LEN HIDDEN HEADS
    exit 0 if lr 1e-4 should go on to a 400-epoch cap (the stage-3 rule
    in PROGRESS.md: it ended at the 200 cap more than 0.001 above lr
    1e-3 in validation NDCG@5), else 1
python results/paper_protocol/protocol.py original STAGE2 MAX_LEN HIDDEN HEADS [STAGE1]
    prints Original's configuration as a best.json (for reproduce
    --tuned): the better of lr 1e-3 and lr 1e-4 at stage 3, where an lr
    1e-4 run cut by the 200 cap within 0.001 of lr 1e-3 counts as a tie
    resolved for lr 1e-3, the one that converged; with STAGE1, its
    ``search`` says what the stages searched (reproduce prints it in the
    table's header)
python results/paper_protocol/protocol.py sync-cells SRC DST
    copies the finished cells of reproduce folder SRC (results.json
    written, not ended by a time limit), and the finished seed runs of a
    cell trained seed by seed, to DST without their checkpoints, where DST
    lacks them, and SRC's table2.json: what finished is committed from
    runs/ and copied back into a fresh checkout's runs/, where reproduce
    skips it
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys

MARGIN = 0.001


def _rows(d):
    with open(os.path.join(d, "results.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _best(d):
    with open(os.path.join(d, "best.json")) as f:
        return json.load(f)


def _at_cap(r):
    return r["epochs_run"] >= r["config"]["epochs"]


def _stage3(d, max_len, hidden, heads):
    """{(lr, epoch cap): row} of the stage-3 config's runs."""
    want = {"max_len": int(max_len), "hidden": int(hidden), "heads": int(heads)}
    return {
        (r["config"]["lr"], r["config"]["epochs"]): r
        for r in _rows(d)
        if r["status"] == "ok" and all(r["config"][k] == v for k, v in want.items())
    }


def _ndcg(r):
    return r["valid"]["NDCG@5"]


def should_continue(d, *cfg) -> bool:
    runs = _stage3(d, *cfg)
    lr3, lr4 = runs[(1e-3, 200)], runs[(1e-4, 200)]
    return _at_cap(lr4) and _ndcg(lr4) > _ndcg(lr3) + MARGIN and (1e-4, 400) not in runs


def original(d, *cfg) -> dict:
    runs = _stage3(d, *cfg)
    lr3, lr4 = runs[(1e-3, 200)], runs.get((1e-4, 400), runs[(1e-4, 200)])
    if _at_cap(lr4) and _ndcg(lr4) <= _ndcg(lr3) + MARGIN:
        pick = lr3
    else:
        pick = max((lr3, lr4), key=_ndcg)
    info = _best(d)
    keep = ("hash", "config", "valid", "test")
    return {
        **{k: info[k] for k in ("dataset", "backbone")},
        **{k: pick[k] for k in keep},
    }


SEARCHED = ("l2", "dropout", "max_len", "hidden", "heads", "lr")


def _values(rows, key) -> str:
    return "/".join(f"{v:g}" for v in sorted({r["config"][key] for r in rows}))


def searched(*stages) -> str:
    """What the stage folders' ``results.jsonl`` rows searched, read from the
    rows: per stage the number of configs, the keys that vary (a full
    product, or one key at a time) and those held fixed, and the seeds,
    layers, caps and patience of its runs."""
    parts, every = [], []
    for i, d in enumerate(stages, 1):
        rows = [r for r in _rows(d) if r["status"] == "ok"]
        every += rows
        n = len({tuple(r["config"][k] for k in SEARCHED) for r in rows})
        sizes = {k: len({r["config"][k] for r in rows}) for k in SEARCHED}
        vary = [k for k in SEARCHED if sizes[k] > 1]
        fixed = [f"{k} {_values(rows, k)}" for k in SEARCHED if k not in vary]
        keys = [f"{k} {_values(rows, k)}" for k in vary]
        if n == math.prod(sizes[k] for k in vary):
            desc = " x ".join(keys)
        else:
            desc = "one key at a time from the previous best: " + ", ".join(keys)
        parts.append(
            f"stage {i} ({n} configs): {desc}"
            + (f" at {', '.join(fixed)}" if fixed else "")
        )
    common = ", ".join(
        f"{k} {_values(every, k)}" for k in ("layers", "seed", "epochs", "patience")
    )
    return (
        f"Original searched on validation NDCG@5, one run per config "
        f"({common}); " + "; ".join(parts)
    )


def _finished(cell):
    path = os.path.join(cell, "results.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return not json.load(f).get("stopped")


def _copy_run(src, dst):
    """A run's files without its checkpoint folders; ``results.json`` last,
    as the runner writes it."""
    os.makedirs(dst, exist_ok=True)
    names = [n for n in os.listdir(src) if os.path.isfile(os.path.join(src, n))]
    for n in sorted(n for n in names if n not in ("results.json", ".lock")):
        shutil.copyfile(os.path.join(src, n), os.path.join(dst, n))
    shutil.copyfile(
        os.path.join(src, "results.json"), os.path.join(dst, "results.json")
    )


def sync_cells(src, dst) -> list[str]:
    """Copies each finished cell of ``src/cells`` that ``dst/cells`` lacks
    and the finished ``seed-<s>`` runs of a cell trained seed by seed
    (``reproduce --seed_runs``; the cell is written from them when the last
    one ends), and ``src/table2.json`` unless ``dst``'s lists more cells;
    returns what was copied."""
    copied = []
    cells = os.path.join(src, "cells")
    for name in sorted(os.listdir(cells)) if os.path.isdir(cells) else []:
        cell = os.path.join(cells, name)
        runs = [name] if _finished(cell) else []
        runs += [
            os.path.join(name, s) for s in sorted(os.listdir(cell))
            if s.startswith("seed-") and _finished(os.path.join(cell, s))
        ]  # fmt: skip
        for run in runs:
            out = os.path.join(dst, "cells", run)
            if not _finished(out):
                _copy_run(os.path.join(cells, run), out)
                copied.append(run)
    manifest, target = (
        os.path.join(src, "table2.json"),
        os.path.join(dst, "table2.json"),
    )
    if os.path.exists(manifest) and _entries(manifest) >= _entries(target):
        os.makedirs(dst, exist_ok=True)
        shutil.copyfile(manifest, target)
    return copied


def _entries(manifest) -> int:
    if not os.path.exists(manifest):
        return -1
    with open(manifest) as f:
        return len(json.load(f)["entries"])


def main(argv):
    cmd, d, *rest = argv
    if cmd == "field":
        print(_best(d)["config"][rest[0]])
    elif cmd == "seed-stage2":
        h = _best(d)["hash"]
        (row,) = [r for r in _rows(d) if r["hash"] == h]
        os.makedirs(rest[0], exist_ok=True)
        with open(os.path.join(rest[0], "results.jsonl"), "w") as f:
            f.write(json.dumps(row) + "\n")
    elif cmd == "continue":
        return 0 if should_continue(d, *rest) else 1
    elif cmd == "sync-cells":
        for name in sync_cells(d, rest[0]):
            print(f"{d} -> {rest[0]}: {name}")
    elif cmd == "original":
        info = original(d, *rest[:3])
        if rest[3:]:
            info["search"] = searched(rest[3], d)
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        raise SystemExit(f"unknown command {cmd!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
