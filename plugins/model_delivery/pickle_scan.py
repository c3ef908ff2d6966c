"""Static scan of a build's output for unsafe pickle content, before it is stored.

A pickle runs what it names when it is loaded: a ``__reduce__`` returning ``os.system`` is a shell
command. Every pickle-bearing file of an artifact (``.pkl``, ``.pickle``, ``.joblib``, PyTorch
``.bin``/``.pt``/``.pth``/``.ckpt`` zip-pickles, ``.npy`` with object arrays, ``.npz``/``.zip``, and any file
that starts like a pickle, a numpy array or a joblib-compressed stream) is scanned by `picklescan`_: it
walks the pickle opcodes (``pickletools.genops``) and classifies each imported global as innocuous,
suspicious (not known either way: ``sklearn.pipeline Pipeline``) or dangerous (``os.system``,
``subprocess.*``, ``builtins.eval``/``exec``, ``functools.partial``, ...). Nothing is ever loaded,
unpickled or imported from the artifact.

joblib writes each numpy array's raw bytes in the middle of its pickle stream, where an opcode walker
stops: picklescan alone sees only the globals before the first array. For such a stream,
:func:`_joblib_globals` walks the opcodes again with a symbolic stack (literals only, nothing called),
skips each array's bytes by its recorded shape and dtype, and scans the nested pickle of an object
array, so the whole file is covered. A joblib-compressed file (zlib, gzip, bz2, xz, lzma) is
decompressed to a temporary file first; an lz4 one cannot be, and counts as not scanned to its end.

The policy (``security.pickle_scan`` in the spec) decides: ``refuse-dangerous`` (the default) refuses
an artifact with a dangerous global, or with a pickle that could not be scanned to its end;
``warn`` logs and records it and goes on; ``off`` does not scan.

.. _picklescan: https://github.com/mmaitre314/picklescan
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickletools
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import version as _dist_version
from typing import IO, TYPE_CHECKING, Any, Literal

from model_delivery.exceptions import BuildFailed

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

Policy = Literal["refuse-dangerous", "warn", "off"]
POLICIES: tuple[Policy, ...] = ("refuse-dangerous", "warn", "off")
DEFAULT_POLICY: Policy = "refuse-dangerous"

SCANNER = "picklescan"

PICKLE_SUFFIXES = frozenset({
    ".pkl", ".pickle", ".joblib", ".dat", ".data",  # pickles
    ".bin", ".pt", ".pth", ".ckpt",  # PyTorch checkpoints (zip-pickles or legacy pickles)
    ".npy", ".npz", ".zip",  # numpy arrays (object arrays hold a pickle) and archives of pickles
})
"""Scanned whatever their first bytes; any other file is scanned when it starts like one (:func:`_looks_pickled`)."""

_PICKLE_MAGIC = tuple(b"\x80" + bytes([n]) for n in range(2, 6))  # PROTO 2..5: every pickle since Python 2.3
_OTHER_MAGIC = (b"\x93NUMPY", b"PK\x03\x04", b"PK\x05\x06", b"7z\xbc\xaf\x27\x1c")
_COMPRESSED = {  # joblib's compressors, by their magic number
    b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz", b"\x5d\x00\x00": "lzma", b"\x04\x22\x4d\x18": "lz4",
    **{b"\x78" + bytes([second]): "zlib" for second in (0x01, 0x5E, 0x9C, 0xDA)},
}
_JOBLIB_WRAPPER = ("joblib.numpy_pickle", "NumpyArrayWrapper")
_MAX_ARRAY_DEPTH = 4  # object arrays in object arrays...


class UnsafePickle(BuildFailed):
    """The build output holds a pickle that imports something able to run code (``security.pickle_scan``)."""


@dataclass
class FileScan:
    """What the scan found in one file.

    :param path: the file, relative to the scanned directory.
    :param dangerous: ``module.name`` of each dangerous global.
    :param suspicious: ``module.name`` of each global picklescan does not know (sklearn's classes, say).
    :param complete: the whole file was scanned (False: a pickle stopped parsing before its end).
    :param note: why it is not complete, or what was decompressed.
    """

    path: str
    dangerous: list[str] = field(default_factory=list)
    suspicious: list[str] = field(default_factory=list)
    complete: bool = True
    note: str = ""


@dataclass
class ScanReport:
    """The scan of one build output: the build's result and record keep :meth:`to_dict`."""

    policy: Policy
    files: list[FileScan] = field(default_factory=list)
    scanner: str = SCANNER
    scanner_version: str = ""

    @property
    def flagged(self) -> list[FileScan]:
        """Files with a dangerous global, or not scanned to their end."""
        return [f for f in self.files if f.dangerous or not f.complete]

    @property
    def verdict(self) -> str:
        """``off`` (not scanned), ``clean``, ``warned`` (flagged, policy warn) or ``refused``."""
        if self.policy == "off":
            return "off"
        if not self.flagged:
            return "clean"
        return "warned" if self.policy == "warn" else "refused"

    def problems(self) -> list[str]:
        """One line per flagged file: the file and the globals, or why it was not scanned whole."""
        lines = []
        for found in self.flagged:
            if found.dangerous:
                lines.append(f"{found.path} imports {', '.join(found.dangerous)}")
            if not found.complete:
                lines.append(f"{found.path} could not be scanned to its end ({found.note})")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "verdict": self.verdict, "scanner": self.scanner,
                "scanner_version": self.scanner_version, "files_scanned": len(self.files),
                "dangerous": {f.path: f.dangerous for f in self.files if f.dangerous},
                "suspicious": {f.path: f.suspicious for f in self.files if f.suspicious},
                "incomplete": {f.path: f.note for f in self.files if not f.complete},
                "scanned": [f.path for f in self.files]}


