"""Malformed raw input: each case fails with a typed error naming path, line and
text, or follows its stated, counted rule (RELIABILITY item 18)."""

import gzip
import io
import json

import numpy as np
import pytest

from data_prep import readers, textrows
from data_prep.textrows import DataPrepError, LineSource, RowLog

GOOD = b"1::10::5::978300760\n1::11::3::978300761\n2::10::4::978300762\n"


def _grouplens(tmp_path, data: bytes, **kwargs):
    path = tmp_path / "ratings.dat"
    path.write_bytes(data)
    return readers.read_int_table(path, readers.GROUPLENS, has_time=True, **kwargs)


def _anime(tmp_path, data: bytes, **kwargs):
    path = tmp_path / "rating.csv"
    path.write_bytes(data)
    return readers.read_int_table(path, readers.KAGGLE_ANIME, has_time=False, **kwargs)


GROUPLENS_CASES = [
    # (name, file bytes, bad line, words in the reason)
    ("wrong field count", GOOD + b"3::10::5\n", 4, "expected 4 fields"),
    ("non-integer id", GOOD + b"3::abc::5::978300760\n", 4, "non-integer movie id"),
    ("negative id", b"-1::10::5::978300760\n", 1, "negative user id -1"),
    ("float rating", GOOD + b"3::10::4.5::978300760\n", 4, "non-integer rating"),
    ("rating -1", GOOD + b"3::10::-1::978300760\n", 4, "negative rating -1"),
    ("rating 6", GOOD + b"3::10::6::978300760\n", 4, "rating 6 outside [1, 5]"),
    ("header line", b"UserID::MovieID::Rating::Timestamp\n" + GOOD, 1, "non-integer"),
    ("blank line", GOOD[:20] + b"\n" + GOOD[20:], 2, "blank line"),
    ("trailing blank line", GOOD + b"\n", 4, "blank line"),
    ("UTF-8 BOM", textrows.BOM + GOOD, 1, "byte-order mark"),
    ("CRLF", GOOD.replace(b"\n", b"\r\n"), 1, "CRLF"),
    ("Latin-1 byte", GOOD + b"3::\xe9t\xe9::5::978300760\n", 4, "non-ASCII byte 0xe9"),
    ("comma separator", GOOD + b"3,10,5,978300760\n", 4, "wrong separator: found ','"),
    ("tab separator", b"3\t10\t5\t978300760\n", 1, "wrong separator: found '\\t'"),
    ("single colon", GOOD + b"3:10::5::978300760\n", 4, "expected 4 fields"),
    ("space in field", GOOD + b"3:: 10::5::978300760\n", 4, "non-integer movie id"),
    ("huge id", GOOD + b"3::99999999999999999999::5::1\n", 4, "outside"),
    ("truncated last line", GOOD + b"3::10::5::97830", 4, "truncated last line"),
    ("truncated mid-field", GOOD + b"3::10::", 4, "truncated last line"),
]


@pytest.mark.parametrize("name,data,line,reason", GROUPLENS_CASES)
def test_grouplens_malformed_rows_name_path_line_and_text(
    tmp_path, name, data, line, reason
):
    with pytest.raises(DataPrepError) as info:
        _grouplens(tmp_path, data)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.path == str(tmp_path / "ratings.dat") and err.line == line
    assert reason in err.reason
    assert err.text == textrows.show(data.split(b"\n")[line - 1])
    assert f"ratings.dat:{line}:" in str(err)


@pytest.mark.parametrize("name,data,line,reason", GROUPLENS_CASES)
def test_skip_policy_counts_every_rejected_row(tmp_path, name, data, line, reason):
    rows = _grouplens(tmp_path, data, bad_rows="skip")
    assert rows.log.rejected >= 1
    assert (
        rows.log.examples[0]["line"] == line
        and reason in rows.log.examples[0]["reason"]
    )
    assert rows.rows_read == len(rows.user) + rows.log.rejected


@pytest.mark.parametrize(
    "data,reason", [(b"", "empty file"), (b"user_id,anime_id,rating\n", "header only")]
)
def test_empty_and_header_only_files_are_errors_under_any_policy(
    tmp_path, data, reason
):
    for policy in ("error", "skip"):
        with pytest.raises(DataPrepError, match=reason):
            _anime(tmp_path, data, bad_rows=policy)


