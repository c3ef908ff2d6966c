"""The binary tensor data extension of the Open Inference Protocol's REST API (Triton's ``binary_tensor_data``).

A request (or response) body is a JSON header of ``Inference-Header-Content-Length`` bytes, then the raw bytes
of every tensor sent in binary form, in the order of ``inputs`` (``outputs``); each such tensor says its size
in ``parameters.binary_data_size`` and has no ``data``. Raw bytes are little-endian, row-major, unpadded;
BOOL is one byte per element; BYTES is each element as a 4-byte little-endian length, then its bytes. The same
layout is gRPC's ``raw_input_contents`` / ``raw_output_contents``.

Pure functions on bytes and numpy arrays. Every problem with a body raises :class:`BinaryDataError`, whose
message names it (the server answers it with 400).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

HEADER = "Inference-Header-Content-Length"
"""The HTTP header giving the length of the JSON part of a body with binary tensors."""

#: Fixed-size datatypes and their little-endian numpy dtypes; BYTES is variable-size (see :func:`decode_bytes`).
FIXED: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES = (*FIXED, "BYTES")
_LENGTH = np.dtype("<u4")


class BinaryDataError(ValueError):
    """A body with binary tensor data is malformed; the message names the problem."""


def split_body(body: bytes, header_length: str) -> tuple[bytes, bytes]:
    """Split a body into its JSON header and the binary tensor data after it.

    :param body: the whole request body.
    :param header_length: the value of the ``Inference-Header-Content-Length`` header.
    :raises BinaryDataError: the value is not a number, or points past the end of the body.
    """
    try:
        length = int(header_length.strip())
    except ValueError:
        raise BinaryDataError(f"{HEADER} {header_length[:40]!r} is not a number of bytes") from None
    if length < 0:
        raise BinaryDataError(f"{HEADER} is {length}: it must be 0 or more")
    if length > len(body):
        raise BinaryDataError(
            f"{HEADER} is {length} but the body has only {len(body)} bytes: the JSON header would run past "
            "the end of the body"
        )
    return body[:length], body[length:]


def parse_header(header: bytes) -> Any:
    """Parse the JSON header of a body with binary tensors.

    :raises BinaryDataError: it is not UTF-8 JSON.
    """
    try:
        return json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BinaryDataError(
            f"the inference header (the first {len(header)} bytes of the body, per {HEADER}) is not valid "
            f"JSON ({exc})"
        ) from None


def binary_size(parameters: dict[str, Any] | None, where: str) -> int | None:
    """The ``binary_data_size`` parameter of a tensor, or None when it has none.

    :raises BinaryDataError: it is not a non-negative integer.
    """
    if not parameters or "binary_data_size" not in parameters:
        return None
    size = parameters["binary_data_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BinaryDataError(f"{where}.parameters.binary_data_size is {size!r}: it must be a byte count (0 or more)")
    return size


def split_tensors(data: bytes, sizes: list[int | None], where: str = "inputs") -> list[bytes | None]:
    """Cut the binary data after the header into one piece per tensor with a size (None for the others).

    :raises BinaryDataError: the sizes do not add up to the length of ``data``.
    """
    total = sum(s for s in sizes if s is not None)
    if total != len(data):
        raise BinaryDataError(
            f"the binary_data_size of the {where} add up to {total} bytes but the body holds {len(data)} bytes "
            f"after the JSON header ({HEADER}): send each binary tensor's bytes, in {where} order, and nothing else"
        )
    pieces: list[bytes | None] = []
    offset = 0
    for size in sizes:
        if size is None:
            pieces.append(None)
            continue
        pieces.append(data[offset:offset + size])
        offset += size
    return pieces


def decode(raw: bytes, datatype: str, shape: list[int], where: str) -> np.ndarray:
    """The flat (row-major) array of one tensor's raw bytes.

    :param where: how the tensor is named in errors, e.g. ``inputs[0]``.
    :raises BinaryDataError: unknown datatype, or a byte count that does not fit the shape and datatype.
    """
    if any(d < 0 for d in shape):
        raise BinaryDataError(f"{where}.shape {shape} has a negative dimension")
    count = math.prod(shape)
    if datatype == "BYTES":
        return decode_bytes(raw, count, where)
    dtype = FIXED.get(datatype)
    if dtype is None:
        raise BinaryDataError(f"{where}.datatype {datatype!r} is not a datatype of binary tensors: choose from "
                              f"{list(DATATYPES)}")
    if len(raw) != count * dtype.itemsize:
        raise BinaryDataError(
            f"{where} has {len(raw)} bytes of binary data but shape {shape} of {datatype} needs {count} x "
            f"{dtype.itemsize} = {count * dtype.itemsize} bytes"
        )
    if datatype == "BOOL" and raw.translate(None, b"\x00\x01"):
        raise BinaryDataError(f"{where} is BOOL but holds bytes other than 0 and 1")
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=False)


def decode_bytes(raw: bytes, count: int, where: str) -> np.ndarray:
    """``count`` BYTES elements (each a 4-byte little-endian length, then the bytes) as an object array.

    :raises BinaryDataError: an element runs past the end, or the data holds more or fewer elements.
    """
    items: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    while offset < len(raw):
        if len(items) == count:
            raise BinaryDataError(f"{where} holds more than the {count} BYTES elements its shape needs "
                                  f"({len(raw) - offset} bytes left over)")
        if offset + 4 > len(raw):
            raise BinaryDataError(f"{where}: BYTES element {len(items)} has a truncated 4-byte length at byte {offset}")
        length = int(np.frombuffer(view[offset:offset + 4], dtype=_LENGTH)[0])
        offset += 4
        if offset + length > len(raw):
            raise BinaryDataError(
                f"{where}: BYTES element {len(items)} declares {length} bytes but only {len(raw) - offset} remain"
            )
        items.append(bytes(view[offset:offset + length]))
        offset += length
    if len(items) != count:
        raise BinaryDataError(f"{where} holds {len(items)} BYTES elements but its shape needs {count}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def encode(array: np.ndarray, datatype: str) -> bytes:
    """The raw bytes of a tensor (the inverse of :func:`decode`)."""
    if datatype == "BYTES":
        parts = []
        for item in np.asarray(array, dtype=object).reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode()
            parts += [np.array([len(data)], dtype=_LENGTH).tobytes(), data]
        return b"".join(parts)
    dtype = FIXED.get(datatype)
    if dtype is None:
        raise BinaryDataError(f"datatype {datatype!r} is not a datatype of binary tensors: choose from {list(DATATYPES)}")
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def wants_binary(request_parameters: dict[str, Any] | None, output_parameters: dict[str, Any] | None,
                 where: str) -> bool:
    """Whether an output goes back as binary data: its ``binary_data`` parameter, else the request's
    ``binary_data_output``, else False.

    :raises BinaryDataError: either is not a boolean.
    """
    for parameters, name, place in ((output_parameters, "binary_data", where), (request_parameters,
                                                                                "binary_data_output", "request")):
        if parameters and name in parameters:
            value = parameters[name]
            if not isinstance(value, bool):
                raise BinaryDataError(f"{place}.parameters.{name} is {value!r}: it must be true or false")
            return value
    return False


def join_body(header: bytes, tensors: list[bytes]) -> bytes:
    """A body with binary tensors: the JSON header, then each tensor's bytes (its length goes in :data:`HEADER`)."""
    return b"".join([header, *tensors])
