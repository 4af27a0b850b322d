"""Fetching one file over HTTP(S) into a `.partial` file: resumable, verified.

urllib (stdlib) is enough: it follows the redirects mirrors use and honours
the proxy variables. A cut connection resumes with a Range request (kept
only if the server answers 206 for the same version, else it restarts); the
digest covers the whole file, the part from before a resume included.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import queue
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from roost.errors import RoostError

CHUNK_BYTES = 1 << 20
# One socket timeout covers connecting and every read: a server that stalls
# fails the download after this long instead of hanging `roost start`.
TIMEOUT_SECONDS = 30.0
# A broken connection is resumed while each attempt gets further; this many
# attempts in a row that got nothing end the download.
MAX_STALLED_ATTEMPTS = 3
RETRY_PAUSE_SECONDS = 0.5
REPORT_SECONDS = 0.1
USER_AGENT = "roost (image download)"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadProgress(Protocol):
    """Told how a download goes; the last call for a file has done == total."""

    def __call__(self, location: str, done_bytes: int, total_bytes: int | None,
                 bytes_per_sec: float) -> None: ...


class DownloadError(RoostError):
    """The network or the server failed: another candidate image may do."""


class DigestMismatch(RoostError):
    """The bytes are not the ones the configuration names; never used."""


def parse_digest(digest: str) -> tuple[str, str]:
    algo, _, hexdigest = digest.partition(":")
    if algo not in ("sha256", "sha512") or not hexdigest:
        raise RoostError(f"unsupported digest {digest!r}: use sha256:<hex> or sha512:<hex>")
    return algo, hexdigest.lower()


def hash_file(path: Path, algo: str) -> Any:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h


class _Rate:
    """Bytes per second over the last second or so (since the start, before)."""

    def __init__(self, done: int, now: float) -> None:
        self.start = self.mark = (done, now)
        self.rate = 0.0

    def update(self, done: int, now: float) -> float:
        base_done, base_at = self.mark
        if now - base_at >= 1.0:
            self.rate = (done - base_done) / (now - base_at)
            self.mark = (done, now)
        elif self.mark == self.start and now > base_at:
            self.rate = (done - base_done) / (now - base_at)
        return self.rate


class _HashPipe:
    """Hashes the chunks on a thread of its own (hashlib lets go of the GIL),
    so that hashing overlaps the network and the disk instead of adding to
    them: it is the slowest of the three."""

    def __init__(self, hasher: Any, buffers: int = 8) -> None:
        self.hasher = hasher
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(buffers):
            self._free.put(bytearray(CHUNK_BYTES))
        self._todo: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="roost-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            buf, n = item
            self.hasher.update(memoryview(buf)[:n])
            self._free.put(buf)

    def buffer(self) -> bytearray:
        """A buffer to fill; blocks while the hasher is that far behind."""
        return self._free.get()

    def submit(self, buf: bytearray, n: int) -> None:
        self._todo.put((buf, n))

    def finish(self) -> None:
        self._todo.put(None)
        self._thread.join()


class _Interrupted(Exception):
    """The body stopped short; `got` bytes arrived in this attempt."""

    def __init__(self, reason: str, got: int) -> None:
        super().__init__(reason)
        self.got = got


class _Restart(Exception):
    """The part we have cannot be resumed (416, another version)."""


def _validator_file(partial: Path) -> Path:
    return partial.with_name(partial.name + ".json")


def _validator(resp: http.client.HTTPResponse) -> str | None:
    """What If-Range sends so that a changed file is sent whole, not appended."""
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return str(etag)
    modified = resp.headers.get("Last-Modified")
    return str(modified) if modified else None


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    if isinstance(e, TimeoutError):
        return f"no answer within {TIMEOUT_SECONDS:g}s"
    return str(e) or type(e).__name__


class _Download:
    def __init__(self, url: str, partial: Path, digest: str | None,
                 progress: DownloadProgress | None) -> None:
        self.url, self.partial, self.digest, self.progress = url, partial, digest, progress
        self.algo = parse_digest(digest)[0] if digest else None
        self.hasher: Any = None
        self.hashed = 0  # bytes of the partial file the hasher has seen
        self.total: int | None = None
        self._reported = 0.0
        self._rate = _Rate(0, time.monotonic())

    def run(self) -> None:
        stalled = 0
        while True:
            try:
                self._attempt()
                return
            except _Restart:
                self._discard()
            except _Interrupted as e:
                stalled = 0 if e.got else stalled + 1
                if stalled >= MAX_STALLED_ATTEMPTS:
                    raise DownloadError(f"{self.url}: the transfer broke off {stalled} times "
                                        f"without progress ({e})") from None
                time.sleep(RETRY_PAUSE_SECONDS)

    def _discard(self) -> None:
        self.partial.unlink(missing_ok=True)
        _validator_file(self.partial).unlink(missing_ok=True)
        self.hasher, self.hashed = None, 0

    def _request(self, offset: int) -> urllib.request.Request:
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            with contextlib.suppress(OSError, ValueError, KeyError):
                saved = json.loads(_validator_file(self.partial).read_text())
                if saved["url"] == self.url and saved["validator"]:
                    headers["If-Range"] = saved["validator"]
        return urllib.request.Request(self.url, headers=headers)

    def _attempt(self) -> None:
        offset = self.partial.stat().st_size if self.partial.exists() else 0
        try:
            resp = urllib.request.urlopen(self._request(offset), timeout=TIMEOUT_SECONDS)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 416 and offset:
                raise _Restart from None
            raise DownloadError(f"{self.url}: {_reason(e)}") from None
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise DownloadError(f"{self.url}: {_reason(e)}") from None
        with resp:
            if resp.status == 206 and offset:
                match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
                if match is None or int(match.group(1)) != offset:
                    raise _Restart
                self.total = int(match.group(3)) if match.group(3) != "*" else None
                mode = "ab"
            else:  # 200: the whole file again, whatever we asked for
                length = resp.headers.get("Content-Length")
                self.total = int(length) if length and length.isdigit() else None
                offset, mode = 0, "wb"
                self.hasher, self.hashed = None, 0
                _validator_file(self.partial).write_text(
                    json.dumps({"url": self.url, "validator": _validator(resp)}))
            if self.algo and self.hasher is None:
                self.hasher = hashlib.new(self.algo)
            if self.hasher is not None and self.hashed != offset:  # resumed: hash what we have
                self.hasher = hash_file(self.partial, self.hasher.name)
                self.hashed = offset
            self._stream(resp, offset, mode)
        self._verify()

    def _stream(self, resp: http.client.HTTPResponse, offset: int, mode: str) -> None:
        done = offset
        self._rate = _Rate(done, time.monotonic())
        pipe = _HashPipe(self.hasher) if self.hasher is not None else None
        own = bytearray(CHUNK_BYTES)
        try:
            with open(self.partial, mode) as out:
                while True:
                    buf = pipe.buffer() if pipe else own
                    try:
                        n = resp.readinto(buf)
                    except (OSError, http.client.HTTPException) as e:
                        raise _Interrupted(_reason(e), done - offset) from None
                    if not n:
                        break
                    out.write(memoryview(buf)[:n])
                    if pipe:
                        pipe.submit(buf, n)
                        self.hashed += n
                    done += n
                    self._report(done)
        finally:
            if pipe:
                pipe.finish()  # the hash then covers exactly the bytes written
        if self.total is not None and done != self.total:
            raise _Interrupted(f"got {done} of {self.total} bytes", done - offset)
        self.total = done
        self._report(done, final=True)

    def _report(self, done: int, final: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if final or (now - self._reported >= REPORT_SECONDS and done != self.total):
            self._reported = now
            self.progress(self.url, done, self.total, self._rate.update(done, now))

    def _verify(self) -> None:
        if self.digest is None or self.hasher is None:
            return
        actual = f"{self.hasher.name}:{self.hasher.hexdigest()}"
        if actual != self.digest.lower():
            self._discard()
            raise DigestMismatch(
                f"{self.url}: digest mismatch: expected {self.digest}, got {actual}; the "
                "download was deleted. If the image was republished, update the digest "
                "in the configuration")
        _validator_file(self.partial).unlink(missing_ok=True)


def download(url: str, partial: Path, digest: str | None = None,
             progress: DownloadProgress | None = None) -> None:
    """Complete `partial` with the file at `url` (resuming what it holds),
    verified against `digest`. DownloadError: the network failed (the part
    stays for a resume); DigestMismatch: the part is deleted."""
    _Download(url, partial, digest, progress).run()


def partial_files(partial: Path) -> list[Path]:
    """The files a download leaves beside its target until it completes."""
    return [partial, _validator_file(partial)]


def same_file_digest(path: Path, digest: str) -> str:
    """The digest of a file in the same algorithm as `digest`."""
    algo = parse_digest(digest)[0]
    return f"{algo}:{hash_file(path, algo).hexdigest()}"

