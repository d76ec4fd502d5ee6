"""Hyper-parameter search: spaces, config hashes, shape groups, the results table.

The experiment scripts (``experiments/grid.py``, ``reproduce.py``) call this
library; nothing here trains or reads flags.

* A *space* maps :class:`Config` field names to lists of values. ``paper`` is
  the search of the paper's Section 3.1; ``small`` and ``smoke`` are cut-down
  versions; a JSON file gives any other (``{"field": [values]}``, optionally
  nested per backbone: ``{"sasrec": {...}, "stosa": {...}}``).
* :func:`config_hash` names one (config, dataset, extras) triple; results are
  keyed by it, so a finished config is recognised whatever order it ran in.
* :func:`shape_groups` gathers configs that differ only in the per-member
  hyper-parameters of ``train.HPARAMS`` (which keep shapes): each group trains
  as one ensemble via ``train.fit(sweep=...)``.
* :class:`ResultTable` is a JSON-lines file, one record per config hash, that
  is rewritten whole to a temporary file and renamed after every update, so an
  interrupted search never leaves a half-written table.
* A *cell* (``experiments/reproduce.py``) is one config trained over K seeds,
  stored in a folder named by :func:`cell_name` and finished once its
  ``results.json`` exists; ``table<N>.json`` manifests list a table's cells
  (:func:`load_manifest`), so tables are rebuilt from files alone.
* :func:`load_dataset` resolves dataset names (benchmark files under
  ``<repo>/../shared/data``, the synthetic generator, or a path).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import pathlib

import numpy as np

from awrsr_jax import data as data_lib
from awrsr_jax.config import MECHS, Config, validate
from awrsr_jax.train import HPARAMS

# Section 3.1 of the paper. heads x hidden combinations that do not divide are
# dropped by :func:`expand` (e.g. 3 heads never divide 32/64/128).
_PAPER_COMMON = {
    "max_len": [20, 30, 50, 100],
    "lr": [1e-3, 1e-4],
    "l2": [1e-1, 1e-2, 1e-3],
    "dropout": [0.3, 0.5, 0.7],
    "heads": [1, 2, 3, 4],
    "layers": [1, 2, 3, 4],
}
SPACES = {
    "paper": {
        "sasrec": {"hidden": [64, 128], **_PAPER_COMMON},
        "stosa": {"hidden": [32, 64], **_PAPER_COMMON},
    },
    # A subset of the paper's values that one GPU finishes in minutes.
    "small": {
        "sasrec": {"lr": [1e-3], "l2": [1e-2, 1e-3], "dropout": [0.3, 0.5, 0.7]},
        "stosa": {"lr": [1e-3], "l2": [1e-2, 1e-3], "dropout": [0.3, 0.5, 0.7]},
    },
    # Two shape groups of two members: exercises grouping and resuming on CPU.
    "smoke": {
        "sasrec": {"layers": [1, 2], "lr": [1e-3, 1e-2]},
        "stosa": {"layers": [1, 2], "lr": [1e-3, 1e-2]},
    },
}

REPO = pathlib.Path(__file__).resolve().parents[1]
# The benchmark files: AWRSR_DATA_DIR overrides the default sibling folder.
SHARED_DATA = pathlib.Path(
    os.environ.get("AWRSR_DATA_DIR", REPO.parent / "shared" / "data")
)
BENCHMARKS = {  # name -> file under SHARED_DATA (see its README)
    "ml-1m": "ml-1m_sasrec-equivalent.txt",
    "beauty": "Beauty_5core_stosa.txt",
    "beauty-bert4rec": "beauty_bert4rec.txt",
}
SMOKE_DATA = dict(num_users=120, num_items=60, min_len=6, max_len=16, seed=0)


def load_space(name_or_path: str, backbone: str) -> dict[str, list]:
    """The space ``paper``/``small``/``smoke`` or a JSON file, for ``backbone``."""
    if name_or_path in SPACES:
        space = SPACES[name_or_path][backbone]
    else:
        try:
            with open(name_or_path) as f:
                space = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(
                f"--space={name_or_path!r}: not one of {sorted(SPACES)} and not a "
                f"readable JSON file ({e})"
            ) from None
        if backbone in space and isinstance(space[backbone], dict):
            space = space[backbone]
    fields = {f.name for f in dataclasses.fields(Config)}
    for key, vals in space.items():
        if key not in fields:
            raise ValueError(f"--space: {key!r} is not a config field")
        if not isinstance(vals, list) or not vals:
            raise ValueError(f"--space: {key!r} needs a non-empty list of values")
    return dict(space)


def expand(base: Config, space: dict[str, list]) -> tuple[list[Config], list[str]]:
    """The Cartesian product of ``space`` over ``base``: (valid configs, reasons
    why the others were dropped). Order is deterministic (sorted keys)."""
    keys = sorted(space)
    configs, dropped = [], []
    for values in itertools.product(*(space[k] for k in keys)):
        cfg = base.replace(**dict(zip(keys, values)))
        try:
            configs.append(validate(cfg))
        except ValueError as e:
            dropped.append(str(e))
    return configs, dropped


def config_hash(cfg: Config, data_id: str = "", **extra) -> str:
    """16 hex digits naming ``cfg`` on the dataset ``data_id`` (plus ``extra``)."""
    blob = json.dumps(
        {"config": dataclasses.asdict(cfg), "data": data_id, **extra},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def shape_key(cfg: Config) -> Config:
    """``cfg`` with the per-member hyper-parameters reset: equal keys share shapes."""
    return cfg.replace(**{k: getattr(Config, k) for k in HPARAMS})


def shape_groups(configs: list[Config], max_members: int = 32):
    """``[(shared_cfg, sweep, members)]``: configs that can train as one ensemble.

    ``sweep`` maps each name of ``HPARAMS`` to the members' values, as
    ``train.fit(sweep=...)`` takes it; groups larger than ``max_members`` are
    split so that one ensemble fits in device memory.
    """
    groups: dict[Config, list[Config]] = {}
    for cfg in configs:
        groups.setdefault(shape_key(cfg), []).append(cfg)
    out = []
    for members in groups.values():
        for i in range(0, len(members), max_members):
            chunk = members[i : i + max_members]
            sweep = {k: [getattr(c, k) for c in chunk] for k in HPARAMS}
            out.append((chunk[0], sweep, chunk))
    return out


def atomic_write(path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ResultTable:
    """A JSON-lines file of records keyed by ``record["hash"]``.

    :meth:`add` replaces the whole file atomically, so readers see the table
    before or after an update, never half of one. A line that does not parse
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
        atomic_write(self.path, "".join(line + "\n" for line in lines))


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


