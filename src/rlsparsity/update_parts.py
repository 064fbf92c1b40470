"""Split a trained model's update at the bf16 rounding boundary, to evaluate each part alone.

A run stored in fp32 differs from its (bf16) base by an update ΔW. Storing it in bf16, as
``fp32-master`` does, rounds every entry to the nearest bf16 value: an entry whose update is
smaller than half a bf16 ulp of the base value goes back to the base, a larger one keeps a
rounded update. This module makes the two complementary models that separate those effects:

* ``below-half-ulp``: base + only the updates that bf16 rounding would erase (exact fp32 values);
* ``above-half-ulp``: base + only the updates that survive bf16 rounding (exact fp32 values,
  not rounded), so that "rounding erases the small updates" and "rounding perturbs the large
  ones" can be told apart from the rounded model (``rlsparsity eval --round-bf16``).

An entry belongs to ``below-half-ulp`` when ``bf16(W) == bf16(base)``: the rounding test itself,
ties to even included. Base tensors are read one at a time (:mod:`rlsparsity.analysis.io`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PARTS = ("below-half-ulp", "above-half-ulp")


class UpdatePartError(ValueError):
    """The base does not match the model (missing tensor, other shape)."""


def keep_update_part(model: Any, base: str | Path, part: str) -> dict[str, int]:
    """Set every parameter of ``model`` (fp32) to base + the ``part`` of its update, in place.

    Returns counts over all parameters: ``n_entries``, ``n_changed`` (W != base),
    ``n_below`` (changed, but erased by bf16 rounding), ``n_above`` (changed and kept)."""
    import torch

    from rlsparsity.analysis.header import values64
    from rlsparsity.analysis.io import open_checkpoint, read_bits

    if part not in PARTS:
        raise UpdatePartError(f"unknown update part {part!r}; known: {', '.join(PARTS)}")
    ckpt = open_checkpoint(base)
    counts = {"n_entries": 0, "n_changed": 0, "n_below": 0, "n_above": 0}
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied weights appear once
            info = ckpt.tensors.get(name)
            if info is None:
                raise UpdatePartError(f"base {base}: no tensor {name!r} of the model")
            if tuple(info.shape) != tuple(p.shape):
                raise UpdatePartError(f"base {base}: {name!r} has shape {tuple(info.shape)}, "
                                      f"the model {tuple(p.shape)}")
            b = torch.from_numpy(values64(read_bits(info), info.dtype)).reshape(p.shape).to(p.device, p.dtype)
            w = p.detach().clone()
            erased = w.to(torch.bfloat16) == b.to(torch.bfloat16)
            changed = w != b
            counts["n_entries"] += p.numel()
            counts["n_changed"] += int(changed.sum())
            counts["n_below"] += int((changed & erased).sum())
            counts["n_above"] += int((changed & ~erased).sum())
            keep = erased if part == "below-half-ulp" else ~erased
            p.copy_(torch.where(keep, w, b))
    return counts
