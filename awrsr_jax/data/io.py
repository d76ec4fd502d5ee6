"""Sequence files -> ``{user: [item, ...]}`` in chronological order.

Two layouts are read:

* ``user-line`` (STOSA's ``Beauty.txt``, our data_prep output): ``user i1 i2 ...``
* ``pairs`` (SASRec's ``ml-1m.txt``): one ``user item`` pair per line, each
  user's lines in time order.

``fmt="auto"`` picks ``pairs`` when every line has exactly two fields and some
user occurs on more than one line, else ``user-line``. Ids are positive integers
in ASCII digits (0 is the padding id); fields are separated by spaces or tabs.
Every problem raises :class:`DataFileError` naming the path, the 1-based line
and the offending text.

Tolerated: a UTF-8 byte-order mark, blank lines, a last line without a newline,
and any one line-end convention: LF, CRLF, or CR alone (classic Mac OS; each CR
ends a line, so line numbers match an editor's). A lone CR in a file that also
has LF line ends is refused (the line is named): it could be a line end or a
stray byte, and guessing would change the sequences. A directory, or a file
that cannot be opened, is refused naming the path.
"""

from __future__ import annotations

import os
import re

from awrsr_jax import files

FORMATS = ("auto", "user-line", "pairs")
MAX_ID = 2**31 - 1
_ID = re.compile(r"[0-9]+")  # str.isdigit would also take "٣" or "²"
_FIELD_SEP = re.compile(r"[ \t]+")
_LONE_CR = re.compile(rb"\r(?!\n|\Z)")  # a CR that ends no CRLF and not the file


class DataFileError(ValueError):
    """A sequence file that cannot be read, with ``path:line: message``."""

    def __init__(self, path, line: int | None, msg: str, text: str | None = None):
        where = f"{path}:{line}" if line else f"{path}"
        full = f"{where}: {msg}"
        if text is not None:
            full += f": {text[:80]!r}"
        super().__init__(full)
        self.path, self.line = path, line


def _read_bytes(path) -> bytes:
    if os.path.isdir(path):
        raise DataFileError(path, None, "is a directory, not a sequence file")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise DataFileError(path, None, f"cannot read ({e.strerror})") from None


def _split_lines(path, raw: bytes) -> list[bytes]:
    """Lines without their ends, for LF, CRLF or CR-only files (see above)."""
    lone = _LONE_CR.search(raw)
    if lone is None:
        return [line.rstrip(b"\r") for line in raw.split(b"\n")]
    if b"\n" not in raw:  # CR-only line ends
        return raw.split(b"\r")
    i = raw.count(b"\n", 0, lone.start()) + 1
    start = raw.rfind(b"\n", 0, lone.start()) + 1
    end = raw.find(b"\n", lone.start())
    text = raw[start : end if end >= 0 else len(raw)].decode("ascii", "replace")
    raise DataFileError(
        path,
        i,
        "carriage return inside a line (mixed CR and LF line ends? convert the "
        "file to LF line ends)",
        text,
    )


def _parse_lines(path):
    raw = _read_bytes(path)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    rows = []
    for i, line in enumerate(_split_lines(path, raw), start=1):
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            raise DataFileError(path, i, "non-ASCII bytes", repr(line)) from None
        if not text.strip():
            continue
        fields = _FIELD_SEP.split(text.strip(" \t"))
        ids = []
        for tok in fields:
            if not _ID.fullmatch(tok):
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
    """Writes the user-line layout atomically (:func:`awrsr_jax.files.atomic_open`)."""
    with files.atomic_open(path) as f:
        f.writelines(
            " ".join(map(str, [u, *items])) + "\n" for u, items in seqs.items()
        )
