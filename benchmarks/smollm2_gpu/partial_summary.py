"""Tables of an H200 run of config/smollm2-gpu.yaml from what came back from the GPU machine
(`tools/gpu/finish.sh` / `remote.sh collect`: run.json files, diff/summary.json, rank.json,
seed-pair overlap, subnetwork rows, and whatever tables and figures the DAG finished; or a folder
merged from several leases by merge_leases.py, with lease_tables.py's tables, figures and SUMMARY.md):

    python benchmarks/smollm2_gpu/partial_summary.py RESULTS_DIR docs/smollm2

Writes runs.csv (one row per finished run: accuracy before/after with a paired bootstrap 95 %
interval over the 500 test problems, sparsity at tol 0 and 1e-5, rank, s/step, peak GPU memory,
device), algorithms.csv (per algorithm x data x precision: the change in accuracy with the
two-way bootstrap over seeds and problems, mean sparsity and rank), sparsity_by_precision.csv,
overlap.csv (seed 1 vs seed 2, with chance), subnetwork.csv, entropy_8020.csv (each token-entropy
variant against all tokens and against the base, paired over seeds and problems), and copies
every run.json (config, seed, precision, versions, device) under runs/, entropy/ and subnetwork/,
and the DAG's tables/ (those over 256 KB gzipped) and figures/. Weights are not copied.
"""
from __future__ import annotations

import csv
import gzip
import json
import shutil
import sys
from pathlib import Path

from rlsparsity.analysis.tables import write_csv
from rlsparsity.stats import paired_bootstrap

# Tables above this many bytes are copied gzipped (pandas reads .csv.gz as is): the working tree
# travels to the GPU machine with the model's parts, 64 MiB in all (benchmarks/smollm2_gpu/README.md)
BIG_TABLE = 256 * 1024


def _mean(xs: list) -> float | None:
    xs = [float(x) for x in xs if x is not None]
    return round(sum(xs) / len(xs), 6) if xs else None


