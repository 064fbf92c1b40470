"""Update rank: the Gram fast path equals the definition (fp64 SVD) and matrix_rank on constructed matrices."""

from __future__ import annotations

import pytest
import torch
from _analysis_util import run_cli, save_model

from rlsparsity.analysis.rank import band, fast_rank, matrix_rank32, rank_summary, reference_rank


def _low_rank(m: int, n: int, r: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, r, generator=g) @ torch.randn(r, n, generator=g)


def _cases() -> list[tuple[str, torch.Tensor, int]]:
    dup = torch.randn(5, 30, generator=torch.Generator().manual_seed(1)).repeat(4, 1)  # 20 rows, rank 5
    single = torch.zeros(17, 23)
    single[3, 4] = 1e-3
    sparse = torch.randn(40, 25, generator=torch.Generator().manual_seed(2))
    sparse *= torch.rand(40, 25, generator=torch.Generator().manual_seed(3)) < 0.5
    return [("rank3_tall", _low_rank(40, 30, 3), 3), ("rank7_wide", _low_rank(20, 50, 7), 7),
            ("rank1", _low_rank(12, 12, 1), 1), ("full_square", _low_rank(16, 16, 16), 16),
            ("duplicated_rows", dup, 5), ("zero", torch.zeros(9, 13), 0), ("single_entry", single, 1),
            ("sparse_full", sparse, 25)]


@pytest.mark.parametrize("name,mat,expected", _cases(), ids=[c[0] for c in _cases()])
def test_fast_rank_equals_matrix_rank(name, mat, expected):
    r = fast_rank(mat)
    assert r.rank == expected
    assert reference_rank(mat) == expected == matrix_rank32(mat)
    assert r.max_rank == min(mat.shape)


def test_rtol_and_fallback_near_threshold():
    q1, _ = torch.linalg.qr(torch.randn(30, 30, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(30, 30, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    s = torch.logspace(0, -4, 30, dtype=torch.float64)  # 1 ... 1e-4
    a = (q1 @ torch.diag(s) @ q2.T).float()
    assert fast_rank(a, rtol=1e-2).rank == int((s > 1e-2).sum()) == reference_rank(a, rtol=1e-2)
    near = fast_rank(a, rtol=float(s[10]) * 1.0001, margin=0.01)  # σ_10 sits on the threshold
    assert near.method == "svd" and near.rank == reference_rank(a, rtol=float(s[10]) * 1.0001)
    assert fast_rank(a, rtol=float(s[10]) * 0.5 + float(s[11]) * 0.5).method == "gram"


def test_rank_cli_and_means(tmp_path):
    base = {"model.layers.0.self_attn.q_proj.weight": torch.zeros(12, 10),
            "model.embed_tokens.weight": torch.zeros(20, 10), "model.norm.weight": torch.zeros(10)}
    tuned = {"model.layers.0.self_attn.q_proj.weight": _low_rank(12, 10, 4),
             "model.embed_tokens.weight": _low_rank(20, 10, 10), "model.norm.weight": torch.ones(10)}
    p = run_cli("rank", str(save_model(tmp_path / "b", base)), str(save_model(tmp_path / "t", tuned)), "--json",
                "--out", str(tmp_path / "rank.csv"))
    assert p.returncode == 0, p.stderr
    import json

    out = json.loads(p.stdout)
    ranks = {m["tensor"]: (m["rank"], m["max_rank"]) for m in out["matrices"]}
    assert ranks == {"model.layers.0.self_attn.q_proj.weight": (4, 10), "model.embed_tokens.weight": (10, 10)}
    assert out["mean_rank_fraction"] == (0.4 + 1.0) / 2
    assert out["mean_rank_fraction_no_embed"] == 0.4
    assert rank_summary([])["mean_rank_fraction"] is None


def _with_singular_values(s: torch.Tensor, m: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, len(s), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, len(s), generator=g, dtype=torch.float64))
    return (u * s) @ v.T


@pytest.mark.parametrize("m,n", [(64, 64), (96, 40), (40, 96)])
def test_rank_deficient_and_near_threshold_equal_matrix_rank(m, n):
    eps, k = torch.finfo(torch.float32).eps, min(m, n)
    for seed in range(6):
        tau_rel = max(m, n) * eps  # matrix_rank's default cut-off relative to σ_max
        # ranks below k, exact zeros, a cluster right at τ (±0.1%), and σ's well clear of τ
        s = torch.logspace(0, -3, k, dtype=torch.float64)
        s[k // 2:] = 0.0
        s[k // 2 - 3:k // 2] = tau_rel * torch.tensor([0.999, 1.0005, 1.5], dtype=torch.float64)
        a = _with_singular_values(s, m, n, seed).float()
        r = fast_rank(a)
        assert r.rank == reference_rank(a)  # σ's within fp32 rounding of τ: the fp64 SVD of the fp32 matrix decides
        clear = s.clone()
        clear[k // 2 - 3:k // 2] = tau_rel * torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
        b = _with_singular_values(clear, m, n, seed).float()
        rb = fast_rank(b)
        assert rb.rank == reference_rank(b) == k // 2 - 1 and rb.method == "gram"


def test_full_rank_certified():
    g = torch.Generator().manual_seed(11)
    a = torch.randn(300, 120, generator=g) * (torch.rand(300, 120, generator=g) < 0.2)
    r = fast_rank(a)
    assert r.method == "certified" and r.rank == 120 == reference_rank(a) == matrix_rank32(a)
    assert band(2.0, 0.01) == (1.98, 2.02)


def _hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_rank_with_singular_values_near_threshold(seed):
    """A = (±H/8)·diag(s)·P, H the 64×64 Hadamard matrix: every entry ±s_j/8 is exact in fp32 and the
    columns are exactly orthogonal, so the σ of the fp32 matrix are exactly the fp32 values s. Eight σ sit
    0.1-3 % either side of τ = 64·eps32·σ_max = 2^-17. The exact rank is #{s > τ}. The old code handed the
    σ's within 1 % of τ to torch.linalg.matrix_rank in fp32, whose SVD error (~√64·eps32·σ_max ≈ 12 % of τ
    here) decided: with seed 0 it said 44 (exact: 45) on a 2-core x86 CPU (LAPACK via torch 2.13)."""
    n, tau = 64, 64 * 2.0**-23
    g = torch.Generator().manual_seed(seed)
    near = tau * (1 + torch.tensor([-3e-2, -1e-2, -3e-3, -1e-3, 1e-3, 3e-3, 1e-2, 3e-2], dtype=torch.float64))
    s = torch.cat([torch.ones(1, dtype=torch.float64), torch.logspace(-0.1, -3, 40, dtype=torch.float64), near,
                   torch.zeros(n - 49, dtype=torch.float64)]).float().double()
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    a64 = _hadamard(n) / 8 * sign[:, None] * s[torch.randperm(n, generator=g)]
    a = a64.float()
    assert torch.equal(a.double(), a64)  # exact in fp32
    exact = int((s > tau).sum())
    assert exact == 45
    for mat in (a, a.T.contiguous(), torch.cat([a, torch.zeros(32, n)])):  # square, transposed, tall
        tau_m = max(mat.shape) * 2.0**-23  # σ_max = 1
        want = int((s > tau_m).sum())
        assert fast_rank(mat).rank == reference_rank(mat) == want
        assert fast_rank(mat, rtol=1e-3).rank == int((s > 1e-3).sum())
