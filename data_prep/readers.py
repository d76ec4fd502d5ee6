"""Readers for each raw format: a path in, a `RawRows` table of interactions out.

Formats (the public files, byte layouts as published):
- GroupLens ML-1M `ratings.dat`: `UserID::MovieID::Rating::Timestamp`, ASCII,
  ratings 1-5, no header; plain or inside `ml-1m.zip`. Strict (see textrows).
- Amazon 2014 `ratings_Beauty.csv`: `user,item,rating,timestamp`, no header,
  string ids, float ratings.
- Amazon 2014 `reviews_Beauty[_5].json.gz`: one JSON object per line; uses
  `reviewerID`, `asin` and `unixReviewTime`.
- Kaggle anime `rating.csv`: header `user_id,anime_id,rating`; rating -1 means
  watched but not rated, else 1-10. No timestamps.
- caserec anime sample `anime_history.dat` / `anime_ratings.dat`: tab-separated,
  header `User_ID<TAB>Anime_ID<TAB>Feedback`. No timestamps.

Rows keep file order. User and item codes are dense from 0 in ascending order of
the original id (numeric ids by value, string ids by text), so code order is the
order the output numbering needs.
"""

import array
import contextlib
import dataclasses
import gzip
import json
import pathlib
import re

import numpy as np

from data_prep import fetch
from data_prep.textrows import (
    ANY_ID,
    INT64_MAX,
    IntTable,
    LineSource,
    RowLog,
    iter_int_rows,
)

GROUPLENS = IntTable(
    "GroupLens ratings.dat",
    b"::",
    ("user id", "movie id", "rating", "timestamp"),
    (ANY_ID, ANY_ID, ((1, 5),), ANY_ID),
)
KAGGLE_ANIME = IntTable(
    "Kaggle anime rating.csv",
    b",",
    ("user id", "anime id", "rating"),
    (ANY_ID, ANY_ID, ((-1, -1), (1, 10))),
    header=b"user_id,anime_id,rating",
    strict=False,
)
CASEREC_ANIME = IntTable(
    "caserec anime table",
    b"\t",
    ("user id", "anime id", "feedback"),
    (ANY_ID, ANY_ID, ((1, 10),)),
    header=b"User_ID\tAnime_ID\tFeedback",
    strict=False,
)
_TOKEN = re.compile(rb"[!-~]+")  # printable ASCII, no spaces
_FLOAT = re.compile(rb"[0-9]+(\.[0-9]+)?")
_DIGITS = re.compile(rb"[0-9]+")


@dataclasses.dataclass
class RawRows:
    """Interactions in file order; row i is (user[i], item[i], timestamp[i])."""

    user: np.ndarray  # dense codes, ascending original id
    item: np.ndarray
    timestamp: np.ndarray | None  # int64; None: no timestamps, file order
    unrated: np.ndarray | None  # bool per row (anime rating -1); None elsewhere
    user_ids: np.ndarray  # original id of each user code
    item_ids: np.ndarray
    rows_read: int
    log: RowLog
    source: dict  # file, member, format, content hash, file-level notes


@contextlib.contextmanager
def open_raw(path: pathlib.Path, member: str | None = None):
    """(binary stream, display name, member name) of a plain, .gz or zip-member
    file; `member` is the base name wanted inside a zip."""
    name = None
    if member is not None:
        stream, name = fetch.open_zip_member(path, member)
        display = f"{path}!{name}"
    elif path.suffix == ".gz":
        stream, display = gzip.open(path, "rb"), str(path)
    else:
        stream, display = open(path, "rb"), str(path)
    with stream:
        yield stream, display, name


