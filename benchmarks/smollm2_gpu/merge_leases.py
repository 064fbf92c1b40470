"""One results folder from several GPU leases of config/smollm2-gpu.yaml, each of which finished
part of the grid (a lease holds one machine for 30 min; the whole DAG needs more on one H200):

    python benchmarks/smollm2_gpu/merge_leases.py MERGED LEASE_A LEASE_B ...

Each LEASE is what `tools/gpu/finish.sh` brought back (``results/smollm2-gpu`` unpacked: every
finished run's run.json and its diff folder, made on that machine from the weights, which do not
come back), or an earlier MERGED folder (its runs keep their leases' names, its repeats.csv rows
are kept; `docs/smollm2/h200-2026-12-01/lease_outputs.tgz` is one). Leases are given oldest
first; a run finished in several leases is taken from the LAST one, because a seed pair's
overlap needs both seeds' masks on one machine and the later lease reran the partner for that
reason. The earlier copies are kept as evidence of run-to-run reproducibility on the GPU:
``repeats.csv`` compares the two executions of the same config and
seed (accuracy, paired over the test problems, and the share of entries unchanged).

MERGED gets runs/, entropy/, subnetwork/ (run.json + diff/summary.json, tensors.csv, rank.json,
dynamics.csv and the fp32 runs' eval_*.json where finish.sh made them,
overlap_seed2.json only where both seeds come from one lease, subnetwork rows),
base/<family>/metrics.json, tables/subnetwork.csv, entropy.csv and entropy_stats.csv
when a lease made them, ``leases.csv`` (which lease each run came from) and ``repeats.csv``. Then
``lease_tables.py`` writes the DAG's tables, figures and SUMMARY.md from it and
``partial_summary.py`` the per-run and per-algorithm CSVs.
"""
from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

from rlsparsity.analysis.tables import write_csv
from rlsparsity.stats import paired_bootstrap

# finish.sh's evaluations of fp32 runs: stored, rounded to bf16, base + only the erased / kept updates
EVAL_VARIANTS = ("raw", "round_bf16", "below_half_ulp", "above_half_ulp")
KEEP = ("run.json", "rows.csv", "diff/summary.json", "diff/tensors.csv", "diff/rank.json",
        "diff/dynamics.csv", "diff/overlap_seed2.json", *(f"diff/eval_{v}.json" for v in EVAL_VARIANTS))


def _run_dirs(lease: Path) -> dict[str, Path]:
    """Relative run folder (runs/…/seedN, entropy/…, subnetwork/…/kind) -> its folder in the lease."""
    out = {}
    for stage in ("runs", "entropy", "subnetwork"):
        for rec in sorted((lease / stage).glob("**/run.json")):
            out[str(rec.parent.relative_to(lease))] = rec.parent
    return out


def _sparsity(d: Path) -> float | None:
    s = d / "diff" / "summary.json"
    return json.loads(s.read_text())["sparsity"]["0"] if s.exists() else None


def _repeat_row(rel: str, old: Path, new: Path, old_name: str, new_name: str) -> dict:
    a, b = (json.loads((d / "run.json").read_text()) for d in (old, new))
    iv = paired_bootstrap([(b["correct_trained"], a["correct_trained"])])
    differ = sum(x != y for x, y in zip(a["correct_trained"], b["correct_trained"], strict=True))
    return {"run": rel, "lease_kept": new_name, "lease_repeat": old_name,
            "acc_kept": b["acc_trained"], "acc_repeat": a["acc_trained"],
            "acc_diff_pts": round(100 * iv.estimate, 2), "acc_diff_lo95": round(100 * iv.low, 2),
            "acc_diff_hi95": round(100 * iv.high, 2), "problems_answered_differently": differ,
            "base_identical": a["correct_base"] == b["correct_base"],
            "unchanged_kept": _sparsity(new), "unchanged_repeat": _sparsity(old),
            "s_per_step_kept": b.get("train_seconds_per_step"),
            "s_per_step_repeat": a.get("train_seconds_per_step")}


def merge(out: Path, leases: list[Path]) -> tuple[int, int]:
    """Copy the union of the leases' runs into ``out`` (latest lease wins); returns (runs, repeats)."""
    chosen: dict[str, tuple[str, Path]] = {}
    earlier: dict[str, list[tuple[str, Path]]] = {}
    bases = []
    old_reps: list[dict] = []
    for lease in leases:
        name = lease.parent.parent.name if lease.name == "smollm2-gpu" else lease.name
        named = {}  # an earlier merge given as a lease: its runs keep their own leases' names
        if (lease / "leases.csv").exists():
            with (lease / "leases.csv").open() as f:
                named = {r["run"]: r["lease"] for r in csv.DictReader(f)}
        if (lease / "repeats.csv").exists():
            with (lease / "repeats.csv").open() as f:
                old_reps += list(csv.DictReader(f))
        for rel, d in _run_dirs(lease).items():
            if rel in chosen:
                earlier.setdefault(rel, []).append(chosen[rel])
            chosen[rel] = (named.get(rel, name), d)
        bases.append((name, lease / "base" / "smollm2-135m" / "metrics.json"))
    accs = {name: json.loads(p.read_text())["accuracy"] for name, p in bases}
    if len(set(accs.values())) != 1:  # checked before anything is written
        sys.exit(f"merge_leases.py: the leases' bases differ in test accuracy ({accs}): not one experiment")
    for rel, (name, d) in sorted(chosen.items()):
        for f in KEEP:
            if f == "diff/overlap_seed2.json" and chosen.get(rel[: -len("seed1")] + "seed2", ("",))[0] != name:
                continue  # measured against another lease's seed 2, not the one merged
            if (d / f).exists():
                (out / rel / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(d / f, out / rel / f)
    (out / "base" / "smollm2-135m").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bases[-1][1], out / "base" / "smollm2-135m" / "metrics.json")
    for lease in leases:  # tables made on one machine from all their runs: from the (last) lease that made them
        for name in ("subnetwork.csv", "entropy.csv", "entropy_stats.csv"):
            if (lease / "tables" / name).exists():
                (out / "tables").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(lease / "tables" / name, out / "tables" / name)
    write_csv(out / "leases.csv", [{"run": rel, "lease": name} for rel, (name, _) in sorted(chosen.items())])
    reps = old_reps + [_repeat_row(rel, d_old, chosen[rel][1], n_old, chosen[rel][0])
                       for rel, olds in sorted(earlier.items()) for n_old, d_old in olds]
    if reps:
        write_csv(out / "repeats.csv", reps)
    return len(chosen), len(reps)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: merge_leases.py MERGED LEASE_RESULTS [LEASE_RESULTS ...]  (oldest lease first)")
    dirs = [Path(p) for p in sys.argv[2:]]
    for p in dirs:
        if not (p / "base" / "smollm2-135m" / "metrics.json").is_file():
            sys.exit(f"merge_leases.py: {p} is not a results folder of config/smollm2-gpu.yaml "
                     "(no base/smollm2-135m/metrics.json)")
    dest = Path(sys.argv[1])
    if dest.exists():
        sys.exit(f"merge_leases.py: {dest} exists; give a new folder")
    n, r = merge(dest, dirs)
    print(f"{n} runs from {len(dirs)} leases ({r} repeated) -> {dest}")
