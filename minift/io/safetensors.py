"""Safetensors, read and written by hand with NumPy, treating every file as hostile.

    [ N: u64 little-endian ][ N bytes: UTF-8 JSON header, space-padded ][ data area ... ]
    {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, ...,
     "__metadata__": {"format": "pt"}}         # offsets count from the start of the data area

Format: https://github.com/huggingface/safetensors. Before a single tensor byte is touched the
whole header is checked against the file's size (see ``_check_entry`` and ``_check_coverage``);
anything wrong raises ``SafetensorsError`` naming the file, the tensor and the problem. Files are
read through a read-only memory map, so loading a 10 GB checkpoint costs no 10 GB copy.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import mmap as _mmap
import os
import reprlib
import sys
from collections.abc import Mapping
from typing import IO, Any, NamedTuple

import numpy as np

from minift.io.atomic import atomic_write

MAX_HEADER_SIZE = 100_000_000  # the reference reader's limit: a header is never bigger
MAX_NDIM = 32  # NumPy 1.x's own limit on dimensions

# How each safetensors dtype is stored. BF16 has no NumPy dtype: its 16 bits are read as
# uint16 and widened to float32 (a bfloat16 is exactly the top half of a float32).
_STORED: dict[str, np.dtype] = {
    code: np.dtype(spec) for code, spec in [
        ("F64", "<f8"), ("F32", "<f4"), ("F16", "<f2"), ("BF16", "<u2"),
        ("I64", "<i8"), ("I32", "<i4"), ("I16", "<i2"), ("I8", "i1"),
        ("U64", "<u8"), ("U32", "<u4"), ("U16", "<u2"), ("U8", "u1"), ("BOOL", "?"),
    ]
}
# NumPy (kind, itemsize) -> safetensors dtype, for writing; byte order does not matter here
_CODE_OF = {(dt.kind, dt.itemsize): code for code, dt in _STORED.items() if code != "BF16"}
_FLOAT_CODES = ("F64", "F32", "F16", "BF16")
_FIELDS = frozenset({"dtype", "shape", "data_offsets"})
_JSON_TYPE = {dict: "object", list: "array", str: "string", int: "number", float: "number",
              bool: "boolean", type(None): "null"}


class SafetensorsError(ValueError):
    """A safetensors file (or bytes) that breaks the format; the message says where and how."""


class TensorInfo(NamedTuple):
    """One validated header entry; ``begin``/``end`` count from the start of the data area."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


# --- reading: the header, checked against the file ---------------------------------------------
def _header_length(buf: Any, source: str) -> int:
    """N from the first 8 bytes, checked against the 100 MB limit and the file's size."""
    size = len(buf)
    if size < 8:
        raise SafetensorsError(f"{source}: file is {size} bytes, shorter than the 8-byte header "
                               "length that starts every safetensors file")
    n = int.from_bytes(bytes(buf[:8]), "little")
    if n == 0:
        raise SafetensorsError(f"{source}: header length is 0; even an empty file has '{{}}'")
    if n > MAX_HEADER_SIZE:
        raise SafetensorsError(f"{source}: header length {n} is too large "
                               f"(the limit is {MAX_HEADER_SIZE} bytes)")
    if n > size - 8:
        raise SafetensorsError(f"{source}: header length {n} is beyond the end of the file "
                               f"(only {size - 8} bytes follow; truncated file?)")
    return n


def _no_duplicate_keys(source: str):
    """A json ``object_pairs_hook``: plain ``json.loads`` would keep the last duplicate silently,
    and two readers that pick different duplicates would see two different files."""
    def hook(pairs: list[tuple[str, Any]]) -> dict:
        obj: dict = {}
        for key, value in pairs:
            if key in obj:
                raise SafetensorsError(f"{source}: duplicate key {_short(key)} in the header")
            obj[key] = value
        return obj
    return hook


def _parse_json(raw: bytes, source: str) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SafetensorsError(f"{source}: header is not valid UTF-8 ({e.reason} at header byte "
                               f"{e.start})") from None
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicate_keys(source))
    except SafetensorsError:
        raise
    except (ValueError, RecursionError) as e:  # RecursionError: '[[[[...' nested too deep
        raise SafetensorsError(f"{source}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{source}: header must be a JSON object, "
                               f"got a JSON {_JSON_TYPE[type(header)]}")
    return header


def _check_metadata(metadata: Any, source: str) -> dict[str, str]:
    if not isinstance(metadata, dict):
        raise SafetensorsError(f"{source}: '__metadata__' must be an object of strings, "
                               f"got a JSON {_JSON_TYPE[type(metadata)]}")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise SafetensorsError(f"{source}: '__metadata__' value of {_short(key)} must be a "
                                   f"string, got a JSON {_JSON_TYPE[type(value)]}")
    return metadata


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)  # JSON true must not pass as 1


