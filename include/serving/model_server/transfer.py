"""Moving artifact bytes at the machine's limit: parallel, verified, resumable, with progress.

- :func:`copy_files_verified` copies local files whose digests are known (a fetch, an upload
  after hashing in place): each file by one thread in the kernel (``copy_file_range``), files in
  parallel, then every copied part is read back from the destination and hashed on the pool,
  so what is checked is what landed. A destination left by a killed copy is resumed: its parts
  are verified first (on every core) and only those that do not verify are copied again.
  :func:`copy_verified` is the same for one file.
- :func:`copy_hashing` copies a file whose digests are not known yet (a put of a file the store
  cannot hold) in one read pass, computing the whole file's and each part's sha256 from the
  buffers it writes.
- :func:`link_or_clone` gives a destination the same bytes as an immutable blob without
  copying them, where the filesystem allows it (a reflink, else a hard link).
- :class:`Progress` logs bytes done, rate and ETA every few seconds.

Pure standard library over local paths, so it ships with the ``model_server`` package: the
store (``model_delivery.store.artifacts``) decides what goes where on Airflow's side, and an
Ansible host pulling from a mounted store (``md_supervise.py install-artifact --pull-blobs``)
uses the same copies.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from model_server.manifest import (
    READ_SIZE,
    ArtifactIntegrityError,
    describe_part,
    entry_checks,
    hash_path_range,
    hash_range,
    hash_workers,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
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


def _pwrite_all(fd: int, chunk: memoryview, position: int) -> None:
    """Write all of ``chunk`` at ``position``, :data:`READ_SIZE` at most per call.

    Larger writes make the kernel allocate larger page-cache folios: 1 MiB writes of a 2 GiB file
    took 3x the system time of 256 KiB writes here, measured after memory was freed (bench_store).
    """
    while chunk:
        written = os.pwrite(fd, chunk[:READ_SIZE], position)
        chunk, position = chunk[written:], position + written


def _copy_range(src_fd: int, dst_fd: int, offset: int, length: int) -> None:
    """Copy bytes in the kernel (``copy_file_range``), else through a buffer; at the same offsets."""
    position, end = offset, offset + length
    while position < end:
        try:
            copied = os.copy_file_range(src_fd, dst_fd, end - position, position, position)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            copied = 0
        if not copied:  # no kernel copy here (or the source ended): one buffer's worth by hand
            chunk = os.pread(src_fd, min(READ_SIZE, end - position), position)
            if not chunk:
                raise ArtifactIntegrityError(f"the source ends at byte {position}, before byte {end}")
            _pwrite_all(dst_fd, memoryview(chunk), position)
            copied = len(chunk)
        position += copied


def _copy_parts(src: Path, dst: Path, parts: list[tuple[int, int]], done: Callable[[int], Any] | None) -> None:
    """Copy some parts of one file, by one thread (one writer per file: two threads writing one file stall)."""
    src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            for offset, length in parts:
                _copy_range(src_fd, dst_fd, offset, length)
                if done is not None:
                    done(length)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)


def copy_files_verified(files: Sequence[tuple[Path, Path, dict[str, Any]]], chunk_size: int | None, *,
                        done: Callable[[int], Any] | None = None, pool: ThreadPoolExecutor | None = None,
                        ) -> list[tuple[int, list[str]]]:
    """Copy several files on one thread pool, then verify every part copied by reading the copy back.

    Each file is copied by one task, in the kernel (``copy_file_range``: no pass through user
    space), files in parallel; then every copied part of every file is hashed from the
    destination on the pool and compared with the manifest: what is checked is what landed.
    A destination left by a killed copy has its parts verified first and only those that do
    not match are copied again.

    :param files: (source, destination, manifest entry) triples.
    :param pool: the pool to run on (one per artifact); else one is made for this call.
    :return: per file, in order: the bytes copied (not those a resumed copy already held) and
        what did not match (empty when every part did).
    """
    if pool is None:
        with ThreadPoolExecutor(max_workers=hash_workers(), thread_name_prefix="md-copy") as own:
            return copy_files_verified(files, chunk_size, done=done, pool=own)
    planned: list[tuple[dict[str, Any], Path, list[str], list[tuple[int, int, str]], Any]] = []
    for src, dst, entry in files:
        checks = entry_checks(entry, chunk_size)
        dst.parent.mkdir(parents=True, exist_ok=True)
        size = os.stat(src).st_size
        if size != entry["size"]:
            planned.append((entry, dst, [f"{entry['path']}: size {size} != {entry['size']} in manifest"], [], None))
            continue
        have = verified_parts(dst, entry, chunk_size, pool, done) if dst.exists() else [False] * len(checks)
        todo = [check for check, ok in zip(checks, have, strict=True) if not ok]
        copying = pool.submit(_copy_parts, src, dst, [(off, length) for off, length, _ in todo], done)
        planned.append((entry, dst, [], todo, copying))
    results = []
    hashing = []
    for entry, dst, problems, todo, copying in planned:
        if copying is not None:
            try:
                copying.result()
                os.truncate(dst, int(entry["size"]))  # a longer file left there before: cut to the manifest's size
            except (OSError, ArtifactIntegrityError) as exc:
                problems.append(f"{entry['path']}: {exc}")
                todo = []
        hashing.append([(off, length, want, pool.submit(hash_path_range, dst, off, length))
                        for off, length, want in todo])
    for (entry, _dst, problems, todo, _copying), jobs in zip(planned, hashing, strict=True):
        for off, length, want, job in jobs:
            have_sha = _result(job)
            if have_sha != want:
                problems.append(f"{describe_part(entry, off, length)}: sha256 {str(have_sha)[:12]}… != {want[:12]}…")
        results.append((sum(length for _, length, _ in todo), problems))
    return results


def copy_verified(src: Path, dst: Path, entry: dict[str, Any], chunk_size: int | None, *,
                  done: Callable[[int], Any] | None = None, workers: int | None = None,
                  pool: ThreadPoolExecutor | None = None) -> int:
    """Copy one file part by part in parallel, verifying each part; resume a partial ``dst``.

    :param entry: the file's manifest entry (``sha256``, ``size``, maybe ``chunks``).
    :return: the bytes copied (not those a resumed copy already held).
    :raises ArtifactIntegrityError: a part of ``src`` does not hash to the manifest's digest.
    """
    if pool is None and workers:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="md-copy") as own:
            return copy_verified(src, dst, entry, chunk_size, done=done, pool=own)
    [(copied, problems)] = copy_files_verified([(src, dst, entry)], chunk_size, done=done, pool=pool)
    if problems:
        raise ArtifactIntegrityError("; ".join(problems))
    return copied


PIPE_READ = 1024 * 1024  # one read of copy_hashing: its stages hold a few of these between them
PIPE_DEPTH = 4


class _Stage(threading.Thread):
    """A stage of :func:`copy_hashing`'s pipeline: each ``(position, buffer, length)`` in order, then pass it on.

    At its end (the reader's None, or a failure, after which it drains its inbox so that nobody blocks) it passes
    None on. ``spare`` gets one more buffer on a failure, so that a reader waiting for a free one sees it.
    """

    def __init__(self, name: str, work: Callable[[int, memoryview], None],
                 forward: Callable[[tuple[int, bytearray, int] | None], None], spare: queue.Queue[bytearray]) -> None:
        super().__init__(name=name, daemon=True)
        self.work, self.forward, self.spare = work, forward, spare
        self.inbox: queue.Queue[tuple[int, bytearray, int] | None] = queue.Queue(maxsize=PIPE_DEPTH)
        self.failed: BaseException | None = None

    def run(self) -> None:
        try:
            while (item := self.inbox.get()) is not None:
                position, buffer, length = item
                self.work(position, memoryview(buffer)[:length])
                self.forward(item)
        except BaseException as exc:  # handed to the reader, which raises it
            self.failed = exc
            self.spare.put(bytearray(PIPE_READ))
            while self.inbox.get() is not None:
                pass
        finally:
            self.forward(None)


class _PartHasher:
    """A stage of :func:`copy_hashing`: the sha256 of each ``part_size`` part, from buffers that never cross a part's end."""

    def __init__(self, size: int, part_size: int) -> None:
        self.size, self.part_size = size, part_size
        self.digests: list[str] = []
        self.current = hashlib.sha256()

    def __call__(self, position: int, view: memoryview) -> None:
        self.current.update(view)
        end = position + len(view)
        if end % self.part_size == 0 or end == self.size:
            self.digests.append(self.current.hexdigest())
            self.current = hashlib.sha256()


def _write_counted(dst_fd: int, done: Callable[[int], Any] | None, position: int, view: memoryview) -> None:
    _pwrite_all(dst_fd, view, position)
    if done is not None:
        done(len(view))


def _give_back(free: queue.Queue[bytearray], item: tuple[int, bytearray, int] | None) -> None:
    if item is not None:
        free.put(item[1])


def _read_stage(src: Path, src_fd: int, size: int, part_size: int, whole: Any, free: queue.Queue[bytearray],
                stages: list[_Stage]) -> None:
    """The first stage of :func:`copy_hashing`: read in order (never across a part's end), hash the whole file,
    hand each buffer on; stop when a later stage failed."""
    position = 0
    while position < size and not any(stage.failed for stage in stages):
        buffer = free.get()
        view = memoryview(buffer)[:min(PIPE_READ, size - position, part_size - position % part_size)]
        length = os.preadv(src_fd, [view], position)
        if not length:
            raise ArtifactIntegrityError(f"{src} ended at byte {position} while it was copied, not {size}")
        whole.update(view[:length])
        stages[0].inbox.put((position, buffer, length))
        position += length
    if os.pread(src_fd, 1, size):
        raise ArtifactIntegrityError(f"{src} grew past {size} bytes while it was copied")


def copy_hashing(src: Path, dst: Path, part_size: int, *, done: Callable[[int], Any] | None = None,
                 ) -> tuple[str, list[str], int]:
    """Copy ``src`` to ``dst`` in one read pass, computing the digests of a manifest entry from the bytes written.

    For a file whose digest is not known yet (a put that knows the store cannot hold it): the
    whole file's sha256 and each part's (files larger than ``part_size``) are computed from the
    very buffers that are written, so ``dst`` holds exactly what they describe. Three threads, each
    one sequential by nature: this one reads and hashes the whole file, the next hashes each part,
    the last writes; buffers go round between them (memory: ``PIPE_DEPTH * 2 + 2`` buffers of
    :data:`PIPE_READ`). On two cores that is about a core and a half of work where two threads
    (the part hash and the write on one) had one stage doing two thirds of it.

    :return: the whole file's hex sha256, its parts' (empty for a file of one part), its size.
    :raises ArtifactIntegrityError: ``src`` shrank or grew while it was copied.
    """
    whole = hashlib.sha256()
    free: queue.Queue[bytearray] = queue.Queue()
    for _ in range(PIPE_DEPTH * 2 + 2):
        free.put(bytearray(PIPE_READ))
    src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(src_fd).st_size
        dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)

        writer = _Stage("md-copy-write", functools.partial(_write_counted, dst_fd, done),
                        functools.partial(_give_back, free), free)
        stages = [writer]
        parts = _PartHasher(size, part_size)
        if size > part_size:
            stages.insert(0, _Stage("md-copy-hash", parts, writer.inbox.put, free))
        for stage in stages:
            stage.start()
        try:
            _read_stage(src, src_fd, size, part_size, whole, free, stages)
        finally:
            stages[0].inbox.put(None)
            for stage in stages:
                stage.join()
            os.close(dst_fd)
    finally:
        os.close(src_fd)
    for stage in stages:
        if stage.failed is not None:
            raise stage.failed
    return whole.hexdigest(), parts.digests, size


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
