"""Reading what runs wrote: workdirs, manifests of tables, and result tables.

* :func:`read_run` loads a workdir written by :func:`awrsr_jax.runner.run`
  (``config.json``, ``results.json``, ``test_ranks.npy``), with the
  per-member values as lists whatever the member count.
* A reproduce table's ``table<N>.json`` manifest lists its cells (workdirs);
  :func:`load_manifest` loads them in the paper's order.
* :func:`merge_runs` writes runs of the same config with other seeds (say
  one seed per run, trained one after another) as one run of all of them.
* :class:`ResultTable` is a grid's JSON-lines table, one record per config
  hash, rewritten atomically after every update.
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import shutil

import numpy as np

from awrsr_jax import files, registry
from awrsr_jax.ops.metrics import metric_names
from awrsr_jax.ops.refine import MECHANISMS


def as_list(x) -> list:
    """Per-member values of ``results.json`` as a list (one member: a dict)."""
    return x if isinstance(x, list) else [x]


def seed_epochs(res) -> list:
    """Epochs each seed of ``results.json`` ran: one number for a run, a list
    under a rule (:func:`rule_view`: seeds stop apart)."""
    n = res["epochs_run"]
    return n if isinstance(n, list) else [n] * len(as_list(res["seeds"]))


def cut_seeds(res, config) -> list:
    """Seeds of ``res`` (``results.json``, trained under ``config``) whose run
    ended (epoch cap or time limit) while they were still within their
    patience: their validation metric may still have been rising. A seed
    stopped by patience has ``best_epoch + patience < epochs_run``."""
    patience = config["patience"] * config.get("eval_every", 1)
    return [s for s, b, n in zip(as_list(res["seeds"]), as_list(res["best_epoch"]),
                                 seed_epochs(res)) if b + patience >= n]  # fmt: skip


def is_done(workdir) -> bool:
    """A run is finished (or failed) once its ``results.json`` exists: written last."""
    return os.path.exists(os.path.join(workdir, "results.json"))


def is_finished(workdir) -> bool:
    """Finished and not ended by a time limit or SIGTERM (``stopped``): the
    same command would not train it further."""
    if not is_done(workdir):
        return False
    with open(os.path.join(workdir, "results.json")) as f:
        return not json.load(f).get("stopped")


def read_ranks(workdir, name="test_ranks.npy") -> np.ndarray:
    """``test_ranks.npy`` of a run (never unpickles: a pickled file raises)."""
    return np.load(os.path.join(workdir, name), allow_pickle=False)


def read_metrics(workdir) -> list[dict]:
    """The records of a run's ``metrics.jsonl``: one per member and epoch."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_run(workdir) -> dict:
    """``{dir, config, results, ranks}`` of a finished run; ``results``'
    ``valid``, ``test`` and ``best_epoch`` are lists (one entry per member) and
    ``ranks`` is ``int[M, U]`` (None for a failed run). A run with
    ``report_patience`` also has ``rule_ranks`` (``test_ranks_rule.npy``)."""
    workdir = os.fspath(workdir)
    config = files.read_json(os.path.join(workdir, "config.json"))
    results = files.read_json(os.path.join(workdir, "results.json"))
    for key in ("valid", "test", "best_epoch"):
        if key in results:
            results[key] = as_list(results[key])
    ranks = None
    if results.get("status", "ok") == "ok" and os.path.exists(
        os.path.join(workdir, "test_ranks.npy")
    ):
        ranks = np.atleast_2d(read_ranks(workdir))
    out = {"dir": workdir, "config": config, "results": results, "ranks": ranks}
    if ranks is not None and "rule" in results:
        out["rule_ranks"] = np.atleast_2d(read_ranks(workdir, "test_ranks_rule.npy"))
    return out


def renumbered(history: list[dict], offset: int) -> list[dict]:
    """``metrics.jsonl`` records with ``offset`` added to each ``member``."""
    return [dict(r, member=r["member"] + offset) if "member" in r else r
            for r in history]  # fmt: skip


def seeds_of(run: dict) -> list:
    """A run's (:func:`read_run`) seeds; one ``seed`` in runs from before ``seeds``."""
    return run["config"].get("seeds", [run["config"]["config"].get("seed")])


def _per_member(results: dict, n: int) -> dict:
    """The per-member values of one run's ``results.json`` as lists."""
    out = {k: as_list(results[k]) for k in ("valid", "test", "best_epoch")}
    out["epochs_run"] = [results["epochs_run"]] * n  # the ensemble's epochs
    if "rule" in results:
        out["rule"] = {k: as_list(results["rule"][k])
                       for k in ("best_epoch", "epochs_run", "valid", "test")}  # fmt: skip
    return out


