"""Numbered lines of a raw file, typed errors, and a fast reader for integer tables.

Raw files enter as byte streams (a plain file, a gzip file or a zip member) and
leave as numbered lines (`LineSource.lines`) or, for tables of integer columns, as
int64 blocks (`iter_int_rows`). Every line either parses or is rejected with its
path, 1-based line number, text and reason: a `DataPrepError` under the "error"
policy (the default), or a counted entry in `RowLog` under "skip". Nothing is
dropped silently.

Stated rules for odd files:
- An empty file, a header-only file and a wrong header are errors under any policy.
- Blank lines, non-ASCII bytes (Latin-1 text, say), wrong separators, wrong field
  counts, non-integer or out-of-range values are malformed rows.
- Strict formats (GroupLens `ratings.dat`, which has none of these): a UTF-8
  byte-order mark, CRLF line ends and a last line without a newline ("truncated
  last line") are malformed rows.
- Other formats (CSV exports): a leading byte-order mark is stripped and CRLF is
  folded to LF, both reported in the stats; a last line without a newline is
  parsed like any other and reported.
- Any format: a file whose first line ends in a lone CR (classic Mac OS line
  ends, or CR and LF mixed) is refused as a whole, naming the file: read as LF
  text it would be one huge line. A lone CR further down is a malformed row.

`iter_int_rows` tries a vectorised parse of each block (byte checks, then the
pandas C parser) and falls back to the line-by-line parser, which is the
specification, whenever anything in the block looks unusual; so the fast path
never accepts what the careful one would refuse.
"""

import dataclasses
import hashlib
import io
import re
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import pandas as pd

BOM = b"\xef\xbb\xbf"
INT64_MAX = 2**63 - 1
MAX_LINE_BYTES = 1 << 24  # longer "lines" mean a binary file; memory stays bounded
ANY_ID = ((0, INT64_MAX),)
_INT = re.compile(rb"-?[0-9]+")
_SEPARATORS = (b"::", b"\t", b",", b";", b"|", b" ")
_MAX_EXAMPLES = 20


class DataPrepError(ValueError):
    """A raw file or an option is unusable; names the path, line and text."""

    def __init__(self, reason, *, path=None, line=None, text=None):
        self.reason, self.path, self.line, self.text = reason, path, line, text
        where = (
            "" if path is None else f"{path}:" if line is None else f"{path}:{line}:"
        )
        shown = "" if text is None else f": {text!r}"
        super().__init__(f"{where} {reason}{shown}".strip())


def show(raw: bytes, limit: int = 200) -> str:
    """A line's text for a message; undecodable bytes appear as \\xNN."""
    return raw[:limit].decode("utf-8", "backslashreplace")


class RowLog:
    """Applies the bad-row policy: raise at once ("error") or count ("skip")."""

    def __init__(self, path: str, policy: str = "error"):
        if policy not in ("error", "skip"):
            raise DataPrepError(f"bad_rows must be 'error' or 'skip', not {policy!r}")
        self.path, self.policy = path, policy
        self.rejected = 0
        self.examples: list[dict] = []

    def reject(self, line: int, raw: bytes, reason: str) -> None:
        if self.policy == "error":
            raise DataPrepError(reason, path=self.path, line=line, text=show(raw))
        self.rejected += 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append({"line": line, "text": show(raw), "reason": reason})


