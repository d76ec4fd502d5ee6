"""Sequence files -> ``{user: [item, ...]}`` in chronological order.

Two layouts are read:

* ``user-line`` (STOSA's ``Beauty.txt``, our data_prep output): ``user i1 i2 ...``
* ``pairs`` (SASRec's ``ml-1m.txt``): one ``user item`` pair per line, each
  user's lines in time order.

``fmt="auto"`` picks ``pairs`` when every line has exactly two fields and some
user occurs on more than one line, else ``user-line``. Ids are positive integers
(0 is the padding id). Every problem raises :class:`DataFileError` naming the
path, the 1-based line and the offending text.
"""

from __future__ import annotations

import os

FORMATS = ("auto", "user-line", "pairs")
MAX_ID = 2**31 - 1


class DataFileError(ValueError):
    """A sequence file that cannot be read, with ``path:line: message``."""

    def __init__(self, path, line: int | None, msg: str, text: str | None = None):
        where = f"{path}:{line}" if line else f"{path}"
        full = f"{where}: {msg}"
        if text is not None:
            full += f": {text[:80]!r}"
        super().__init__(full)
        self.path, self.line = path, line


def _parse_lines(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataFileError(path, None, f"cannot read ({e.strerror})") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    rows = []
    for i, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("ascii").rstrip("\r")
        except UnicodeDecodeError:
            raise DataFileError(path, i, "non-ASCII bytes", repr(line)) from None
        if not text.strip():
            continue
        fields = text.split()
        ids = []
        for tok in fields:
            if not tok.isdigit():
                raise DataFileError(
                    path, i, f"not a positive integer id ({tok!r})", text
                )
            ids.append(int(tok))
        if any(x == 0 for x in ids):
            raise DataFileError(path, i, "id 0 is reserved for padding", text)
        if any(x > MAX_ID for x in ids):
            # Device arrays are int32: a larger id would wrap silently.
            raise DataFileError(path, i, f"id larger than {MAX_ID}", text)
        rows.append((i, ids))
    if not rows:
        raise DataFileError(path, None, "no sequences (empty file)")
    return rows


def _check_range(path, rows, fmt: str, max_item: int) -> None:
    """Item ids above ``max_item`` (the catalogue), named with their line."""
    for i, ids in rows:
        items = ids[1:] if fmt == "user-line" else ids[1:2]
        bad = [x for x in items if x > max_item]
        if bad:
            raise DataFileError(
                path, i, f"item {bad[0]} is not in the catalogue (ids 1..{max_item})"
            )


def read_sequences(
    path: str | os.PathLike, fmt: str = "auto", *, max_item: int | None = None
) -> dict[int, list[int]]:
    """Reads a sequence file; returns ``{user: items}`` in file order.

    ``max_item`` (a trained model's catalogue size) rejects larger item ids.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    path = os.fspath(path)
    rows = _parse_lines(path)
    if fmt == "auto":
        two = all(len(ids) == 2 for _, ids in rows)
        users = [ids[0] for _, ids in rows]
        fmt = "pairs" if two and len(set(users)) < len(users) else "user-line"
    seqs: dict[int, list[int]] = {}
    if fmt == "pairs":
        last_user = None
        for i, ids in rows:
            if len(ids) != 2:
                raise DataFileError(
                    path, i, f"expected 'user item', got {len(ids)} fields"
                )
            u, item = ids
            if u in seqs and u != last_user:
                raise DataFileError(path, i, f"user {u}'s lines are not contiguous")
            seqs.setdefault(u, []).append(item)
            last_user = u
    else:
        for i, ids in rows:
            if len(ids) < 2:
                raise DataFileError(path, i, "a user line needs a user id and an item")
            if ids[0] in seqs:
                raise DataFileError(path, i, f"user {ids[0]} appears twice")
            seqs[ids[0]] = ids[1:]
    if max_item is not None:
        _check_range(path, rows, fmt, max_item)
    return seqs


def write_sequences(path: str | os.PathLike, seqs: dict[int, list[int]]) -> None:
    """Writes the user-line layout atomically (temporary file, then rename)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.writelines(
            " ".join(map(str, [u, *items])) + "\n" for u, items in seqs.items()
        )
    os.replace(tmp, path)