def scanner_version() -> str:
    return _dist_version(SCANNER)


def check_artifact(directory: Path, policy: str, *, what: str = "the build output",
                   consequence: str = "Nothing was stored.", log: Callable[..., None] = print) -> ScanReport:
    """Scan ``directory`` by ``policy``; raise :class:`UnsafePickle` if it refuses.

    :param directory: the artifact's files (a build's ``OUT/model``, or a fetched artifact).
    :param policy: ``refuse-dangerous``, ``warn`` or ``off`` (``security.pickle_scan``).
    :param what: how messages name the artifact.
    :param consequence: what a refusal means, in the message.
    :param log: where the verdict is reported (``log(fmt, *args)``).
    :raises UnsafePickle: the policy refuses what was found; its ``result`` is the report.
    :raises ValueError: an unknown policy.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown pickle scan policy {policy!r}; one of {list(POLICIES)}")
    report = scan_directory(directory, policy)  # type: ignore[arg-type]
    if report.policy == "off":
        log("pickle scan of %s: off (security.pickle_scan)", what)
        return report
    problems = report.problems()
    log("pickle scan of %s (%s %s): %d file(s) scanned, %s%s", what, report.scanner, report.scanner_version,
        len(report.files), report.verdict, "".join(f"; {line}" for line in problems))
    if report.verdict == "refused":
        raise UnsafePickle(
            f"{what} holds pickle content that can run code when it is loaded: {'; '.join(problems)}. {consequence} "
            "Fix: save the model without those objects (plain estimators and arrays, or safetensors/ONNX); "
            "if the file is trusted and only could not be scanned whole, set `security.pickle_scan: warn` in "
            "model.yaml.", result=report.to_dict())
    return report


def scan_directory(directory: Path, policy: Policy = DEFAULT_POLICY) -> ScanReport:
    """Scan every pickle-bearing file of the artifact in ``directory``: the files its manifest lists, so exactly
    what the store would store (a symlinked file's target included)."""
    from model_server.manifest import list_files

    report = ScanReport(policy)
    if policy == "off":
        return report
    report.scanner_version = scanner_version()
    # picklescan logs an ERROR for every joblib array it cannot parse past, and a warning per finding: the report
    # (and check_artifact's one line) says what counts instead.
    logging.getLogger("picklescan").setLevel(logging.CRITICAL)
    for name in list_files(directory):
        path = directory / name
        if path.suffix.lower() in PICKLE_SUFFIXES or _looks_pickled(path):
            report.files.append(scan_file(path, name))
    return report


def _looks_pickled(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(8)
    return head.startswith(_PICKLE_MAGIC + _OTHER_MAGIC) or _compression(head) is not None


def _compression(head: bytes) -> str | None:
    for magic, name in _COMPRESSED.items():
        if head.startswith(magic) and (name != "bz2" or head[3:4] in b"123456789"):
            return name
    return None


def scan_file(path: Path, name: str) -> FileScan:
    """One file: decompressed first when joblib compressed it, then scanned by picklescan (and, for a joblib
    stream with arrays, walked to its end by :func:`_joblib_globals`)."""
    with open(path, "rb") as handle:
        kind = _compression(handle.read(8))
    if kind is None:
        with open(path, "rb") as handle:
            return _scan_stream(handle, name, path.suffix.lower())
    if kind == "lz4":
        return FileScan(name, complete=False, note="lz4-compressed: cannot be decompressed here")
    try:
        with _decompressed(path, kind) as stream:
            if stream is None:  # not a compressed stream after all (a pickle that happens to start so)
                with open(path, "rb") as handle:
                    return _scan_stream(handle, name, path.suffix.lower())
            found = _scan_stream(stream, name, ".pkl")
    except _Unscannable as exc:
        return FileScan(name, complete=False, note=f"{kind}-compressed: {exc}")
    found.note = found.note or f"{kind}-compressed"
    return found


MAX_DECOMPRESSED_BYTES = 16 << 30
"""A compressed file that inflates to more than this is not scanned (and counts as not scanned to its end)."""
_CHUNK = 1 << 20


@contextlib.contextmanager
def _decompressed(path: Path, kind: str) -> Iterator[IO[bytes] | None]:
    """The decompressed bytes of ``path`` in an anonymous temporary file, read and written 1 MiB at a time (a
    small file that inflates to much is bounded by :data:`MAX_DECOMPRESSED_BYTES`), or None when it does not
    decompress.

    :raises _Unscannable: it inflates past the bound.
    """
    import bz2
    import gzip
    import lzma
    import zlib

    openers: dict[str, Callable[[], Any]] = {
        "gzip": lambda: gzip.open(path, "rb"), "bz2": lambda: bz2.open(path, "rb"),
        "xz": lambda: lzma.open(path, "rb"), "lzma": lambda: lzma.open(path, "rb", format=lzma.FORMAT_ALONE),
        "zlib": lambda: _ZlibReader(path),
    }
    with tempfile.TemporaryFile() as out:
        try:
            with openers[kind]() as src:
                while chunk := src.read(_CHUNK):
                    if out.tell() + len(chunk) > MAX_DECOMPRESSED_BYTES:
                        raise _Unscannable(f"inflates to more than {MAX_DECOMPRESSED_BYTES / 2**30:g} GiB")
                    out.write(chunk)
        except (OSError, EOFError, zlib.error, lzma.LZMAError):
            yield None
            return
        out.seek(0)
        yield out


class _ZlibReader(contextlib.AbstractContextManager["_ZlibReader"]):
    """A zlib stream (joblib's ``zlib`` compressor) read in bounded pieces: ``read(n)`` never inflates more."""

    def __init__(self, path: Path) -> None:
        import zlib

        self._src = open(path, "rb")  # noqa: SIM115 - closed by __exit__
        self._inflate = zlib.decompressobj()

    def read(self, size: int) -> bytes:
        while True:
            pending = self._inflate.unconsumed_tail or self._src.read(_CHUNK)
            if not pending:
                return self._inflate.flush()
            data = self._inflate.decompress(pending, size)
            if data or self._inflate.eof:
                return data

    def __exit__(self, *exc: object) -> None:
        self._src.close()


def _scan_stream(stream: IO[bytes], name: str, suffix: str) -> FileScan:
    from picklescan.scanner import SafetyLevel, scan_bytes

    try:
        result = scan_bytes(stream, name, suffix)
    except Exception as exc:  # noqa: BLE001 - a file the scanner cannot read is reported, not skipped
        return FileScan(name, complete=False, note=f"the scanner failed: {type(exc).__name__}: {exc}"[:300])
    found = {(g.module, g.name): g.safety for g in result.globals}
    found_file = FileScan(name)
    if result.scan_err:  # the opcodes stopped parsing before the end: joblib's inline arrays, or a broken file
        stream.seek(0)
        head = stream.read(2)
        stream.seek(0)
        walked: set[tuple[str, str]] | None = None
        if head.startswith(_PICKLE_MAGIC) and _JOBLIB_WRAPPER in found:
            with contextlib.suppress(_Unscannable):
                walked = _joblib_globals(stream)
        if walked is None:
            found_file.complete = False
            found_file.note = "its pickle stops parsing before the end of the file"
        else:
            found.update(classify(walked - found.keys()))
    found_file.dangerous = sorted(f"{m}.{n}" for (m, n), level in found.items() if level == SafetyLevel.Dangerous)
    found_file.suspicious = sorted(f"{m}.{n}" for (m, n), level in found.items() if level == SafetyLevel.Suspicious)
    return found_file


def classify(names: set[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """picklescan's verdict on each ``(module, name)``: it scans a pickle that imports exactly these.

    A name that a protocol-0 ``GLOBAL`` cannot spell (whitespace) is dangerous: it was crafted.
    """
    from picklescan.scanner import SafetyLevel, scan_pickle_bytes

    verdicts: dict[tuple[str, str], Any] = {}
    stream = io.BytesIO()
    for module, name in sorted(names):
        if any(c.isspace() for c in module + name) or not module or not name:
            verdicts[(module, name)] = SafetyLevel.Dangerous
        else:
            stream.write(b"c" + f"{module}\n{name}\n".encode() + b".")
    stream.seek(0)
    if stream.getbuffer().nbytes:
        verdicts.update({(g.module, g.name): g.safety for g in scan_pickle_bytes(stream, "<globals>").globals})
    return verdicts


# -- joblib streams ------------------------------------------------------------------------------


class _Unscannable(Exception):
    """The symbolic walk met something it cannot follow; the file counts as not scanned to its end."""


class _Mark:
    pass


@dataclass
class _Global:
    module: str
    name: str


@dataclass
class _Obj:
    """What ``REDUCE``/``NEWOBJ``/``OBJ``/``INST`` would build: its callable, arguments and ``BUILD`` state."""

    callable: Any
    args: Any
    state: Any = None


_OPAQUE = object()
_LITERALS = frozenset({
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT", "STRING", "BINSTRING",
    "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "UNICODE", "BINUNICODE",
    "SHORT_BINUNICODE", "BINUNICODE8",
})
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_TUPLE": ()}


def _joblib_globals(stream: IO[bytes]) -> set[tuple[str, str]]:
    """Every global of a joblib stream, walking past the raw bytes of each array to the end of the file.

    :raises _Unscannable: a structure this walk does not follow (then the file is reported incomplete).
    """
    size = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    names: set[tuple[str, str]] = set()
    while stream.tell() < size:
        _walk(stream, names, size, depth=0)
    return names


def _walk(stream: IO[bytes], names: set[tuple[str, str]], size: int, depth: int) -> None:  # noqa: C901
    """One pickle, from the stream's position to its ``STOP``: a stack of literals, globals and inert objects."""
    stack: list[Any] = []
    marks: list[list[Any]] = []
    memo: dict[int, Any] = {}

    def pop_mark() -> list[Any]:
        nonlocal stack
        items, stack = stack, marks.pop()
        return items

    try:
        for op, arg, _pos in pickletools.genops(stream):
            opname = op.name
            if opname in _LITERALS:
                stack.append(arg)
            elif opname in _CONSTANTS:
                stack.append(_CONSTANTS[opname])
            elif opname in ("PROTO", "FRAME", "READONLY_BUFFER"):
                continue
            elif opname == "STOP":
                return
            elif opname == "MARK":
                marks.append(stack)
                stack = []
            elif opname == "POP":
                if stack:
                    stack.pop()
                else:
                    pop_mark()
            elif opname == "POP_MARK":
                pop_mark()
            elif opname == "DUP":
                stack.append(stack[-1])
            elif opname in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg or 0)] = stack[-1]
            elif opname == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif opname in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(int(arg or 0), _OPAQUE))
            elif opname in ("EMPTY_LIST", "EMPTY_SET"):
                stack.append([])
            elif opname == "EMPTY_DICT":
                stack.append({})
            elif opname in ("LIST", "TUPLE", "FROZENSET"):
                items = pop_mark()
                stack.append(tuple(items) if opname == "TUPLE" else list(items))
            elif opname in ("TUPLE1", "TUPLE2", "TUPLE3"):
                count = int(opname[-1])
                items, stack[-count:] = stack[-count:], []
                stack.append(tuple(items))
            elif opname == "APPEND":
                value = stack.pop()
                if isinstance(stack[-1], list):
                    stack[-1].append(value)
            elif opname in ("APPENDS", "ADDITEMS"):
                items = pop_mark()
                if isinstance(stack[-1], list):
                    stack[-1].extend(items)
            elif opname == "DICT":
                items = pop_mark()
                stack.append(_as_dict(items))
            elif opname == "SETITEM":
                value, key = stack.pop(), stack.pop()
                _set_item(stack[-1], key, value)
            elif opname == "SETITEMS":
                items = pop_mark()
                for key, value in zip(items[::2], items[1::2], strict=True):
                    _set_item(stack[-1], key, value)
            elif opname == "GLOBAL":
                module, name = str(arg).split(" ", 1)
                names.add((module, name))
                stack.append(_Global(module, name))
            elif opname == "STACK_GLOBAL":
                name, module = stack.pop(), stack.pop()
                if not (isinstance(module, str) and isinstance(name, str)):
                    module, name = "unknown", "unknown"  # crafted: picklescan calls it dangerous
                names.add((module, name))
                stack.append(_Global(module, name))
            elif opname == "INST":
                module, name = str(arg).split(" ", 1)
                names.add((module, name))
                stack.append(_Obj(_Global(module, name), tuple(pop_mark())))
            elif opname == "OBJ":
                items = pop_mark()
                stack.append(_Obj(items[0], tuple(items[1:])))
            elif opname in ("REDUCE", "NEWOBJ"):
                args = stack.pop()
                stack.append(_Obj(stack.pop(), args))
            elif opname == "NEWOBJ_EX":
                stack.pop()
                args = stack.pop()
                stack.append(_Obj(stack.pop(), args))
            elif opname == "BUILD":
                state = stack.pop()
                if isinstance(stack[-1], _Obj):
                    stack[-1].state = state
                    if _is_global(stack[-1].callable, _JOBLIB_WRAPPER):
                        _skip_array(stream, state, names, size, depth)
            elif opname in ("EXT1", "EXT2", "EXT4"):
                names.add(("unknown", f"extension {arg}"))  # resolved through the loader's copyreg registry
                stack.append(_OPAQUE)
            elif opname == "PERSID":
                stack.append(_OPAQUE)
            elif opname == "BINPERSID":
                stack[-1] = _OPAQUE
            elif opname == "NEXT_BUFFER":
                stack.append(_OPAQUE)
            else:
                raise _Unscannable(f"opcode {opname}")
    except (IndexError, ValueError, TypeError) as exc:
        raise _Unscannable(str(exc)) from exc
    raise _Unscannable("the pickle ends without STOP")


def _as_dict(items: list[Any]) -> dict[Any, Any]:
    found: dict[Any, Any] = {}
    for key, value in zip(items[::2], items[1::2], strict=True):
        _set_item(found, key, value)
    return found


def _set_item(target: Any, key: Any, value: Any) -> None:
    if isinstance(target, dict) and isinstance(key, str | int | float | bool | bytes | None):
        target[key] = value


def _is_global(value: Any, wanted: tuple[str, str]) -> bool:
    return isinstance(value, _Global) and (value.module, value.name) == wanted


def _skip_array(stream: IO[bytes], state: Any, names: set[tuple[str, str]], size: int, depth: int) -> None:
    """Step over the bytes joblib wrote for one array right after its wrapper's ``BUILD`` (its ``read_array``):
    an object array is a nested pickle (walked); any other is an optional padding, then the raw items."""
    if not isinstance(state, dict):
        raise _Unscannable("a NumpyArrayWrapper without its state")
    shape, dtype = state.get("shape"), state.get("dtype")
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise _Unscannable(f"an array shape {shape!r}")
    itemsize, hasobject = _dtype_layout(dtype)
    if hasobject:
        if depth >= _MAX_ARRAY_DEPTH:
            raise _Unscannable("object arrays nested too deep")
        _walk(stream, names, size, depth + 1)
        return
    if state.get("numpy_array_alignment_bytes") is not None:
        padding = stream.read(1)
        stream.seek(int.from_bytes(padding, "little"), os.SEEK_CUR)
    count = 1
    for n in shape:
        count *= n
    end = stream.tell() + count * itemsize
    if end > size:
        raise _Unscannable("an array runs past the end of the file")
    stream.seek(end)


def _dtype_layout(dtype: Any) -> tuple[int, bool]:
    """Item size and whether it holds objects, of a pickled ``numpy.dtype`` (its reduce arguments and state),
    read from the literals alone: ``('f8', False, True)``, state ``(3, '<', None, None, None, elsize, align,
    flags)``; flag bit 1 is numpy's ``NPY_ITEM_REFCOUNT`` (the dtype holds Python objects)."""
    import numpy as np

    if not (isinstance(dtype, _Obj) and _is_global(dtype.callable, ("numpy", "dtype"))):
        raise _Unscannable(f"an array dtype {dtype!r}")
    args, state = dtype.args, dtype.state
    if not (isinstance(args, tuple) and args and isinstance(args[0], str)):
        raise _Unscannable(f"dtype arguments {args!r}")
    if not (isinstance(state, tuple) and len(state) >= 8 and isinstance(state[5], int) and isinstance(state[7], int)):
        raise _Unscannable(f"dtype state {state!r}")
    elsize, flags = state[5], state[7]
    try:
        itemsize = elsize if elsize > 0 else np.dtype(args[0]).itemsize
    except TypeError as exc:
        raise _Unscannable(f"dtype {args[0]!r}") from exc
    return itemsize, bool(flags & 1)
