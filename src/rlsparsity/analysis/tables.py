"""DAG aggregation: one process per family diffs all its runs and writes tidy tables.

Per run (under ``diff_root/<run.rel>/``): summary.json, tensors.csv, mask.safetensors and
mask_topk<p>.safetensors. Per family (under ``out_dir``): sparsity.csv, rank.csv,
overlap.csv, layers.csv, dynamics.csv; :func:`concat_tables` stacks the families.
Every row starts with the run identity (family, algorithm, data, precision, seed).
"""

from __future__ import annotations

import csv
import json
import time
from itertools import combinations
from pathlib import Path
from typing import Any

from rlsparsity.analysis.diff import (
    DEFAULT_TOLERANCES,
    delta_stream,
    diff_checkpoints,
    provenance,
    tol_key,
    write_outputs,
)
from rlsparsity.analysis.dynamics import run_dynamics
from rlsparsity.analysis.io import Checkpoint, open_checkpoint
from rlsparsity.analysis.layers import layer_table
from rlsparsity.analysis.overlap import overlap_masks, topk_mask
from rlsparsity.analysis.rank import rank_checkpoints
from rlsparsity.grid import Run, parse_run_dir

AXES: tuple[str, ...] = ("seed", "algorithm", "precision", "data")
TABLES: tuple[str, ...] = ("sparsity", "rank", "overlap", "layers", "dynamics")


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """Write rows (dicts) as CSV, atomically (temp file + rename); ``columns`` fixes the header
    when rows may be empty, else it is every key of the rows in first-seen order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = columns or list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="raise")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file; ValueError naming the file if it is not UTF-8 text CSV."""
    from rlsparsity.paths import check_local

    if check_local(path).is_dir():
        raise ValueError(f"{path}: is a folder, not a CSV file")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path}: not a CSV text file ({err.__class__.__name__})") from None
    if any(None in r for r in rows):
        raise ValueError(f"{path}: not a CSV table (a row has more fields than the header)")
    return rows


def read_pairs(path: Path) -> list[dict[str, Any]]:
    """The ``pairs`` list of a public-pairs YAML file, each with string name/algorithm/base/tuned."""
    from rlsparsity.config_validate import load_yaml
    from rlsparsity.paths import check_local

    doc = load_yaml(check_local(path).read_text(encoding="utf-8", errors="replace"), path)
    pairs = doc.get("pairs") if isinstance(doc, dict) else None
    if not isinstance(pairs, list) or not pairs:
        raise ValueError(f"{path}: expected a non-empty list under 'pairs'")
    for i, p in enumerate(pairs):
        bad = [
            k
            for k in ("name", "algorithm", "base", "tuned")
            if not isinstance((p or {}).get(k) if isinstance(p, dict) else None, str)
        ]
        if bad:
            raise ValueError(f"{path}: pairs[{i}] needs string field(s) {', '.join(bad)}")
    return pairs