def _write_groups(out: Path, rows: list[dict], res: Path) -> None:
    """algorithms.csv and sparsity_by_precision.csv from the per-run rows."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["algorithm"], r["data"], r["precision"]), []).append(r)
    table = []
    for (alg, data, prec), rs in sorted(groups.items()):
        iv = paired_bootstrap([r["_bits"] for r in rs])
        table.append({"algorithm": alg, "data": data, "precision": prec, "seeds": len(rs), "lr": rs[0]["lr"],
                      "acc_base": rs[0]["acc_base"], "acc_trained_mean": _mean([r["acc_trained"] for r in rs]),
                      "delta_pts": round(100 * iv.estimate, 2), "delta_lo95": round(100 * iv.low, 2),
                      "delta_hi95": round(100 * iv.high, 2),
                      "sparsity_tol0_mean": _mean([r["sparsity_tol0"] for r in rs]),
                      "sparsity_tol1e-5_mean": _mean([r["sparsity_tol1e-5"] for r in rs]),
                      "rank_fraction_mean": _mean([r["rank_fraction_mean"] for r in rs]),
                      "train_s_per_step_mean": _mean([r["train_s_per_step"] for r in rs]),
                      "peak_gpu_mb_max": max((r["peak_gpu_mb"] or 0) for r in rs)})
    write_csv(out / "algorithms.csv", table)
    by_prec: dict[str, list[dict]] = {}
    for r in rows:
        if r["data"] == "on_policy" and r["sparsity_tol0"] is not None:
            by_prec.setdefault(r["precision"], []).append(r)
    write_csv(out / "sparsity_by_precision.csv", [
        {"precision": p, "runs": len(rs), "algorithms": " ".join(sorted({r["algorithm"] for r in rs})),
         "sparsity_tol0_mean": _mean([r["sparsity_tol0"] for r in rs]),
         "sparsity_tol0_min": min(float(r["sparsity_tol0"]) for r in rs),
         "sparsity_tol0_max": max(float(r["sparsity_tol0"]) for r in rs),
         "rank_fraction_mean": _mean([r["rank_fraction_mean"] for r in rs])}
        for p, rs in sorted(by_prec.items())])


def _entropy(res: Path, out: Path) -> None:
    """entropy_8020.csv: each variant vs all tokens (rho 1) and vs the base; run.json copies."""
    runs: dict[str, dict[int, dict]] = {}
    for rec_path in sorted(res.glob("entropy/*/*/*/seed*/run.json")):
        rec = json.loads(rec_path.read_text())
        tag = rec_path.parents[2].name
        runs.setdefault(tag, {})[int(rec_path.parent.name.removeprefix("seed"))] = rec
        dest = out / "entropy" / rec_path.parent.relative_to(res / "entropy")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(rec_path, dest / "run.json")
    full = runs.get("rho1-top-kept", {})
    rows = []
    for tag, by_seed in sorted(runs.items()):
        seeds = sorted(by_seed)
        vs_base = paired_bootstrap([(by_seed[s]["correct_trained"], by_seed[s]["correct_base"]) for s in seeds])
        common = [s for s in seeds if s in full]
        vs_all = paired_bootstrap([(by_seed[s]["correct_trained"], full[s]["correct_trained"]) for s in common])
        rows.append({"variant": tag, "seeds": len(seeds),
                     "acc_trained_mean": _mean([by_seed[s]["acc_trained"] for s in seeds]),
                     "delta_vs_base_pts": round(100 * vs_base.estimate, 2),
                     "delta_vs_base_lo95": round(100 * vs_base.low, 2),
                     "delta_vs_base_hi95": round(100 * vs_base.high, 2),
                     "delta_vs_all_tokens_pts": round(100 * vs_all.estimate, 2),
                     "delta_vs_all_tokens_lo95": round(100 * vs_all.low, 2),
                     "delta_vs_all_tokens_hi95": round(100 * vs_all.high, 2)})
    if rows:
        write_csv(out / "entropy_8020.csv", rows)


def main(res: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows, over = [], []
    lease_of = {}  # run folder -> lease, when RESULTS_DIR was written by merge_leases.py
    if (res / "leases.csv").exists():
        with (res / "leases.csv").open() as f:
            lease_of = {r["run"]: r["lease"] for r in csv.DictReader(f)}
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
                     "peak_gpu_mb": rec.get("peak_gpu_memory_mb"), "device": rec.get("device"),
                     **({"lease": lease_of.get(str(d.relative_to(res)))} if lease_of else {}),
                     "_bits": (rec["correct_trained"], rec["correct_base"])})
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
    write_csv(out / "runs.csv", [{k: v for k, v in r.items() if k != "_bits"} for r in rows])
    if over:
        write_csv(out / "overlap.csv", over)
    if sub:
        write_csv(out / "subnetwork.csv", sub)
    _write_groups(out, rows, res)
    _entropy(res, out)
    for sub_dir in ("tables", "figures"):  # what the DAG (or lease_tables.py) finished
        for f in sorted((res / sub_dir).glob("*")):
            (out / sub_dir).mkdir(parents=True, exist_ok=True)
            if f.suffix == ".csv" and f.stat().st_size > BIG_TABLE:  # layers.csv (3.5 MB), rank.csv
                with f.open("rb") as src, gzip.GzipFile(out / sub_dir / f"{f.name}.gz", "wb", 9, mtime=0) as dst:
                    shutil.copyfileobj(src, dst)
            else:
                shutil.copyfile(f, out / sub_dir / f.name)
    for f in ("SUMMARY.md", "leases.csv", "repeats.csv"):  # lease_tables.py's summary, merge_leases.py's files
        if (res / f).exists():
            shutil.copyfile(res / f, out / f)
    base = json.loads((res / "base" / "smollm2-135m" / "metrics.json").read_text())
    (out / "base_metrics.json").write_text(json.dumps(base, indent=1) + "\n")
    print(f"{len(rows)} runs, {len(over)} seed pairs, {len(sub)} subnetwork rows -> {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: partial_summary.py RESULTS_DIR OUT_DIR")
    res_dir = Path(sys.argv[1])
    if not (res_dir / "base" / "smollm2-135m" / "metrics.json").is_file():
        sys.exit(f"partial_summary.py: {res_dir} is not a results folder of config/smollm2-gpu.yaml "
                 "(no base/smollm2-135m/metrics.json)")
    main(res_dir, Path(sys.argv[2]))