def merged(runs: list[dict]) -> dict:
    """Finished runs (:func:`read_run`) of one config with other seeds as one
    run of all their members, in order: ``seeds`` in its config, per-member
    lists of ``valid``, ``test``, ``best_epoch``, ``epochs_run`` (each
    member's) and of the rule's values, the ranks stacked, ``train_seconds``
    summed; the rest from the first run. Raises ``ValueError`` when seeds
    repeat; whether the runs are of one config is the caller's check."""
    seeds = [s for run in runs for s in seeds_of(run)]
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"seeds {seeds} repeat")
    parts = [_per_member(run["results"], len(seeds_of(run))) for run in runs]
    res = dict(runs[0]["results"], seeds=seeds)
    for k in ("valid", "test", "best_epoch", "epochs_run"):
        res[k] = [v for p in parts for v in p[k]]
    res["train_seconds"] = sum(run["results"].get("train_seconds", 0) for run in runs)
    out = dict(runs[0], results=res, config=dict(runs[0]["config"], seeds=seeds),
               ranks=np.concatenate([run["ranks"] for run in runs]))  # fmt: skip
    if "rule" in res:
        res["rule"] = dict(res["rule"], **{
            k: [v for p in parts for v in p["rule"][k]] for k in parts[0]["rule"]
        })  # fmt: skip
        out["rule_ranks"] = np.concatenate([run["rule_ranks"] for run in runs])
    return out


def seed_dirs(cell_dir, seeds=None) -> list[str]:
    """The per-seed runs of a cell: ``<cell>/seed-<s>/`` for ``seeds``, or
    those that exist, in seed order."""
    if seeds is None:
        found = glob.glob(os.path.join(cell_dir, "seed-*"))
        seeds = sorted(int(os.path.basename(d)[5:]) for d in found)
    return [os.path.join(cell_dir, f"seed-{s}") for s in seeds]


def merge_runs(workdirs, out) -> dict:
    """Writes the finished runs ``workdirs`` (one config, dataset and sweep,
    other seeds; say one seed each, trained one after another) to ``out`` as
    one run of their members (:func:`merged`): ``config.json``,
    ``results.json``, the ranks, ``metrics.jsonl`` with the members
    renumbered, and the first run's ``attention.npz`` (member 0's, as a run
    writes it); ``results.json`` last. Raises ``ValueError`` naming a run
    that differs from the first, failed or was stopped. Returns the results."""
    runs = [read_run(d) for d in workdirs]

    def identity(run):  # what must agree; the data by its hash, not its path
        skip = ("seeds", "code_version", "data_file")
        return {k: v for k, v in run["config"].items() if k not in skip}

    for run in runs:
        if identity(run) != identity(runs[0]):
            raise ValueError(f"{run['dir']}: another run than {runs[0]['dir']}")
        if run["results"].get("status") != "ok" or run["results"].get("stopped"):
            raise ValueError(f"{run['dir']}: not finished (failed or stopped)")
    run = merged(runs)
    os.makedirs(out, exist_ok=True)
    files.write_json(os.path.join(out, "config.json"), run["config"])
    history, offset = [], 0
    for r in runs:
        history += renumbered(read_metrics(r["dir"]), offset)
        offset += len(seeds_of(r))
    files.write_lines(os.path.join(out, "metrics.jsonl"), history)
    files.save_npy(os.path.join(out, "test_ranks.npy"), run["ranks"])
    if "rule_ranks" in run:
        files.save_npy(os.path.join(out, "test_ranks_rule.npy"), run["rule_ranks"])
    attention = os.path.join(runs[0]["dir"], "attention.npz")
    if os.path.exists(attention):
        shutil.copyfile(attention, os.path.join(out, "attention.npz"))
    files.write_json(os.path.join(out, "results.json"), run["results"])
    return run["results"]


def rule_view(run: dict | None) -> dict | None:
    """``run`` (:func:`read_run`) as its ``report_patience`` rule ended each
    member: the same keys, the rule's results, ranks and patience (None
    without a rule)."""
    if run is None or "rule_ranks" not in run:
        return None
    rule = run["results"]["rule"]
    cfg = dict(run["config"]["config"], patience=rule["patience"], report_patience=0)
    res = dict(run["results"], epochs_run=rule["epochs_run"])
    res.update({k: as_list(rule[k]) for k in ("valid", "test", "best_epoch")})
    return dict(run, config=dict(run["config"], config=cfg), results=res,
                ranks=run["rule_ranks"])  # fmt: skip