def diff_run(
    base: Checkpoint,
    base_arg: str,
    run_path: Path,
    out: Path,
    tolerances: tuple[float, ...],
    topk: float | None,
    threads: int | None,
) -> dict[str, Any]:
    """Diff one run's final model against the base into ``out``; returns the summary."""
    t0 = time.time()
    tuned = open_checkpoint(run_path)
    res = diff_checkpoints(base, tuned, tolerances, mask_path=out / "mask.safetensors", threads=threads)
    summary = write_outputs(out, res, provenance(base_arg, str(run_path), res.tolerances, time.time() - t0))
    if topk is not None:
        stream, shapes = delta_stream(base, tuned)
        summary["topk"] = topk_mask(stream, topk, shapes, out / f"mask_topk{topk:g}.safetensors")
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def sparsity_rows(run: Run, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """sparsity.csv rows: one per tolerance."""
    return [
        {**run.as_dict(), "tolerance": float(k), "sparsity": v, "below_bf16_half_ulp": summary["below_bf16_half_ulp"]}
        for k, v in summary["sparsity"].items()
    ]


def layer_rows(run: Run, tensor_rows: list[dict[str, Any]], tolerances: tuple[float, ...]) -> list[dict[str, Any]]:
    """layers.csv rows of one run from its tensors.csv rows."""
    return [{**run.as_dict(), **r} for r in layer_table(tensor_rows, [tol_key(t) for t in tolerances])]


RANK_KEYS: tuple[str, ...] = ("tensor", "matrix_type", "rank", "max_rank", "rank_fraction", "method")


def rank_rows(run: Run, matrices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """rank.csv rows of one run from :func:`rank_checkpoints` rows (or `rlsparsity rank --json`'s matrices)."""
    return [{**run.as_dict(), **{k: m[k] for k in RANK_KEYS}} for m in matrices]


def overlap_row(axis: str, kind: str, a: Run, b: Run, total: dict[str, Any]) -> dict[str, Any]:
    """overlap.csv row of one pair from :func:`overlap_masks`' totals (or `rlsparsity overlap --json`)."""
    return {"family": a.family, "axis": axis, "mask": kind, "run_a": a.label, "run_b": b.label,
            **{k: total[k] for k in ("o1", "o2", "o1_random", "o2_random", "jaccard", "s1", "s2")}}


def overlap_pairs(runs: list[Run]) -> list[tuple[str, Run, Run]]:
    """(axis, a, b) for every pair of runs differing in exactly that axis (a < b)."""
    out = []
    for a, b in combinations(sorted(runs), 2):
        diff = [ax for ax in AXES if getattr(a, ax) != getattr(b, ax)]
        if len(diff) == 1 and a.family == b.family:
            out.append((diff[0], a, b))
    return out


def overlap_rows(runs: list[Run], diff_root: Path, mask_kinds: list[str]) -> list[dict[str, Any]]:
    """overlap.csv rows: every one-axis pair x mask kind, totals over all tensors."""
    from rlsparsity.analysis.overlap import mask_file

    rows = []
    for axis, a, b in overlap_pairs(runs):
        for kind in mask_kinds:
            tot, _ = overlap_masks(mask_file(diff_root / a.rel, kind), mask_file(diff_root / b.rel, kind))
            rows.append(overlap_row(axis, kind, a, b, tot))
    return rows


Rows = dict[str, list[dict[str, Any]]]


def _run_tables(base_path: Path, run_dir: Path, diff_root: Path, tolerances: tuple[float, ...],
                topk: float | None, threads: int | None, rank_device: str) -> tuple[Run, Rows]:
    """Diff, layer split, rank and dynamics of ONE run: its rows of four of the tables (overlap
    needs every run's masks and is computed after). May run in a worker process of
    :func:`analyze_family`, so it opens the checkpoints itself."""
    base = open_checkpoint(base_path)
    run = parse_run_dir(run_dir)
    rows: Rows = {t: [] for t in ("sparsity", "layers", "rank", "dynamics")}
    summary = diff_run(base, str(base_path), Path(run_dir), diff_root / run.rel, tolerances, topk, threads)
    rows["sparsity"] = sparsity_rows(run, summary)
    tensor_rows = read_csv(diff_root / run.rel / "tensors.csv")
    rows["layers"] = layer_rows(run, tensor_rows, tolerances)
    rows["rank"] = rank_rows(run, rank_checkpoints(base, open_checkpoint(run_dir), device=rank_device))
    rows["dynamics"] = [{**run.as_dict(), **r} for r in run_dynamics(base, Path(run_dir), tolerances, threads)]
    return run, rows


def _worker_threads(n: int) -> None:
    """A worker's torch intra-op threads (the rank SVDs; the diff has its own thread pool)."""
    import torch

    torch.set_num_threads(n)


def analyze_family(
    base_path: Path,
    run_dirs: list[Path],
    diff_root: Path,
    out_dir: Path,
    tolerances: tuple[float, ...] = DEFAULT_TOLERANCES,
    topk: float | None = 0.01,
    threads: int | None = None,
    rank_device: str = "cpu",
    workers: int = 1,
) -> dict[str, Path]:
    """Diff, rank, layer split and dynamics of every run of one family, then their overlaps.

    ``workers`` > 1 analyses that many runs at once in separate processes (spawned: no forked
    thread pools), each with ``threads // workers`` threads: the rank pass (about 211 small
    fp64 Gram/SVD problems per run at 135M, ~11 s on 2 cores) parallelises far better across
    runs than inside one. Rows come out in ``run_dirs`` order whatever finishes first, so the
    tables are the same for any ``workers``."""
    per = max(1, (threads or 1) // max(1, workers)) if threads else None
    jobs = [(Path(base_path), Path(rd), Path(diff_root), tuple(tolerances), topk, per, rank_device) for rd in run_dirs]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_threads, initargs=(per or 1,)) as pool:
            results = list(pool.map(_run_tables, *zip(*jobs, strict=True)))
    else:
        results = [_run_tables(*j) for j in jobs]
    tables: dict[str, list[dict[str, Any]]] = {t: [] for t in TABLES}
    for _, rows in results:
        for name, part in rows.items():
            tables[name] += part
    runs = [run for run, _ in results]
    kinds = ["exact"] + ([f"topk:{topk:g}"] if topk is not None else [])
    tables["overlap"] = overlap_rows(runs, diff_root, kinds)
    paths = {}
    for name, rows in tables.items():
        paths[name] = out_dir / f"{name}.csv"
        write_csv(paths[name], rows, COLUMNS[name])
    return paths


_ID = ["family", "algorithm", "data", "precision", "seed"]
COLUMNS: dict[str, list[str]] = {
    "sparsity": _ID + ["tolerance", "sparsity", "below_bf16_half_ulp"],
    "rank": _ID + ["tensor", "matrix_type", "rank", "max_rank", "rank_fraction", "method"],
    "overlap": [
        "family",
        "axis",
        "mask",
        "run_a",
        "run_b",
        "o1",
        "o2",
        "o1_random",
        "o2_random",
        "jaccard",
        "s1",
        "s2",
    ],
    "layers": _ID + ["layer", "matrix_type", "n_tensors", "numel", "tolerance", "sparsity", "below_bf16_half_ulp"],
    "dynamics": _ID + ["point", "step", "quantity", "tolerance", "value"],
}


def concat_tables(inputs: list[Path], out: Path) -> int:
    """Stack CSVs with identical headers into ``out``; returns the number of data rows."""
    header: list[str] | None = None
    rows: list[dict[str, str]] = []
    for p in inputs:
        with open(p, newline="") as fh:
            r = csv.DictReader(fh)
            if header is None:
                header = list(r.fieldnames or [])
            elif list(r.fieldnames or []) != header:
                raise ValueError(f"{p}: columns {r.fieldnames} differ from {header}")
            rows += list(r)
    write_csv(out, rows, header or [])
    return len(rows)


def public_pairs_table(
    pairs: list[dict[str, Any]],
    tolerances: tuple[float, ...] = DEFAULT_TOLERANCES,
    threads: int | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One row per public pair: our sparsity at each tolerance next to the paper's number."""
    rows = []
    for p in pairs:
        res = diff_checkpoints(
            open_checkpoint(p["base"]), open_checkpoint(p["tuned"]), tolerances, threads=threads, progress=progress
        )
        s = res.summary()
        rows.append(
            {
                "pair": p["name"],
                "algorithm": p["algorithm"],
                "base": p["base"],
                "tuned": p["tuned"],
                "paper_sparsity": p.get("paper_sparsity"),
                "n_params": s["n_params"],
                **{f"sparsity_{k}": v for k, v in s["sparsity"].items()},
                "below_bf16_half_ulp": s["below_bf16_half_ulp"],
                "n_mismatched": len(s["mismatched"]),
                "n_missing": len(s["missing"]),
            }
        )
    return rows
