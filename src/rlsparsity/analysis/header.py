"""The safetensors format: dtypes, tensor locations, and a strict header parser.

A ``.safetensors`` file is 8 bytes little-endian header length N, a JSON header of N bytes,
then raw tensor bytes. The header is parsed and validated here by hand (never trusted):
every entry must be an object with a known ``dtype`` string, a ``shape`` list of
non-negative integers and ``data_offsets`` [begin, end] of integers with
0 <= begin <= end <= data size and end - begin = the tensor's byte size; two tensors may
share the very same byte range (tied storage) but never overlap partially. Any violation
raises :class:`CheckpointError` with a one-line message naming the file, the tensor and
the field.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(Exception):
    """A checkpoint that cannot be read; the message is one line meant for the user."""


@dataclass(frozen=True)
class DType:
    """A safetensors dtype: element size, the unsigned bit-pattern view, how to get values.

    ``abs_mask``/``nonfinite_at``: for float dtypes, an element is non-finite iff
    ``bits & abs_mask >= nonfinite_at`` (all exponent bits set); 0 for integer dtypes.
    """

    name: str
    itemsize: int
    torch_name: str
    abs_mask: int = 0
    nonfinite_at: int = 0

    @property
    def bits(self) -> np.dtype:
        return np.dtype(f"<u{self.itemsize}")

    @property
    def is_float(self) -> bool:
        return self.nonfinite_at != 0


DTYPES: dict[str, DType] = {d.name: d for d in (
    DType("F64", 8, "float64", 0x7FFF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000),
    DType("F32", 4, "float32", 0x7FFF_FFFF, 0x7F80_0000),
    DType("F16", 2, "float16", 0x7FFF, 0x7C00),
    DType("BF16", 2, "bfloat16", 0x7FFF, 0x7F80),
    DType("F8_E4M3", 1, "float8_e4m3fn", 0x7F, 0x7F),
    DType("F8_E5M2", 1, "float8_e5m2", 0x7F, 0x7C),
    DType("I64", 8, "int64"), DType("I32", 4, "int32"), DType("I16", 2, "int16"),
    DType("I8", 1, "int8"), DType("U8", 1, "uint8"), DType("BOOL", 1, "bool"),
)}
#: numpy views of the integer dtypes' bit patterns (all fit int64 exactly).
INT_VIEWS: dict[str, Any] = {"I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
                             "U8": np.uint8, "BOOL": np.uint8}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes live: ``file`` at absolute byte ``offset``, row-major."""

    name: str
    file: Path
    dtype: DType
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


def values64(bits: np.ndarray, dtype: DType) -> np.ndarray:
    """Exact float64 values of raw float bit patterns (every float dtype fits float64).

    Integer dtypes are converted too, exactly only up to 2^53 in magnitude: exact integer
    work uses :func:`ints64`. Signalling NaN patterns become quiet NaNs (numpy's
    "invalid value" warning is silenced)."""
    with np.errstate(invalid="ignore"):
        return _values64(bits, dtype)


def ints64(bits: np.ndarray, dtype: DType) -> np.ndarray:
    """Exact int64 values of integer bit patterns (I8..I64, U8, BOOL)."""
    return bits.view(INT_VIEWS[dtype.name]).astype(np.int64)


def _values64(bits: np.ndarray, dtype: DType) -> np.ndarray:
    name = dtype.name
    if name == "F64":
        return bits.view(np.float64)
    if name == "F32":
        return bits.view(np.float32).astype(np.float64)
    if name == "F16":
        return bits.view(np.float16).astype(np.float64)
    if name == "BF16":
        return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if name.startswith("F8"):
        import torch

        return torch.from_numpy(bits).view(getattr(torch, dtype.torch_name)).double().numpy()
    return bits.view(INT_VIEWS[name]).astype(np.float64)


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def parse_header(path: Path) -> tuple[dict[str, Any], int, int]:
    """Return (header JSON object, data start offset, data size) after validating sizes."""
    try:
        size = path.stat().st_size
        fh = open(path, "rb")
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a .safetensors file") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot open ({err.strerror or err.__class__.__name__})") from None
    with fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{path}: not a safetensors file or truncated (header length {n}, "
                                  f"file size {size})")
        raw = fh.read(n)
    try:
        header = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON: {err.__class__.__name__})") from None
    except _DuplicateKey as err:
        raise CheckpointError(f"{path}: corrupt safetensors header (key {err.args[0]!r} given twice)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, "
                              f"not an object)")
    return header, 8 + n, size - 8 - n


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _entry(path: Path, name: str, meta: Any, start: int) -> tuple[TensorInfo, int, int]:
    """One validated header entry: (location, begin, end) with begin/end relative to the data."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: header entry is a JSON {type(meta).__name__}, not an object")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in meta]
    if missing:
        raise CheckpointError(f"{where}: header entry lacks {', '.join(missing)}")
    dt, shape, offs = meta["dtype"], meta["shape"], meta["data_offsets"]
    if not isinstance(dt, str) or dt not in DTYPES:
        raise CheckpointError(f"{where}: unknown dtype {dt!r} (known: {', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(_is_int(s) for s in shape):
        raise CheckpointError(f"{where}: shape {shape!r} is not a list of integers")
    if any(s < 0 for s in shape):
        raise CheckpointError(f"{where}: negative dimension in shape {shape}")
    if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)):
        raise CheckpointError(f"{where}: data_offsets {offs!r} is not a list of two integers")
    lo, hi = offs
    info = TensorInfo(name, path, DTYPES[dt], tuple(shape), start + lo)
    if lo < 0 or hi < lo or hi - lo != info.nbytes:
        raise CheckpointError(f"{where}: byte range {lo}..{hi} does not match shape {shape} {dt} "
                              f"({info.nbytes} bytes)")
    return info, lo, hi


def read_safetensors_index(path: Path) -> dict[str, TensorInfo]:
    """Tensor locations of one ``.safetensors`` file; raises CheckpointError if truncated/corrupt."""
    header, start, data_size = parse_header(path)
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise CheckpointError(f"{path}: corrupt safetensors header (__metadata__ must map names to strings)")
    out: dict[str, TensorInfo] = {}
    ranges: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        info, lo, hi = _entry(path, name, entry, start)
        if hi > data_size:
            raise CheckpointError(f"{path}: truncated safetensors file or tensor {name!r} out of range "
                                  f"({data_size} data bytes, tensor ends at {hi})")
        ranges.append((lo, hi, name))
        out[name] = info
    ranges.sort()
    for (lo0, hi0, n0), (lo1, hi1, n1) in zip(ranges, ranges[1:], strict=False):
        if lo1 < hi0 and (lo0, hi0) != (lo1, hi1):
            raise CheckpointError(f"{path}: corrupt safetensors header (tensors {n0!r} and {n1!r} overlap "
                                  f"partially: {lo0}..{hi0} and {lo1}..{hi1})")
    return out
