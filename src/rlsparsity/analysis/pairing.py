"""Which tensors of two checkpoints are compared: pairing by name, tied duplicates, bookkeeping.

Tensors are paired by name. A tensor that duplicates another one of the same checkpoint
(shared storage, or a tied ``lm_head`` byte-identical to the input embedding) is skipped
when it is tied on every side storing it. Tensors on one side only are listed under
``missing``, shape and dtype differences under ``mismatched`` / ``dtype_mismatch``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlsparsity.analysis.io import Checkpoint, TensorInfo, read_bits

EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "embed_in.weight", "word_embeddings.weight")
_CMP_CHUNK = 1 << 22  # elements per read when comparing two tensors' bytes

def _bytes_equal(x: TensorInfo, y: TensorInfo) -> bool:
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    for s in range(0, x.numel, _CMP_CHUNK):
        e = min(s + _CMP_CHUNK, x.numel)
        if not np.array_equal(read_bits(x, s, e), read_bits(y, s, e)):
            return False
    return True


def tied_names(ck: Checkpoint) -> dict[str, str]:
    """Tensors that duplicate another one of the same checkpoint: name -> the one kept.

    Two cases: the same bytes of the same file listed under two names (shared storage),
    and ``lm_head.weight`` byte-identical to the input embedding while config.json's
    ``tie_word_embeddings`` is true (the HF default when absent).
    """
    out: dict[str, str] = {}
    seen: dict[tuple[Path, int, int], str] = {}
    for name, info in sorted(ck.tensors.items()):
        key = (info.file, info.offset, info.nbytes)
        if info.nbytes and key in seen:
            out[name] = seen[key]
        else:
            seen[key] = name
    head = ck.tensors.get("lm_head.weight")
    emb = next((n for n in sorted(ck.tensors) if n.endswith(EMBED_SUFFIXES)), None)
    if head is not None and emb and "lm_head.weight" not in out and ck.config.get("tie_word_embeddings", True):
        if _bytes_equal(head, ck.tensors[emb]):
            out["lm_head.weight"] = emb
    return out


@dataclass
class Plan:
    """Which tensors are compared and how; the bookkeeping lists go into the summary."""

    pairs: list[tuple[TensorInfo, TensorInfo]] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    mismatched: list[dict[str, Any]] = field(default_factory=list)
    dtype_mismatch: list[dict[str, Any]] = field(default_factory=list)
    tied: list[dict[str, Any]] = field(default_factory=list)


def plan_pairs(base: Checkpoint, tuned: Checkpoint) -> Plan:
    """Pair tensors by name; a tied duplicate is skipped only if tied on every side storing it."""
    tb, tt = tied_names(base), tied_names(tuned)
    plan = Plan()
    for name in sorted(set(base.tensors) | set(tuned.tensors)):
        in_b, in_t = name in base.tensors, name in tuned.tensors
        if (not in_b or name in tb) and (not in_t or name in tt):
            plan.tied.append({"name": name, "tied_to": tb.get(name) or tt.get(name)})
            continue
        if not (in_b and in_t):
            info = (tuned if in_t else base).tensors[name]
            plan.missing.append({"name": name, "side": "base" if in_t else "tuned",
                                 "present_in": "tuned" if in_t else "base",
                                 "shape": list(info.shape), "numel": info.numel})
            continue
        b, t = base.tensors[name], tuned.tensors[name]
        plan.pairs.append((b, t))
        if b.dtype != t.dtype:
            plan.dtype_mismatch.append({"name": name, "base_dtype": b.dtype.name, "tuned_dtype": t.dtype.name})
        if b.shape != t.shape:
            ov = overlap_shape(b.shape, t.shape)
            plan.mismatched.append({"name": name, "base_shape": list(b.shape), "tuned_shape": list(t.shape),
                                    "compared_shape": list(ov),
                                    "extra_tuned_counted_changed": t.numel - prod(ov),
                                    "extra_base_not_counted": b.numel - prod(ov)})
    return plan


def prod(shape: tuple[int, ...]) -> int:
    """Number of elements of ``shape`` (exact Python integer; 1 for a scalar)."""
    return math.prod(shape)


def overlap_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """The common leading slice of two shapes; (0,) when their ranks differ."""
    if len(a) != len(b):
        return (0,)
    return tuple(min(x, y) for x, y in zip(a, b, strict=True))
