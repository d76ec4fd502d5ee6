"""The three recipes end to end on tiny raw files the tests write themselves:
outputs, determinism, order independence, atomic writes, downloads, the CLI."""

import gzip
import hashlib
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from data_prep import outputs, prepare
from data_prep.textrows import DataPrepError


def _ratings(seed=0, users=30, items=40, per_user=12):
    """GroupLens rows (user, item, rating, timestamp), distinct timestamps per user."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, users + 1):
        chosen = rng.choice(items, per_user, replace=False) + 1
        stamps = rng.choice(10**6, per_user, replace=False) + 9 * 10**8
        rows += [
            (u, int(i), int(rng.integers(1, 6)), int(t)) for i, t in zip(chosen, stamps)
        ]
    return rows


def _grouplens_bytes(rows):
    return "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows).encode()


def _run(tmp_path, dataset, raw, name="out", **kwargs):
    out = tmp_path / name
    printed = []
    stats = prepare(dataset, raw=raw, out=out, echo=printed.append, **kwargs)
    return out, stats, "\n".join(printed)


def _files(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_ml1m_zip_and_extracted_file_give_the_same_output(tmp_path):
    data = _grouplens_bytes(_ratings())
    (tmp_path / "ratings.dat").write_bytes(data)
    with zipfile.ZipFile(tmp_path / "ml-1m.zip", "w") as archive:
        archive.writestr("ml-1m/ratings.dat", data)
        archive.writestr("ml-1m/movies.dat", b"1::T\xe9::Drama\n")
    out_a, stats_a, printed = _run(tmp_path, "ml-1m", tmp_path / "ratings.dat", "a")
    out_b, stats_b, _ = _run(tmp_path, "ml-1m", tmp_path / "ml-1m.zip", "b")
    assert (out_a / "ml-1m.txt").read_bytes() == (out_b / "ml-1m.txt").read_bytes()
    assert stats_b["source"]["member"] == "ml-1m/ratings.dat"
    assert stats_a["source"]["content_sha256"] == stats_b["source"]["content_sha256"]
    assert stats_b["source"]["checksum_verified"] is False  # not GroupLens's zip
    assert "paper Table 1" in printed and "3.4k (3,416)" in printed
    assert sorted(_files(out_a)) == [
        "ml-1m.txt",
        "ml-1m_item_map.tsv",
        "ml-1m_user_map.tsv",
        "stats.json",
    ]


def test_ml1m_output_format_and_id_maps(tmp_path):
    rows = _ratings()
    (tmp_path / "ratings.dat").write_bytes(_grouplens_bytes(rows))
    out, stats, _ = _run(tmp_path, "ml-1m", tmp_path / "ratings.dat")
    users = dict(
        line.split("\t")
        for line in (out / "ml-1m_user_map.tsv").read_text().splitlines()
    )
    items = dict(
        line.split("\t")
        for line in (out / "ml-1m_item_map.tsv").read_text().splitlines()
    )
    assert (
        users.pop("user_id") == "original_id" and items.pop("item_id") == "original_id"
    )
    counts = {}
    for _, i, _, _ in rows:
        counts[i] = counts.get(i, 0) + 1
    expected = {}
    for u, i, _, _ in sorted(rows, key=lambda r: (r[0], r[3])):
        if counts[i] >= 5:
            expected.setdefault(u, []).append(i)
    got = {}
    for line in (out / "ml-1m.txt").read_text().splitlines():
        user, *seq = line.split(" ")
        got[int(users[user])] = [int(items[s]) for s in seq]
    assert got == expected
    assert stats["users"] == len(expected) and stats["items"] == len(items)
    assert stats["interactions"] == sum(map(len, expected.values()))
    first_seen = [
        int(s)
        for line in (out / "ml-1m.txt").read_text().split("\n")
        for s in line.split(" ")[1:]
    ]
    assert list(dict.fromkeys(first_seen)) == list(range(1, len(items) + 1))


def test_same_input_gives_the_same_bytes_and_row_order_does_not_matter(tmp_path):
    rows = _ratings(seed=3)
    (tmp_path / "a.dat").write_bytes(_grouplens_bytes(rows))
    shuffled = [rows[i] for i in np.random.default_rng(9).permutation(len(rows))]
    (tmp_path / "b.dat").write_bytes(_grouplens_bytes(shuffled))
    first, _, _ = _run(tmp_path, "ml-1m", tmp_path / "a.dat", "1")
    again, _, _ = _run(tmp_path, "ml-1m", tmp_path / "a.dat", "2")
    other, stats, _ = _run(tmp_path, "ml-1m", tmp_path / "b.dat", "3", filter="kcore")
    assert _files(first) == _files(again)
    kcore_a, _, _ = _run(tmp_path, "ml-1m", tmp_path / "a.dat", "4", filter="kcore")
    assert (other / "ml-1m.txt").read_bytes() == (kcore_a / "ml-1m.txt").read_bytes()
    assert stats["violations"] == {"users_below_k": 0, "items_below_k": 0}


def test_skip_policy_accounts_for_every_row(tmp_path):
    data = _grouplens_bytes(_ratings()) + b"7::x::5::1\n\n7::1::5::2\n7::1::5::3\n"
    (tmp_path / "ratings.dat").write_bytes(data)
    with pytest.raises(DataPrepError, match="ratings.dat:361: non-integer movie id"):
        _run(tmp_path, "ml-1m", tmp_path / "ratings.dat")
    _, stats, printed = _run(
        tmp_path, "ml-1m", tmp_path / "ratings.dat", bad_rows="skip"
    )
    rows = stats["rows"]
    assert rows["rejected"] == 2 and rows["read"] == 364
    assert rows["filtered"]["duplicate"] >= 1
    assert (
        rows["read"] == rows["kept"] + sum(rows["filtered"].values()) + rows["rejected"]
    )
    assert [e["line"] for e in stats["rejected_examples"]] == [361, 362]
    assert "rejected 2" in printed


def test_interrupted_write_leaves_previous_outputs_and_no_temporaries(
    tmp_path, monkeypatch
):
    (tmp_path / "ratings.dat").write_bytes(_grouplens_bytes(_ratings()))
    out, _, _ = _run(tmp_path, "ml-1m", tmp_path / "ratings.dat")
    before = _files(out)
    (tmp_path / "ratings.dat").write_bytes(_grouplens_bytes(_ratings(seed=5)))

    def fail(path, stats, pending=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs, "write_stats", fail)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "ml-1m", tmp_path / "ratings.dat", overwrite=True)
    assert sorted(_files(out)) == sorted(before)  # only final names, no .tmp
    assert _files(out) == before  # no mix of new id maps and old stats.json


def test_outputs_replace_symlinks_instead_of_writing_through_them(tmp_path):
    (tmp_path / "ratings.dat").write_bytes(_grouplens_bytes(_ratings()))
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "ml-1m.txt").symlink_to(victim)
    (out / "stats.json").symlink_to(victim)
    _run(tmp_path, "ml-1m", tmp_path / "ratings.dat", overwrite=True)
    assert victim.read_text() == "keep me"
    assert (
        not (out / "ml-1m.txt").is_symlink() and not (out / "stats.json").is_symlink()
    )


def _beauty_rows():
    # SASRec's single pass keeps u1..u5 x i1..i5 (25 rows) plus u6's rows on
    # popular items; u6 has 5 raw rows, one on a rare item, so it ends with 4.
    rows = [
        (f"U{u}", f"I{i}", 5.0, 1000 * u + i) for u in range(1, 6) for i in range(1, 6)
    ]
    rows += [("U6", f"I{i}", 4.0, 7000 + i) for i in range(1, 5)]
    rows += [("U6", "RARE", 1.0, 7100), ("U7", "RARE", 1.0, 1)]
    return rows


def test_beauty_csv_and_json_agree_and_filters_differ(tmp_path):
    rows = _beauty_rows()
    csv = "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows).encode()
    (tmp_path / "ratings_Beauty.csv").write_bytes(csv)
    reviews = "".join(
        json.dumps(
            {
                "reviewerID": u,
                "asin": i,
                "overall": r,
                "unixReviewTime": t,
                "reviewText": "é",
            }
        )
        + "\n"
        for u, i, r, t in rows
    )
    (tmp_path / "reviews_Beauty.json.gz").write_bytes(gzip.compress(reviews.encode()))
    out_csv, single, _ = _run(tmp_path, "beauty", tmp_path / "ratings_Beauty.csv", "c")
    out_json, _, _ = _run(tmp_path, "beauty", tmp_path / "reviews_Beauty.json.gz", "j")
    assert (out_csv / "beauty.txt").read_bytes() == (
        out_json / "beauty.txt"
    ).read_bytes()
    assert single["rules"]["filter"] == "sasrec_single_pass"
    assert single["source"]["checksum_verified"] is None  # nothing published
    assert (single["users"], single["items"], single["interactions"]) == (6, 5, 29)
    assert single["violations"] == {"users_below_k": 1, "items_below_k": 0}
    _, core, _ = _run(tmp_path, "beauty", tmp_path, "k", filter="kcore")
    assert core["source"]["file"] == "reviews_Beauty.json.gz"  # folder preference
    assert (core["users"], core["items"], core["interactions"]) == (5, 5, 25)
    assert core["violations"] == {"users_below_k": 0, "items_below_k": 0}


def test_anime_rules_and_catalogue(tmp_path):
    lines = ["user_id,anime_id,rating"]
    lines += [
        f"{u},{a},{-1 if (u + a) % 4 == 0 else 7}"
        for u in range(1, 8)
        for a in range(10, 16)
    ]
    (tmp_path / "rating.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "anime.csv").write_text(
        "anime_id,name,genre,type,episodes,rating,members\n"
        + "".join(
            f'{a},"Name, {a}","Drama, Comedy",TV,12,8.1,100\n' for a in range(10, 15)
        )
    )
    out, keep, printed = _run(tmp_path, "anime", tmp_path, filter="none")
    assert keep["time_order"] == "file order: the input has no timestamps"
    assert "no timestamps" in printed
    assert "also in the other order; none: every sequence may follow" in printed
    assert keep["interactions"] == 42 and keep["unrated_rows_in_input"] == 11
    assert keep["catalogue"] == {
        "file": "anime.csv",
        "anime": 5,
        "rated_ids_not_in_catalogue": 1,
    }
    _, drop, _ = _run(tmp_path, "anime", tmp_path, "d", filter="none", unrated="drop")
    assert drop["interactions"] == 31 and drop["rows"]["filtered"]["unrated"] == 11
    first_line = (out / "anime.txt").read_text().splitlines()[0].split()
    assert first_line == ["1", "1", "2", "3", "4", "5", "6"]  # file order


def test_downloads_need_a_pinned_checksum_and_fail_offline_with_a_hint(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DataPrepError, match="--sha256"):
        prepare("beauty", out=tmp_path / "o", cache_dir=cache)
    with pytest.raises(DataPrepError, match="kaggle.com"):
        prepare("anime", out=tmp_path / "o", cache_dir=cache)
    with pytest.raises(DataPrepError, match=f"Put ml-1m.zip at {cache / 'ml-1m.zip'}"):
        prepare(
            "ml-1m",
            out=tmp_path / "o",
            cache_dir=cache,
            url=(tmp_path / "none.zip").as_uri(),
        )


def test_download_with_pinned_sha256_through_a_file_url(tmp_path):
    data = "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in _beauty_rows()).encode()
    (tmp_path / "mirror.csv").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    kwargs = {
        "out": tmp_path / "o",
        "cache_dir": tmp_path / "cache",
        "url": (tmp_path / "mirror.csv").as_uri(),
        "echo": str,
    }
    stats = prepare("beauty", sha256=sha, **kwargs)
    assert (
        stats["source"]["checksum_verified"] is True
        and stats["source"]["file_sha256"] == sha
    )
    (tmp_path / "cache" / "ratings_Beauty.csv").unlink()
    kwargs["overwrite"] = True  # the checks below fail before writing anything
    with pytest.raises(DataPrepError, match="refused: sha256"):
        prepare("beauty", sha256="0" * 64, **kwargs)
    assert not (tmp_path / "cache" / "ratings_Beauty.csv").exists()
    with pytest.raises(DataPrepError, match="refused: md5"):  # not GroupLens's bytes
        prepare("ml-1m", **kwargs)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "data_prep", *args], capture_output=True, text=True
    )


@pytest.fixture
def cli():
    from data_prep import __main__ as cli

    yield cli
    cli.FLAGS.unparse_flags()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--dataset=ml-10m", "--out=o"], "flag --dataset=ml-10m"),
        (["--dataset=ml-1m"], "flag --out"),
        (["--dataset=ml-1m", "--out=o", "--k=0"], "flag --k=0"),
        (["--dataset=beauty", "--out=o", "--sha256=abc"], "flag --sha256=abc"),
        (["--dataset=beauty", "--out=o", "--filter=5core"], "flag --filter=5core"),
        (["--dataset=anime", "--out=o", "--bad_rows=ignore"], "flag --bad_rows"),
    ],
)
def test_bad_flag_values_give_one_line_naming_the_flag(cli, args, needle):
    with pytest.raises(SystemExit) as info:
        cli.parse_flags(["data_prep", *args])
    message = str(info.value.code)
    assert message.startswith("data_prep: ") and needle in message
    assert "\n" not in message


def test_cli_flags_stay_off_absl_global_flags(cli):
    from absl import flags

    assert "dataset" not in flags.FLAGS and "dataset" in cli.FLAGS


def test_cli_runs_and_reports_input_errors_in_one_line(tmp_path):
    missing = _cli("--dataset=ml-1m", "--out=o", f"--raw={tmp_path / 'nope'}")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    (tmp_path / "ratings.dat").write_bytes(_grouplens_bytes(_ratings()))
    ok = _cli("--dataset=ml-1m", f"--raw={tmp_path}", f"--out={tmp_path / 'out'}")
    assert ok.returncode == 0 and "paper Table 1" in ok.stdout
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["users"] == 30
