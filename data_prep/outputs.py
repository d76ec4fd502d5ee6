"""Writing a prepared dataset: sequence file, id maps, stats.json, Table 1 print.

Files written into the output folder DIR, for dataset NAME:
- `NAME.txt`: one line per user, `user item1 item2 ...`, oldest first.
- `NAME_user_map.tsv`, `NAME_item_map.tsv`: `new_id<TAB>original_id`, one header
  line (`user_id<TAB>original_id`, `item_id<TAB>original_id`).
- `stats.json`: counts, rules, input hashes and each output file's SHA-256;
  written last, so its presence means the other files are complete.

Before any work, `check_out` refuses an output folder that is a file, that
cannot be written, or that already holds any of these files (unless
`overwrite`): a finished dataset is never replaced without being asked.

Every file is first written to a temporary name in DIR; only when all of them
are complete are they renamed into place, stats.json last. So an interrupted
or failing run leaves the previous set of files as it was (no mix of old and
new) and no half-written file under a final name. File names come from the
fixed dataset names, never from input data.
"""

import contextlib
import hashlib
import json
import os
import pathlib

import numpy as np

from awrsr_jax import files
from data_prep.sequences import Sequences
from data_prep.textrows import DataPrepError


def output_names(name: str) -> tuple[str, ...]:
    """The files `write_all` writes for dataset `name`, stats.json last."""
    return (f"{name}_user_map.tsv", f"{name}_item_map.tsv", f"{name}.txt", "stats.json")


def check_out(out_dir: pathlib.Path, name: str, *, overwrite: bool = False) -> None:
    """Raises `DataPrepError` naming `--out` if `out_dir` is a file, is under a
    file, cannot be written, or holds outputs of `name` and not `overwrite`."""
    flag = f"--out={out_dir}"
    if out_dir.is_symlink() or out_dir.exists():
        if not out_dir.is_dir():
            raise DataPrepError(f"{flag}: is a file, not a folder")
        present = [
            n
            for n in output_names(name)
            if (out_dir / n).exists() or (out_dir / n).is_symlink()
        ]
        if present and not overwrite:
            raise DataPrepError(
                f"{flag}: already holds {', '.join(present)}; pass --overwrite "
                "to replace them, or choose another --out"
            )
    base = out_dir.absolute()
    while not (base.exists() or base.is_symlink()):  # the folder mkdir starts in
        base = base.parent
    if not base.is_dir():
        raise DataPrepError(f"{flag}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise DataPrepError(
            f"{flag}: cannot write in {base} (no permission, or read-only)"
        )


class _HashingWriter:
    def __init__(self, f):
        self._f, self.sha256 = f, hashlib.sha256()

    def write(self, text: str) -> None:
        data = text.encode("utf-8")
        self.sha256.update(data)
        self._f.write(data)


@contextlib.contextmanager
def atomic_write(path: pathlib.Path, pending: list | None = None):
    """A hashing text writer over :func:`awrsr_jax.files.atomic_open`: the text
    reaches `path` only when the block ends without error (with `pending`,
    the caller commits the rename, see there)."""
    with files.atomic_open(path, "wb", pending=pending) as f:
        yield _HashingWriter(f)


def write_sequences(
    path: pathlib.Path, seqs: Sequences, rows_per_write=200_000, pending=None
) -> str:
    """Writes the user-line file; returns its SHA-256."""
    with atomic_write(path, pending) as out:
        lines = []
        pending_rows = 0
        for j in range(seqs.num_users):
            lo, hi = seqs.offsets[j], seqs.offsets[j + 1]
            lines.append(f"{j + 1} {' '.join(map(str, seqs.items[lo:hi].tolist()))}\n")
            pending_rows += hi - lo
            if pending_rows >= rows_per_write:
                out.write("".join(lines))
                lines, pending_rows = [], 0
        out.write("".join(lines))
    return out.sha256.hexdigest()


def write_id_map(
    path: pathlib.Path, kind: str, original: np.ndarray, pending=None
) -> str:
    """Writes `new_id<TAB>original_id` lines; returns the file's SHA-256."""
    with atomic_write(path, pending) as out:
        out.write(f"{kind}_id\toriginal_id\n")
        out.write("".join(f"{i}\t{o}\n" for i, o in enumerate(original.tolist(), 1)))
    return out.sha256.hexdigest()


def write_stats(path: pathlib.Path, stats: dict, pending=None) -> None:
    with atomic_write(path, pending) as out:
        out.write(json.dumps(stats, indent=2, sort_keys=False) + "\n")


def write_all(out_dir: pathlib.Path, name: str, seqs: Sequences, stats: dict) -> dict:
    """Writes every output file, then renames them into place (stats.json last);
    returns the completed stats. A write that fails raises `DataPrepError`
    naming `--out`, and leaves the folder's previous files as they were."""
    pending: list[tuple[str, pathlib.Path]] = []
    created = not out_dir.exists()
    done = False
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        user_map, item_map, text, stats_name = output_names(name)
        hashes = {
            user_map: write_id_map(out_dir / user_map, "user", seqs.user_ids, pending),
            item_map: write_id_map(out_dir / item_map, "item", seqs.item_ids, pending),
            text: write_sequences(out_dir / text, seqs, pending=pending),
        }
        stats = {**stats, "sequence_sha256": hashes[text], "outputs": hashes}
        write_stats(out_dir / stats_name, stats, pending)
        while pending:
            tmp, path = pending[0]
            os.replace(tmp, path)
            pending.pop(0)
        done = True
    except OSError as e:
        raise DataPrepError(f"--out={out_dir}: cannot write ({e})") from None
    finally:
        for tmp, _ in pending:
            if os.path.exists(tmp):
                os.unlink(tmp)
        if created and not done and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # leave no empty folder behind a failed first run
    return stats


def _short(n: float) -> str:
    if n >= 1e5:  # the paper writes 394,908 as 0.4M
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:g}"


TABLE1_COUNTS = ("users", "items", "interactions")  # the paper's Table 1 columns


def paper_mismatch(stats: dict) -> list[str]:
    """The Table 1 counts (users, items, interactions) whose short form
    (``6.0k``, ``0.4M``) differs from the paper's: none for the paper's data,
    some for a stand-in."""
    paper = stats.get("paper_table1") or {}
    return [k for k in TABLE1_COUNTS if k in paper and _short(stats[k]) != paper[k]]


def table1(stats: dict) -> str:
    """The run's counts beside the paper's Table 1, as printable text."""
    paper = stats["paper_table1"]
    rules = stats["rules"]
    lines = [
        f"{stats['dataset']}: filter={rules['filter']} k={rules['k']} "
        f"duplicates={rules['duplicates']} unrated={rules['unrated']}",
        f"{'':14}{'this run':>12}{'(short)':>10}{'paper Table 1':>20}",
    ]
    for key in TABLE1_COUNTS:
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
    pairs = stats.get("consecutive_pairs")
    if pairs:
        n, r = pairs["distinct"], pairs["also_reversed"]
        none = "; none: every sequence may follow one fixed item order, not time"
        lines.append(
            f"consecutive item pairs: {n:,} distinct, {r:,} ({r / max(n, 1):.1%}) "
            f"also in the other order{none if n and not r else ''}"
        )
    if paper.get("note"):
        lines.append(f"paper note: {paper['note']}")
    return "\n".join(lines)
