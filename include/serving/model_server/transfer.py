"""Moving artifact bytes at the machine's limit: parallel, verified, resumable, with progress.

- :func:`copy_verified` copies one local file part by part on a thread pool (``pread`` and
  ``pwrite`` at each part's offset), hashing every part as it is copied and comparing it with
  the manifest's digest. A destination left by a killed copy is resumed: its parts are
  verified first (on every core) and only those that do not verify are copied again.
- :func:`link_or_clone` gives a destination the same bytes as an immutable blob without
  copying them, where the filesystem allows it (a reflink, else a hard link).
- :class:`Progress` logs bytes done, rate and ETA every few seconds.

Pure standard library over local paths; the store (``model_delivery.store.artifacts``)
decides what goes where.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from model_server.manifest import (
    ArtifactIntegrityError,
    describe_part,
    entry_checks,
    hash_range,
    hash_workers,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
PROGRESS_EVERY = 5.0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    """Count bytes from several threads; log done, rate and ETA at most every ``every`` seconds.

    :param what: what moves, e.g. ``"put breast_cancer"``.
    :param total: bytes expected.
    :param log: a ``log(message, *args)`` callable (a task's logger); None logs nothing.
    """

    def __init__(self, what: str, total: int, log: Callable[..., Any] | None, every: float = PROGRESS_EVERY) -> None:
        self.what, self.total, self.log, self.every = what, max(total, 0), log, every
        self.done = 0
        self.started = self.last = time.monotonic()
        self.lock = threading.Lock()

    def __call__(self, nbytes: int) -> None:
        with self.lock:
            self.done += nbytes
            now = time.monotonic()
            if self.log is None or now - self.last < self.every:
                return
            self.last = now
        self.log("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.started, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = f"{(self.total - self.done) / rate:.0f} s" if rate > 0 and self.done < self.total else "-"
        return (f"{self.what}: {_size(self.done)} of {_size(self.total)} ({pct:.0f}%), "
                f"{_size(rate)}/s, ETA {eta}")

    def finish(self) -> None:
        if self.log is not None and self.total >= 64 * 1024 * 1024:
            self.log("%s (done in %.1f s)", self.line(), time.monotonic() - self.started)


def verified_parts(path: Path, entry: dict[str, Any], chunk_size: int | None, pool: ThreadPoolExecutor,
                   done: Callable[[int], Any] | None = None) -> list[bool]:
    """Which of an entry's parts an existing (maybe partial) copy already holds, hashing them in parallel."""
    checks = entry_checks(entry, chunk_size)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return [False] * len(checks)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        jobs = [pool.submit(hash_range, fd, off, length, None, done) if off + length <= size else None
                for off, length, _ in checks]
        return [job is not None and _result(job) == want for job, (_, _, want) in zip(jobs, checks, strict=True)]
    finally:
        os.close(fd)


def _result(job: Any) -> str | None:
    try:
        return str(job.result())
    except (OSError, ArtifactIntegrityError):
        return None


def _copy_part(src_fd: int, dst_fd: int, offset: int, length: int, done: Callable[[int], Any] | None) -> str:
    return hash_range(src_fd, offset, length, lambda pos, chunk: os.pwrite(dst_fd, chunk, pos), done)


def copy_verified(src: Path, dst: Path, entry: dict[str, Any], chunk_size: int | None, *,
                  done: Callable[[int], Any] | None = None, workers: int | None = None) -> int:
    """Copy ``src`` to ``dst`` part by part in parallel, verifying each part; resume a partial ``dst``.

    :param entry: the file's manifest entry (``sha256``, ``size``, maybe ``chunks``).
    :return: the bytes copied (not those a resumed copy already held).
    :raises ArtifactIntegrityError: a part of ``src`` does not hash to the manifest's digest.
    """
    checks = entry_checks(entry, chunk_size)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=workers or hash_workers(), thread_name_prefix="md-copy") as pool:
        have = verified_parts(dst, entry, chunk_size, pool, done) if dst.exists() else [False] * len(checks)
        todo = [check for check, ok in zip(checks, have, strict=True) if not ok]
        src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if os.fstat(src_fd).st_size != entry["size"]:
                raise ArtifactIntegrityError(f"{entry['path']}: size {os.fstat(src_fd).st_size} != "
                                             f"{entry['size']} in manifest")
            jobs = [(off, length, want, pool.submit(_copy_part, src_fd, dst_fd, off, length, done))
                    for off, length, want in todo]
            got = [(off, length, want, _result(job)) for off, length, want, job in jobs]
            bad = [f"{describe_part(entry, off, length)}: sha256 {str(have)[:12]}… != {want[:12]}…"
                   for off, length, want, have in got if have != want]
            os.ftruncate(dst_fd, int(entry["size"]))
        finally:
            os.close(src_fd)
            os.close(dst_fd)
    if bad:
        raise ArtifactIntegrityError("; ".join(bad))
    return sum(length for _, length, _ in todo)


def link_or_clone(src: Path, dst: Path, *, hardlink: bool = False) -> str | None:
    """Give ``dst`` the bytes of ``src`` without copying: a reflink, else (if allowed) a hard link.

    :param hardlink: fall back to a hard link, which shares the inode: only for immutable
        sources (store blobs) whose copy nobody writes to.
    :return: what was made, or None when neither works here (then copy).
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        with open(src, "rb") as s, open(dst, "wb") as d:
            fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
        return "reflink"
    except OSError:
        dst.unlink(missing_ok=True)
    if not hardlink:
        return None
    try:
        os.link(src, dst)
        return "hardlink"
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
        return None