def _dense(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, labels): codes dense from 0 in ascending id order."""
    if ids.size and ids.min() >= 0 and ids.max() < 4 * ids.size + 2**20:
        present = np.zeros(int(ids.max()) + 1, bool)  # O(n), no sort
        present[ids] = True
        lookup = np.cumsum(present, dtype=np.int64) - 1
        labels = np.flatnonzero(present)
        return lookup.astype(np.int32)[ids], labels.astype(np.int64)
    labels, codes = np.unique(ids, return_inverse=True)
    return codes.astype(np.int32 if len(labels) < 2**31 else np.int64), labels


def _compact(column: np.ndarray) -> np.ndarray:
    if column.size and column.min() >= 0 and column.max() < 2**31:
        return column.astype(np.int32)
    return column


def read_int_table(
    path, spec: IntTable, *, member=None, bad_rows="error", has_time: bool
) -> RawRows:
    """Rows of a GroupLens, Kaggle anime or caserec file (columns user, item,
    rating[, timestamp]). Memory: a few bytes per row, never the whole text."""
    users, items, times, unrated = [], [], [], []
    with open_raw(pathlib.Path(path), member) as (stream, display, name):
        source = LineSource(stream, display, strict=spec.strict, header=spec.header)
        log = RowLog(display, bad_rows)
        for block in iter_int_rows(source, spec, log):
            users.append(_compact(block[:, 0]))
            items.append(_compact(block[:, 1]))
            if has_time:
                times.append(block[:, 3].copy())  # a view would pin the block
            else:
                unrated.append(block[:, 2] == -1)
    user, user_ids = _dense(np.concatenate(users))
    del users
    item, item_ids = _dense(np.concatenate(items))
    del items
    return RawRows(
        user,
        item,
        np.concatenate(times) if has_time else None,
        np.concatenate(unrated) if not has_time else None,
        user_ids,
        item_ids,
        source.rows_read,
        log,
        {
            "file": pathlib.Path(path).name,
            "member": name,
            "format": spec.name,
            **source.describe(),
        },
    )


class _Codes:
    """String ids to dense codes, assigned in order of first appearance."""

    def __init__(self):
        self.index: dict[str, int] = {}
        self.codes = array.array("q")

    def add(self, key: str) -> None:
        self.codes.append(self.index.setdefault(key, len(self.index)))

    def sorted(self) -> tuple[np.ndarray, np.ndarray]:
        labels = np.array(list(self.index), dtype=object)
        order = np.argsort(labels.astype(str), kind="stable")
        rank = np.empty(len(labels), np.int64)
        rank[order] = np.arange(len(labels))
        return rank[np.frombuffer(self.codes, np.int64)], labels[order]


def _amazon_csv_row(raw: bytes):
    if not raw:
        return "blank line"
    fields = raw.split(b",")
    if len(fields) != 4:
        return f"expected 4 fields separated by ',', found {len(fields)}"
    user, item, rating, stamp = fields
    if not (_TOKEN.fullmatch(user) and _TOKEN.fullmatch(item)):
        return "user or item id empty, or not printable ASCII"
    if not _FLOAT.fullmatch(rating):
        return f"non-numeric rating {rating!r}"
    if not _DIGITS.fullmatch(stamp) or int(stamp) > INT64_MAX:
        return f"timestamp {stamp!r} is not a non-negative integer"
    return user.decode(), item.decode(), int(stamp)


def _amazon_json_row(raw: bytes):
    if not raw.strip():
        return "blank line"
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        return f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
    except json.JSONDecodeError as e:
        return f"not JSON ({e.msg} at column {e.colno})"
    if not isinstance(obj, dict):
        return "not a JSON object"
    for key in ("reviewerID", "asin"):
        value = obj.get(key)
        if not isinstance(value, str) or not _TOKEN.fullmatch(value.encode()):
            return f"{key} missing, empty or not printable ASCII"
    stamp = obj.get("unixReviewTime")
    if type(stamp) is not int or not 0 <= stamp <= INT64_MAX:
        return "unixReviewTime missing or not a non-negative integer"
    return obj["reviewerID"], obj["asin"], stamp


def read_amazon(path, *, bad_rows="error") -> RawRows:
    """Rows of `ratings_Beauty.csv` or a `reviews_*.json[.gz]` file."""
    path = pathlib.Path(path)
    is_json = path.name.endswith((".json", ".json.gz"))
    parse = _amazon_json_row if is_json else _amazon_csv_row
    users, items, times = _Codes(), _Codes(), array.array("q")
    with open_raw(path) as (stream, display, _):
        source = LineSource(stream, display, strict=False)
        log = RowLog(display, bad_rows)
        for line, raw in source.lines(log):
            parsed = parse(raw)
            if isinstance(parsed, str):
                if not source.final_newline:
                    parsed += " (last line has no final newline: truncated file?)"
                log.reject(line, raw, parsed)
                continue
            users.add(parsed[0])
            items.add(parsed[1])
            times.append(parsed[2])
    user, user_ids = users.sorted()
    item, item_ids = items.sorted()
    fmt = "Amazon reviews JSON lines" if is_json else "Amazon ratings CSV"
    return RawRows(
        user,
        item,
        np.frombuffer(times, np.int64),
        None,
        user_ids,
        item_ids,
        source.rows_read,
        log,
        {"file": path.name, "member": None, "format": fmt, **source.describe()},
    )


def read_catalogue(path) -> np.ndarray:
    """Anime ids listed in Kaggle `anime.csv` or caserec `anime_info.dat` (the
    first column; a header line first)."""
    path = pathlib.Path(path)
    sep = b"\t" if path.suffix == ".dat" else b","
    ids = []
    with open_raw(path) as (stream, display, _):
        source = LineSource(stream, display, strict=False)
        log = RowLog(display, "error")
        for line, raw in source.lines(log):
            first = raw.split(sep, 1)[0]
            if line == 1:
                if first not in (b"anime_id", b"anime_ids"):
                    log.reject(line, raw, "expected a header starting 'anime_id'")
                continue
            if not _DIGITS.fullmatch(first):
                log.reject(line, raw, f"non-integer anime id {first!r}")
            ids.append(int(first))
    return np.unique(np.array(ids, np.int64))
