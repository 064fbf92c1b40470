"""How much of fp32 vs fp32-master is bf16 storage rounding: the evaluations `tools/gpu/finish.sh`
makes of every fp32 run (`rlsparsity eval --task-from`, the run's own 500 test problems):

- ``raw``: the stored fp32 weights (reproduces the run's own acc_trained);
- ``round_bf16``: the same weights rounded to bf16, as fp32-master stores its master weights;
- ``below_half_ulp`` / ``above_half_ulp``: base + only the updates that rounding erases / keeps,
  exact fp32 values (`rlsparsity.update_parts`);

next to the fp32-master run of the same algorithm and seed (same lr, data and seed: the same
training up to the storage dtype) and the base. Writes MERGED/tables/precision_rounding.csv, one
row per (algorithm, seed or "all", model) with the accuracy, paired differences against the raw
fp32 model and the base (95 % two-way bootstrap over seeds and problems, `rlsparsity.stats`), and
the number of test problems answered differently from the fp32-master run:

    python benchmarks/smollm2_gpu/rounding_table.py MERGED
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from rlsparsity.analysis.tables import write_csv
from rlsparsity.stats import decode_bits, paired_bootstrap

VARIANTS = ("raw", "round_bf16", "below_half_ulp", "above_half_ulp")
MODELS = (*VARIANTS, "fp32_master_run", "base")


def _bits(res: Path, alg: str, seed: int) -> tuple[dict[str, str], dict]:
    """model -> per-problem outcome bits of one fp32 run's evaluations; and the update counts."""
    d = res / "runs" / "smollm2-135m" / alg / "on_policy"
    rec = json.loads((d / "fp32" / f"seed{seed}" / "run.json").read_text())
    fm = json.loads((d / "fp32-master" / f"seed{seed}" / "run.json").read_text())
    ev = {v: json.loads(f.read_text()) for v in VARIANTS  # raw and round_bf16 always; the parts since 2026-12-01c
          if (f := d / "fp32" / f"seed{seed}" / "diff" / f"eval_{v}.json").exists()}
    if "raw" not in ev:
        sys.exit(f"rounding_table.py: {alg} fp32 seed {seed}: eval_round_bf16.json without eval_raw.json")
    if ev["raw"]["correct"] != rec["correct_trained"]:
        sys.exit(f"rounding_table.py: {alg} fp32 seed {seed}: eval_raw does not reproduce run.json's accuracy "
                 "(another test split or model?)")
    bits = {v: e["correct"] for v, e in ev.items()}
    bits.update(fp32_master_run=fm["correct_trained"], base=rec["correct_base"])
    return bits, (ev.get("below_half_ulp") or {}).get("update_counts") or {}


def _pts(iv) -> tuple[float, float, float]:
    return round(100 * iv.estimate, 2), round(100 * iv.low, 2), round(100 * iv.high, 2)


def rounding_rows(res: Path) -> list[dict]:
    rows = []
    found = sorted(res.glob("runs/smollm2-135m/*/on_policy/fp32/seed*/diff/eval_round_bf16.json"))
    by_alg: dict[str, list[int]] = {}
    for f in found:
        by_alg.setdefault(f.parents[4].name, []).append(int(f.parents[1].name.removeprefix("seed")))
    for alg, seeds in sorted(by_alg.items()):
        per_seed = {s: _bits(res, alg, s) for s in sorted(seeds)}
        for unit in [*sorted(seeds), "all"]:
            units = sorted(seeds) if unit == "all" else [unit]
            b = [per_seed[s][0] for s in units]
            for m in (m for m in MODELS if all(m in x for x in b)):
                vs_raw, vs_base = (paired_bootstrap([(x[m], x[ref]) for x in b]) for ref in ("raw", "base"))
                counts = per_seed[units[0]][1] if len(units) == 1 else {}
                rows.append({
                    "algorithm": alg, "seed": unit, "model": m,
                    "accuracy": round(sum(decode_bits(x[m]).mean() for x in b) / len(b), 4),
                    **dict(zip(("vs_raw_pts", "vs_raw_lo95", "vs_raw_hi95"), _pts(vs_raw), strict=True)),
                    **dict(zip(("vs_base_pts", "vs_base_lo95", "vs_base_hi95"), _pts(vs_base), strict=True)),
                    "answered_differently_from_fp32_master": sum(
                        sum(p != q for p, q in zip(x[m], x["fp32_master_run"], strict=True)) for x in b),
                    "n_problems": sum(len(x[m]) for x in b),
                    "entries_changed": counts.get("n_changed"), "entries_below_half_ulp": counts.get("n_below"),
                    "entries_above_half_ulp": counts.get("n_above")})
    return rows


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: rounding_table.py MERGED  (a folder written by merge_leases.py)")
    res = Path(sys.argv[1])
    rows = rounding_rows(res)
    if not rows:
        sys.exit(f"rounding_table.py: no fp32 run under {res} has finish.sh's eval_round_bf16.json")
    write_csv(res / "tables" / "precision_rounding.csv", rows)
    for r in rows:
        if r["seed"] == "all":
            print(f"{r['algorithm']:5s} {r['model']:16s} {100 * r['accuracy']:5.1f} %  vs raw {r['vs_raw_pts']:+6.1f} "
                  f"[{r['vs_raw_lo95']:+.1f}, {r['vs_raw_hi95']:+.1f}]  vs base {r['vs_base_pts']:+6.1f}  "
                  f"differ from fp32-master: {r['answered_differently_from_fp32_master']}/{r['n_problems']}")