def test_grouplens_empty_file(tmp_path):
    with pytest.raises(DataPrepError, match="empty file"):
        _grouplens(tmp_path, b"")


def test_wrong_header_is_an_error(tmp_path):
    with pytest.raises(DataPrepError, match="expected the header line") as info:
        _anime(tmp_path, b"user,anime,rating\n1,2,3\n")
    assert info.value.line == 1


def test_csv_rules_strip_bom_fold_crlf_and_accept_unterminated_last_line(tmp_path):
    data = textrows.BOM + b"user_id,anime_id,rating\r\n1,20,-1\r\n1,21,8\r\n2,20,10"
    rows = _anime(tmp_path, data)
    assert rows.source["bom"] is True
    assert rows.source["crlf_lines"] == 3  # the header line too
    assert rows.source["final_newline"] is False
    assert rows.unrated.tolist() == [True, False, False]
    assert rows.user_ids.tolist() == [1, 2] and rows.item_ids.tolist() == [20, 21]


def test_line_numbers_stay_right_across_block_boundaries():
    data = b"".join(b"%d::7::5::100\n" % u for u in range(1, 200)) + b"x::7::5::100\n"
    source = LineSource(io.BytesIO(data), "f", strict=True, block_bytes=37)
    with pytest.raises(DataPrepError) as info:
        list(textrows.iter_int_rows(source, readers.GROUPLENS, RowLog("f")))
    assert info.value.line == 200 and info.value.text == "x::7::5::100"


def _mutate(rng, data: bytearray) -> bytes:
    pos = int(rng.integers(0, len(data)))
    choice = rng.integers(0, 5)
    noise = [b":", b"-", b"\n", b",", b"\r", b"\xe9", b" ", b"9", b"\t", b"::"]
    if choice == 0:
        del data[pos]
    elif choice in (1, 2):
        data[pos:pos] = noise[int(rng.integers(0, len(noise)))]
    elif choice == 3:
        data[pos : pos + 1] = noise[int(rng.integers(0, len(noise)))]
    return bytes(data)


@pytest.mark.parametrize("spec", [readers.GROUPLENS, readers.KAGGLE_ANIME])
def test_fast_path_agrees_with_the_line_parser_on_mutated_files(spec):
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(1, 30))
        cols = [rng.integers(0, 50, n), rng.integers(0, 50, n), rng.integers(1, 6, n)]
        if spec is readers.GROUPLENS:
            cols.append(rng.integers(0, 10**9, n))
        text = "".join(spec.sep.decode().join(map(str, r)) + "\n" for r in zip(*cols))
        header = b"" if spec.header is None else spec.header + b"\n"
        data = header + _mutate(rng, bytearray(text.encode()))
        results = []
        for fast in (True, False):
            source = LineSource(
                io.BytesIO(data), "f", strict=spec.strict, header=spec.header
            )
            log = RowLog("f", "skip")
            try:
                blocks = list(textrows.iter_int_rows(source, spec, log, fast=fast))
                results.append((np.concatenate(blocks).tolist(), log.examples))
            except DataPrepError as e:
                results.append(str(e))
        assert results[0] == results[1], (trial, data)


