"""Checkpoint reading for the diff engine: safetensors headers, per-tensor reads, masks.

Why not ``safetensors.safe_open`` for the data: it memory-maps the file, and every page a
read touches stays mapped (and counted in RSS) until the file is closed, so diffing two
16 GB checkpoints through it shows ~32 GB RSS. Here the header is parsed and validated by
hand (the format is 8 bytes little-endian header length, a JSON header, then raw bytes),
and each tensor -- or each flat element range of a large tensor -- is read with
``os.preadv`` into a fresh buffer that is dropped after use. Memory is bounded by the
chunk size, not the checkpoint size, and reads release the GIL, so a thread pool overlaps
them with compute. Nothing is ever unpickled: ``.bin``/``.pt`` checkpoints are refused.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
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
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


def values64(bits: np.ndarray, dtype: DType) -> np.ndarray:
    """Exact float64 values of raw element bit patterns (every supported dtype fits float64).

    Signalling NaN patterns become quiet NaNs (numpy's "invalid value" warning is silenced)."""
    with np.errstate(invalid="ignore"):
        return _values64(bits, dtype)


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
    signed = {"I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8}
    return bits.view(signed.get(name, bits.dtype)).astype(np.float64)


def _parse_header(path: Path) -> tuple[dict[str, Any], int, int]:
    """Return (header JSON, data start offset, data size) after validating sizes."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{path}: truncated or corrupt safetensors file (header length {n}, "
                                  f"file size {size})")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: corrupt safetensors header ({err.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    return header, 8 + n, size - 8 - n


def read_safetensors_index(path: Path) -> dict[str, TensorInfo]:
    """Tensor locations of one ``.safetensors`` file; raises CheckpointError if truncated/corrupt."""
    header, start, data_size = _parse_header(path)
    out: dict[str, TensorInfo] = {}
    end_max = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = DTYPES[meta["dtype"]]
            shape = tuple(int(s) for s in meta["shape"])
            lo, hi = (int(x) for x in meta["data_offsets"])
        except KeyError as err:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported or missing field {err}") from None
        info = TensorInfo(name, path, dtype, shape, start + lo)
        if hi - lo != info.nbytes or lo < 0:
            raise CheckpointError(f"{path}: corrupt entry for tensor {name!r} (byte range {lo}..{hi} "
                                  f"does not match shape {list(shape)} {dtype.name})")
        end_max = max(end_max, hi)
        out[name] = info
    if end_max > data_size:
        raise CheckpointError(f"{path}: truncated safetensors file ({data_size} data bytes, header "
                              f"expects {end_max})")
    return out


def _refuse_pickle(path: Path) -> None:
    raise CheckpointError(f"{path}: pickle checkpoints (.bin/.pt) are refused, never unpickled; convert "
                          f"to safetensors first, e.g. AutoModelForCausalLM.from_pretrained(...)"
                          f".save_pretrained(out, safe_serialization=True)")


def resolve(arg: str) -> Path:
    """A local checkpoint path for ``arg``: the path itself if it exists, else a hub download.

    Hub ids are fetched with ``huggingface_hub.snapshot_download`` (only ``*.safetensors``
    and ``*.json``) and only when ``arg`` is not an existing path and looks like a hub id.
    """
    path = Path(arg)
    if path.exists():
        return path
    if arg.startswith((".", "/", "~")) or not _HUB_ID.match(arg) or arg.endswith(PICKLE_SUFFIXES):
        raise CheckpointError(f"{arg}: no such file or directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(arg, allow_patterns=["*.safetensors", "*.json"]))
    except Exception as err:  # offline, unknown repo, gated: all end the same way for the user
        raise CheckpointError(f"{arg}: not a local path, and downloading it from the Hugging Face hub "
                              f"failed ({err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                              ) from None


def _weight_files(folder: Path) -> list[Path]:
    index = folder / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{index}: corrupt index ({err.__class__.__name__})") from None
        files = sorted({folder / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index}: shard(s) missing: {', '.join(missing)}")
        return files
    if (folder / SINGLE_NAME).exists():
        return [folder / SINGLE_NAME]
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    if any(folder.glob(f"*{s}") for s in PICKLE_SUFFIXES):
        _refuse_pickle(folder)
    raise CheckpointError(f"{folder}: no *.safetensors weights found")


@dataclass
class Checkpoint:
    """A model checkpoint: tensor locations over one or more shards plus its config.json."""

    path: Path
    tensors: dict[str, TensorInfo]
    config: dict[str, Any]

    @property
    def n_params(self) -> int:
        return sum(t.numel for t in self.tensors.values())


def open_checkpoint(arg: str | Path) -> Checkpoint:
    """Open a folder (single file or sharded with an index), a ``.safetensors`` file, or a hub id."""
    path = resolve(str(arg))
    if path.is_file() and path.suffix in PICKLE_SUFFIXES:
        _refuse_pickle(path)
    files = [path] if path.is_file() else _weight_files(path)
    tensors: dict[str, TensorInfo] = {}
    for f in files:
        tensors.update(read_safetensors_index(f))
    folder = path if path.is_dir() else path.parent
    cfg_path = folder / "config.json"
    config = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    return Checkpoint(path, tensors, config)


def read_bits(info: TensorInfo, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Raw bit patterns of flat elements ``[start, stop)`` of a tensor, read with pread."""
    stop = info.numel if stop is None else stop
    size = info.dtype.itemsize
    buf = np.empty((stop - start) * size, dtype=np.uint8)
    fd = os.open(info.file, os.O_RDONLY)
    try:
        pos, view = 0, memoryview(buf)
        while pos < len(buf):
            got = os.preadv(fd, [view[pos:]], info.offset + start * size + pos)
            if got == 0:
                raise CheckpointError(f"{info.file}: truncated while reading {info.name!r}")
            pos += got
    finally:
        os.close(fd)
    return buf.view(info.dtype.bits)


# ---------------------------------------------------------------- update masks


class MaskWriter:
    """Write a bit-packed mask file incrementally (valid safetensors: one U8 tensor per name).

    Each tensor's mask is ``numpy.packbits`` of its flattened boolean mask (big bit order,
    last byte zero-padded); the header's ``__metadata__`` maps every name to its shape as
    JSON. Offsets are fixed up front, so chunks are written in any order with pwrite.
    """

    def __init__(self, path: Path, shapes: dict[str, tuple[int, ...]], meta: dict[str, str] | None = None):
        self.path = path
        self.offsets: dict[str, int] = {}
        header: dict[str, Any] = {"__metadata__": {"shapes": json.dumps({k: list(v) for k, v in shapes.items()}),
                                                   **(meta or {})}}
        pos = 0
        for name, shape in shapes.items():
            nbytes = (int(np.prod(shape, dtype=np.int64)) + 7) // 8
            header[name] = {"dtype": "U8", "shape": [nbytes], "data_offsets": [pos, pos + nbytes]}
            self.offsets[name] = pos
            pos += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.data_start = 8 + len(raw)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(self.fd, struct.pack("<Q", len(raw)) + raw, 0)
        os.ftruncate(self.fd, self.data_start + pos)

    def write(self, name: str, start_elem: int, bits: np.ndarray) -> None:
        """Write the mask of flat elements starting at ``start_elem`` (a multiple of 8)."""
        assert start_elem % 8 == 0
        os.pwrite(self.fd, np.packbits(bits).tobytes(), self.data_start + self.offsets[name] + start_elem // 8)

    def close(self) -> None:
        os.close(self.fd)


def load_packed_mask(path: str | Path) -> dict[str, tuple[np.ndarray, tuple[int, ...]]]:
    """name -> (packed uint8 bits, shape) from a mask file written by :class:`MaskWriter`."""
    from safetensors import safe_open

    path = Path(path)
    read_safetensors_index(path)  # clear error on truncation
    with safe_open(str(path), framework="numpy") as fh:
        shapes = json.loads(fh.metadata()["shapes"])
        return {name: (fh.get_tensor(name), tuple(shapes[name])) for name in fh.keys()}


def load_mask(path: str | Path) -> dict[str, "torch.Tensor"]:  # noqa: F821
    """name -> torch.BoolTensor (True = updated) from a mask file written by :class:`MaskWriter`."""
    import torch

    out = {}
    for name, (packed, shape) in load_packed_mask(path).items():
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        out[name] = torch.from_numpy(np.unpackbits(packed, count=n).astype(bool)).reshape(shape)
    return out
