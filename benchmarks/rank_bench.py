"""Benchmark update-rank computation: torch.linalg.matrix_rank vs rlsparsity's Gram path.

Builds a Llama-7B-shaped random sparse fp32 update on the chosen device, one matrix at a
time (per layer q, k, v, o hidden²; gate, up inter×hidden; down hidden×inter; plus embed
and lm_head vocab×hidden: 32 layers -> 226 matrices), and times per matrix
(i) torch.linalg.matrix_rank and (ii) rlsparsity.analysis.rank.fast_rank, checking that
the ranks are identical. Update entries: N(0, 1e-4²) on a random 20% of positions.

Diagnostics (untimed, for choosing the fallback band): for every matrix not certified
full-rank, ``dist`` = min_i |σ_i − τ| / τ over the fp64 Gram spectrum, so the fallbacks,
mismatches and time of any other margin can be read off one run; and for up to
``--noise-max`` matrices with a σ within 25% of τ, ``noise`` = max |σ̂_i − σ_i| / τ over
those σ_i, σ̂ from torch.linalg.svdvals in fp32 (the SVD inside matrix_rank).

    python benchmarks/rank_bench.py --device cuda                       # full 7B shape
    python benchmarks/rank_bench.py --layers 1 --hidden 1024 --inter 2752 --vocab 8000  # CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def shapes(layers: int, hidden: int, inter: int, vocab: int) -> list[tuple[str, tuple[int, int]]]:
    out = [("embed", (vocab, hidden))]
    for i in range(layers):
        out += [(f"{i}.{m}", (hidden, hidden)) for m in "qkvo"]
        out += [(f"{i}.gate", (inter, hidden)), (f"{i}.up", (inter, hidden)), (f"{i}.down", (hidden, inter))]
    return out + [("lm_head", (vocab, hidden))]


def main() -> int:
    import torch

    from rlsparsity.analysis.rank import DEFAULT_MARGIN, fast_rank, gram_singular_values, reference_rank, threshold

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--inter", type=int, default=11008)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--density", type=float, default=0.2)
    ap.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    ap.add_argument("--skip-reference", action="store_true", help="time the fast path only")
    ap.add_argument("--noise-max", type=int, default=24, help="matrices whose fp32 SVD noise near τ is measured")
    ap.add_argument("--json-out", help="write per-matrix timings here")
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    gen = torch.Generator(device=dev).manual_seed(0)
    warm = torch.randn(64, 48, device=dev)
    fast_rank(warm), reference_rank(warm)  # library/handle initialisation is not timed
    rows, mismatches = [], 0
    for name, shape in shapes(args.layers, args.hidden, args.inter, args.vocab):
        d = torch.randn(shape, device=dev, generator=gen) * 1e-4
        d *= torch.rand(shape, device=dev, generator=gen) < args.density
        sync()
        t0 = time.perf_counter()
        fast = fast_rank(d, margin=args.margin)
        sync()
        t_fast = time.perf_counter() - t0
        ref, t_ref = None, None
        if not args.skip_reference:
            t0 = time.perf_counter()
            ref = reference_rank(d)
            sync()
            t_ref = time.perf_counter() - t0
            mismatches += ref != fast.rank
        dist = noise = None
        rank_gram = min(shape)  # the Gram count at τ itself (certified: full rank)
        if fast.method != "certified":
            sig = gram_singular_values(d)
            tau = threshold(float(sig[-1]), shape, None)
            rel = (sig - tau).abs() / tau
            dist = float(rel.min())
            rank_gram = int((sig > tau).sum())
            near = rel <= 0.25
            if bool(near.any()) and args.noise_max > 0:
                args.noise_max -= 1
                svd = torch.linalg.svdvals(d).flip(0).double()  # ascending like sig
                noise = float(((svd - sig).abs()[near] / tau).max())
        rows.append({"matrix": name, "shape": list(shape), "rank_fast": fast.rank, "rank_matrix_rank": ref,
                     "method": fast.method, "t_fast": t_fast, "t_matrix_rank": t_ref, "dist": dist, "noise": noise,
                     "rank_gram": rank_gram})
        print(
            f"{name:10s} {shape[0]:6d}x{shape[1]:<6d} rank {fast.rank:5d} ({fast.method}) fast {t_fast:7.3f}s"
            + (f"  matrix_rank {ref:5d} {t_ref:7.3f}s" if ref is not None else "")
            + (f"  dist {dist:.4f} gram-count {rank_gram}" if dist is not None else "")
            + (f"  noise {noise:.5f}" if noise is not None else ""),
            flush=True,
        )
    tf = sum(r["t_fast"] for r in rows)
    print(f"\ndevice {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}; {len(rows)} matrices")
    print(f"fast path total {tf:.2f}s ({sum(r['method'] == 'svd' for r in rows)} SVD fallbacks)")
    if not args.skip_reference:
        tr = sum(r["t_matrix_rank"] for r in rows)
        print(f"matrix_rank total {tr:.2f}s; speedup {tr / tf:.1f}x; rank mismatches: {mismatches}")
    noises = [r["noise"] for r in rows if r["noise"] is not None]
    if noises:
        print(
            f"fp32 SVD noise near tau over {len(noises)} matrices: max {max(noises):.5f} tau, "
            f"median {sorted(noises)[len(noises) // 2]:.5f} tau"
        )
    if not args.skip_reference:
        for m in (0.01, 0.02, 0.05, 0.1, 0.2):  # what-if: fallback iff dist <= m (noise term ignored)
            fb = [r for r in rows if r["dist"] is not None and r["dist"] <= m]
            bad = sum((r["dist"] is None or r["dist"] > m) and r["rank_matrix_rank"] != r["rank_gram"] for r in rows)
            print(
                f"what-if margin {m:4.2f}: {len(fb):3d} fallbacks, ~{len(fb)} x matrix_rank = "
                f"{sum(r['t_matrix_rank'] for r in fb):6.2f}s extra, mismatches: {bad}"
            )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
