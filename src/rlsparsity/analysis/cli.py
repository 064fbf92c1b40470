"""Analysis subcommands of the ``rlsparsity`` CLI (also runnable: python -m rlsparsity.analysis.cli).

``register(subparsers)`` adds: diff, rank, overlap, layers, dynamics, analyze-family,
analysis-table, public-pairs. Each handler returns an exit code; a bad checkpoint or path
prints one line on stderr and exits 2 (no traceback).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlsparsity.analysis.diff import DEFAULT_TOLERANCES
from rlsparsity.cliargs import (
    OneLineParser,
    check_device,
    device,
    fail,
    fraction,
    fraction_or_off,
    positive_int,
    tolerance,
)

Handler = Callable[[argparse.Namespace], int]


def _guard(fn: Handler) -> Handler:
    """Turn expected failures (bad checkpoint, missing file, bad value) into one stderr line and exit 2."""
    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        from rlsparsity.analysis.io import CheckpointError

        if getattr(args, "device", "cpu") != "cpu":
            try:
                check_device(args.device)
            except ValueError as err:
                return fail(f"rlsparsity {args.command}", str(err))
        try:
            return fn(args)
        except (CheckpointError, OSError, ValueError) as err:
            msg = str(err) if not isinstance(err, OSError) or not err.filename else \
                f"{err.filename}: {err.strerror or err.__class__.__name__}"
            return fail(f"rlsparsity {getattr(args, 'command', None) or ''}".strip(), msg)
    return run


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None so the printed JSON is strict."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _print_json(obj: Any) -> None:
    print(json.dumps(_json_safe(obj)))


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)


# ----------------------------------------------------------------- handlers


def cmd_diff(args: argparse.Namespace) -> int:
    from rlsparsity.analysis.diff import delta_stream, diff_checkpoints, provenance, write_outputs
    from rlsparsity.analysis.io import open_checkpoint
    from rlsparsity.analysis.overlap import topk_mask

    if args.topk is not None and not args.out:
        raise ValueError("--topk needs --out (the top-k mask is written there)")
    t0 = time.time()
    base, tuned = open_checkpoint(args.base), open_checkpoint(args.tuned)
    out = Path(args.out) if args.out else None
    res = diff_checkpoints(base, tuned, tuple(args.tolerances), mask_path=out / "mask.safetensors" if out else None,
                           mask_tol=args.mask_tol, threads=args.threads, device=args.device,
                           progress=_progress(args))
    summary = {**res.summary(), **provenance(args.base, args.tuned, res.tolerances, time.time() - t0)}
    if out:
        summary = write_outputs(out, res, provenance(args.base, args.tuned, res.tolerances, time.time() - t0))
        if args.topk is not None:
            stream, shapes = delta_stream(base, tuned)
            summary["topk"] = topk_mask(stream, args.topk, shapes, out / f"mask_topk{args.topk:g}.safetensors")
            (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if args.json:
        _print_json(summary)
    else:
        print(f"{summary['n_params']} parameters compared; below bf16 half-ulp: {summary['below_bf16_half_ulp']:.6f}")
        for k, v in summary["sparsity"].items():
            print(f"  sparsity @ tol {k:>6}: {v:.6f}")
        for key in ("mismatched", "missing", "nonfinite", "dtype_mismatch"):
            if summary[key]:
                print(f"  {key}: {len(summary[key])} tensor(s): {', '.join(x['name'] for x in summary[key][:5])}")
    return 0


def cmd_rank(args: argparse.Namespace) -> int:
    from rlsparsity.analysis.io import open_checkpoint
    from rlsparsity.analysis.rank import DEFAULT_MARGIN, rank_checkpoints, rank_summary
    from rlsparsity.analysis.tables import write_csv

    margin = DEFAULT_MARGIN if args.margin is None else args.margin
    rows = rank_checkpoints(open_checkpoint(args.base), open_checkpoint(args.tuned), args.rtol, margin,
                            args.device, _progress(args))
    if args.out:
        write_csv(Path(args.out), rows)
    summary = {**rank_summary(rows), "rtol": args.rtol, "margin": margin}
    if args.json:
        _print_json({**summary, "matrices": rows})
    else:
        print(json.dumps(_json_safe(summary), indent=1))
    return 0


def _emit(rows: list[dict[str, Any]], args: argparse.Namespace) -> int:
    """Write ``rows`` to ``--out`` as CSV; print them as JSON with ``--json`` or without ``--out``."""
    from rlsparsity.analysis.tables import write_csv

    if args.out:
        write_csv(Path(args.out), rows)
    if args.json or not args.out:
        _print_json(rows)
    return 0


def cmd_overlap(args: argparse.Namespace) -> int:
    from rlsparsity.analysis.overlap import mask_file, overlap_masks
    from rlsparsity.analysis.tables import write_csv

    total, rows = overlap_masks(mask_file(args.mask_a, args.mask), mask_file(args.mask_b, args.mask))
    if not total["n"]:
        raise ValueError(f"{args.mask_a} and {args.mask_b} share no tensor of equal shape: nothing to overlap")
    if args.per_tensor:
        write_csv(Path(args.per_tensor), rows)
    if args.json:
        _print_json(total)
    else:
        print(" ".join(f"{k}={total[k]:.4f}" for k in ("o1", "o2", "o1_random", "o2_random", "jaccard")))
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    from rlsparsity.analysis.layers import check_tensor_rows, layer_table
    from rlsparsity.analysis.tables import read_csv

    rows = read_csv(Path(args.tensors_csv))
    tols = check_tensor_rows(Path(args.tensors_csv), rows)
    table = layer_table(rows, tols)
    return _emit(table, args)


def cmd_dynamics(args: argparse.Namespace) -> int:
    from rlsparsity.analysis.dynamics import run_dynamics

    rows = run_dynamics(args.base, Path(args.run_dir), tuple(args.tolerances), args.threads)
    return _emit(rows, args)


def cmd_analyze_family(args: argparse.Namespace) -> int:
    from rlsparsity.analysis.tables import analyze_family
    from rlsparsity.resources import analysis_workers, stored_params

    workers = args.workers
    if workers == "auto":
        workers = analysis_workers(stored_params(Path(args.base) / "model.safetensors"), args.threads or 1,
                                   len(args.runs))
    analyze_family(Path(args.base), [Path(r) for r in args.runs], Path(args.diff_root), Path(args.out),
                   tuple(args.tolerances), None if args.topk <= 0 else args.topk, args.threads, args.device,
                   workers=int(workers))
    return 0


def workers_arg(text: str) -> str | int:
    """``auto`` or a positive integer (``--workers``)."""
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}")
    return n


def cmd_analysis_table(args: argparse.Namespace) -> int:
    from rlsparsity.analysis.tables import concat_tables

    concat_tables([Path(p) for p in args.inputs], Path(args.out))
    return 0


def cmd_public_pairs(args: argparse.Namespace) -> int:
    from rlsparsity.analysis.tables import public_pairs_table, read_pairs, write_csv

    pairs = read_pairs(Path(args.pairs))
    rows = public_pairs_table(pairs, tuple(args.tolerances), args.threads, _progress(args))
    write_csv(Path(args.out), rows)
    return 0


# ----------------------------------------------------------------- parsers


def mask_kind(text: str) -> str:
    """'exact' or 'topk:P' with P a fraction in (0, 1]."""
    if text == "exact":
        return text
    kind, sep, p = text.partition(":")
    if kind != "topk" or not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'exact' or 'topk:P'")
    return f"topk:{fraction(p):g}"


def _common(p: argparse.ArgumentParser, tolerances: bool = True, threads: bool = True) -> None:
    if tolerances:
        p.add_argument("--tolerances", type=tolerance, nargs="+", default=list(DEFAULT_TOLERANCES), metavar="T",
                       help="unchanged iff |Δ| <= T (default: %(default)s)")
    if threads:
        p.add_argument("--threads", type=positive_int, default=None, help="worker threads (default: cores, at most 16)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the analysis subcommands to the ``rlsparsity`` CLI."""
    p = subparsers.add_parser("diff", help="update sparsity of TUNED vs BASE (streaming, exact)")
    p.add_argument("base", help="HF folder, .safetensors file, or hub id")
    p.add_argument("tuned", help="HF folder, .safetensors file, or hub id")
    _common(p)
    p.add_argument("--out", help="write tensors.csv, summary.json, mask.safetensors here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", type=device, default="cpu", help="cpu or cuda (compare/gather on the device)")
    p.add_argument("--mask-tol", type=tolerance, default=0.0, help="mask = |Δ| > this (default 0: Δ != 0)")
    p.add_argument("--topk", type=fraction, default=None, metavar="P",
                   help="also write mask_topkP.safetensors: top-P fraction of entries by |Δ| (needs --out)")
    p.set_defaults(func=_guard(cmd_diff))

    p = subparsers.add_parser("rank", help="numerical rank of every 2-D update matrix")
    p.add_argument("base")
    p.add_argument("tuned")
    _common(p, tolerances=False, threads=False)
    p.add_argument("--rtol", type=tolerance, default=None,
                   help="σ > rtol·σ_max (default: matrix_rank's max(m,n)·eps32)")
    p.add_argument(
        "--margin",
        type=tolerance,
        default=None,
        help="an fp64 SVD decides if any σ lies within this band around τ, relative to τ "
        "(default: rank.DEFAULT_MARGIN = 1e-4, widened by the fp64 Gram error)",
    )
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--out", help="per-matrix CSV")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(cmd_rank))

    p = subparsers.add_parser("overlap", help="overlap of two update masks (o1, o2, chance, Jaccard)")
    p.add_argument("mask_a", help="mask file or diff --out folder")
    p.add_argument("mask_b", help="mask file or diff --out folder")
    p.add_argument("--mask", type=mask_kind, default="exact", help="'exact' (Δ != 0) or 'topk:P' (for diff folders)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--per-tensor", help="per-tensor CSV")
    p.set_defaults(func=_guard(cmd_overlap))

    p = subparsers.add_parser("layers", help="sparsity per layer x matrix type from a tensors.csv")
    p.add_argument("tensors_csv")
    p.add_argument("--out")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(cmd_layers))

    p = subparsers.add_parser("dynamics", help="sparsity over a run's checkpoints + never/cancelled/final split")
    p.add_argument("base")
    p.add_argument("run_dir")
    _common(p)
    p.add_argument("--out")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(cmd_dynamics))

    p = subparsers.add_parser("analyze-family", help="DAG job: diff/rank/layers/dynamics/overlap of a family's runs")
    p.add_argument("runs", nargs="+", help="run folders (.../runs/<family>/<alg>/<data>/<precision>/seed<N>)")
    p.add_argument("--base", required=True, help="base model folder")
    p.add_argument("--diff-root", required=True, help="per-run outputs go to DIFF_ROOT/<family>/.../seed<N>/")
    p.add_argument("--out", required=True, help="folder for the family's five CSVs")
    p.add_argument("--topk", type=fraction_or_off, default=0.01, help="top-p magnitude mask for overlap (<= 0: off)")
    p.add_argument("--device", type=device, default="cpu", help="device for rank")
    p.add_argument("--workers", type=workers_arg, default=1,
                   help="runs analysed at once in worker processes, THREADS split among them; 'auto': "
                        "THREADS // 2 for bases up to 2B parameters, else 1 (the tables do not depend on it)")
    _common(p)
    p.set_defaults(func=_guard(cmd_analyze_family))

    p = subparsers.add_parser("analysis-table", help="stack per-family CSVs with equal columns")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_guard(cmd_analysis_table))

    p = subparsers.add_parser("public-pairs", help="diff the paper's public model pairs (config/public_pairs.yaml)")
    p.add_argument("--pairs", required=True)
    p.add_argument("--out", required=True)
    _common(p)
    p.set_defaults(func=_guard(cmd_public_pairs))


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="rlsparsity")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