def load_dataset(name: str) -> tuple[str, dict[int, list[int]]]:
    """``(label, {user: items})`` for a benchmark name, ``synthetic``, ``smoke``
    (a tiny synthetic set for CI) or a path to a sequence file."""
    if name == "synthetic":
        return name, data_lib.generate()
    if name == "smoke":
        return name, data_lib.generate(**SMOKE_DATA)
    if name in BENCHMARKS:
        path = SHARED_DATA / BENCHMARKS[name]
        if not path.exists():
            raise ValueError(f"--dataset={name}: {path} not found (see shared/data)")
        return name, data_lib.read_sequences(str(path))
    if os.path.exists(name):
        return pathlib.Path(name).stem, data_lib.read_sequences(name)
    choices = ["synthetic", "smoke", *BENCHMARKS]
    raise ValueError(f"--dataset={name!r}: choose from {choices} or give a file path")


def read_json(path):
    with open(path) as f:
        return json.load(f)


def cell_name(dataset: str, cfg: Config, data_id: str, seeds) -> str:
    """Folder name of one reproduce cell: readable prefix plus the config hash."""
    h = config_hash(cfg, data_id, seeds=[int(s) for s in seeds])
    return f"{dataset}-{cfg.backbone}-{cfg.mech}-L{cfg.layers}-{cfg.refine_input}-{h}"


def cell_done(cell_dir) -> bool:
    """A cell is finished once its ``results.json`` exists (it is written last)."""
    return os.path.exists(os.path.join(cell_dir, "results.json"))


def load_cell(cell_dir):
    """``(results, test_ranks int[K, U] or None)`` of a finished cell."""
    with open(os.path.join(cell_dir, "results.json")) as f:
        results = json.load(f)
    path = os.path.join(cell_dir, "test_ranks.npy")
    ranks = np.load(path, allow_pickle=False) if os.path.exists(path) else None
    return results, ranks


def _entry_order(e: dict) -> tuple:
    mechs = MECHS.get(e["backbone"], ())
    rank = mechs.index(e["mech"]) if e["mech"] in mechs else len(mechs)
    return e["dataset"], e["backbone"], rank, e["layers"], e["refine_input"]


def load_manifest(results_dir, table: str) -> tuple[dict, list]:
    """A reproduce table's ``table<N>.json`` and its cells, loaded:
    ``(info, [(entry, results, ranks)])``; missing cells give ``results=None``.
    Cells come in a fixed order (dataset, backbone, mechanism in ``MECHS``
    order, layers, refinement input), whichever command trained which."""
    with open(os.path.join(results_dir, f"table{table}.json")) as f:
        info = json.load(f)
    cells = []
    for e in sorted(info["entries"], key=_entry_order):
        d = os.path.join(results_dir, e["cell"])
        cells.append((e, *load_cell(d)) if cell_done(d) else (e, None, None))
    return info, cells