def _check_entry(name: str, entry: Any, data_size: int, source: str) -> TensorInfo:
    """One tensor's entry: fields, dtype, shape, offsets inside the data area, size agreement."""
    where = f"{source}: tensor {_short(name)}"
    if not isinstance(entry, dict):
        raise SafetensorsError(f"{where}: entry must be a JSON object, "
                               f"got a JSON {_JSON_TYPE[type(entry)]}")
    if entry.keys() != _FIELDS:
        missing, extra = sorted(_FIELDS - entry.keys()), sorted(entry.keys() - _FIELDS)
        raise SafetensorsError(f"{where}: entry needs exactly the fields dtype, shape, "
                               f"data_offsets (missing {missing}, unexpected {_short(extra)})")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _STORED:
        raise SafetensorsError(f"{where}: unknown or unsupported dtype {_short(dtype)} "
                               f"(supported: {', '.join(_STORED)})")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise SafetensorsError(f"{where}: shape must be a list of non-negative integers, "
                               f"got {_short(shape)}")
    if len(shape) > MAX_NDIM:
        raise SafetensorsError(f"{where}: shape has {len(shape)} dimensions, more than {MAX_NDIM}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))):
        raise SafetensorsError(f"{where}: data_offsets must be two integers [begin, end], "
                               f"got {_short(offsets)}")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise SafetensorsError(f"{where}: data_offsets [{begin}, {end}] break 0 <= begin <= end")
    if end > data_size:
        raise SafetensorsError(f"{where}: data_offsets end {end} is past the end of the data "
                               f"area ({data_size} bytes; truncated file?)")
    # Python ints cannot overflow, and at most MAX_NDIM factors keep even absurd shapes cheap
    nbytes = _STORED[dtype].itemsize * math.prod(shape)
    if nbytes != end - begin:
        raise SafetensorsError(f"{where}: shape {_short(shape)} of {dtype} needs {nbytes} bytes "
                               f"but data_offsets [{begin}, {end}] hold {end - begin}")
    # an empty tensor passes the size check with any other dims, but NumPy still needs its
    # strides (itemsize x the non-zero dims) to fit in a signed 64-bit integer
    if _STORED[dtype].itemsize * math.prod(d for d in shape if d) > sys.maxsize:
        raise SafetensorsError(f"{where}: shape {_short(shape)} of {dtype} is too large for any "
                               "array (its strides overflow 64 bits)")
    return TensorInfo(name, dtype, tuple(shape), begin, end)


def _check_coverage(infos: list[TensorInfo], data_size: int, source: str) -> None:
    """The tensors must tile the data area exactly: no overlap, no hole, no unclaimed tail.

    Overlaps would let one write show through another tensor; holes are bytes no header entry
    accounts for. The reference (Rust) reader rejects both, a hole between tensors as
    ``InvalidOffset`` and an unclaimed tail as ``MetadataIncompleteBuffer``; so do we.
    """
    covered, previous = 0, None
    for info in sorted(infos, key=lambda i: (i.begin, i.end)):
        if info.begin < covered:
            raise SafetensorsError(
                f"{source}: tensor {_short(info.name)} (bytes {info.begin}..{info.end}) overlaps "
                f"tensor {_short(previous.name)} (bytes {previous.begin}..{previous.end})")
        if info.begin > covered:
            raise SafetensorsError(
                f"{source}: hole in the data area: bytes {covered}..{info.begin}, before tensor "
                f"{_short(info.name)}, belong to no tensor")
        covered, previous = info.end, info
    if covered != data_size:
        raise SafetensorsError(
            f"{source}: the last {data_size - covered} bytes of the data area belong to no "
            "tensor (incomplete metadata: the reference rejects this as MetadataIncompleteBuffer)")


def _parse(buf: Any, source: str) -> tuple[list[TensorInfo], dict[str, str] | None, int]:
    """Validate the header of a whole-file buffer; returns (entries, metadata, data start)."""
    n = _header_length(buf, source)
    header = _parse_json(bytes(buf[8 : 8 + n]), source)
    data_size = len(buf) - 8 - n
    metadata = None
    infos = []
    for name, entry in header.items():
        if name == "__metadata__":
            metadata = _check_metadata(entry, source)
        else:
            infos.append(_check_entry(name, entry, data_size, source))
    _check_coverage(infos, data_size, source)
    return infos, metadata, 8 + n


def _array(buf: Any, info: TensorInfo, data_start: int, source: str) -> np.ndarray:
    """A view of one tensor's bytes in ``buf`` (a widened copy for BF16)."""
    stored = _STORED[info.dtype]
    count = (info.end - info.begin) // stored.itemsize
    if count == 0:  # frombuffer refuses an offset at the very end of the buffer
        return np.zeros(info.shape, np.float32 if info.dtype == "BF16" else stored)
    flat = np.frombuffer(buf, dtype=stored, count=count, offset=data_start + info.begin)
    if info.dtype == "BF16":
        flat = (flat.astype(np.uint32) << 16).view(np.float32)  # bf16 = top 16 bits of an f32
    elif info.dtype == "BOOL":
        # NumPy trusts a bool byte to be 0 or 1; a 2 would make `a == True` disagree with `a`
        worst = int(flat.view(np.uint8).max())
        if worst > 1:
            raise SafetensorsError(f"{source}: tensor {_short(info.name)}: BOOL bytes must be "
                                   f"0 or 1, found {worst}")
    return flat.reshape(info.shape)


def _short(obj: Any) -> str:
    """repr cut short: a hostile header can hold a megabyte-long name or shape."""
    return reprlib.repr(obj)


# --- reading: public API -----------------------------------------------------------------------
class SafeFile:
    """Lazy access to a safetensors file; the header is validated on open.

    ``with SafeFile(path) as f: w = f.get_tensor("w")``. With ``mmap=True`` (default) tensors
    are read-only views of a memory map of the file (BF16 tensors are widened float32 copies);
    with ``mmap=False`` the file is read once into memory and tensors are writable views of it.
    """

    def __init__(self, path: str | os.PathLike, mmap: bool = True) -> None:
        self._source, self._closed = os.fspath(path), False
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                _header_length(f.read(), self._source)  # raises: the file is too short
            if mmap:  # the map outlives the file object; the views keep it alive
                self._buf: Any = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ)
            else:
                self._buf = bytearray(size)
                del self._buf[f.readinto(self._buf):]  # a file that shrank meanwhile
        try:
            infos, self._metadata, self._data_start = _parse(self._buf, self._source)
        except SafetensorsError:
            self.close()
            raise
        self._infos = {info.name: info for info in infos}

    def keys(self) -> list[str]:
        """Tensor names, in the order of the header."""
        return list(self._infos)

    def metadata(self) -> dict[str, str] | None:
        """The ``__metadata__`` dict (a copy), or None if the file has none."""
        return None if self._metadata is None else dict(self._metadata)

    def get_tensor(self, name: str) -> np.ndarray:
        if self._closed:
            raise ValueError(f"{self._source}: get_tensor on a closed SafeFile")
        if name not in self._infos:
            raise KeyError(f"{self._source}: no tensor {name!r}; it holds {_short(self.keys())}")
        return _array(self._buf, self._infos[name], self._data_start, self._source)

    def close(self) -> None:
        """Unmap the file, unless arrays handed out still view it (then the last one does)."""
        self._closed = True
        if isinstance(self._buf, _mmap.mmap):
            # while views are alive close() refuses; the map then closes with the last view
            with contextlib.suppress(BufferError):
                self._buf.close()

    def __enter__(self) -> SafeFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_file(path: str | os.PathLike, mmap: bool = True) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file, in header order (see ``SafeFile`` for ``mmap``)."""
    with SafeFile(path, mmap=mmap) as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def load(data: bytes | bytearray | memoryview) -> dict[str, np.ndarray]:
    """Every tensor of an in-memory safetensors file, as views of ``data`` (BF16 copied)."""
    data = memoryview(data).cast("B")  # len() and slices in bytes, whatever the buffer's format
    infos, _, data_start = _parse(data, "<bytes>")
    return {info.name: _array(data, info, data_start, "<bytes>") for info in infos}


def read_metadata(path: str | os.PathLike) -> dict[str, str] | None:
    """The ``__metadata__`` of a file (None if absent), after validating its whole header."""
    with SafeFile(path) as f:
        return f.metadata()


# --- writing -----------------------------------------------------------------------------------
class _Planned(NamedTuple):
    name: str
    dtype: str
    shape: tuple[int, ...]
    source: Any  # the caller's array/Tensor, converted only when its bytes are written


def _to_numpy(obj: Any) -> np.ndarray:
    if hasattr(obj, "numpy") and not isinstance(obj, np.ndarray):
        return np.asarray(obj.numpy())  # a minift Tensor (copied from the GPU if on one)
    if hasattr(obj, "get") and not isinstance(obj, (np.ndarray, Mapping)):
        return obj.get()  # a CuPy array
    return np.asarray(obj)


def _plan_one(name: Any, obj: Any, want: str | None, strict: bool) -> _Planned:
    if not isinstance(name, str) or name == "__metadata__":
        raise ValueError(f"tensor names must be strings other than '__metadata__', got {name!r}")
    try:  # arrays and Tensors describe themselves; their bytes are fetched while writing
        np_dtype, shape = np.dtype(obj.dtype), tuple(int(d) for d in obj.shape)
    except (AttributeError, TypeError):
        obj = _to_numpy(obj)
        np_dtype, shape = obj.dtype, obj.shape
    code = _CODE_OF.get((np_dtype.kind, np_dtype.itemsize))
    if code is None:
        raise TypeError(f"tensor {name!r}: dtype {np_dtype} has no safetensors equivalent")
    if want is not None and code in _FLOAT_CODES:
        code = want
    elif want is not None and strict:
        raise TypeError(f"tensor {name!r}: cannot store a {np_dtype} tensor as {want}")
    return _Planned(name, code, shape, obj)


def _plan(tensors: Mapping[str, Any], dtype: str | Mapping[str, str] | None) -> list[_Planned]:
    """Name, stored dtype and shape of every tensor: all the header needs, and all checked.

    ``dtype`` as one code converts every floating tensor; as a dict, exactly the tensors named.
    """
    strict = isinstance(dtype, Mapping)
    wants = dict(dtype) if strict else {} if dtype is None else dict.fromkeys(tensors, dtype)
    for want in set(dtype.values()) if strict else {dtype} - {None}:
        if want not in _FLOAT_CODES:
            raise ValueError(f"dtype must be one of {_FLOAT_CODES}, got {want!r}")
    unknown = set(wants) - set(tensors)
    if unknown:
        raise ValueError(f"dtype names tensors that are not being saved: {sorted(unknown)}")
    return [_plan_one(name, obj, wants.get(name), strict) for name, obj in tensors.items()]


def _header(planned: list[_Planned], metadata: Mapping[str, str] | None) -> tuple[bytes, list]:
    """The padded header bytes and the order in which the tensors' bytes follow it."""
    if metadata is not None and not (isinstance(metadata, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise TypeError(f"metadata must map str to str, got {_short(metadata)}")
    # widest dtypes first (as the reference writer does), so every tensor starts at a multiple
    # of its itemsize: the header is padded to 8 bytes and each width divides the wider ones
    order = sorted(planned, key=lambda p: (-_STORED[p.dtype].itemsize, p.name))
    offsets, position = {}, 0
    for p in order:
        size = _STORED[p.dtype].itemsize * math.prod(p.shape)
        offsets[p.name], position = [position, position + size], position + size
    header: dict[str, Any] = {} if metadata is None else {"__metadata__": dict(metadata)}
    for p in planned:  # header in the caller's order, so that loading returns that order
        header[p.name] = {"dtype": p.dtype, "shape": list(p.shape), "data_offsets": offsets[p.name]}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # pad with spaces to 8 bytes, like the reference writer
    return len(text).to_bytes(8, "little") + text, order


def _to_bf16(values: np.ndarray) -> np.ndarray:
    """float -> bfloat16 bits, rounding to nearest even (as torch does); NaN -> 0x7FC0."""
    f32 = np.ascontiguousarray(values, dtype=np.float32)
    bits = f32.view(np.uint32)
    # adding 0x7FFF plus the lowest kept bit rounds ties to the even neighbour before truncating
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16).astype("<u2")
    return np.where(np.isnan(f32), np.uint16(0x7FC0), rounded).astype("<u2")


def _tensor_bytes(p: _Planned) -> np.ndarray:
    values = _to_numpy(p.source)
    if tuple(values.shape) != p.shape:
        raise ValueError(f"tensor {p.name!r} changed shape from {p.shape} to {values.shape} "
                         "while being saved")
    if p.dtype == "BF16":
        return _to_bf16(values)
    return np.ascontiguousarray(values, dtype=_STORED[p.dtype])


def _write(f: IO[bytes], header: bytes, order: list[_Planned]) -> None:
    """Header, then each tensor's bytes, converting one tensor at a time (peak memory: one)."""
    f.write(header)
    for p in order:
        f.write(_tensor_bytes(p).reshape(-1).view(np.uint8))


def save(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None,
         dtype: str | Mapping[str, str] | None = None) -> bytes:
    """A safetensors file as bytes. See ``save_file`` for the arguments."""
    buffer = io.BytesIO()
    _write(buffer, *_header(_plan(tensors, dtype), metadata))
    return buffer.getvalue()


def save_file(tensors: Mapping[str, Any], path: str | os.PathLike,
              metadata: Mapping[str, str] | None = None,
              dtype: str | Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` to ``path`` atomically (the old file survives any failure).

    Args:
        tensors: name -> NumPy array, minift Tensor (any backend) or array-like; stored
            C-contiguous little-endian whatever the input's strides and byte order.
        path: the file to create or replace.
        metadata: optional str -> str pairs, stored as the header's ``__metadata__``.
        dtype: store floating tensors as this dtype ("F64", "F32", "F16" or "BF16", rounded to
            nearest even); one code for all, or a dict naming tensors. Integer tensors keep theirs.
    """
    header, order = _header(_plan(tensors, dtype), metadata)
    with atomic_write(path) as f:
        _write(f, header, order)