class LineSource:
    """Blocks of whole lines from a byte stream, numbered from 1.

    Hashes every byte it reads (`sha256`), applies the file-level rules of the
    module docstring, checks an exact header line when one is given, and counts
    the data lines it hands out (`rows_read`).
    """

    def __init__(
        self,
        stream: BinaryIO,
        path: str,
        *,
        strict: bool,
        header: bytes | None = None,
        block_bytes: int = 1 << 22,
    ):
        self.path, self.strict, self._stream = path, strict, stream
        self._header, self._block_bytes = header, block_bytes
        self.sha256 = hashlib.sha256()
        self.bom, self.crlf_lines, self.final_newline = False, 0, True
        self.rows_read = 0
        self._line_ends_checked = False

    def _check_line_ends(self, buf: bytes, eof: bool) -> None:
        """Refuses a first line that ends in a lone CR (see the module docstring)."""
        nl = buf.find(b"\n")
        head = buf if nl < 0 else buf[:nl]
        cr = head.find(b"\r")
        if cr >= 0 and (cr < len(head) - 1 or (nl < 0 and eof)):
            raise DataPrepError(
                "CR line ends (classic Mac OS), or CR and LF mixed: convert the "
                "file to LF line ends (e.g. tr '\\r' '\\n' < IN > OUT)",
                path=self.path,
                line=1,
                text=show(head[:cr]),
            )
        self._line_ends_checked = nl >= 0 or eof

    def _fold(self, data: bytes) -> bytes:
        if not self.strict and b"\r" in data:
            self.crlf_lines += data.count(b"\r\n") + data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n").removesuffix(b"\r")
        return data

    def _take_header(self, data: bytes) -> bytes:
        first, newline, rest = data.partition(b"\n")
        if first != self._header:
            raise DataPrepError(
                f"expected the header line {show(self._header)!r} (wrong file?)",
                path=self.path,
                line=1,
                text=show(first),
            )
        self._header = None
        return rest if newline else b""

    def blocks(self) -> Iterator[tuple[int, bytes, bool]]:
        """Yields (first line number, bytes, terminated).

        A terminated block is whole lines, each ending in b"\\n". The last line of
        a file without a final newline comes alone with terminated=False.
        """
        carry, line, started = b"", 2 if self._header is not None else 1, False
        while True:
            chunk = self._stream.read(self._block_bytes)
            self.sha256.update(chunk)
            eof = not chunk
            if not started and chunk:
                if not self.strict and chunk.startswith(BOM):
                    self.bom, chunk = True, chunk[len(BOM) :]
                started = bool(chunk)
            buf = carry + chunk
            if not self._line_ends_checked:
                self._check_line_ends(buf, eof)
            if eof:
                buf = self._fold(buf)
                if buf and self._header is not None:
                    buf = self._take_header(buf)
                if buf:
                    self.final_newline = False
                    self.rows_read += 1
                    yield line, buf, False
                break
            cut = buf.rfind(b"\n")
            if cut < 0:
                if len(buf) > MAX_LINE_BYTES:
                    raise DataPrepError(
                        f"no line end in {MAX_LINE_BYTES:,} bytes: not a text file "
                        "of rows (compressed or binary?)",
                        path=self.path,
                        line=line,
                        text=show(buf[:40]),
                    )
                carry = buf
                continue
            block, carry = self._fold(buf[: cut + 1]), buf[cut + 1 :]
            if self._header is not None:
                block = self._take_header(block)
            n = block.count(b"\n")
            if n:
                self.rows_read += n
                yield line, block, True
                line += n
        if not started:
            raise DataPrepError("empty file", path=self.path)
        if self._header is not None or self.rows_read == 0:
            raise DataPrepError("no data rows (header only)", path=self.path)

    def lines(self, log: RowLog) -> Iterator[tuple[int, bytes]]:
        """Yields (line number, bytes without the newline); applies the rule for a
        last line without a newline (rejected in strict formats)."""
        for first, block, terminated in self.blocks():
            parts = block.split(b"\n")
            if terminated:
                parts.pop()
            elif self.strict:
                log.reject(first, block, "truncated last line (no final newline)")
                continue
            for offset, raw in enumerate(parts):
                yield first + offset, raw

    def describe(self) -> dict:
        return {
            "content_sha256": self.sha256.hexdigest(),
            "bom": self.bom,
            "crlf_lines": self.crlf_lines,
            "final_newline": self.final_newline,
        }


@dataclasses.dataclass(frozen=True)
class IntTable:
    """A text table whose columns are all integers, e.g. GroupLens ratings.dat."""

    name: str  # for messages
    sep: bytes
    columns: tuple[str, ...]  # column names for messages, e.g. "user id"
    allowed: tuple[tuple[tuple[int, int], ...], ...]  # per column: closed ranges
    header: bytes | None = None  # the exact first line, when the format has one
    strict: bool = True  # see the module docstring


