"""The recipes on the project's benchmark files in ../shared/data (skipped when
absent; never copied into the repository), and the 10M-line memory check.

ML-1M: ../shared/data/raw/ml-1m/ml-1m_seqs_origids.txt holds every rating as
per-user sequences with the original ids. It is turned into a GroupLens
ratings.dat (users written in descending id order, timestamps from the sequence
order with pairs of equal timestamps, so ties must be broken by line number), and
the ml-1m recipe must give 6,040 / 3,416 / 999,611 and the reference file
ml-1m_sasrec-equivalent.txt, byte for byte and up to id renumbering.
"""

import pathlib
import subprocess
import sys

import pytest

from data_prep import prepare

DATA = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ORIGIDS = DATA / "raw" / "ml-1m" / "ml-1m_seqs_origids.txt"
REFERENCE = DATA / "ml-1m_sasrec-equivalent.txt"
CASEREC = DATA / "raw" / "anime-caserec-5k"


def _need(*paths):
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"benchmark data absent: {', '.join(missing)}")


def _original_sequences(path):
    seqs = {}
    with open(path) as f:
        for line in f:
            user, *items = line.split()
            seqs[int(user)] = [int(i) for i in items]
    return seqs


def write_ratings_dat(seqs: dict[int, list[int]], path: pathlib.Path) -> None:
    with open(path, "w", encoding="ascii") as out:
        for user in sorted(seqs, reverse=True):
            out.write(
                "".join(
                    f"{user}::{item}::5::{978_300_000 + j // 2}\n"
                    for j, item in enumerate(seqs[user])
                )
            )


def _read_map(path):
    lines = path.read_text().splitlines()
    assert lines[0].endswith("original_id")
    return {int(a): int(b) for a, b in (line.split("\t") for line in lines[1:])}


def test_ml1m_rebuilt_from_original_ids_matches_table1_and_the_reference(tmp_path):
    _need(ORIGIDS, REFERENCE)
    original = _original_sequences(ORIGIDS)
    write_ratings_dat(original, tmp_path / "ratings.dat")
    out = tmp_path / "out"
    stats = prepare("ml-1m", raw=tmp_path / "ratings.dat", out=out, echo=str)
    assert (stats["users"], stats["items"], stats["interactions"]) == (
        6040,
        3416,
        999_611,
    )
    assert stats["rows"]["read"] == 1_000_209
    assert stats["rows"]["filtered"]["min_count"] == 598
    assert (out / "ml-1m.txt").read_bytes() == REFERENCE.read_bytes()

    # Up to renumbering: translate both files back to MovieLens ids.
    users = _read_map(out / "ml-1m_user_map.tsv")
    items = _read_map(out / "ml-1m_item_map.tsv")
    counts = {}
    for seq in original.values():
        for item in seq:
            counts[item] = counts.get(item, 0) + 1
    expected = {u: [i for i in s if counts[i] >= 5] for u, s in original.items()}
    got = {}
    for line in (out / "ml-1m.txt").read_text().splitlines():
        user, *seq = map(int, line.split())
        got[users[user]] = [items[i] for i in seq]
    assert got == expected


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({"filter": "none"}, (5000, 7390, 520_609)),
        ({}, (4566, 5128, 514_935)),  # default: iterative 5-core
        ({"filter": "none", "unrated": "drop"}, (4714, 7157, 419_943)),
    ],
)
def test_anime_recipe_on_the_caserec_sample(tmp_path, kwargs, expected):
    _need(CASEREC / "anime_history.dat")
    stats = prepare("anime", raw=CASEREC, out=tmp_path, echo=str, **kwargs)
    assert (stats["users"], stats["items"], stats["interactions"]) == expected
    assert stats["time_order"] == "file order: the input has no timestamps"
    # every user's items follow one fixed item order, not time
    assert stats["consecutive_pairs"]["also_reversed"] == 0
    assert stats["consecutive_pairs"]["distinct"] > 80_000
    assert stats["rows"]["rejected"] == 0
    rows = stats["rows"]
    assert rows["read"] == rows["kept"] + sum(rows["filtered"].values())


@pytest.mark.slow
def test_ten_million_line_ratings_file_runs_in_bounded_memory():
    result = subprocess.run(
        [sys.executable, "-m", "data_prep.bench_large", "--lines=10000000"],
        capture_output=True,
        text=True,
        check=True,
    )
    last = result.stdout.strip().splitlines()[-1]
    peak_mib = float(last.rsplit("peak RSS ", 1)[1].split()[0])
    assert peak_mib < 1536, last  # ~16 bytes per row kept, plus sort buffers
