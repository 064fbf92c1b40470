"""How many usable training rows the offline algorithms get from on-policy samples of the
shipped SmolLM2-135M-Instruct, per sampling temperature.

dpo/orpo/simpo train on pairs (a correct and a wrong completion of one prompt), sft on the
correct completions, kto on every completion labelled correct or not. At the DAG's first
setting (temperature 1, k = 4, 512 prompts) only 1.8 % of the samples were correct: 35
pairs for 100 steps of batch 32, and a 1 : 57 kto class ratio. This measures, on TRAINING
prompts of the DAG's own task (no validation or test problem is looked at), the sample
accuracy and the rows each algorithm would get, for a few temperatures:

    python benchmarks/smollm2_gpu/sample_yield.py --config config/smollm2-gpu.yaml \
        --n 64 --k 4 --temperatures 1.0 0.7 0.5 0.3 --out benchmarks/smollm2_gpu/sample_yield.csv

CPU: a few minutes per temperature at --n 64 (--device cuda on the GPU machine). The base
is converted from the GGUF once into --base."""
from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from pathlib import Path


def yields(rewards: list[list[float]]) -> dict[str, float]:
    """Rows per algorithm kind from per-prompt reward lists (1.0 = correct), as
    ``preference._on_policy_rows`` builds them (pairs: min(#correct, #wrong) per prompt)."""
    from rlsparsity.stats import binomial_half_width

    n = sum(len(r) for r in rewards)
    good = [sum(x >= 1.0 for x in r) for r in rewards]
    bad = [len(r) - g for r, g in zip(rewards, good, strict=True)]
    acc = sum(good) / max(1, n)
    return {
        "samples": n,
        "sample_accuracy": round(acc, 4),
        # normal-approximation 95 % half-width over samples; samples of one prompt are correlated,
        # so it is a lower bound on the real uncertainty
        "accuracy_95_half_width": round(binomial_half_width(acc, max(1, n)), 4),
        "prompts_with_pair": sum(g > 0 and b > 0 for g, b in zip(good, bad, strict=True)),
        "pairs": sum(min(g, b) for g, b in zip(good, bad, strict=True)),
        "kto_desirable": sum(good),
        "kto_undesirable": sum(bad),
    }


def main(argv: list[str] | None = None) -> int:
    import torch
    import yaml

    from rlsparsity.families import convert_smollm2
    from rlsparsity.gpu import device_name
    from rlsparsity.modeling import generate, load_model, load_tokenizer, max_new_tokens_for, torch_threads
    from rlsparsity.preference import sample_labelled
    from rlsparsity.tasks import task_from_config

    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="config/smollm2-gpu.yaml")
    ap.add_argument("--base", default="/tmp/smollm2-base")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--n", type=int, default=64, help="training prompts (a seeded sample of task.train)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.7, 0.5, 0.3],
                    help="0 = greedy, one completion per prompt (the evaluation's decoding)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    cfg = yaml.safe_load(Path(a.config).read_text())
    torch_threads()
    base = Path(a.base)
    if not (base / "config.json").exists():
        convert_smollm2(base)
    task = task_from_config(cfg)
    model = load_model(base, a.precision, a.device)
    tok = load_tokenizer(base)
    entries = random.Random(a.seed).sample(task.train, min(a.n, len(task.train)))
    rows = []
    for t in a.temperatures:
        torch.manual_seed(a.seed)
        t0 = time.time()
        if t == 0:  # greedy: the evaluation's decoding, one completion per prompt (the reference point)
            comps = generate(model, tok, [task.prompt(e, tok) for e in entries], max_new_tokens_for(model, task),
                             do_sample=False, batch_size=64)
            rewards = [[r] for r in task.rewards(comps, entries)]
        else:
            rewards = [rs for *_, rs in sample_labelled(model, tok, task, entries, a.k, temperature=t)]
        row = {"temperature": t, "k": a.k if t else 1, "prompts": len(entries), **yields(rewards),
               "precision": a.precision, "seconds": round(time.time() - t0, 1), "device": device_name(a.device),
               "task": task.name, "config": a.config}
        rows.append(row)
        print(row, flush=True)
    if a.out:
        with open(a.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
