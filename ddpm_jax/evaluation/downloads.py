"""Files fetched once into a cache and verified by SHA-256 (the Inception weights).

    path = downloads.fetch_weights(url, "6726825d", cache_dir=user_cache.default_cache_dir())

A download streams into a temporary file beside its destination, is hashed on the way, and is
renamed into place only when complete and verified, so the cache never holds a file that looks
complete but is not. A cached file is verified and reused with no network access.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pathlib
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import IO

from ddpm_jax.atomic_files import atomic_write

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fetch_weights(url: str, sha256: str, *, cache_dir: str | os.PathLike[str],
                  timeout: float = 60.0) -> pathlib.Path:
    """The file at ``url``, downloaded once into ``cache_dir`` and verified.

    Args:
      url: where the file is; its last path component names the cached file.
      sha256: its SHA-256 in hex, all 64 digits or a prefix of at least 8 (torch.hub's
        convention of naming a file ``<name>-<first 8 hex digits>.<ext>``).
      cache_dir: the cache directory, created if missing.
      timeout: seconds to wait on the connection.

    Returns:
      The cached file's path.

    Raises:
      ValueError: the cached or downloaded file's SHA-256 does not start with ``sha256`` (both
        digests named; a download is deleted, a cached file left for you to inspect).
      ConnectionError: the download failed or stopped early; the message says where to put the
        file by hand. Nothing is left in the cache.
    """
    expected = sha256.lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", expected):
        raise ValueError(f"sha256 must be 8 to 64 hex digits, got {sha256!r}")
    name = pathlib.PurePosixPath(urllib.parse.urlsplit(url).path).name
    if not name:
        raise ValueError(f"cannot name a cached file after {url!r}; expected a URL of a file")
    path = pathlib.Path(cache_dir) / name
    if path.is_file():
        digest = file_sha256(path)
        if not digest.startswith(expected):
            raise ValueError(f"the cached {path} has SHA-256 {digest}, expected {expected}...; "
                             f"delete it to download {url} again")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_write(path) as out:
            digest = _download(url, out, timeout=timeout)
            if not digest.startswith(expected):
                raise ValueError(f"the download of {url} has SHA-256 {digest}, expected "
                                 f"{expected}...; deleted it")
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise ConnectionError(f"could not download {url} ({e}); put the file at {path} by hand "
                              f"(its SHA-256 starts with {expected})") from None
    return path


def _download(url: str, out: IO[bytes], *, timeout: float) -> str:
    """Streams ``url`` into the binary file ``out``; returns the bytes' SHA-256."""
    digest, received = hashlib.sha256(), 0
    with urllib.request.urlopen(url, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        while chunk := response.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            received += len(chunk)
    if length is not None and received != int(length):
        raise ConnectionError(f"the connection closed after {received} of {length} bytes")
    return digest.hexdigest()
