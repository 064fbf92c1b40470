"""rlsparsity.rounding.table_rows through benchmarks/smollm2_gpu/rounding_table.py (and
merge_leases.py keeping finish.sh's eval_*.json) on a hand-built lease: per-problem outcome strings
of known accuracy, so every accuracy, paired difference and count in tables/precision_rounding.csv
is known exactly."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "smollm2_gpu"
BASE = "1111100000"  # 10 test problems, base accuracy 0.5
# (algorithm, seed) -> model -> outcome bits; the fp32-master run is trained separately
BITS = {
    ("dpo", 1): {"raw": "1100000000", "round_bf16": "1111111000", "below_half_ulp": "1111110000",
                 "above_half_ulp": "1111111100", "fp32_master_run": "1111111000"},
    ("dpo", 2): {"raw": "1000000000", "round_bf16": "1111100001", "below_half_ulp": "0111100001",
                 "above_half_ulp": "1111100011", "fp32_master_run": "1111100011"},
    ("grpo", 1): {"raw": "1111110000", "round_bf16": "1111111000", "fp32_master_run": "0111111000"},
}
COUNTS = {1: {"n_entries": 100, "n_changed": 90, "n_below": 70, "n_above": 20},
          2: {"n_entries": 100, "n_changed": 95, "n_below": 72, "n_above": 23}}


def _module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _acc(bits: str) -> float:
    return bits.count("1") / len(bits)


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _lease(root: Path) -> Path:
    res = root / "results" / "smollm2-gpu"
    _write(res / "base" / "smollm2-135m" / "metrics.json", {"accuracy": 0.5})
    for (alg, seed), bits in BITS.items():
        d = res / "runs" / "smollm2-135m" / alg / "on_policy"
        _write(d / "fp32" / f"seed{seed}" / "run.json",
               {"acc_trained": _acc(bits["raw"]), "correct_trained": bits["raw"], "correct_base": BASE})
        _write(d / "fp32-master" / f"seed{seed}" / "run.json",
               {"acc_trained": _acc(bits["fp32_master_run"]), "correct_trained": bits["fp32_master_run"],
                "correct_base": BASE})
        for v in ("raw", "round_bf16", "below_half_ulp", "above_half_ulp"):
            if v in bits:
                part = v if v.endswith("ulp") else None
                _write(d / "fp32" / f"seed{seed}" / "diff" / f"eval_{v}.json",
                       {"accuracy": _acc(bits[v]), "correct": bits[v], "update_part": part,
                        "update_counts": COUNTS[seed] if part and alg == "dpo" else None})
    return res


def test_rounding_table_exact_values_after_a_merge(tmp_path: Path) -> None:
    merged = tmp_path / "merged"
    _module("merge_leases").merge(merged, [_lease(tmp_path / "lease-x")])
    assert (merged / "runs/smollm2-135m/dpo/on_policy/fp32/seed2/diff/eval_above_half_ulp.json").exists()
    mod = _module("rounding_table")
    records = mod.lease_records(merged)
    table = mod.table_rows(records, mod.partner_bits(records, merged))
    rows = {(r["algorithm"], r["seed"], r["model"]): r for r in table}
    assert {(r["family"], r["data"]) for r in rows.values()} == {("smollm2-135m", "on_policy")}
    # dpo: 6 models x (seed 1, seed 2, all); grpo: raw, round_bf16, fp32_master_run, base x (seed 1, all)
    assert len(rows) == 6 * 3 + 4 * 2
    assert ("grpo", 1, "below_half_ulp") not in rows
    r = rows["dpo", "all", "round_bf16"]
    assert r["accuracy"] == pytest.approx((0.7 + 0.6) / 2)
    assert r["vs_raw_pts"] == pytest.approx(100 * ((0.7 - 0.2) + (0.6 - 0.1)) / 2)
    assert r["vs_base_pts"] == pytest.approx(100 * ((0.7 - 0.5) + (0.6 - 0.5)) / 2)
    assert r["vs_raw_lo95"] <= r["vs_raw_pts"] <= r["vs_raw_hi95"]
    assert r["answered_differently_from_fp32_master"] == 0 + 1 and r["n_problems"] == 20
    assert rows["dpo", 1, "below_half_ulp"]["entries_below_half_ulp"] == 70
    assert rows["dpo", 2, "above_half_ulp"]["entries_above_half_ulp"] == 23
    assert rows["dpo", "all", "raw"]["entries_changed"] is None  # counts are per run
    assert rows["dpo", 1, "raw"]["vs_raw_pts"] == 0.0
    assert rows["dpo", 2, "fp32_master_run"]["vs_raw_pts"] == pytest.approx(60.0)
    assert rows["grpo", 1, "fp32_master_run"]["answered_differently_from_fp32_master"] == 0
    assert rows["grpo", 1, "round_bf16"]["answered_differently_from_fp32_master"] == 1
    assert rows["grpo", 1, "base"]["vs_raw_pts"] == pytest.approx(-10.0)


def test_rounding_table_refuses_an_eval_that_does_not_reproduce_the_run(tmp_path: Path) -> None:
    res = _lease(tmp_path / "lease-y")
    f = res / "runs/smollm2-135m/dpo/on_policy/fp32/seed1/diff/eval_raw.json"
    f.write_text(json.dumps({"accuracy": 0.3, "correct": "1110000000"}))
    r = subprocess.run([sys.executable, str(BENCH / "rounding_table.py"), str(res)], capture_output=True, text=True)
    assert r.returncode != 0 and "dpo fp32 seed 1: eval_raw does not reproduce" in r.stderr
    assert r.stderr.count("\n") == 1 and not (res / "tables" / "precision_rounding.csv").exists()
    ok = subprocess.run([sys.executable, str(BENCH / "rounding_table.py"), str(_lease(tmp_path / "lease-z"))],
                        capture_output=True, text=True, check=True)
    table = list(csv.DictReader((tmp_path / "lease-z/results/smollm2-gpu/tables/precision_rounding.csv").open()))
    assert len(table) == 26 and "dpo   round_bf16" in ok.stdout
