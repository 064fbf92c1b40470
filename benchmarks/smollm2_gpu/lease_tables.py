"""The DAG's tables, figures and SUMMARY.md from a merged lease folder (``merge_leases.py``):

    python benchmarks/smollm2_gpu/lease_tables.py MERGED

The DAG's `analyze` job diffs every run of a family in one process, so it needs all the weights
on one machine. When a config's runs were trained over several leases, each lease's machine
diffed its own runs (`tools/gpu/finish.sh`: `rlsparsity diff` and `rlsparsity rank`, the same
functions with the same defaults as `analyze-family`) and only those small outputs came back.
This script turns them into the rows `analyze-family` would have written, with the package's own
row builders, into MERGED/tables/:

- sparsity.csv, layers.csv, rank.csv: every run, exactly as the DAG (same functions, same columns);
- overlap.csv: only the seed axis and the exact mask (finish.sh overlaps seed pairs; the DAG
  also overlaps pairs across algorithm, precision and data, and the top-1 % masks: missing);
- accuracy.csv and accuracy_by_algorithm.csv: every run (``rlsparsity.train.accuracy_by_algorithm``);
- dynamics.csv: the runs whose lease ran `rlsparsity dynamics` on the machine, which needs the
  checkpoints (they stay there): diff/dynamics.csv rows. finish.sh runs it; the first two leases of
  2026-12-01 predate that, so their runs have none;
- subnetwork.csv comes from the lease that ran the reruns.

Then `rlsparsity figures` for every figure whose tables are there and `rlsparsity summary`,
as the DAG's `figure` and `summary` rules run them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from rlsparsity.analysis.diff import DEFAULT_TOLERANCES
from rlsparsity.analysis.tables import COLUMNS, layer_rows, overlap_row, rank_rows, read_csv, sparsity_rows, write_csv
from rlsparsity.figures import SUMMARY_TABLES, families, figures_for
from rlsparsity.grid import Run, parse_run_dir
from rlsparsity.train import accuracy_by_algorithm, accuracy_row


def grid_tables(res: Path) -> dict[str, int]:
    """sparsity, layers, rank, overlap (seed axis), accuracy tables of the main grid's runs."""
    tables: dict[str, list[dict]] = {t: [] for t in ("sparsity", "layers", "rank", "overlap", "dynamics")}
    acc = []
    runs: dict[Run, Path] = {}
    for rec_path in sorted(res.glob("runs/*/*/*/*/seed*/run.json")):
        runs[parse_run_dir(rec_path.parent)] = rec_path.parent
    for run in sorted(runs):
        d = runs[run]
        rec = json.loads((d / "run.json").read_text())
        acc.append(accuracy_row(run, rec))
        if not (d / "diff" / "summary.json").exists():
            continue
        tables["sparsity"] += sparsity_rows(run, json.loads((d / "diff" / "summary.json").read_text()))
        tables["layers"] += layer_rows(run, read_csv(d / "diff" / "tensors.csv"), DEFAULT_TOLERANCES)
        tables["rank"] += rank_rows(run, json.loads((d / "diff" / "rank.json").read_text())["matrices"])
        if (d / "diff" / "dynamics.csv").exists():  # finish.sh ran `rlsparsity dynamics` on the machine
            tables["dynamics"] += [{**run.as_dict(), **r} for r in read_csv(d / "diff" / "dynamics.csv")]
        ov = d / "diff" / "overlap_seed2.json"
        if run.seed == 1 and ov.exists():
            b = Run(run.family, run.algorithm, run.data, run.precision, 2)
            tables["overlap"].append(overlap_row("seed", "exact", run, b, json.loads(ov.read_text())))
    out = res / "tables"
    for name, rows in tables.items():
        if name != "dynamics" or rows:  # no dynamics.csv at all rather than an empty one
            write_csv(out / f"{name}.csv", rows, COLUMNS[name])
    df = pd.DataFrame(acc)
    df.to_csv(out / "accuracy.csv", index=False)
    accuracy_by_algorithm(df).to_csv(out / "accuracy_by_algorithm.csv", index=False)
    return {**{k: len(v) for k, v in tables.items()}, "accuracy": len(acc)}


def figures_and_summary(res: Path, dpi: int = 150) -> list[str]:
    """Every figure whose tables exist, then SUMMARY.md (the DAG's figure/summary commands)."""
    have = {p.stem for p in (res / "tables").glob("*.csv")}
    env = {**os.environ, "MPLBACKEND": "Agg"}
    made = []
    for fam in families():
        for fig in figures_for(fam, have):
            subprocess.run(["rlsparsity", "figures", fam, *[str(res / "tables" / f"{t}.csv") for t in fig.tables],
                            "--out-dir", str(res / "figures"), "--only", fig.name, "--dpi", str(dpi)],
                           check=True, env=env)
            made.append(fig.name)
    subprocess.run(["rlsparsity", "summary", *[str(res / "tables" / f"{t}.csv") for t in SUMMARY_TABLES if t in have],
                    "--out", str(res / "SUMMARY.md"), "--figures-dir", "figures"], check=True, env=env)
    return made


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: lease_tables.py MERGED  (a folder written by merge_leases.py)")
    merged = Path(sys.argv[1])
    if not (merged / "leases.csv").is_file():
        sys.exit(f"lease_tables.py: {merged} is not a folder written by merge_leases.py (no leases.csv)")
    counts = grid_tables(merged)
    figs = figures_and_summary(merged)
    print(f"tables {counts}; {len(figs)} figures; SUMMARY.md -> {merged}")
