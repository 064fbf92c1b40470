"""Choose the GPU config's task from base-model measurements on VALIDATION problems only.

Input: the CSV of ``measure_base.py`` (one row per task/prompt case). Rule (issue 12: the base's
greedy accuracy must lie in 15-60 % and its completions must reason, median >= 20 tokens): among
the cases with validation accuracy in [0.15, 0.60], median completion >= 20 tokens and at most
10 % of completions cut at the token budget, the MOST ACCURATE one (ties: the one listed first).
If none qualifies: exit 1 and say why (no silent fallback). Writes a configfile overlay with the
chosen ``task`` block (the config's own block with name/prompt/kwargs replaced), and prints the
decision.

History, because every change came after a measurement: the first rule took the first case in
the order listed inside [0.20, 0.50] (a margin inside 15-60 %), with at most 5 % cut; the 1st H200
check relaxed the cut to 10 % (the one-shot prompt had 20.5 % accuracy with 6.5 % cut; a cut
completion scores 0, so accuracy already pays for it). On the shuffled splits of 2026-11-30 no
case reached 20 % on the 500 validation problems (H200: 8.8, 15.6 and 17.2 % for chain_sum with
cot, cot_shot and cot_shot2; <= 10.4 % for arith2d): SmolLM2-135M is that weak at two-digit
arithmetic. The band is now the issue's own, and the most accurate case is taken, since the
test accuracy (other problems) must land in the band too and all candidates sit near its floor.

    python benchmarks/smollm2_gpu/choose_task.py base_check_gpu.csv --config config/smollm2-gpu.yaml \
        --out results/smollm2-gpu/chosen_task.yaml
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import sys
from pathlib import Path
from typing import Any

LOW, HIGH, MIN_MEDIAN, MAX_TRUNC = 0.15, 0.60, 20.0, 0.10


def qualifies(row: dict[str, str]) -> tuple[bool, str]:
    acc, med, trunc = (
        float(row["greedy_accuracy"]),
        float(row["median_completion_tokens"]),
        float(row["frac_truncated"]),
    )
    why = []
    if not LOW <= acc <= HIGH:
        why.append(f"accuracy {acc:.3f} outside [{LOW}, {HIGH}]")
    if med < MIN_MEDIAN:
        why.append(f"median completion {med:g} < {MIN_MEDIAN:g} tokens")
    if trunc > MAX_TRUNC:
        why.append(f"{trunc:.1%} truncated > {MAX_TRUNC:.0%}")
    return not why, "; ".join(why) or "qualifies"


def choose(rows: list[dict[str, str]], task_block: dict[str, Any]) -> dict[str, Any] | None:
    best = None
    for row in rows:
        ok, why = qualifies(row)
        print(
            f"{row['task']}:{row['prompt']} {row['kwargs']} n={row['n_val']} acc={float(row['greedy_accuracy']):.3f} "
            f"median={row['median_completion_tokens']} -> {why}"
        )
        if ok and (best is None or float(row["greedy_accuracy"]) > float(best["greedy_accuracy"])):
            best = row
    if best is None:
        return None
    kwargs = ast.literal_eval(best["kwargs"]) if best["kwargs"] else {}  # measure_base writes a dict repr
    block = {k: v for k, v in task_block.items() if k not in ("kwargs",)}
    block.update(name=best["task"], prompt=best["prompt"])
    if kwargs:
        block["kwargs"] = kwargs
    return {
        "task": block,
        "_evidence": {
            "val_accuracy": float(best["greedy_accuracy"]),
            "n_val": int(best["n_val"]),
            "median_completion_tokens": float(best["median_completion_tokens"]),
        },
    }


def main(argv: list[str] | None = None) -> int:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", type=Path)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    rows = list(csv.DictReader(a.csv.open()))
    if not rows:
        print(f"choose_task: no measured case in {a.csv}", file=sys.stderr)
        return 1
    got = choose(rows, yaml.safe_load(a.config.read_text())["task"])
    if got is None:
        print("choose_task: no case qualifies; add cases or change the rule (nothing written)", file=sys.stderr)
        return 1
    evidence = got.pop("_evidence")
    text = (
        f"# chosen by benchmarks/smollm2_gpu/choose_task.py from {a.csv.name} (validation problems only): "
        f"{json.dumps(evidence)}\n" + yaml.safe_dump(got, sort_keys=False)
    )
    tmp = a.out.with_suffix(".tmp")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(text)
    tmp.replace(a.out)
    tmp_json = a.out.with_suffix(".json.tmp")  # the sweep reads this one (remote.sh sweep --set task=...)
    tmp_json.write_text(json.dumps(got["task"]))
    tmp_json.replace(a.out.with_suffix(".json"))
    print(f"chosen: {got['task']} -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
