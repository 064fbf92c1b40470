"""Tables of the (partial) H200 run of config/smollm2-gpu.yaml, from what `tools/gpu/finish.sh`
collected (run.json files, diff/summary.json, rank.json, seed-pair overlap, subnetwork rows):

    python benchmarks/smollm2_gpu/partial_summary.py RESULTS_DIR docs/smollm2

Writes runs.csv (one row per finished run: accuracy before/after with a paired bootstrap 95 %
interval over the 500 test problems, sparsity at tol 0 and 1e-5, rank, s/step, peak GPU memory,
device), overlap.csv (seed 1 vs seed 2, with chance) and subnetwork.csv, and copies every
run.json (config, seed, precision, versions, device) under runs/. Weights are not copied.
"""
from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

from rlsparsity.stats import paired_bootstrap


def _write(path: Path, rows: list[dict]) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def main(res: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows, over = [], []
    for rec_path in sorted(res.glob("runs/*/*/*/*/seed*/run.json")):
        d = rec_path.parent
        rec = json.loads(rec_path.read_text())
        iv = paired_bootstrap([(rec["correct_trained"], rec["correct_base"])])
        diff = json.loads((d / "diff" / "summary.json").read_text()) if (d / "diff" / "summary.json").exists() else {}
        rank = json.loads((d / "diff" / "rank.json").read_text()) if (d / "diff" / "rank.json").exists() else {}
        sp = diff.get("sparsity", {})
        rows.append({"algorithm": rec["algorithm"], "data": rec["data"], "precision": rec["precision"],
                     "seed": rec["seed"], "lr": rec["hparams"].get("lr"), "steps": rec["steps"],
                     "acc_base": rec["acc_base"], "acc_trained": rec["acc_trained"], "n_test": rec["n_eval"],
                     "delta_pts": round(100 * iv.estimate, 2), "delta_lo95": round(100 * iv.low, 2),
                     "delta_hi95": round(100 * iv.high, 2),
                     "sparsity_tol0": sp.get("0"), "sparsity_tol1e-5": sp.get("1e-05"),
                     "below_bf16_half_ulp": diff.get("below_bf16_half_ulp"),
                     "rank_fraction_mean": rank.get("mean_rank_fraction_no_embed"),
                     "train_s_per_step": rec.get("train_seconds_per_step"),
                     "peak_gpu_mb": rec.get("peak_gpu_memory_mb"), "device": rec.get("device")})
        dest = out / "runs" / d.relative_to(res / "runs")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(rec_path, dest / "run.json")
        ov = d / "diff" / "overlap_seed2.json"
        if ov.exists():
            o = json.loads(ov.read_text())
            over.append({"algorithm": rec["algorithm"], "precision": rec["precision"], "data": rec["data"],
                         "sparsity_seed1": o["s1"], "sparsity_seed2": o["s2"], "o1": o["o1"], "o2": o["o2"],
                         "o1_chance": o["o1_random"], "o2_chance": o["o2_random"], "jaccard": o["jaccard"]})
    sub = []
    for rows_csv in sorted(res.glob("subnetwork/*/*/*/*/seed*/*/rows.csv")):
        with rows_csv.open() as f:
            sub += list(csv.DictReader(f))
        rj = rows_csv.parent / "run.json"
        dest = out / "subnetwork" / rows_csv.parent.relative_to(res / "subnetwork")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(rj, dest / "run.json")
    _write(out / "runs.csv", rows)
    if over:
        _write(out / "overlap.csv", over)
    if sub:
        _write(out / "subnetwork.csv", sub)
    base = json.loads((res / "base" / "smollm2-135m" / "metrics.json").read_text())
    (out / "base_metrics.json").write_text(json.dumps(base, indent=1) + "\n")
    print(f"{len(rows)} runs, {len(over)} seed pairs, {len(sub)} subnetwork rows -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
