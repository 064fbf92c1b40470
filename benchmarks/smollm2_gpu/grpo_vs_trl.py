"""Benchmark (not a test): one GRPO configuration through rlsparsity's path and through a plain
``trl.GRPOTrainer`` on the same model, batch, data, reward and GPU, one after the other.
Prints seconds per optimiser step (the mean and the median over the steps after the first)
for both and the ratio of the means; goal: ours within 10 % of stock TRL. ~1.5 min on an H200.

    python benchmarks/smollm2_gpu/grpo_vs_trl.py --results results/smollm2-gpu [--steps 16]

rlsparsity's path = ``trl_algos.grpo_trainer`` + ``_run_trainer`` (our precision handling,
checkpoint/mask callback, DAPO loss, no activation checkpointing). Stock = GRPOTrainer with
TRL's defaults for everything this configuration does not set (it turns activation
checkpointing on and autocasts in bf16), model loaded from the same folder in bf16.
Shared settings: batch, num_generations, steps_per_generation, max_completion_length,
temperature, lr, beta. Writes ``<results>/bench/grpo_vs_trl.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def step_timer() -> Any:
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.t: list[float] = []

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
            if not self.t:
                self.t.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t.append(time.perf_counter())

        def summary(self) -> dict[str, float]:
            d = [b - a for a, b in zip(self.t, self.t[1:], strict=False)]
            rest = d[1:] or d
            return {
                "steps": len(d),
                "first_step_s": round(d[0], 4) if d else float("nan"),
                "median_s_per_step": round(statistics.median(rest), 4),
                "mean_s_per_step": round(sum(rest) / len(rest), 4),
            }

    return Timer()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "config" / "smollm2-gpu.yaml")
    ap.add_argument("--results", type=Path, default=Path("results/smollm2-gpu"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32-master"])
    ap.add_argument("--steps", type=int, default=16)
    a = ap.parse_args(argv)

    import torch
    import yaml
    from trl import GRPOConfig, GRPOTrainer

    from rlsparsity.algorithms.common import TrainSpec, seed_everything
    from rlsparsity.algorithms.trl_algos import _online_dataset, _reward_fn, _run_trainer, grpo_trainer
    from rlsparsity.config import validate_config
    from rlsparsity.grid import Run, base_dir, run_hparams
    from rlsparsity.modeling import load_tokenizer, max_new_tokens_for, torch_threads, write_json
    from rlsparsity.tasks import task_from_config

    torch_threads()
    cfg = yaml.safe_load(a.config.read_text())
    cfg["results"] = str(a.results)
    cfg = validate_config(cfg)
    fam = next(iter(cfg["families"]))
    base = base_dir(fam, a.results)
    if not (base / "config.json").exists():
        print(f"base model missing: {base} (run the sweep or the DAG's base rule first)", file=sys.stderr)
        return 1
    task = task_from_config(cfg)
    hp = run_hparams(cfg, "grpo", a.precision)
    out = a.results / "bench"
    spec = TrainSpec(
        run=Run(fam, "grpo", "on_policy", a.precision, 1),
        base_dir=base,
        out_dir=out / "ours",
        task=task,
        steps=a.steps,
        checkpoint_every=10**6,
        hparams=hp,
        device=a.device,
    )
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else "cpu",
        "precision": a.precision,
        "hparams": hp,
        "steps": a.steps,
    }
    # ours
    tr, model, tok, hp_full = grpo_trainer(spec)
    timer = step_timer()
    tr.add_callback(timer)
    t0 = time.time()
    _run_trainer(spec, tr, model, tok)
    report["rlsparsity"] = {**timer.summary(), "train_wall_s": round(time.time() - t0, 2)}
    del tr, model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    # stock TRL
    seed_everything(1)
    tok = load_tokenizer(base)
    args = GRPOConfig(
        output_dir=str(out / "stock"),
        max_steps=a.steps,
        learning_rate=hp_full["lr"],
        per_device_train_batch_size=hp_full["batch_size"],
        num_generations=hp_full["num_generations"],
        steps_per_generation=hp_full.get("steps_per_generation"),
        max_completion_length=max_new_tokens_for(base, task),
        temperature=hp_full["temperature"],
        beta=hp_full["beta"],
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=1,
        use_cpu=not a.device.startswith("cuda"),
        model_init_kwargs={"dtype": torch.bfloat16 if a.precision == "bf16" else torch.float32},
    )
    stock = GRPOTrainer(
        model=str(base),
        reward_funcs=_reward_fn(spec),
        args=args,
        train_dataset=_online_dataset(spec, tok),
        processing_class=tok,
    )
    timer = step_timer()
    stock.add_callback(timer)
    t0 = time.time()
    stock.train()
    report["trl_stock"] = {
        **timer.summary(),
        "train_wall_s": round(time.time() - t0, 2),
        "gradient_checkpointing": bool(args.gradient_checkpointing),
        "bf16_autocast": bool(args.bf16),
        "loss_type": args.loss_type,
    }
    # the MEAN step after the first: with steps_per_generation > 1 only every k-th step generates,
    # so the median is a cheap reuse step and its ratio says nothing about throughput
    ratio = report["rlsparsity"]["mean_s_per_step"] / report["trl_stock"]["mean_s_per_step"]
    report["ratio_ours_over_stock"] = round(ratio, 3)
    report["ratio_of"] = "mean s/step after the first step"
    report["within_10_percent"] = ratio <= 1.10
    write_json(out / "grpo_vs_trl.json", report)
    print(
        f"rlsparsity GRPO: {report['rlsparsity']['mean_s_per_step']:.3f} s/step (mean after the first), "
        f"stock TRL GRPOTrainer: {report['trl_stock']['mean_s_per_step']:.3f} s/step -> ratio {ratio:.3f} "
        f"({'within' if ratio <= 1.10 else 'NOT within'} 10 %)"
    )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
