"""Numerical rank of every 2-D update ΔW (SPEC §1 "Update rank").

ΔW = fp32(fp64(θ1) − fp64(θ0)); rank = #{σ_i > τ} with torch.linalg.matrix_rank's default
τ = σ_max · max(m, n) · eps_fp32, or τ = rtol · σ_max when ``rtol`` is given.

Fast path: the singular values are sqrt of the eigenvalues of the fp64 Gram matrix of
the smaller side (ΔWᵀΔW or ΔWΔWᵀ, eigvalsh). Their error near τ is ~1e-6·τ for 4096-wide
matrices, far below the noise of matrix_rank's own fp32 SVD near τ (measured: ~3e-4·τ on
CPU LAPACK, ~2e-3·τ on an H100 with cuSOLVER; one H100 disagreement in 226 matrices
was seen at a 1% band). Whenever any σ is within ``margin``·τ of τ (default 5%), the
matrix falls back to torch.linalg.matrix_rank itself, so there the result is
matrix_rank's by construction; elsewhere the decision is far outside the SVD's noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rlsparsity.analysis.io import Checkpoint, TensorInfo, read_bits, values64

DEFAULT_MARGIN = 0.05
_ROW_CHUNK_ELEMS = 1 << 22


@dataclass(frozen=True)
class RankResult:
    """Rank of one matrix, its maximum min(m, n), and which method decided it."""

    rank: int
    max_rank: int
    method: str  # "gram" or "svd"
    sigma_max: float
    threshold: float


def _eps32() -> float:
    import torch

    return float(torch.finfo(torch.float32).eps)


def threshold(sigma_max: float, shape: tuple[int, int], rtol: float | None) -> float:
    """matrix_rank's cut-off: σ_max·(rtol if given else max(m, n)·eps_fp32)."""
    return sigma_max * (rtol if rtol is not None else max(shape) * _eps32())


def reference_rank(delta: "torch.Tensor", rtol: float | None = None) -> int:  # noqa: F821
    """torch.linalg.matrix_rank of the fp32 matrix (default tolerance unless rtol)."""
    import torch

    return int(torch.linalg.matrix_rank(delta.float(), rtol=rtol))


def gram_singular_values(delta: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
    """Singular values (ascending) as sqrt(max(λ, 0)) of the fp64 Gram matrix of the smaller side."""
    import torch

    a = delta.double()
    g = a.T @ a if a.shape[1] <= a.shape[0] else a @ a.T
    return torch.linalg.eigvalsh(g).clamp_min(0).sqrt()


def fast_rank(delta: "torch.Tensor", rtol: float | None = None, margin: float = DEFAULT_MARGIN) -> RankResult:  # noqa: F821
    """Rank of a 2-D fp32 tensor, identical to matrix_rank (see module docstring)."""
    m, n = delta.shape
    if min(m, n) == 0 or not bool(delta.any()):
        return RankResult(0, min(m, n), "gram", 0.0, 0.0)  # matrix_rank of a zero matrix is 0
    sigma = gram_singular_values(delta)
    smax = float(sigma[-1])
    tau = threshold(smax, (m, n), rtol)
    if bool(((sigma - tau).abs() <= margin * tau).any()):
        return RankResult(reference_rank(delta, rtol), min(m, n), "svd", smax, tau)
    return RankResult(int((sigma > tau).sum()), min(m, n), "gram", smax, tau)


def delta_matrix(b: TensorInfo, t: TensorInfo) -> np.ndarray:
    """fp32 ΔW of a 2-D tensor pair over their overlapping rows/columns, built row block by block."""
    rows, cols = min(b.shape[0], t.shape[0]), min(b.shape[1], t.shape[1])
    out = np.empty((rows, cols), dtype=np.float32)
    step = max(1, _ROW_CHUNK_ELEMS // max(t.shape[1], 1))
    for r0 in range(0, rows, step):
        r1 = min(r0 + step, rows)
        bv = values64(read_bits(b, r0 * b.shape[1], r1 * b.shape[1]), b.dtype).reshape(r1 - r0, b.shape[1])
        tv = values64(read_bits(t, r0 * t.shape[1], r1 * t.shape[1]), t.dtype).reshape(r1 - r0, t.shape[1])
        out[r0:r1] = tv[:, :cols] - bv[:, :cols]
    return out


def rank_checkpoints(base: Checkpoint, tuned: Checkpoint, rtol: float | None = None,
                     margin: float = DEFAULT_MARGIN, device: str = "cpu", progress: bool = False
                     ) -> list[dict[str, Any]]:
    """One row per 2-D tensor present in both checkpoints (tied duplicates skipped)."""
    import sys

    import torch
    from tqdm import tqdm

    from rlsparsity.analysis.diff import plan_pairs
    from rlsparsity.analysis.layers import parse_name

    pairs = [(b, t) for b, t in plan_pairs(base, tuned).pairs if len(b.shape) == 2 and len(t.shape) == 2]
    rows = []
    for b, t in tqdm(pairs, desc="rank", file=sys.stderr, disable=not (progress and sys.stderr.isatty())):
        d = torch.from_numpy(delta_matrix(b, t)).to(device)
        layer, mtype = parse_name(t.name)
        if not bool(torch.isfinite(d).all()):  # rank undefined: reported, excluded from means
            rows.append({"tensor": t.name, "layer": layer, "matrix_type": mtype, "shape": f"{d.shape[0]}x{d.shape[1]}",
                         "rank": None, "max_rank": min(d.shape), "rank_fraction": float("nan"), "method": "nonfinite",
                         "sigma_max": float("nan"), "threshold": float("nan")})
            continue
        r = fast_rank(d, rtol, margin)
        rows.append({"tensor": t.name, "layer": layer, "matrix_type": mtype, "shape": f"{d.shape[0]}x{d.shape[1]}",
                     "rank": r.rank, "max_rank": r.max_rank,
                     "rank_fraction": r.rank / r.max_rank if r.max_rank else float("nan"),
                     "method": r.method, "sigma_max": r.sigma_max, "threshold": r.threshold})
    return rows


def rank_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean rank fraction over all 2-D matrices, and without embed/lm_head matrices."""
    def mean(sel: list[dict[str, Any]]) -> float | None:
        vals = [r["rank_fraction"] for r in sel if r["max_rank"] and r["rank"] is not None]
        return float(np.mean(vals)) if vals else None

    no_embed = [r for r in rows if r["matrix_type"] not in ("embed", "lm_head")]
    return {"n_matrices": len(rows), "mean_rank_fraction": mean(rows),
            "mean_rank_fraction_no_embed": mean(no_embed), "n_matrices_no_embed": len(no_embed),
            "n_svd_fallback": sum(r["method"] == "svd" for r in rows)}