def _range_text(ranges) -> str:
    return " or ".join(f"{lo}" if lo == hi else f"[{lo}, {hi}]" for lo, hi in ranges)


def parse_int_line(spec: IntTable, raw: bytes) -> list[int] | str:
    """The values of one line, or the reason it is malformed (the specification)."""
    if not raw:
        return "blank line"
    if raw.startswith(BOM):
        return "UTF-8 byte-order mark (save the file without one)"
    if raw.endswith(b"\r"):
        return "CRLF line end (convert the file to LF line ends)"
    if b"\r" in raw:
        return "carriage return inside the line (CR line ends?)"
    try:
        raw.decode("ascii")
    except UnicodeDecodeError as e:
        return (
            f"non-ASCII byte 0x{raw[e.start]:02x} at column {e.start + 1}"
            " (ratings must be ASCII digits; Latin-1 or UTF-8 text?)"
        )
    fields = raw.split(spec.sep)
    if len(fields) != len(spec.columns):
        if len(fields) == 1:
            for other in _SEPARATORS:
                if other != spec.sep and other in raw:
                    return f"wrong separator: found {show(other)!r}, expected {show(spec.sep)!r}"
        return (
            f"expected {len(spec.columns)} fields separated by "
            f"{show(spec.sep)!r}, found {len(fields)}"
        )
    values = []
    for name, field, ranges in zip(spec.columns, fields, spec.allowed):
        if not _INT.fullmatch(field):
            return f"non-integer {name} {show(field)!r}"
        value = int(field)
        if not any(lo <= value <= hi for lo, hi in ranges):
            if value < 0 and all(lo >= 0 for lo, _ in ranges):
                return f"negative {name} {value}"
            return f"{name} {value} outside {_range_text(ranges)}"
        values.append(value)
    return values


def _fast_block(spec: IntTable, block: bytes) -> np.ndarray | None:
    """Vectorised parse of whole lines; None sends the block to the careful path."""
    allowed = b"0123456789-\n" + spec.sep
    if block.translate(None, allowed):
        return None
    work = block if spec.sep == b"," else block.replace(spec.sep, b",")
    if b":" in work:  # a lone ':' left over from a '::' separator
        return None
    n, k = work.count(b"\n"), len(spec.columns)
    if work.count(b",") != (k - 1) * n or work[:1] in (b",", b"\n"):
        return None
    if any(bad in work for bad in (b",,", b",\n", b"\n,", b"\n\n")):
        return None
    try:
        table = pd.read_csv(
            io.BytesIO(work), header=None, dtype=np.int64, engine="c", na_filter=False
        ).to_numpy()
    except (ValueError, OverflowError, pd.errors.ParserError):
        return None
    if table.shape != (n, k):
        return None
    for column, ranges in zip(table.T, spec.allowed):
        ok = np.zeros(n, bool)
        for lo, hi in ranges:
            ok |= (column >= lo) & (column <= hi)
        if not ok.all():
            return None
    return table


def _careful_block(spec, first, block, terminated, log) -> np.ndarray:
    parts = block.split(b"\n")
    if terminated:
        parts.pop()
    rows = []
    for offset, raw in enumerate(parts):
        line = first + offset
        if not terminated and spec.strict:
            log.reject(line, raw, "truncated last line (no final newline)")
            continue
        parsed = parse_int_line(spec, raw)
        if isinstance(parsed, str):
            if not terminated:
                parsed += " (last line has no final newline: truncated file?)"
            log.reject(line, raw, parsed)
        else:
            rows.append(parsed)
    return np.array(rows, np.int64).reshape(len(rows), len(spec.columns))


def iter_int_rows(
    source: LineSource, spec: IntTable, log: RowLog, *, fast: bool = True
) -> Iterator[np.ndarray]:
    """Yields (rows, columns) int64 arrays, one per block, in file order."""
    for first, block, terminated in source.blocks():
        table = _fast_block(spec, block) if fast and terminated else None
        yield (
            table
            if table is not None
            else _careful_block(spec, first, block, terminated, log)
        )