def _amazon(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return readers.read_amazon(path)


def test_amazon_csv_reads_string_ids_in_sorted_code_order(tmp_path):
    rows = _amazon(tmp_path, "ratings_Beauty.csv", b"B,x2,5.0,20\nA,x1,3.0,10\n")
    assert rows.user_ids.tolist() == ["A", "B"] and rows.user.tolist() == [1, 0]
    assert rows.item_ids.tolist() == ["x1", "x2"] and rows.timestamp.tolist() == [
        20,
        10,
    ]


def _amazon_csv(tmp_path, data: bytes):
    return _amazon(tmp_path, "ratings_Beauty.csv", data)


# Malformed rows of the other readers: (reader, file bytes, bad line, words in
# the reason).
ANIME_HEADER = b"user_id,anime_id,rating\n"
MALFORMED = [
    ("anime", ANIME_HEADER + b"1,2,0\n", 2, "rating 0 outside -1 or [1, 10]"),
    ("anime", ANIME_HEADER + b"1,2,11\n", 2, "outside"),
    ("anime", ANIME_HEADER + b"1,2,-2\n", 2, "outside"),
    ("anime", ANIME_HEADER + b"1,2,5\n1,3", 3, "(last line has no final newline"),
    ("anime", ANIME_HEADER + b"1;2;5\n", 2, "wrong separator: found ';'"),
    ("anime", ANIME_HEADER + b"1,2,5\r3,4,5\n", 2, "carriage return inside"),
    ("amazon_csv", b"A,x1,5.0,10\nA,x2,5.0\n", 2, "expected 4 fields"),
    ("amazon_csv", b"A,x1,5.0,10\nA,x2,five,10\n", 2, "non-numeric rating"),
    ("amazon_csv", b"A,x1,5.0,-10\n", 1, "timestamp"),
    ("amazon_csv", b"A,x1,5.0,10\n\nA,x2,5.0,11\n", 2, "blank line"),
    ("amazon_csv", b"A,x\xe9,5.0,10\n", 1, "not printable ASCII"),
    ("amazon_csv", b"A,,5.0,10\n", 1, "empty"),
]


@pytest.mark.parametrize("reader,data,line,reason", MALFORMED)
def test_malformed_rows_name_line_and_reason(tmp_path, reader, data, line, reason):
    read = {"anime": _anime, "amazon_csv": _amazon_csv}[reader]
    with pytest.raises(DataPrepError) as info:
        read(tmp_path, data)
    assert info.value.line == line and reason in info.value.reason


def _review(**fields):
    base = {"reviewerID": "A1", "asin": "B1", "overall": 5.0, "unixReviewTime": 7}
    return json.dumps({**base, **fields}).encode()


@pytest.mark.parametrize(
    "bad,reason",
    [
        (b'{"reviewerID": "A1", "asin": ', "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (_review(asin=None), "asin missing"),
        (_review(unixReviewTime="7"), "unixReviewTime"),
        (_review(unixReviewTime=-7), "unixReviewTime"),
        (b'{"reviewerID": "A\xe9", "asin": "B1", "unixReviewTime": 7}', "not UTF-8"),
        (b"", "blank line"),
    ],
)
def test_amazon_json_malformed(tmp_path, bad, reason):
    data = _review() + b"\n" + bad + b"\n"
    with pytest.raises(DataPrepError) as info:
        _amazon(tmp_path, "reviews_Beauty.json.gz", data)
    assert info.value.line == 2 and reason in info.value.reason
    assert str(tmp_path / "reviews_Beauty.json.gz") in str(info.value)


def test_amazon_json_gz_reads_rows(tmp_path):
    data = _review() + b"\n" + _review(reviewerID="A0", unixReviewTime=3) + b"\n"
    rows = _amazon(tmp_path, "reviews_Beauty_5.json.gz", data)
    assert rows.user_ids.tolist() == ["A0", "A1"] and rows.user.tolist() == [1, 0]
    assert rows.rows_read == 2 and rows.log.rejected == 0


def test_bom_only_file_is_empty_and_binary_file_is_refused_early(tmp_path, monkeypatch):
    with pytest.raises(DataPrepError, match="empty file"):
        _anime(tmp_path, textrows.BOM)
    monkeypatch.setattr(textrows, "MAX_LINE_BYTES", 1000)
    with pytest.raises(DataPrepError, match="no line end in 1,000 bytes") as info:
        _grouplens(tmp_path, bytes(range(1, 10)) * 500)
    assert info.value.line == 1


def test_bom_split_from_the_rest_of_the_file_by_a_tiny_block():
    data = textrows.BOM + b"user_id,anime_id,rating\n1,2,3\n"
    source = LineSource(
        io.BytesIO(data),
        "f",
        strict=False,
        header=readers.KAGGLE_ANIME.header,
        block_bytes=3,
    )
    blocks = list(textrows.iter_int_rows(source, readers.KAGGLE_ANIME, RowLog("f")))
    assert np.concatenate(blocks).tolist() == [[1, 2, 3]] and source.bom
