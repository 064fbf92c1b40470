"""Numerical rank of every 2-D update ΔW (SPEC §1 "Update rank").

ΔW = fp32(fp64(θ1) − fp64(θ0)); rank = #{σ_i > τ} with torch.linalg.matrix_rank's default
τ = σ_max · max(m, n) · eps_fp32, or τ = rtol · σ_max when ``rtol`` is given, where σ_i are
the singular values of that fp32 matrix (the definition, computed in fp64: no fp32 SVD
rounding, no solver's convergence decides it).

1. G = fp64 Gram matrix of the smaller side (ΔWᵀΔW or ΔWΔWᵀ; fp32 products are exact in
   fp64, so G's only error is the fp64 summation; with eigvalsh's own error the eigenvalues
   are taken to be within ``gram_error`` = 4·(m + n)·eps64·λ_max of the exact σ_i². That is a
   normwise estimate, not a worst-case bound (which carries ‖ΔW‖_F² instead of λ_max); on the
   H200 benchmark (26.k) the Gram and fp64-SVD values of the σ's near τ agreed to 10^-5 of τ, and
   the band below adds 10^-4·τ on top).
2. *Certificate* (cheap, decides most full-rank rectangular matrices): λ_max ≤ ‖G‖_∞
   bounds τ from above; if a Cholesky factorisation of G − s²·I succeeds for s above that
   bound plus the band, every σ exceeds the band and the rank is min(m, n). Method
   ``certified``; σ_max is then not computed (reported as NaN).
3. Otherwise the spectrum σ_i = √λ_i(G) from fp64 ``eigvalsh`` (method ``gram``). If a σ
   lies inside the band τ·(1 ± margin) widened by the Gram error, an fp64 SVD of the same
   matrix decides (method ``svd``; on CUDA with cuSOLVER's QR-based ``gesvd`` driver).

Why not torch.linalg.matrix_rank itself (benchmarks/rank_bench.py, H200, torch 2.11,
Llama-7B-shaped random sparse updates): on CUDA its default SVD driver (cuSOLVER
``gesvdj``, Jacobi) returned σ_max = 0.0070136 for matrix 26.k where the fp64 SVD, fp64
Gram, cuSOLVER ``gesvd``/``gesvda`` and the CPU's fp32 LAPACK SVD all give 0.0057303 (22 %
too large), so its τ was 22 % too high and the singular value at 1.049·τ was dropped: rank
4093 instead of 4094. The small singular values themselves were right to 0.1 %. An fp32
SVD is also only accurate to about √max(m, n)·eps32·σ_max, a sizeable fraction of τ for
small matrices; matrix_rank in fp32 therefore agrees with this definition except when a σ
lies within its SVD error of τ (or its driver misestimates σ_max).
"""

from __future__ import annotations

import math
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rlsparsity.analysis.header import TensorInfo, values64
from rlsparsity.analysis.io import Checkpoint, read_bits

if TYPE_CHECKING:
    import torch

DEFAULT_MARGIN = 1e-4  # band half-width relative to τ (plus the Gram error), decided by the fp64 SVD
EPS32 = 2.0**-23  # torch.finfo(torch.float32).eps
EPS64 = 2.0**-52
_ROW_CHUNK_ELEMS = 1 << 22


@dataclass(frozen=True)
class RankResult:
    """Rank of one matrix, its maximum min(m, n), and which method decided it."""

    rank: int
    max_rank: int
    method: str  # "certified", "gram" or "svd"
    sigma_max: float  # NaN for "certified"
    threshold: float  # NaN for "certified"


def threshold(sigma_max: float, shape: tuple[int, int], rtol: float | None) -> float:
    """matrix_rank's cut-off: σ_max·(rtol if given else max(m, n)·eps_fp32)."""
    return sigma_max * (rtol if rtol is not None else max(shape) * EPS32)


def svd64_singular_values(delta: torch.Tensor) -> torch.Tensor:
    """Singular values (descending) of the fp32 matrix from an fp64 SVD (cuSOLVER gesvd on CUDA,
    whose QR iteration is backward stable; the default Jacobi driver is not used, see above)."""
    import torch

    a = delta.float().double()
    return torch.linalg.svdvals(a, driver="gesvd" if a.is_cuda else None)


def reference_rank(delta: torch.Tensor, rtol: float | None = None) -> int:
    """The definition, computed with an fp64 SVD: #{σ_i > τ} of the fp32 matrix (slow; the reference)."""
    s = svd64_singular_values(delta)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return 0
    return int((s > threshold(float(s[0]), tuple(delta.shape), rtol)).sum())


def matrix_rank32(delta: torch.Tensor, rtol: float | None = None) -> int:
    """torch.linalg.matrix_rank of the fp32 matrix (default driver; for comparison only)."""
    import torch

    return int(torch.linalg.matrix_rank(delta.float(), rtol=rtol))


