"""Update masks of the subnetwork stage: the mask of a full run, the random controls, mask files,
alignment to a model's parameters, and the comparisons of a masked rerun with its full run.

Random controls (``subnetwork.random_control`` in the config):

* ``uniform`` (:func:`random_mask_like`): per tensor, exactly as many True entries as the mask,
  at uniformly random positions;
* ``magnitude`` (:func:`random_mask_magnitude_matched`, the default): per tensor AND per bin of
  the base weight's magnitude |w| (bins are octaves, floor(log2|w|), i.e. the bf16 exponent,
  which sets the storage step an update must clear), exactly as many True entries as the mask
  has in that bin, at uniformly random positions within the bin. bf16 rounding freezes
  large-|w| entries, so a uniform control would put its entries where the subnetwork could
  not have moved; the matched control has the subnetwork's density and magnitude profile.

Agreement of a rerun with the full run is reported on all entries (entries frozen in both
runs agree by construction) and on the mask's entries only (:func:`masked_agreement`).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_AGREEMENT_TOLS: tuple[float, ...] = (0.0, 1e-5, 1e-4)




def _n(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def mask_from_diff(base: str | Path, tuned: str | Path, out_path: str | Path, mask_tol: float = 0.0,
                   stored: str | Path | None = None) -> dict[str, Any]:
    """Update mask |θ_tuned − θ_base| > mask_tol (name -> bool tensor), also written to ``out_path``.

    ``stored``: an exact (tol 0) mask file of the same pair (e.g. results/diff/<run>/mask.safetensors),
    used as is when ``mask_tol`` is 0; otherwise the mask is computed from the two checkpoints."""
    from rlsparsity.analysis.diff import diff_checkpoints
    from rlsparsity.analysis.io import load_mask, open_checkpoint

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if stored is not None and mask_tol == 0 and Path(stored).exists():
        if Path(stored).resolve() != out_path.resolve():
            shutil.copyfile(stored, out_path)
    else:
        diff_checkpoints(open_checkpoint(base), open_checkpoint(tuned), (0.0,), mask_path=out_path,
                         mask_tol=float(mask_tol), threads=1)
    return load_mask(out_path)


def random_mask_like(mask: dict[str, Any], seed: int) -> dict[str, Any]:
    """Per tensor, a uniformly random bool mask with exactly as many True entries as ``mask``."""
    import torch

    g = torch.Generator().manual_seed(int(seed))
    out = {}
    for name in sorted(mask):
        m = mask[name]
        k = int(m.sum())
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        if k:
            flat[torch.randperm(m.numel(), generator=g)[:k]] = True
        out[name] = flat.reshape(m.shape)
    return out


def write_mask(mask: dict[str, Any], path: str | Path, meta: dict[str, str] | None = None) -> Path:
    """Write a name -> bool tensor mask in the analysis stage's bit-packed format."""
    from rlsparsity.analysis.io import MaskWriter

    path = Path(path)
    w = MaskWriter(path, {k: tuple(v.shape) for k, v in mask.items()}, meta)
    try:
        for k, v in mask.items():
            w.write(k, 0, v.reshape(-1).numpy().astype(bool))
    finally:
        w.close()
    return path


