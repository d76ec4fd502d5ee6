"""Getting raw files: checksum-pinned downloads into a cache, and safe archive access.

A download goes to a temporary name in the cache folder, is checked against a
pinned digest (MD5 where the publisher gives one, as GroupLens does, or a SHA-256
the user pins with --sha256), and only then is renamed to its final name; a
tampered, truncated or interrupted download never appears under the final name.
Without a pinned digest nothing is downloaded. When the network is unreachable the
error says which file to put where.

Archives are never extracted to disk: the one member a recipe needs is streamed
out of the zip after its name has been checked (no absolute names, no "..", no
symlink entries), so an archive cannot write anywhere.
"""

import dataclasses
import hashlib
import http.client
import os
import pathlib
import posixpath
import urllib.error
import urllib.request
import zipfile
from typing import BinaryIO

from awrsr_jax import files
from data_prep.textrows import DataPrepError

_CHUNK = 1 << 20
_SCHEMES = ("https://", "http://", "file://")


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """A public file: where it lives and the digest it must have."""

    name: str  # file name in the cache
    url: str
    md5: str | None = None
    sha256: str | None = None

    @property
    def pinned(self) -> bool:
        return bool(self.md5 or self.sha256)


def default_cache_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "awrsr_jax" / "data_prep"


def file_digests(path: pathlib.Path) -> dict[str, str]:
    """MD5 and SHA-256 of a file, read in chunks."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            md5.update(chunk)
            sha.update(chunk)
    return {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def check_digests(remote: RemoteFile, digests: dict[str, str]) -> str | None:
    """None when the digests match every pinned one, else what differs."""
    for kind in ("md5", "sha256"):
        want = getattr(remote, kind)
        if want and digests[kind] != want.lower():
            return f"{kind} {digests[kind]} does not match the pinned {want}"
    return None


def fetch(
    remote: RemoteFile, cache_dir: pathlib.Path, *, timeout: float = 30.0
) -> pathlib.Path:
    """The verified local copy of `remote`, downloaded into `cache_dir` if absent."""
    final = pathlib.Path(cache_dir) / remote.name
    if not remote.pinned:
        raise DataPrepError(
            f"no checksum is pinned for {remote.url}, so it is not downloaded: "
            f"download it yourself and pass --raw=PATH, or pin it with --sha256"
        )
    if not remote.url.startswith(_SCHEMES):
        raise DataPrepError(
            f"refusing to download from {remote.url!r} "
            f"(only {', '.join(_SCHEMES)} addresses)"
        )
    if final.is_file():
        problem = check_digests(remote, file_digests(final))
        if problem:
            raise DataPrepError(f"cached file {final}: {problem}; delete it and rerun")
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_open(final, "wb") as out:  # renamed only once verified
        _download(remote, out, final, timeout)
        out.flush()
        problem = check_digests(remote, file_digests(pathlib.Path(out.name)))
        if problem:
            raise DataPrepError(f"download of {remote.url} refused: {problem}")
    return final


def _download(remote: RemoteFile, out: BinaryIO, final: pathlib.Path, timeout):
    try:
        with urllib.request.urlopen(remote.url, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            size = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                size += len(chunk)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataPrepError(
            f"could not download {remote.url} ({reason}). Offline? Put "
            f"{remote.name} at {final} yourself, or pass --raw=PATH"
        ) from e
    if expected is not None and int(expected) != size:
        raise DataPrepError(
            f"download of {remote.url} truncated: {size} of {expected} bytes"
        )


def safe_member_name(name: str) -> bool:
    """True for a relative archive name that stays inside the extraction folder."""
    if not name or "\\" in name or "\0" in name or name.startswith("/"):
        return False
    if len(name) > 1 and name[1] == ":":  # a Windows drive letter
        return False
    return ".." not in posixpath.normpath(name).split("/")


def open_zip_member(path: pathlib.Path, basename: str) -> tuple[BinaryIO, str]:
    """Stream of the one member of the zip at `path` called `basename` (at any
    depth), and its name. Unsafe names and symlink entries are refused."""
    archive = zipfile.ZipFile(path)
    matches = [
        i
        for i in archive.infolist()
        if posixpath.basename(i.filename) == basename and not i.is_dir()
    ]
    if len(matches) != 1:
        archive.close()
        found = "no" if not matches else f"{len(matches)}"
        raise DataPrepError(
            f"{found} members called {basename} in the archive", path=str(path)
        )
    info = matches[0]
    is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
    if not safe_member_name(info.filename) or is_link:
        archive.close()
        raise DataPrepError(
            "unsafe archive member refused (absolute name, '..' or symlink)",
            path=str(path),
            text=info.filename,
        )
    stream = archive.open(info)
    archive.close()  # the open member keeps the underlying file open until closed
    return stream, info.filename
