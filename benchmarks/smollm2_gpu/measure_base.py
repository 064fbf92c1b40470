"""Base-model check for the GPU config's task: greedy accuracy and completion length of the
shipped SmolLM2-135M-Instruct on VALIDATION problems, per (task, prompt style).

    python benchmarks/smollm2_gpu/measure_base.py --n 100 --max-new-tokens 160 \
        --cases arith2d:cot 'arith2d:cot:operators=["+"]' --out benchmarks/smollm2_gpu/base_check.csv

The base is converted from the GGUF once into --base (default /tmp/smollm2-base). Runs on
CPU in a few minutes (--device cuda on the GPU machine)."""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from rlsparsity.families import convert_smollm2
    from rlsparsity.gpu import device_name
    from rlsparsity.modeling import generate, load_model, load_tokenizer, torch_threads
    from rlsparsity.tasks import get_task

    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="/tmp/smollm2-base")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--cases", nargs="+", default=["arith2d:cot"], help="TASK:PROMPT_STYLE[:key=JSON;key=JSON...]")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--out", default=None)
    ap.add_argument("--config", default=None, help="take n_train/n_test/seed from this config's task block, so the "
                    "validation problems are the DAG's own")
    a = ap.parse_args(argv)
    split = {"n_train": 10, "n_test": a.n, "seed": 1234}
    if a.config:
        import yaml

        t = yaml.safe_load(Path(a.config).read_text())["task"]
        split = {k: t.get(k, v) for k, v in split.items()}
    torch_threads()
    base = Path(a.base)
    if not (base / "config.json").exists():
        convert_smollm2(base)
    model = load_model(base, "fp32", a.device)
    tok = load_tokenizer(base)
    rows = []
    for case in a.cases:
        name, style, *kw = case.split(":")
        kwargs = dict(x.split("=", 1) for x in kw[0].split(";")) if kw else {}
        kwargs = {k: json.loads(v) for k, v in kwargs.items()}  # values are JSON: 3, ["+"]
        try:
            task = get_task(name, **split, kwargs=kwargs, prompt=style, max_new_tokens=a.max_new_tokens)
            items = task.val[: a.n]
        except ValueError as e:  # e.g. too few distinct problems for the splits: a row that says so
            print(f"{case}: {e}", flush=True)
            continue
        prompts = [task.prompt(e, tok) for e in items]
        t0 = time.time()
        comps = generate(model, tok, prompts, a.max_new_tokens, do_sample=False, batch_size=a.batch_size)
        dt = time.time() - t0
        acc = sum(task.rewards(comps, items)) / len(items)
        lens = [len(tok(c, add_special_tokens=False)["input_ids"]) for c in comps]
        trunc = sum(n >= a.max_new_tokens for n in lens) / len(lens)
        row = {"task": name, "prompt": style, "kwargs": kwargs, "n_val": len(items), "greedy_accuracy": acc,
               "median_completion_tokens": statistics.median(lens), "frac_truncated": trunc,
               "max_new_tokens": a.max_new_tokens, "seconds": round(dt, 1), "device": device_name(a.device),
               "example": comps[0][:300].replace("\n", " | ")}
        rows.append(row)
        print(row, flush=True)
    if a.out:
        new = not Path(a.out).exists()
        with open(a.out, "a", newline="") as f:  # appends: one file collects every measured case
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