def _entry_order(e: dict) -> tuple:
    mechs = tuple(MECHANISMS)
    rank = mechs.index(e["mech"]) if e["mech"] in mechs else len(mechs)
    bbs = tuple(registry.BACKBONES)
    bb = bbs.index(e["backbone"]) if e["backbone"] in bbs else len(bbs)
    return e["dataset"], bb, rank, e["layers"], e["refine_input"]


def entry_key(e: dict) -> tuple:
    """What names a row of a reproduce table: dataset, backbone, mechanism,
    layers and refinement input."""
    return e["dataset"], e["backbone"], e["mech"], e["layers"], e["refine_input"]


def folders(results_dirs) -> list:
    """One folder, a list of them, or a comma-separated string of them (one
    per dataset, say), as a list."""
    if isinstance(results_dirs, (list, tuple)):
        return list(results_dirs)
    return os.fspath(results_dirs).split(",")


def manifest(results_dir, table: str) -> tuple[dict, list]:
    """A reproduce table's ``table<N>.json`` and its entries in a fixed order
    (dataset, backbone, mechanism in registry order, layers, refinement
    input), whichever command trained which; nothing of the cells is read."""
    info = files.read_json(os.path.join(results_dir, f"table{table}.json"))
    return info, sorted(info["entries"], key=_entry_order)


def load_manifest(results_dir, table: str) -> tuple[dict, list]:
    """:func:`manifest` with its cells loaded: ``(info, [(entry, run or
    None)])`` (None: not finished)."""
    info, entries = manifest(results_dir, table)
    cells = []
    for e in entries:
        d = os.path.join(results_dir, e["cell"])
        cells.append((e, read_run(d) if is_done(d) else None))
    return info, cells


def load_manifests(results_dirs, table: str) -> list[tuple[str, dict, list]]:
    """:func:`load_manifest` of one folder or several (:func:`folders`) as
    ``[(folder, info, cells)]``; ValueError naming both folders when two
    hold the same row (:func:`entry_key`), which would be drawn or tabulated
    twice."""
    out, seen = [], {}
    for d in folders(results_dirs):
        info, cells = load_manifest(d, table)
        for e, _ in cells:
            k = entry_key(e)
            if k in seen:
                raise ValueError(f"{' / '.join(map(str, k))}: a cell of both "
                                 f"{seen[k]} and {d}; give one of them")  # fmt: skip
            seen[k] = d
        out.append((d, info, cells))
    return out


class ResultTable:
    """A JSON-lines file of records keyed by ``record["hash"]``.

    :meth:`add` replaces the whole file atomically, so readers see the table
    before or after an update, never half of one, and removes the temporary
    files of writes killed before it. A line that does not parse
    raises (naming the line) rather than silently re-running configs.
    """

    def __init__(self, path):
        self.path = pathlib.Path(path)
        self.records: dict[str, dict] = {}
        if self.path.exists():
            for i, line in enumerate(self.path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    self.records[rec["hash"]] = rec
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"{self.path}:{i}: bad record ({e})") from None

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def add(self, records: list[dict]) -> None:
        for rec in records:
            self.records[rec["hash"]] = rec
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(r, sort_keys=True) for r in self.records.values()]
        files.write_text(self.path, "".join(line + "\n" for line in lines))
        # A writer killed mid-write leaves its temporary file (files.atomic_open);
        # the table has one writer, so any other is stale once this one landed.
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            stale.unlink(missing_ok=True)


def best_record(records, metric: str = "NDCG@5") -> dict | None:
    """The finished record with the highest validation ``metric`` (first on ties)."""
    ok = [r for r in records if r.get("status") == "ok"]
    return max(ok, key=lambda r: r["valid"][metric], default=None)


def varying_fields(records) -> list[str]:
    """Config fields whose value differs between records (sorted)."""
    values: dict[str, set] = {}
    for r in records:
        for k, v in r["config"].items():
            values.setdefault(k, set()).add(json.dumps(v))
    return sorted(k for k, vs in values.items() if len(vs) > 1)


def results_table(results: dict, names=None) -> str:
    """Valid and test metrics of every member, one row each (for printing)."""
    names = names or metric_names()
    rule = results.get("rule")
    splits = [("valid", results), ("test", results)]
    if rule:  # the same training as the rule would have stopped it
        splits += [
            (f"{s}@p{rule['patience']}", {s: rule[s]}) for s in ("valid", "test")
        ]
    width = max(len(s) for s, _ in splits)
    rows = [f"{'split':<{width}} {'member':>6} " + " ".join(f"{n:>9}" for n in names)]
    for label, src in splits:
        vals = src[label.split("@")[0]]
        for m, v in enumerate(vals if isinstance(vals, list) else [vals]):
            rows.append(
                f"{label:<{width}} {m:>6} " + " ".join(f"{v[n]:>9.4f}" for n in names)
            )
    return "\n".join(rows)