def align_mask(mask: dict[str, Any], base_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restrict a stored-tensor mask to the model's parameters (``named_parameters`` names).

    Names that are not parameters (buffers, tied aliases) are dropped; a parameter the mask
    does not name is frozen whole (all False). Shapes must agree."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(base_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    params = dict(model.named_parameters())
    out, frozen_whole = {}, []
    for name, p in params.items():
        if name in mask:
            if tuple(mask[name].shape) != tuple(p.shape):
                raise ValueError(f"mask for {name} has shape {tuple(mask[name].shape)}, parameter {tuple(p.shape)}")
            out[name] = mask[name].bool()
        else:
            out[name] = torch.zeros(p.shape, dtype=torch.bool)
            frozen_whole.append(name)
    dropped = sorted(set(mask) - set(params))
    n = sum(v.numel() for v in out.values())
    k = sum(int(v.sum()) for v in out.values())
    return out, {"dropped_not_parameters": dropped, "frozen_whole": frozen_whole, "n": n, "n_true": k,
                 "density": k / n if n else float("nan")}


def mask_violations(base: str | Path, tuned: str | Path, mask_path: str | Path, scratch: str | Path) -> int:
    """Entries that changed (tuned vs base, exact) outside the mask (0 when the mask held)."""
    import numpy as np

    from rlsparsity.analysis.diff import diff_checkpoints
    from rlsparsity.analysis.io import load_packed_mask, open_checkpoint

    diff_checkpoints(open_checkpoint(base), open_checkpoint(tuned), (0.0,), mask_path=Path(scratch), threads=1)
    changed, allowed = load_packed_mask(scratch), load_packed_mask(mask_path)
    bad = 0
    for name, (pc, _) in changed.items():
        pa = allowed[name][0] if name in allowed else np.zeros_like(pc)
        bad += int(np.bitwise_count(pc & ~pa).sum())
    Path(scratch).unlink(missing_ok=True)
    return bad


def agreement(full: str | Path, sub: str | Path, tolerances: Iterable[float] = DEFAULT_AGREEMENT_TOLS
              ) -> dict[str, float]:
    """Fraction of entries with |θ_sub − θ_full| ≤ t, per t (format(t, 'g') keys): the
    sparsity of the diff full → sub, computed exactly by the streaming diff engine."""
    from rlsparsity.analysis.diff import diff_checkpoints
    from rlsparsity.analysis.io import open_checkpoint

    res = diff_checkpoints(open_checkpoint(full), open_checkpoint(sub), tuple(tolerances), threads=1)
    return dict(res.summary()["sparsity"])


def sparsity_vs(base: str | Path, tuned: str | Path, tolerances: Iterable[float]) -> dict[str, Any]:
    from rlsparsity.analysis.diff import diff_checkpoints
    from rlsparsity.analysis.io import open_checkpoint

    return diff_checkpoints(open_checkpoint(base), open_checkpoint(tuned), tuple(tolerances), threads=1).summary()


# ----------------------------------------------------------------- magnitude-matched control


def magnitude_bins(w: np.ndarray) -> np.ndarray:
    """Octave of each |w|: floor(log2|w|) (the bf16/fp32 exponent); exact zeros get their own bin
    (-100000). Integer array of w's shape."""
    w = np.asarray(w, dtype=np.float64)
    _, e = np.frexp(np.abs(w))  # |w| = m·2^e, m in [0.5, 1)
    return np.where(w == 0, -100000, e.astype(np.int64) - 1)


def read_weights(checkpoint: str | Path, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """name -> exact float64 values (flat) of a checkpoint's stored tensors (``names``: a subset)."""
    from rlsparsity.analysis.io import open_checkpoint, read_bits, values64

    ck = open_checkpoint(checkpoint)
    want = list(ck.tensors) if names is None else list(names)
    missing = [n for n in want if n not in ck.tensors]
    if missing:
        raise ValueError(f"{checkpoint}: no tensor(s) {missing[:5]} (mask and checkpoint disagree)")
    return {n: values64(read_bits(ck.tensors[n]), ck.tensors[n].dtype) for n in want}


def random_mask_magnitude_matched(mask: dict[str, Any], base_weights: dict[str, np.ndarray], seed: int
                                  ) -> dict[str, Any]:
    """Random control with the mask's per-tensor density AND magnitude profile: per tensor and per
    octave bin of the base |w| (:func:`magnitude_bins`), exactly as many True entries as ``mask``
    has there, at uniformly random positions of that bin (seeded; tensors in sorted order)."""
    import torch

    rng = np.random.default_rng(int(seed))
    out = {}
    for name in sorted(mask):
        m = np.asarray(mask[name].reshape(-1).numpy() if hasattr(mask[name], "numpy") else mask[name]).astype(bool)
        if name not in base_weights:
            raise ValueError(f"no base weights for mask tensor {name!r}")
        w = np.asarray(base_weights[name]).reshape(-1)
        if w.size != m.size:
            raise ValueError(f"{name}: mask has {m.size} entries, base weight {w.size}")
        bins = magnitude_bins(w)
        flat = np.zeros(m.size, dtype=bool)
        for b in np.unique(bins[m]):
            pos = np.flatnonzero(bins == b)
            k = int(m[pos].sum())
            flat[rng.choice(pos, size=k, replace=False)] = True
        out[name] = torch.from_numpy(flat).reshape(tuple(mask[name].shape))
    return out


def bin_counts(mask: dict[str, Any], base_weights: dict[str, np.ndarray]) -> dict[tuple[str, int], int]:
    """(tensor, magnitude bin) -> number of True entries of ``mask`` (to check a control)."""
    out: dict[tuple[str, int], int] = {}
    for name in sorted(mask):
        m = np.asarray(mask[name]).reshape(-1).astype(bool)
        bins = magnitude_bins(np.asarray(base_weights[name]).reshape(-1))
        b, c = np.unique(bins[m], return_counts=True)
        out.update({(name, int(x)): int(y) for x, y in zip(b, c, strict=False)})
    return out


def masked_agreement(full: str | Path, sub: str | Path, mask: dict[str, Any],
                     tolerances: Iterable[float] = DEFAULT_AGREEMENT_TOLS) -> dict[str, float]:
    """Fraction of the MASK's entries with |θ_sub − θ_full| ≤ t, per t (tol_key keys); NaN for an
    empty mask. Entries outside the mask are left out: frozen in the rerun, they agree with the
    full run wherever the full run did not move them, by construction."""
    from rlsparsity.analysis.diff import tol_key

    tols = tuple(float(t) for t in tolerances)
    names = [n for n in sorted(mask) if bool(np.asarray(mask[n]).any())]
    wf, ws = read_weights(full, names), read_weights(sub, names)
    agree = np.zeros(len(tols), dtype=np.int64)
    total = 0
    for n in names:
        m = np.asarray(mask[n]).reshape(-1).astype(bool)
        d = np.abs(ws[n][m] - wf[n][m])
        total += int(m.sum())
        agree += np.array([int((d <= t).sum()) for t in tols], dtype=np.int64)
    return {tol_key(t): (float(a) / total if total else float("nan")) for t, a in zip(tols, agree, strict=False)}
