"""Writing a prepared dataset: sequence file, id maps, stats.json, Table 1 print.

Files written into the output folder DIR, for dataset NAME:
- `NAME.txt`: one line per user, `user item1 item2 ...`, oldest first.
- `NAME_user_map.tsv`, `NAME_item_map.tsv`: `new_id<TAB>original_id`, one header
  line (`user_id<TAB>original_id`, `item_id<TAB>original_id`).
- `stats.json`: counts, rules, input hashes and each output file's SHA-256;
  written last, so its presence means the other files are complete.

Each file is written to a temporary name in DIR and renamed into place, so an
interrupted run never leaves a half-written file under a final name. File names
come from the fixed dataset names, never from input data.
"""

import contextlib
import hashlib
import json
import os
import pathlib
import tempfile

import numpy as np

from data_prep.fetch import default_file_mode
from data_prep.sequences import Sequences


class _HashingWriter:
    def __init__(self, f):
        self._f, self.sha256 = f, hashlib.sha256()

    def write(self, text: str) -> None:
        data = text.encode("utf-8")
        self.sha256.update(data)
        self._f.write(data)


@contextlib.contextmanager
def atomic_write(path: pathlib.Path):
    """A writer whose text reaches `path` only when the block ends without error."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            writer = _HashingWriter(f)
            yield writer
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_sequences(path: pathlib.Path, seqs: Sequences, rows_per_write=200_000) -> str:
    """Writes the user-line file; returns its SHA-256."""
    with atomic_write(path) as out:
        lines = []
        pending = 0
        for j in range(seqs.num_users):
            lo, hi = seqs.offsets[j], seqs.offsets[j + 1]
            lines.append(f"{j + 1} {' '.join(map(str, seqs.items[lo:hi].tolist()))}\n")
            pending += hi - lo
            if pending >= rows_per_write:
                out.write("".join(lines))
                lines, pending = [], 0
        out.write("".join(lines))
    return out.sha256.hexdigest()


def write_id_map(path: pathlib.Path, kind: str, original: np.ndarray) -> str:
    """Writes `new_id<TAB>original_id` lines; returns the file's SHA-256."""
    with atomic_write(path) as out:
        out.write(f"{kind}_id\toriginal_id\n")
        out.write("".join(f"{i}\t{o}\n" for i, o in enumerate(original.tolist(), 1)))
    return out.sha256.hexdigest()


def write_stats(path: pathlib.Path, stats: dict) -> None:
    with atomic_write(path) as out:
        out.write(json.dumps(stats, indent=2, sort_keys=False) + "\n")


def write_all(out_dir: pathlib.Path, name: str, seqs: Sequences, stats: dict) -> dict:
    """Writes every output file, stats.json last; returns the completed stats."""
    out_dir.mkdir(parents=True, exist_ok=True)
    hashes = {
        f"{name}_user_map.tsv": write_id_map(
            out_dir / f"{name}_user_map.tsv", "user", seqs.user_ids
        ),
        f"{name}_item_map.tsv": write_id_map(
            out_dir / f"{name}_item_map.tsv", "item", seqs.item_ids
        ),
        f"{name}.txt": write_sequences(out_dir / f"{name}.txt", seqs),
    }
    stats = {**stats, "sequence_sha256": hashes[f"{name}.txt"], "outputs": hashes}
    write_stats(out_dir / "stats.json", stats)
    return stats


def _short(n: float) -> str:
    if n >= 1e5:  # the paper writes 394,908 as 0.4M
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:g}"


def table1(stats: dict) -> str:
    """The run's counts beside the paper's Table 1, as printable text."""
    paper = stats["paper_table1"]
    rules = stats["rules"]
    lines = [
        f"{stats['dataset']}: filter={rules['filter']} k={rules['k']} "
        f"duplicates={rules['duplicates']} unrated={rules['unrated']}",
        f"{'':14}{'this run':>12}{'(short)':>10}{'paper Table 1':>20}",
    ]
    for key in ("users", "items", "interactions"):
        lines.append(
            f"{key:14}{stats[key]:>12,}{_short(stats[key]):>10}{paper[key]:>20}"
        )
    rows = stats["rows"]
    lines += [
        f"{'avg length':14}{stats['avg_length']:>12.2f}",
        f"rows read {rows['read']:,} = kept {rows['kept']:,} + filtered "
        f"{sum(rows['filtered'].values()):,} {rows['filtered']} + rejected "
        f"{rows['rejected']:,}",
        f"under k in output: {stats['violations']}",
        f"time order: {stats['time_order']}",
    ]
    if paper.get("note"):
        lines.append(f"paper note: {paper['note']}")
    return "\n".join(lines)
