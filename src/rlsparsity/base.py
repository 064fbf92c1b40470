"""Base models: tiny families trained from scratch by supervised learning; SmolLM2 as shipped.

A tiny base is trained on ``prompt -> "Answer: <x>"`` (loss on the completion and EOS
only) until its greedy accuracy on the validation split reaches ``target_accuracy`` —
a real policy distribution with headroom, so that RL later starts near its own
distribution, as in the paper. The checkpoint is stored in bf16 (like released
models); the recorded accuracy is that of the stored bf16 weights on the test split.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

from rlsparsity import families as F
from rlsparsity.evaluate import evaluate
from rlsparsity.modeling import load_model, load_tokenizer, n_params, save_model, torch_threads, versions, write_json
from rlsparsity.tasks import Task


def tokenize_sft(tokenizer: Any, task: Task, entries: list[dict[str, Any]],
                 completions: list[str] | None = None) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids + EOS) per entry; completions default to the reference."""
    prompts = [task.prompt(e, tokenizer) for e in entries]
    comps = completions if completions is not None else [task.solution(e) for e in entries]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(comps, add_special_tokens=False)["input_ids"]
    return [(p, c + [tokenizer.eos_token_id]) for p, c in zip(p_ids, c_ids, strict=False)]


def sft_batch(pairs: list[tuple[list[int], list[int]]], pad_id: int, device: Any = "cpu") -> dict[str, Any]:
    """Right-padded batch of prompt+completion with labels only on the completion."""
    import torch

    ids = [p + c for p, c in pairs]
    labels = [[-100] * len(p) + c for p, c in pairs]
    width = max(len(x) for x in ids)
    pad = pad_id
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    lab = torch.full((len(ids), width), -100, dtype=torch.long)
    att = torch.zeros((len(ids), width), dtype=torch.long)
    for i, (x, y) in enumerate(zip(ids, labels, strict=False)):
        input_ids[i, : len(x)] = torch.tensor(x)
        lab[i, : len(y)] = torch.tensor(y)
        att[i, : len(x)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": att.to(device), "labels": lab.to(device)}


def train_tiny_base(family: str, task: Task, out_dir: str | Path, overrides: dict[str, Any] | None = None,
                    seed: int = 0, max_steps: int = 3000, batch_size: int = 32, lr: float = 3e-3,
                    eval_every: int = 100, eval_n: int = 200, target_accuracy: float = 0.45,
                    log: Any = print, test_n: int | None = None) -> dict[str, Any]:
    import torch

    from rlsparsity.tokenizer import build_tokenizer, special_ids, task_corpus

    torch_threads()
    t0 = time.time()
    out = Path(out_dir)
    tok = build_tokenizer(task_corpus(task))
    model = F.build_tiny(family, len(tok), special_ids(tok), overrides, seed=seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = 50
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup)
        * (0.5 * (1 + math.cos(math.pi * min(s, max_steps) / max_steps)) * 0.9 + 0.1),
    )
    rng = random.Random(seed)
    data = tokenize_sft(tok, task, task.train)
    history = []
    val_acc = 0.0
    step = 0
    for step in range(1, max_steps + 1):
        batch = sft_batch(rng.sample(data, batch_size), tok.pad_token_id)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % eval_every == 0 or step == max_steps:
            val_acc = evaluate(model, tok, task, task.val, n=eval_n)["accuracy"]
            history.append({"step": step, "loss": loss.item(), "val_accuracy": val_acc})
            log(f"[base {family}] step {step} loss {loss.item():.3f} val_acc {val_acc:.3f}")
            if val_acc >= target_accuracy:
                break
    save_model(model, tok, out, "bf16")
    stored = load_model(out, "fp32")
    test = evaluate(stored, tok, task, n=test_n or eval_n)
    metrics = {
        "family": family,
        "kind": "tiny",
        "task": task.name,
        "accuracy": test["accuracy"],
        "mean_reward": test["mean_reward"],
        "correct": test["correct"],
        "val_accuracy": val_acc,
        "n_test": test["n"],
        "n_params": n_params(stored),
        "seed": seed,
        "steps": step,
        "lr": lr,
        "batch_size": batch_size,
        "target_accuracy": target_accuracy,
        "storage_dtype": "bfloat16",
        "history": history,
        "architecture": stored.config.model_type,
        "build_seconds": round(time.time() - t0, 2),
        "samples": test["samples"],
        "versions": versions(),
    }
    return metrics


def build_pretrained_base(
    family: str,
    task: Task,
    out_dir: str | Path,
    spec: dict[str, Any] | None = None,
    eval_n: int = 200,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """SmolLM2 (converted from the shipped GGUF) or any HF causal LM, stored in bf16."""
    import torch

    torch_threads()
    t0 = time.time()
    out = Path(out_dir)
    if family == F.SMOLLM2:
        F.convert_smollm2(out)
        src = out
    else:
        src = F.resolve_pretrained(family, spec)
    model = load_model(src, "fp32")
    tok = load_tokenizer(src)
    save_model(model, tok, out, "bf16")
    stored = load_model(out, "fp32", device)
    bs = int((spec or {}).get("eval_batch_size", 16))
    test = evaluate(stored, tok, task, n=eval_n, batch_size=bs, progress=True)
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {
        "family": family,
        "kind": "pretrained",
        "source": str(src),
        "task": task.name,
        "accuracy": test["accuracy"],
        "mean_reward": test["mean_reward"],
        "correct": test["correct"],
        "n_test": test["n"],
        "n_params": n_params(stored),
        "seed": seed,
        "steps": 0,
        "storage_dtype": "bfloat16",
        "architecture": stored.config.model_type,
        "build_seconds": round(time.time() - t0, 2),
        "samples": test["samples"],
        "versions": versions(),
        "device": device,
    }


def build_base(family: str, config: dict[str, Any], out_dir: str | Path, device: str = "cpu") -> dict[str, Any]:
    """Build the base for ``family`` as the experiment config says; writes metrics.json."""
    from rlsparsity.tasks import task_from_config

    task = task_from_config(config)
    spec = config["families"].get(family, {}) or {}
    b = {**config["base"], **(config["base"].get("per_family") or {}).get(family, {})}
    if F.is_tiny(family) and "path" not in spec:
        m = train_tiny_base(
            family,
            task,
            out_dir,
            spec,
            seed=b["seed"],
            max_steps=b["max_steps"],
            batch_size=b["batch_size"],
            lr=b["lr"],
            eval_every=b["eval_every"],
            eval_n=b["eval_n"],
            target_accuracy=b["target_accuracy"],
            test_n=config["train"]["eval_n"],
        )
    else:  # held-out accuracy on the same problems the trained runs are scored on
        m = build_pretrained_base(
            family, task, out_dir, spec, eval_n=config["train"]["eval_n"], seed=b["seed"], device=device
        )
    m["experiment"] = config.get("experiment")
    write_json(Path(out_dir) / "metrics.json", m)
    return m
