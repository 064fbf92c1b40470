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
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlsparsity.analysis.header import (  # noqa: F401
    DTYPES,
    CheckpointError,
    DType,
    TensorInfo,
    ints64,
    parse_header,
    read_safetensors_index,
    values64,
)
from rlsparsity.paths import PICKLE_SUFFIXES, PathProblem, check_local, looks_local

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def _refuse_pickle(path: Path) -> None:
    raise CheckpointError(f"{path}: pickle checkpoints (.bin/.pt) are refused, never unpickled; convert "
                          f"to safetensors first, e.g. AutoModelForCausalLM.from_pretrained(...)"
                          f".save_pretrained(out, safe_serialization=True)")


def resolve(arg: str) -> Path:
    """A local checkpoint path for ``arg``: a local path (see :mod:`rlsparsity.paths`), else a hub download.

    Anything that looks like a filesystem path is local and must exist ("no such file or
    folder", "symlink loop" otherwise); hub ids are fetched with
    ``huggingface_hub.snapshot_download`` (only ``*.safetensors`` and ``*.json``).
    """
    if looks_local(arg):
        try:
            return check_local(arg)
        except PathProblem as err:
            raise CheckpointError(str(err)) from None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(arg, allow_patterns=["*.safetensors", "*.json"]))
    except Exception as err:  # offline, unknown repo, gated: all end the same way for the user
        first = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(f"{arg}: no such local file or folder, and downloading it as a Hugging Face "
                              f"hub id failed ({err.__class__.__name__}: {first})") from None


def _json_object(path: Path, what: str) -> dict[str, Any]:
    """``path`` parsed as one JSON object, else a CheckpointError naming the file as a corrupt ``what``."""
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path}: corrupt {what} (not JSON: {err.__class__.__name__})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: corrupt {what} (a JSON {type(doc).__name__}, not an object)")
    return doc


def _read_index(index: Path) -> dict[str, str]:
    """The ``weight_map`` of a sharded checkpoint's index: tensor name -> shard file name (validated)."""
    doc = _json_object(index, "index")
    wm = doc.get("weight_map")
    if not isinstance(wm, dict):
        what = "missing" if wm is None else f"a JSON {type(wm).__name__}, not an object"
        raise CheckpointError(f"{index}: corrupt index (weight_map is {what})")
    if not wm:
        raise CheckpointError(f"{index}: corrupt index (weight_map lists no tensors)")
    for name, fname in wm.items():
        if not isinstance(fname, str) or not fname:
            raise CheckpointError(f"{index}: corrupt index (tensor {name!r} maps to {fname!r}, not a file name)")
        if Path(fname).is_absolute() or ".." in Path(fname).parts or not fname.endswith(".safetensors"):
            raise CheckpointError(f"{index}: tensor {name!r} maps to {fname!r}: shards must be *.safetensors "
                                  f"files inside the folder")
    return wm


def _weight_files(folder: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The weight files of a folder and, for a sharded checkpoint, its index's weight_map."""
    index = folder / INDEX_NAME
    if index.exists():
        wm = _read_index(index)
        files = sorted({folder / f for f in wm.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index}: shard(s) missing: {', '.join(missing)}")
        return files, wm
    if (folder / SINGLE_NAME).exists():
        return [folder / SINGLE_NAME], None
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files, None
    if any(any(folder.glob(f"*{s}")) for s in PICKLE_SUFFIXES):
        _refuse_pickle(folder)
    raise CheckpointError(f"{folder}: folder has no model weights (no *.safetensors file)")


@dataclass
class Checkpoint:
    """A model checkpoint: tensor locations over one or more shards plus its config.json."""

    path: Path
    tensors: dict[str, TensorInfo]
    config: dict[str, Any]

    @property
    def n_params(self) -> int:
        return sum(t.numel for t in self.tensors.values())


def _merge_shards(files: list[Path], weight_map: dict[str, str] | None) -> dict[str, TensorInfo]:
    """All shards' tensors; a name stored in two shards, or missing from its indexed shard, is an error."""
    tensors: dict[str, TensorInfo] = {}
    for f in files:
        for name, info in read_safetensors_index(f).items():
            if name in tensors:
                raise CheckpointError(f"tensor {name!r} is stored in two shards ({tensors[name].file.name} "
                                      f"and {f.name}) of {f.parent}: ambiguous checkpoint")
            tensors[name] = info
    for name, fname in (weight_map or {}).items():
        if name not in tensors or tensors[name].file.name != Path(fname).name:
            where = f"is in {tensors[name].file.name}" if name in tensors else "is in no shard"
            raise CheckpointError(f"{files[0].parent / INDEX_NAME}: index maps tensor {name!r} to {fname}, "
                                  f"but it {where}")
    return tensors


def _read_config(folder: Path) -> dict[str, Any]:
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        return {}
    return _json_object(cfg_path, "config.json")


def open_checkpoint(arg: str | Path) -> Checkpoint:
    """Open a folder (single file or sharded with an index), a ``.safetensors`` file, or a hub id.

    A checkpoint without any tensor is an error (nothing to compare)."""
    path = resolve(str(arg))
    if path.is_file() and path.suffix in PICKLE_SUFFIXES:
        _refuse_pickle(path)
    if path.is_file() and path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: not a checkpoint (expected a model folder or a .safetensors file)")
    files, weight_map = ([path], None) if path.is_file() else _weight_files(path)
    tensors = _merge_shards(files, weight_map)
    if not tensors:
        raise CheckpointError(f"{path}: checkpoint holds no tensors (empty safetensors header)")
    folder = path if path.is_dir() else path.parent
    return Checkpoint(path, tensors, _read_config(folder))


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
    """name -> (packed uint8 bits, shape) from a mask file written by :class:`MaskWriter`.

    Any other file (a checkpoint, a CSV, a folder without a mask) is refused with one line."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder without the expected mask file (mask.safetensors)")
    try:
        check_local(path)
    except PathProblem as err:
        raise CheckpointError(str(err)) from None
    tensors = read_safetensors_index(path)
    header, _, _ = parse_header(path)
    not_mask = f"{path}: not an update mask file (as written by `rlsparsity diff --out`)"
    try:
        shapes = json.loads((header.get("__metadata__") or {})["shapes"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise CheckpointError(f"{not_mask}: no 'shapes' metadata") from None
    if not isinstance(shapes, dict) or set(shapes) != set(tensors):
        raise CheckpointError(f"{not_mask}: its 'shapes' metadata does not list its tensors")
    out = {}
    for name, info in tensors.items():
        shape = shapes[name]
        if not (isinstance(shape, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                                for x in shape)):
            raise CheckpointError(f"{not_mask}: shape of {name!r} is {shape!r}")
        n = int(np.prod(shape, dtype=object)) if shape else 1
        if info.dtype.name != "U8" or info.shape != ((n + 7) // 8,):
            raise CheckpointError(f"{not_mask}: tensor {name!r} is {info.dtype.name} {list(info.shape)}, "
                                  f"not the packed bits of shape {shape}")
        out[name] = (read_bits(info), tuple(shape))
    return out


def load_mask(path: str | Path) -> dict[str, torch.Tensor]:  # noqa: F821
    """name -> torch.BoolTensor (True = updated) from a mask file written by :class:`MaskWriter`."""
    import torch

    out = {}
    for name, (packed, shape) in load_packed_mask(path).items():
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        out[name] = torch.from_numpy(np.unpackbits(packed, count=n).astype(bool)).reshape(shape)
    return out
