"""tables/precision_rounding.csv of a merged lease folder (``merge_leases.py``), from the
evaluations `tools/gpu/finish.sh` made of every fp32 run on the GPU machine (`rlsparsity eval
--task-from`, the run's own 500 test problems; the weights stay there):

- ``diff/eval_raw.json``: the stored fp32 weights (must reproduce the run's own answers);
- ``diff/eval_round_bf16.json``: the same weights rounded to bf16, as fp32-master stores them;
- ``diff/eval_below_half_ulp.json`` / ``eval_above_half_ulp.json``: base + only the updates that
  rounding erases / keeps (since the 7th lease of 2026-12-01).

They become the records the DAG's ``rounding_eval`` jobs write (`rlsparsity.rounding`), and the
table is `rlsparsity.rounding.table_rows`, as the DAG's ``rounding_table`` makes it:

    python benchmarks/smollm2_gpu/rounding_table.py MERGED
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from rlsparsity.analysis.tables import write_csv
from rlsparsity.grid import parse_run_dir
from rlsparsity.rounding import COLUMNS, VARIANTS, partner_bits, table_rows


def lease_records(res: Path) -> list[dict]:
    records = []
    for f in sorted(res.glob("runs/*/*/*/fp32/seed*/diff/eval_raw.json")):
        d = f.parent.parent
        rec = json.loads((d / "run.json").read_text())
        run = parse_run_dir(d)
        ev = {v: json.loads(p.read_text()) for v in VARIANTS if (p := d / "diff" / f"eval_{v}.json").exists()}
        if ev["raw"]["correct"] != rec["correct_trained"]:
            sys.exit(f"rounding_table.py: {run.algorithm} fp32 seed {run.seed}: eval_raw does not reproduce "
                     "run.json's answers (another test split or model?)")
        records.append({"family": run.family, "algorithm": run.algorithm, "data": run.data, "precision": "fp32",
                        "seed": run.seed, "correct_base": rec["correct_base"],
                        "variants": {v: {"accuracy": e["accuracy"], "correct": e["correct"],
                                         "update_counts": e.get("update_counts")} for v, e in ev.items()}})
    return records


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: rounding_table.py MERGED  (a folder written by merge_leases.py)")
    res = Path(sys.argv[1])
    records = lease_records(res)
    if not records:
        sys.exit(f"rounding_table.py: no fp32 run under {res} has finish.sh's diff/eval_raw.json")
    rows = table_rows(records, partner_bits(records, res))
    write_csv(res / "tables" / "precision_rounding.csv", rows, COLUMNS)
    for r in rows:
        if r["seed"] == "all":
            print(f"{r['algorithm']:5s} {r['model']:16s} {100 * r['accuracy']:5.1f} %  vs raw {r['vs_raw_pts']:+6.1f} "
                  f"[{r['vs_raw_lo95']:+.1f}, {r['vs_raw_hi95']:+.1f}]  vs base {r['vs_base_pts']:+6.1f}  "
                  f"differ from fp32-master: {r['answered_differently_from_fp32_master']}/{r['n_problems']}")
