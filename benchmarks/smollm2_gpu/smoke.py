"""Smoke run: every algorithm for a few steps, all at once in parallel processes (packed on
the GPU like the DAG's jobs), through the pipeline's own `rlsparsity train` CLI. Prints one
line per run (s/step, device, peak GPU memory) and a JSON summary; exit 1 if any run failed.

    # GPU machine (tools/gpu/remote.sh smoke): SmolLM2 base built once under --results
    python benchmarks/smollm2_gpu/smoke.py --device cuda --steps 3
    # CPU check of the same path on a base you already have (tests use a tiny model)
    python benchmarks/smollm2_gpu/smoke.py --device cpu --family llama --base DIR --algorithms ppo dpo
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ALL = ["ppo", "grpo", "dpo", "kto", "orpo", "simpo", "prime", "sft"]
#: tiny batches: the smoke run checks that every path runs on the device, not speed at scale
TINY = {"grpo": {"batch_size": 8, "num_generations": 4, "steps_per_generation": 2},
        "ppo": {"prompts_per_rollout": 4, "samples_per_prompt": 2, "minibatch_size": 4},
        "prime": {"prompts_per_rollout": 4, "samples_per_prompt": 2, "oversample": 2, "minibatch_size": 4},
        **{a: {"batch_size": 4, "n_prompts": 32, "k": 4} for a in ("dpo", "kto", "orpo", "simpo", "sft")}}


def smoke_config(args: argparse.Namespace) -> dict:
    import yaml

    from rlsparsity.config import validate_config

    cfg = yaml.safe_load((REPO / "config" / "smollm2-gpu.yaml").read_text())
    cfg["experiment"] = "smoke"
    cfg["results"] = str(args.results)
    cfg["families"] = {args.family: {"gpus": 1 if args.device.startswith("cuda") else 0,
                                      "eval_batch_size": args.eval_n}}
    cfg["task"].update(n_train=200, n_test=args.eval_n, max_new_tokens=args.max_new_tokens)
    if args.task:
        cfg["task"]["name"] = args.task
    if args.prompt:
        cfg["task"]["prompt"] = args.prompt
    cfg["train"].update(steps=args.steps, checkpoint_every=args.steps, eval_n=args.eval_n)
    cfg["train"]["hparams"] = {a: {**cfg["train"]["hparams"].get(a, {}), **TINY[a]} for a in ALL}
    cfg["grids"] = [{"families": "all", "algorithms": args.algorithms, "seeds": [1], "precisions": [args.precision],
                     "data": ["on_policy"]}]
    for k in ("entropy", "subnetwork"):
        cfg.pop(k, None)
    return validate_config(cfg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--family", default="smollm2-135m")
    ap.add_argument("--base", type=Path, default=None, help="existing base folder (else built under --results)")
    ap.add_argument("--results", type=Path, default=Path("/tmp/rls-smoke"))
    ap.add_argument("--algorithms", nargs="+", default=ALL, choices=ALL)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32-master", "fp32"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--eval-n", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--task", default=None, help="override the config's task name (tiny bases: tiny_arith)")
    ap.add_argument(
        "--prompt", default=None, choices=["answer", "cot", "explain"], help="override the config's prompt style"
    )
    ap.add_argument("--timeout", type=float, default=540.0)
    a = ap.parse_args(argv)

    from rlsparsity.grid import base_dir
    from rlsparsity.modeling import write_json

    cfg = smoke_config(a)
    res = Path(cfg["results"])
    for old in ("runs", "logs"):
        shutil.rmtree(res / old, ignore_errors=True)
    cfg_path = res / "config.json"
    write_json(cfg_path, cfg)
    base = base_dir(a.family, res)
    if a.base is not None and not (base / "metrics.json").exists():
        shutil.copytree(a.base, base, dirs_exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    cli = [sys.executable, "-m", "rlsparsity.cli"]
    dev = ["--device", a.device]
    t0 = time.time()
    if not (base / "metrics.json").exists():
        r = subprocess.run(
            cli + ["build-base", a.family, "--out", str(base), "--config", str(cfg_path)] + dev,
            env=env,
            capture_output=True,
            text=True,
        )
        if r.returncode:
            print(r.stdout[-2000:], r.stderr[-4000:])
            return 1
    print(
        f"[smoke] base ready ({time.time() - t0:.0f} s): "
        f"{json.loads((base / 'metrics.json').read_text())['accuracy']:.3f} "
        "greedy accuracy",
        flush=True,
    )
    if a.device.startswith("cuda"):
        env["RLSPARSITY_GPU_LOCKS"] = str(res / ".gpu_locks")
        env["RLSPARSITY_GPU_SLOTS"] = str(len(a.algorithms))
    procs = {}
    (res / "logs").mkdir(parents=True, exist_ok=True)
    t1 = time.time()
    for alg in a.algorithms:
        log = open(res / "logs" / f"{alg}.log", "w")
        procs[alg] = (
            subprocess.Popen(
                cli + ["train", a.family, alg, "--precision", a.precision, "--config", str(cfg_path)] + dev,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            ),
            log,
        )
    failed, rows = [], []
    for alg, (p, log) in procs.items():
        try:
            rc = p.wait(timeout=max(1.0, a.timeout - (time.time() - t1)))
        except subprocess.TimeoutExpired:
            p.kill()
            rc = -9
        log.close()
        rec_path = res / "runs" / a.family / alg / "on_policy" / a.precision / "seed1" / "run.json"
        if rc or not rec_path.exists():
            failed.append(alg)
            tail = (res / "logs" / f"{alg}.log").read_text()[-1500:]
            print(f"[smoke] {alg}: FAILED (rc {rc})\n{tail}", flush=True)
            continue
        rec = json.loads(rec_path.read_text())
        row = {
            k: rec.get(k)
            for k in (
                "algorithm",
                "steps",
                "seconds_per_step",
                "train_seconds_per_step",
                "wall_seconds",
                "device",
                "peak_gpu_memory_mb",
                "acc_base",
                "acc_trained",
            )
        }
        rows.append(row)
        print(
            f"[smoke] {alg:6s} {row['steps']} steps  {row['seconds_per_step']:.3f} s/step (algorithm)  "
            f"{row['train_seconds_per_step']} s/step (train wall)  {row['device']}  "
            f"peak {row['peak_gpu_memory_mb']} MiB",
            flush=True,
        )
    print(json.dumps({"parallel_wall_seconds": round(time.time() - t1, 1), "failed": failed, "runs": rows}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