def gram(delta: torch.Tensor) -> torch.Tensor:
    """fp64 Gram matrix of the smaller side (its eigenvalues are the squared singular values)."""
    a = delta.double()
    return a.T @ a if a.shape[1] <= a.shape[0] else a @ a.T


def gram_singular_values(delta: torch.Tensor) -> torch.Tensor:
    """Singular values (ascending) as √max(λ, 0) of the fp64 Gram matrix of the smaller side."""
    import torch

    return torch.linalg.eigvalsh(gram(delta)).clamp_min(0).sqrt()


def gram_error(lam_max: float, shape: tuple[int, int]) -> float:
    """Eigenvalue error of the fp64 Gram spectrum: summation over max(m, n) terms plus eigvalsh."""
    return 4.0 * (shape[0] + shape[1]) * EPS64 * lam_max


def band(tau: float, margin: float) -> tuple[float, float]:
    """(lo, hi) = τ·(1 ∓ margin): σ's in there are decided by the fp64 SVD, not the Gram spectrum."""
    return max(tau * (1 - margin), 0.0), tau * (1 + margin)


def _certified_full_rank(g: torch.Tensor, shape: tuple[int, int], rtol: float | None, margin: float) -> bool:
    """True if every σ provably exceeds the band's upper edge (Cholesky of a shifted Gram)."""
    import torch

    lam_up = float(g.abs().sum(dim=1).max()) * (1 + 1e-9)  # ‖G‖_∞ ≥ λ_max (a valid upper bound)
    s_up = math.sqrt(lam_up)
    _, hi = band(threshold(s_up, shape, rtol), margin)
    err = gram_error(lam_up, shape)
    shift = hi * hi + 2 * err  # success ⇒ λ_min ≥ shift − err > hi²
    if shift >= lam_up:
        return False
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    return int(torch.linalg.cholesky_ex(g - shift * eye).info) == 0


def fast_rank(delta: torch.Tensor, rtol: float | None = None, margin: float = DEFAULT_MARGIN) -> RankResult:
    """Rank of a 2-D fp32 tensor, identical to :func:`reference_rank` (module docstring)."""
    m, n = delta.shape
    k = min(m, n)
    if k == 0 or not bool(delta.any()):
        return RankResult(0, k, "gram", 0.0, 0.0)  # matrix_rank of a zero matrix is 0
    g = gram(delta)
    if _certified_full_rank(g, (m, n), rtol, margin):
        return RankResult(k, k, "certified", math.nan, math.nan)
    import torch

    lam = torch.linalg.eigvalsh(g)
    lam_max = float(lam[-1])
    smax = math.sqrt(lam_max)
    tau = threshold(smax, (m, n), rtol)
    lo, hi = band(tau, margin)
    # τ itself comes from λ_max, which is off by at most err: widen by that too (× (1 + rtol-ish factor))
    err = gram_error(lam_max, (m, n)) * (1 + (tau / smax) ** 2)
    in_band = (lam >= lo * lo - err) & (lam <= hi * hi + err)
    if bool(in_band.any()):
        s = svd64_singular_values(delta)
        tau = threshold(float(s[0]), (m, n), rtol)
        return RankResult(int((s > tau).sum()), k, "svd", float(s[0]), tau)
    return RankResult(int((lam > hi * hi).sum()), k, "gram", smax, tau)


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
    """One row per 2-D tensor present in both checkpoints (tied duplicates skipped).

    The next matrix's ΔW is read and built on a background thread while the current one
    is ranked, so disk reads overlap the device's work.
    """
    import torch
    from tqdm import tqdm

    from rlsparsity.analysis.layers import parse_name
    from rlsparsity.analysis.pairing import plan_pairs

    pairs = [(b, t) for b, t in plan_pairs(base, tuned).pairs if len(b.shape) == 2 and len(t.shape) == 2]
    rows = []
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(delta_matrix, *pairs[0]) if pairs else None
        for i, (_b, t) in enumerate(tqdm(pairs, desc="rank", file=sys.stderr,
                                        disable=not (progress and sys.stderr.isatty()))):
            d = torch.from_numpy(pending.result()).to(device)
            pending = pool.submit(delta_matrix, *pairs[i + 1]) if i + 1 < len(pairs) else None
            layer, mtype = parse_name(t.name)
            row: dict[str, Any] = {"tensor": t.name, "layer": layer, "matrix_type": mtype,
                                   "shape": f"{d.shape[0]}x{d.shape[1]}"}
            if not bool(torch.isfinite(d).all()):  # rank undefined: reported, excluded from means
                rows.append({**row, "rank": None, "max_rank": min(d.shape), "rank_fraction": float("nan"),
                             "method": "nonfinite", "sigma_max": float("nan"), "threshold": float("nan")})
                continue
            r = fast_rank(d, rtol, margin)
            rows.append({**row, "rank": r.rank, "max_rank": r.max_rank,
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
