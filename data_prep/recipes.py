"""The three datasets of the paper: where their raw files come from, how to read
them, and `prepare`, which runs a recipe end to end.

`prepare(dataset, raw=PATH or None, out=DIR, ...)` checks DIR first (not a
file, writable, and no earlier outputs unless `overwrite=True`), then finds or
downloads the raw file, reads it (`readers`), applies the rules (`sequences`),
writes the outputs (`outputs`) and returns the stats that also go to
DIR/stats.json.

Sources and their checksums:
- ml-1m: https://files.grouplens.org/datasets/movielens/ml-1m.zip, MD5 pinned from
  the value GroupLens publishes. A local ml-1m.zip given with --raw is checked
  against it too (a mismatch is reported in the stats, not refused, since users
  may rebuild ratings.dat themselves).
- beauty: the Amazon 2014 per-category ratings file on SNAP. No checksum is
  published, so it is downloaded only with --sha256; otherwise the error says
  where to get it.
- anime: the Kaggle dataset needs a login, so there is no download; the error
  says which files to fetch and where to put them.
"""

import dataclasses
import pathlib
import zipfile

import numpy as np

from data_prep import fetch, outputs, readers, sequences
from data_prep.textrows import DataPrepError

ML1M_ZIP = fetch.RemoteFile(
    "ml-1m.zip",
    "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
    md5="c4d9eecfca2ab87c1945afe126590906",
)
BEAUTY_CSV = fetch.RemoteFile(
    "ratings_Beauty.csv",
    "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/ratings_Beauty.csv",
)
KAGGLE_ANIME_PAGE = (
    "https://www.kaggle.com/datasets/CooperUnion/anime-recommendations-database"
)


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    default_filter: str
    candidates: tuple[str, ...]  # file names looked for inside a --raw folder
    remote: fetch.RemoteFile | None
    paper: dict  # Table 1 of the paper (and the exact SASRec counts, if known)


RECIPES = {
    "ml-1m": Recipe(
        "ml-1m",
        "sasrec_single_pass",
        ("ratings.dat", "ml-1m/ratings.dat", "ml-1m.zip"),
        ML1M_ZIP,
        {
            "users": "6.0k (6,040)",
            "items": "3.4k (3,416)",
            "interactions": "1.0M (999,611)",
        },
    ),
    "beauty": Recipe(
        "beauty",
        "sasrec_single_pass",
        ("reviews_Beauty.json.gz", "ratings_Beauty.csv", "reviews_Beauty_5.json.gz"),
        BEAUTY_CSV,
        {
            "users": "52.0k (52,024)",
            "items": "57.2k (57,289)",
            "interactions": "0.4M (394,908)",
            "note": "SASRec's single pass over the full reviews file",
        },
    ),
    "anime": Recipe(
        "anime",
        "kcore",
        ("rating.csv", "anime_history.dat", "anime_ratings.dat"),
        None,
        {
            "users": "73.5k",
            "items": "12.2k",
            "interactions": "1.0M",
            "note": "Kaggle describes 73,516 users and 12,294 anime "
            "(anime.csv); with no timestamps in rating.csv, the paper's 1.0M and order are unexplained",
        },
    ),
}


def _resolve(recipe: Recipe, raw: pathlib.Path, rules) -> pathlib.Path:
    if not raw.exists():
        raise DataPrepError(f"--raw {raw} does not exist")
    if raw.is_file():
        return raw
    names = recipe.candidates
    if recipe.name == "anime" and rules.unrated == "drop":  # caserec: rated only
        names = ("rating.csv", "anime_ratings.dat")
    for name in names:
        if (raw / name).is_file():
            return raw / name
    raise DataPrepError(f"none of {', '.join(names)} found in {raw}")


def _obtain(recipe, raw, cache_dir, sha256, url) -> tuple[pathlib.Path, bool | None]:
    """The raw file to read, and whether it matched a pinned checksum."""
    if raw is not None:
        return pathlib.Path(raw), None
    if recipe.remote is None:
        raise DataPrepError(
            f"the Kaggle anime data has no public download address: download "
            f"rating.csv and anime.csv from {KAGGLE_ANIME_PAGE} and pass "
            f"--raw=FOLDER (the folder holding them)"
        )
    remote = recipe.remote
    if sha256 or url:
        remote = dataclasses.replace(
            remote, sha256=sha256 or remote.sha256, url=url or remote.url
        )
    if not remote.pinned:
        raise DataPrepError(
            f"no checksum is published for {remote.url}: download it yourself "
            f"and pass --raw=PATH, or pin its SHA-256 with --sha256 to download it "
            f"into {cache_dir}"
        )
    return fetch.fetch(remote, cache_dir), True


