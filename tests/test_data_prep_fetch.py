"""Checksum-pinned downloads through file:// URLs, and archive member checks
(RELIABILITY items 22 and 23). The network is never used."""

import hashlib
import http.server
import stat
import threading
import zipfile

import pytest

from awrsr_jax import files
from data_prep import fetch, recipes
from data_prep.textrows import DataPrepError

PAYLOAD = b"1::10::5::978300760\n" * 1000


def _remote(tmp_path, data=PAYLOAD, **digests):
    source = tmp_path / "mirror" / "ml-1m.zip"
    source.parent.mkdir(exist_ok=True)
    source.write_bytes(data)
    return fetch.RemoteFile("ml-1m.zip", source.as_uri(), **digests)


def _leftovers(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_download_verifies_md5_and_sha256_then_renames(tmp_path):
    cache = tmp_path / "cache"
    remote = _remote(
        tmp_path,
        md5=hashlib.md5(PAYLOAD).hexdigest(),
        sha256=hashlib.sha256(PAYLOAD).hexdigest(),
    )
    path = fetch.fetch(remote, cache)
    assert path == cache / "ml-1m.zip" and path.read_bytes() == PAYLOAD
    assert _leftovers(cache) == ["ml-1m.zip"]
    assert stat.S_IMODE(path.stat().st_mode) == files.default_file_mode()
    assert fetch.fetch(remote, cache) == path  # cached copy is re-verified, reused


@pytest.mark.parametrize(
    "served",
    [
        PAYLOAD[:-1] + b"X",  # tampered, same length
        PAYLOAD[: len(PAYLOAD) // 2],  # truncated
        b"",  # empty
    ],
)
def test_tampered_or_truncated_download_is_refused_and_leaves_nothing(tmp_path, served):
    cache = tmp_path / "cache"
    remote = _remote(tmp_path, served, md5=hashlib.md5(PAYLOAD).hexdigest())
    with pytest.raises(DataPrepError, match="refused: md5"):
        fetch.fetch(remote, cache)
    assert _leftovers(cache) == []


class _ShortHandler(http.server.BaseHTTPRequestHandler):
    """Promises the whole payload, sends half, hangs up."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_connection_cut_mid_transfer_is_refused_and_leaves_nothing(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), _ShortHandler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/ml-1m.zip"
    remote = fetch.RemoteFile("ml-1m.zip", url, md5=hashlib.md5(PAYLOAD).hexdigest())
    cache = tmp_path / "cache"
    try:
        with pytest.raises(DataPrepError, match="could not download|truncated"):
            fetch.fetch(remote, cache, timeout=10)
    finally:
        thread.join(10)
        server.server_close()
    assert _leftovers(cache) == []


def test_tampered_cached_file_is_refused(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "ml-1m.zip").write_bytes(b"not the zip")
    remote = _remote(tmp_path, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    with pytest.raises(DataPrepError, match="cached file .* delete it"):
        fetch.fetch(remote, cache)


def test_offline_error_says_which_file_to_put_where(tmp_path):
    cache = tmp_path / "cache"
    missing = fetch.RemoteFile(
        "ml-1m.zip", (tmp_path / "nowhere.zip").as_uri(), md5="0" * 32
    )
    with pytest.raises(DataPrepError) as info:
        fetch.fetch(missing, cache)
    message = str(info.value)
    assert "could not download" in message and str(cache / "ml-1m.zip") in message
    assert "--raw" in message and _leftovers(cache) == []


def test_unpinned_and_odd_scheme_downloads_are_refused(tmp_path):
    with pytest.raises(DataPrepError, match="no checksum is pinned"):
        fetch.fetch(_remote(tmp_path), tmp_path / "cache")
    ftp = fetch.RemoteFile("x", "ftp://example.org/x", sha256="0" * 64)
    with pytest.raises(DataPrepError, match="refusing to download"):
        fetch.fetch(ftp, tmp_path / "cache")


def test_ml1m_pins_the_grouplens_md5():
    assert recipes.ML1M_ZIP.md5 == "c4d9eecfca2ab87c1945afe126590906"
    assert recipes.ML1M_ZIP.url.startswith("https://files.grouplens.org/")
    assert not recipes.BEAUTY_CSV.pinned  # no published checksum: --sha256 needed


@pytest.mark.parametrize(
    "name,ok",
    [
        ("ml-1m/ratings.dat", True),
        ("ratings.dat", True),
        ("../ratings.dat", False),
        ("ml-1m/../../ratings.dat", False),
        ("/etc/ratings.dat", False),
        ("C:/ratings.dat", False),
        ("ml-1m\\ratings.dat", False),
    ],
)
def test_safe_member_name(name, ok):
    assert fetch.safe_member_name(name) is ok


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members:
            archive.writestr(name, data)
    return path


def test_zip_member_is_streamed_without_extraction(tmp_path):
    archive = _zip(tmp_path / "a.zip", [("ml-1m/ratings.dat", PAYLOAD), ("x", b"")])
    stream, name = fetch.open_zip_member(archive, "ratings.dat")
    with stream:
        assert stream.read() == PAYLOAD and name == "ml-1m/ratings.dat"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]


@pytest.mark.parametrize(
    "members,match",
    [
        ([("../ratings.dat", PAYLOAD)], "unsafe archive member"),
        ([("/abs/ratings.dat", PAYLOAD)], "unsafe archive member"),
        ([("a/ratings.dat", PAYLOAD), ("b/ratings.dat", PAYLOAD)], "2 members"),
        ([("movies.dat", b"")], "no members"),
    ],
)
def test_unsafe_or_ambiguous_members_are_refused(tmp_path, members, match):
    archive = _zip(tmp_path / "a.zip", members)
    with pytest.raises(DataPrepError, match=match):
        fetch.open_zip_member(archive, "ratings.dat")


def test_symlink_member_is_refused(tmp_path):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo("ml-1m/ratings.dat")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(DataPrepError, match="symlink"):
        fetch.open_zip_member(path, "ratings.dat")
