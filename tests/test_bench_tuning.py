"""The tiny validation sweep's lr choice and the native/emulated bf16 comparison, on hand-built
rows (benchmarks/hparam_sweep/sweep_precision.py, benchmarks/bf16_native_vs_emulated/run.py)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _module(rel: str) -> Any:
    spec = importlib.util.spec_from_file_location(Path(rel).stem, REPO / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(**kw: Any) -> dict[str, str]:
    r = {"family": "llama", "algorithm": "grpo", "precision": "fp32", "bf16_compute": "", "lr": "0.0001", "seed": "1",
         "val_base": "", "val_trained": "", "val_delta": "", "sparsity": "0.5", "seconds": "2.0",
         "correct_base": "0000000000", "correct_trained": "0000000000", "error": ""}
    r.update({k: str(v) for k, v in kw.items()})
    r["val_base"] = str(r["correct_base"].count("1") / len(r["correct_base"]))
    r["val_trained"] = str(r["correct_trained"].count("1") / len(r["correct_trained"]))
    return r


def test_choose_takes_the_lr_with_the_highest_lower_bound(tmp_path: Path) -> None:
    sweep = _module("benchmarks/hparam_sweep/sweep_precision.py")
    base = "0" * 40
    rows = [  # lr 1e-4: no change; 3e-4: +10 pts on every seed; 1e-3: +20 pts on one seed, -10 on the other
        _row(lr=1e-4, seed=1, correct_base=base, correct_trained=base),
        _row(lr=1e-4, seed=2, correct_base=base, correct_trained=base),
        _row(lr=3e-4, seed=1, correct_base=base, correct_trained="1111" + "0" * 36),
        _row(lr=3e-4, seed=2, correct_base=base, correct_trained="0000" + "1111" + "0" * 32),
        _row(lr=1e-3, seed=1, correct_base="1111" + "0" * 36, correct_trained="1" * 12 + "0" * 28),
        _row(lr=1e-3, seed=2, correct_base="1111" + "0" * 36, correct_trained="0" * 40),
        _row(lr=1e-2, seed=1, error="RuntimeError('nan')"),  # failed runs are left out
    ]
    runs = tmp_path / "runs.csv"
    with runs.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert sweep.main(["choose", str(runs), "--out", str(tmp_path / "chosen.csv")]) == 0
    table = list(csv.DictReader((tmp_path / "chosen.csv").open()))
    assert [(float(t["lr"]), t["chosen"]) for t in table] == [(1e-4, "0"), (3e-4, "1"), (1e-3, "0")]
    by_lr = {float(t["lr"]): t for t in table}
    assert float(by_lr[3e-4]["gain"]) == 0.1 and float(by_lr[3e-4]["gain_lo"]) > 0
    assert float(by_lr[1e-3]["gain"]) == 0.05 and float(by_lr[1e-3]["gain_lo"]) < 0
    assert float(by_lr[1e-4]["gain"]) == 0.0 and by_lr[1e-4]["n_runs"] == "2"


def test_compare_pairs_native_with_emulated_runs() -> None:
    bench = _module("benchmarks/bf16_native_vs_emulated/run.py")
    base = "0" * 20
    rows = []
    for seed, (sn, se) in enumerate([(0.80, 0.70), (0.82, 0.71), (0.78, 0.69)], start=1):
        rows.append({"mode": "native", **_row(algorithm="dpo", precision="bf16", seed=seed, sparsity=sn,
                                              seconds=4.0, correct_base=base, correct_trained="11" + "0" * 18)})
        rows.append({"mode": "emulated", **_row(algorithm="dpo", precision="bf16", seed=seed, sparsity=se,
                                                seconds=2.0, correct_base=base, correct_trained="11" + "0" * 18)})
    rows.append({"mode": "native", **_row(algorithm="dpo", precision="bf16", seed=9, error="x")})
    table = {t["what"]: t for t in bench.compare(rows)}
    assert table["native"]["n_runs"] == 3 and table["native"]["val_gain"] == 0.1
    d = table["native-emulated"]
    assert d["n_runs"] == 3 and d["sparsity"] == 0.1 and d["sparsity_lo"] > 0  # native clearly sparser
    assert d["val_gain"] == 0.0 and d["agree"] is False and d["seconds_mean"] == 2.0