def _read(recipe, path, rules, bad_rows) -> readers.RawRows:
    if recipe.name == "ml-1m":
        member = "ratings.dat" if zipfile.is_zipfile(path) else None
        return readers.read_int_table(
            path, readers.GROUPLENS, member=member, bad_rows=bad_rows, has_time=True
        )
    if recipe.name == "beauty":
        return readers.read_amazon(path, bad_rows=bad_rows)
    with open(path, "rb") as f:
        head = f.readline(4096)
    spec = readers.CASEREC_ANIME if b"\t" in head else readers.KAGGLE_ANIME
    return readers.read_int_table(path, spec, bad_rows=bad_rows, has_time=False)


def _catalogue(path: pathlib.Path, rows: readers.RawRows) -> dict:
    for name in ("anime.csv", "anime_info.dat"):
        if (path.parent / name).is_file():
            ids = readers.read_catalogue(path.parent / name)
            unknown = ~np.isin(rows.item_ids, ids)
            return {
                "file": name,
                "anime": len(ids),
                "rated_ids_not_in_catalogue": int(unknown.sum()),
            }
    return {"file": None}


def prepare(
    dataset: str,
    *,
    out,
    raw=None,
    cache_dir=None,
    filter=None,
    k=5,
    duplicates="keep_first",
    unrated="keep",
    bad_rows="error",
    sha256=None,
    url=None,
    overwrite=False,
    echo=print,
) -> dict:
    """Runs the recipe for `dataset`; writes DIR files and returns the stats.

    Refuses (before reading anything) an `out` that already holds this
    dataset's outputs, unless `overwrite`."""
    if dataset not in RECIPES:
        raise DataPrepError(f"dataset must be one of {tuple(RECIPES)}, not {dataset!r}")
    recipe = RECIPES[dataset]
    outputs.check_out(pathlib.Path(out), dataset, overwrite=overwrite)
    rules = sequences.Rules(filter or recipe.default_filter, k, duplicates, unrated)
    cache_dir = pathlib.Path(cache_dir) if cache_dir else fetch.default_cache_dir()
    path, verified = _obtain(recipe, raw, cache_dir, sha256, url)
    path = _resolve(recipe, path, rules)
    source_digests = fetch.file_digests(path)
    verified = _check_local(recipe, path, source_digests, verified, echo)
    rows = _read(recipe, path, rules, bad_rows)
    seqs = sequences.build(rows, rules)
    source = {
        **rows.source,
        "file_sha256": source_digests["sha256"],
        "file_md5": source_digests["md5"],
        "checksum_verified": verified,
    }
    stats = _stats(dataset, recipe, rules, bad_rows, rows, seqs, source)
    if dataset == "anime":
        stats["unrated_rows_in_input"] = int(rows.unrated.sum())
        stats["catalogue"] = _catalogue(path, rows)
    stats = outputs.write_all(pathlib.Path(out), dataset, seqs, stats)
    echo(outputs.table1(stats))
    return stats


def _check_local(recipe, path, source_digests, verified, echo):
    """``verified``, or for a local copy of a pinned file (``verified`` None)
    whether it matches the published checksum; a mismatch is warned about,
    not refused."""
    remote = recipe.remote
    if verified is None and remote and remote.pinned and path.name == remote.name:
        verified = fetch.check_digests(remote, source_digests) is None
        if not verified:
            echo(f"warning: {path} does not match the published checksum")
    return verified


def _stats(dataset, recipe, rules, bad_rows, rows, seqs, source) -> dict:
    """The stats of the built sequences: counts, the rules that made them,
    ``source`` and the paper's Table 1; checks that every row read is
    accounted for."""
    lengths = seqs.offsets[1:] - seqs.offsets[:-1]
    kept = int(lengths.sum())
    rows_count = {
        "read": rows.rows_read,
        "kept": kept,
        "filtered": seqs.filtered,
        "rejected": rows.log.rejected,
    }
    if rows.rows_read != kept + sum(seqs.filtered.values()) + rows.log.rejected:
        raise AssertionError(f"row accounting broken: {rows_count}")
    return {
        "dataset": dataset,
        "users": seqs.num_users,
        "items": len(seqs.item_ids),
        "interactions": kept,
        "avg_length": round(kept / seqs.num_users, 4),
        "min_length": int(lengths.min()),
        "max_length": int(lengths.max()),
        "rows": rows_count,
        "rejected_examples": rows.log.examples,
        "violations": seqs.violations,
        "kcore_passes": seqs.kcore_passes,
        "rules": {**dataclasses.asdict(rules), "bad_rows": bad_rows},
        "time_order": (
            "stable sort by (timestamp, line number)"
            if rows.timestamp is not None
            else "file order: the input has no timestamps"
        ),
        "consecutive_pairs": sequences.pair_directions(seqs),
        "source": source,
        "paper_table1": recipe.paper,
    }
