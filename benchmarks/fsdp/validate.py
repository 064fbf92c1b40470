"""Sharded training, validated: 1 GPU vs FSDP on 2 GPUs, and a 9B-shaped fp32-master run.

Randomly initialised Llama-shaped models built from a transformers ``LlamaConfig`` (nothing is
downloaded; the tokenizer is the project's character tokenizer of the tiny_arith task, narrowed
to one-digit sums), whose LM head alone is warm-started (:func:`warm_head`) so that the online
algorithms see rewards with variance.
Every run goes through the project's own entry point, ``rlsparsity train`` (single process) or
``accelerate launch --config_file config/accelerate/fsdp.yaml --num_processes 2 -m
rlsparsity.cli train`` (FSDP2, full shard), so what is validated is what the pipeline runs.

Phases (see README.md here):
  equiv  shape 1b (~1.0B), each algorithm a few steps on 1 GPU (two such runs at a time, one per
         GPU) and then with FSDP on 2 GPUs: loss per step, update sparsity vs the base, peak GPU
         memory per rank (torch max_memory_allocated of every rank, and nvidia-smi per GPU),
         s/step, tokens/s; verdicts: loss trajectory within --loss-rtol (offline algorithms:
         the same global batch, so only float reduction order differs; online algorithms sample
         different completions per rank, so their trajectories are reported, not compared),
         sparsity within 1 point, FSDP peak per rank <= 0.55 x the 1-GPU peak.
  big    shape 9b (~8.9B) GRPO in fp32-master with FSDP on 2 GPUs (fp32 sharded master weights
         + AdamW, fp32 compute: ~16 bytes/param = ~143 GB of state, more than one H200), and PPO
         (policy + critic + reference) in fp32-master at shape 6b (5.67B, the largest the memory
         model fits on two H200s), each followed by ``rlsparsity diff`` on the bf16 model it
         writes; the memory model's estimate is recorded beside each peak.
Every phase stops launching runs once ``--time-cap`` seconds have passed (the remaining time is
each run's timeout too) and records what it skipped. Results: OUT/validate.json, .csv, .md.

CPU dry run (plumbing only: tiny shape, 2 processes over gloo through torchrun, where
accelerate's FSDP falls back to DDP):  python benchmarks/fsdp/validate.py --device cpu --shape tiny
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SHAPES = {  # num_key_value_heads x head_dim = kv width; vocab ~40 characters
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=16,
               num_key_value_heads=8),
    "6b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8),  # Llama-2-7B's trunk with 8 KV heads: 5.67B with this vocabulary
    "9b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=41, num_attention_heads=32,
               num_key_value_heads=8),
}
#: tiny_arith narrowed to one-digit sums (answers 0..18): after :func:`warm_head` a random model
#: answers in the right format and is right often enough (~1 in 3 on the tiny shape) that every
#: online algorithm gets groups with reward variance, i.e. a real update to compare; on the full
#: task a random model earns ~1 % and GRPO/RLOO did not update at all (2nd H200 attempt)
TASK = {"name": "tiny_arith", "n_train": 100, "seed": 7,
        "kwargs": {"min_digits": 1, "max_digits": 1, "operators": ["+"]}}
TRL = ["dpo", "grpo", "kto", "orpo", "simpo", "sft", "rloo"]  # order = priority under a time cap
OURS = ["ppo", "prime"]  # multi-process through algorithms/distributed.py
ONLINE = {"grpo", "rloo", "ppo", "prime"}
# TRL's GRPO/RLOO sample on every rank from its own RNG stream: 1 vs 2 processes see different
# completions, so their losses are reported, not compared step by step. ppo/prime launched
# (even with one process) sample every row from a generator seeded by its GLOBAL row index, so
# 1 and 2 processes draw the same rollouts and their losses are compared like the offline ones.
SAMPLED_PER_RANK = {"grpo", "rloo"}
LOSS_ATOL = 1e-4
HPARAMS = {  # small global batches; lr large enough to move bf16 weights in a few steps
    "grpo": {"lr": 1e-5, "batch_size": 8, "num_generations": 4},
    "rloo": {"lr": 1e-5, "batch_size": 8, "num_generations": 4},
    "ppo": {"lr": 1e-5, "prompts_per_rollout": 4, "samples_per_prompt": 2, "minibatch_size": 8,
            "max_new_tokens": 16},
    "prime": {"lr": 1e-5, "prompts_per_rollout": 4, "samples_per_prompt": 2, "minibatch_size": 8,
              "max_new_tokens": 16},
    **{a: {"lr": 1e-5, "batch_size": 8, "n_prompts": 64, "k": 2} for a in ("dpo", "kto", "orpo", "simpo", "sft")},
}


def _env() -> dict[str, str]:
    src = str(REPO / "src")
    pp = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": src + (os.pathsep + pp if pp else ""), "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TOKENIZERS_PARALLELISM": "false"}


def warm_head(model: Any, tok: Any, task: Any, steps: int = 300, lr: float = 1e-2, n: int = 256) -> float:
    """Fit the LM head alone (the random trunk frozen) to ``n`` training prompts, each twice: once
    with its reference answer and once with a wrong one (``Task.corrupted_solution``). Adam on
    the fixed last hidden states, full batch, fp32; one no-grad forward of the trunk, so it works
    at 9B on one GPU. The model then answers in the task's format and is right about half the
    time when sampling, so GRPO groups have reward variance (fitted to the right answers alone,
    the 1B model was right every time on 2 H200s: no variance, no update). Returns the loss."""
    import random

    import torch

    from rlsparsity.base import sft_batch, tokenize_sft

    entries = task.train[:n]
    rng = random.Random(0)
    comps = [task.solution(e) for e in entries] + [task.corrupted_solution(e, rng) for e in entries]
    b = sft_batch(tokenize_sft(tok, task, entries + entries, comps), tok.pad_token_id, next(model.parameters()).device)
    with torch.no_grad():
        h = model.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
    target = b["labels"][:, 1:]
    keep = target != -100
    feats, y = h[:, :-1][keep].float(), target[keep]
    w = model.lm_head.weight.detach().float().clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(feats @ w.T, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        model.lm_head.weight.copy_(w.to(model.lm_head.weight.dtype))
    return float(loss.detach())


def build_base(folder: Path, shape: str, device: str, eval_n: int) -> int:
    """A random Llama of ``shape`` with a warm-started LM head (:func:`warm_head`), stored like a
    pipeline base (bf16 + tokenizer + metrics.json)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlsparsity.evaluate import evaluate
    from rlsparsity.modeling import save_model, write_json
    from rlsparsity.tasks import get_task
    from rlsparsity.tokenizer import build_tokenizer, special_ids, task_corpus

    task = get_task(TASK["name"], n_train=TASK["n_train"], n_test=eval_n, seed=TASK["seed"], kwargs=TASK["kwargs"])
    tok = build_tokenizer(task_corpus(task))
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=512, tie_word_embeddings=False,
                      **special_ids(tok), **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device("cuda:0" if device == "cuda" else "cpu"):  # 9B initialises in seconds on a GPU
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    head_loss = warm_head(model, tok, task)
    tok.padding_side = "left"
    m = evaluate(model, tok, task, n=eval_n)
    save_model(model, tok, folder, "bf16")
    write_json(folder / "metrics.json", {"accuracy": m["accuracy"], "correct": m["correct"], "n_test": m["n"],
                                         "task": task.name, "params": n, "warm_head_loss": head_loss})
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return n


def write_config(path: Path, results: Path, base: Path, gpus: int, steps: int, every: int, eval_n: int,
                 algorithm: str, precision: str, sharding: str | None, extra_hp: dict[str, Any] | None = None,
                 units: str | None = None) -> Path:
    import yaml

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    fam = {"path": str(base), "gpus": gpus, "eval_batch_size": 8}
    if sharding:
        fam["sharding"] = sharding
    if sharding == "fsdp" and units:
        fam["fsdp_units"] = units
    cfg.update(experiment="fsdp-validate", results=str(results),
               task={**TASK, "n_test": eval_n},
               families={"rand": fam})
    cfg["train"].update(steps=steps, checkpoint_every=every, eval_n=eval_n, group_by=[],
                        hparams={algorithm: {**HPARAMS[algorithm], **(extra_hp or {})}})
    cfg["grids"] = [{"families": "all", "algorithms": [algorithm], "seeds": [1], "precisions": [precision],
                     "data": ["on_policy" if algorithm in ONLINE else "off_policy"]}]
    for k in ("subnetwork", "entropy", "causes"):
        cfg.pop(k, None)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def launcher(n: int, device: str, algorithm: str = "") -> list[str]:
    if n == 1 and algorithm in OURS:  # launched (FSDP2, world size 1): the seeded per-row sampler
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                "-m", "rlsparsity.cli", "train"]
    if n == 1:
        return [sys.executable, "-m", "rlsparsity.cli", "train"]
    with socket.socket() as s:  # a port of its own: several launched runs may be running at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if device == "cuda":
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(REPO / "config" / "accelerate" / "fsdp.yaml"), "--num_processes", str(n),
                "--main_process_port", str(port), "-m", "rlsparsity.cli", "train"]
    # CPU: accelerate ignores FSDP there; plain torchrun -> DDP over gloo
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_addr",
            "127.0.0.1", "--master_port", str(port), "-m", "rlsparsity.cli", "train"]


class GpuPoll(threading.Thread):
    """Peak ``memory.used`` (MiB) per GPU from nvidia-smi every 0.5 s (context + cache included)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
                for line in out.strip().splitlines():
                    i, used = (x.strip() for x in line.split(","))
                    self.peak[int(i)] = max(self.peak.get(int(i), 0.0), float(used))
            except (OSError, subprocess.SubprocessError, ValueError):
                return
            self.stop.wait(0.5)


def sparsity(base: Path, run: Path) -> dict[str, float]:
    """Fraction of entries unchanged (|Δ| <= tol) over all tensors, in fp32."""
    from safetensors import safe_open

    tols = (0.0, 1e-5)
    same = dict.fromkeys(tols, 0)
    n = 0
    with safe_open(str(base / "model.safetensors"), "pt") as fb, safe_open(str(run / "model.safetensors"), "pt") as fr:
        for k in fr.keys():  # noqa: SIM118 - safe_open has no __iter__
            d = (fr.get_tensor(k).float() - fb.get_tensor(k).float()).abs()
            n += d.numel()
            for t in tols:
                same[t] += int((d <= t).sum())
    return {f"unchanged_tol{t:g}": same[t] / max(1, n) for t in tols}


class Runner:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.t0, self.rows, self.work = args, time.time(), [], work
        self.keep_weights = False  # equiv runs: weights deleted once measured (the host disk is 128 GB)

    def left(self) -> float:
        return self.args.time_cap - (time.time() - self.t0)

    def start(self, tag: str, alg: str, n: int, base: Path, precision: str, steps: int, every: int,
              gpu: int | None, extra_hp: dict[str, Any] | None = None) -> dict[str, Any]:
        a = self.args
        res = self.work / tag
        (res / "base").mkdir(parents=True, exist_ok=True)
        link = res / "base" / "rand"
        if not link.exists():
            link.symlink_to(base.resolve(), target_is_directory=True)
        sharding = "fsdp" if n > 1 and a.device == "cuda" else None  # CPU families: gpus 0, no sharding
        cfg = write_config(res / "config.yaml", res, base.resolve(), n if a.device == "cuda" else 0, steps, every,
                           a.eval_n, alg, precision, sharding, extra_hp, a.fsdp_units)
        data = "on_policy" if alg in ONLINE else "off_policy"
        cmd = launcher(n, a.device, alg) + ["rand", alg, "--data", data, "--precision", precision, "--seed", "1",
                                       "--config", str(cfg), "--device", a.device]
        env = {**_env(), "RLSPARSITY_RANK_STATS": str(res / "ranks")}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        log = open(res / "train.log", "w")  # noqa: SIM115 - closed in finish()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        return {"tag": tag, "algorithm": alg, "processes": n, "precision": precision, "res": res, "proc": proc,
                "log": log, "t": time.time(), "gpu": gpu, "cmd": " ".join(cmd)}

    def finish(self, job: dict[str, Any], base: Path, poll: GpuPoll | None) -> dict[str, Any]:
        try:
            rc = job["proc"].wait(timeout=max(1.0, self.left()))
        except subprocess.TimeoutExpired:
            job["proc"].kill()
            rc = "time cap"
        job["log"].close()
        run = job["res"] / "runs" / "rand" / job["algorithm"] / (
            "on_policy" if job["algorithm"] in ONLINE else "off_policy") / job["precision"] / "seed1"
        row: dict[str, Any] = {k: job[k] for k in ("tag", "algorithm", "processes", "precision", "cmd")}
        row.update(rc=rc, wall_seconds=round(time.time() - job["t"], 1), log=str(job["res"] / "train.log"))
        if rc == 0 and (run / "run.json").exists():
            rec = json.loads((run / "run.json").read_text())
            hist = rec.get("history") or []
            tokens = next((h["num_tokens"] for h in reversed(hist) if "num_tokens" in h), None)
            sps = rec.get("seconds_per_step")
            row.update(steps=rec.get("steps"), seconds_per_step=sps, sharding=rec.get("sharding"),
                       loss=[h.get("loss") for h in hist],
                       reward=[h.get("reward", h.get("reward_mean")) for h in hist],  # TRL / ppo, prime
                       tokens_per_second=round(tokens / (sps * rec["steps"]), 1) if tokens and sps else None,
                       **sparsity(base, run))
            hp = HPARAMS[job["algorithm"]]
            if "prompts_per_rollout" in hp and sps:  # ppo/prime: generated tokens (no TRL num_tokens)
                gen = sum(h.get("completion_length") or 0 for h in hist) * hp["prompts_per_rollout"] * hp[
                    "samples_per_prompt"]
                row["completion_tokens_per_second"] = round(gen / (sps * rec["steps"]), 1)
            ranks = sorted((job["res"] / "ranks").glob("rank*.json"))
            row["peak_torch_mb_per_rank"] = [json.loads(p.read_text())["peak_gpu_memory_mb"] for p in ranks]
        if not self.keep_weights and run.is_dir():  # run.json, logs and rank stats stay
            for p in run.iterdir():
                if p.name != "run.json":
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        if poll is not None:
            gpus = [job["gpu"]] if job["gpu"] is not None else sorted(poll.peak)
            row["peak_nvsmi_mb_per_gpu"] = [poll.peak.get(g) for g in gpus]
        print(json.dumps({k: row.get(k) for k in ("tag", "rc", "wall_seconds", "seconds_per_step", "loss",
                                                  "peak_torch_mb_per_rank")}), flush=True)
        self.rows.append(row)
        return row

    def batch(self, specs: list[tuple], base: Path) -> None:
        """Start ``specs`` together (each on its own GPU or all GPUs), wait for all."""
        if self.left() <= 30:
            self.rows += [{"tag": s[0], "algorithm": s[1], "processes": s[2], "rc": "skipped: time cap"} for s in specs]
            return
        poll = GpuPoll() if self.args.device == "cuda" else None
        if poll:
            poll.start()
        jobs = [self.start(*s) for s in specs]
        for j in jobs:
            self.finish(j, base, poll)["concurrent_runs"] = len(jobs)
        if poll:
            poll.stop.set()


def memory_estimate(algorithm: str, shape: str, extra_hp: dict[str, Any]) -> dict[str, float]:
    """The memory model's GB per GPU for a big run (fp32-master, FSDP on 2), to set beside its peak."""
    from rlsparsity.memory_model import GB, Run, rows_and_length, shape_from_hf_config

    shp = shape_from_hf_config({**SHAPES[shape], "vocab_size": 308})  # the character tokenizer of TASK
    hp = {**HPARAMS[algorithm], **extra_hp}
    rows, seq = rows_and_length(algorithm, hp, 16)
    est = Run(algorithm, "fp32-master", rows, seq, 0.0, bool(hp.get("gradient_checkpointing"))).estimate(shp, "fsdp", 2)
    return {k: round(getattr(est, k) / GB, 1) for k in ("states", "gathered", "activations", "overhead", "total")}


def compare(rows: list[dict[str, Any]], rtol: float) -> list[dict[str, Any]]:
    by = {r["tag"]: r for r in rows if r.get("rc") == 0 and r.get("loss") is not None}
    out = []
    for alg in sorted({r["algorithm"] for r in by.values()}):
        one, two = by.get(f"{alg}-1"), by.get(f"{alg}-2")  # the equiv pair (not the big run)
        if one is None or two is None:
            continue
        la, lb = one["loss"], two["loss"]
        # |a - b| <= rtol x max(|a|, |b|) + LOSS_ATOL per step: a loss that is ~0 (no reward signal on
        # random weights: zero advantages) differs by float noise, which a pure ratio would call a failure
        pairs = [(a, b) for a, b in zip(la, lb, strict=False) if a is not None and b is not None]
        rel = max((abs(a - b) / max(abs(a), abs(b), 1e-12) for a, b in pairs), default=None)
        ok = bool(pairs) and all(abs(a - b) <= rtol * max(abs(a), abs(b)) + LOSS_ATOL for a, b in pairs)
        peak1 = max((x for x in one.get("peak_torch_mb_per_rank") or [] if x), default=None)
        peak2 = max((x for x in two.get("peak_torch_mb_per_rank") or [] if x), default=None)
        dsp = abs(one["unchanged_tol1e-05"] - two["unchanged_tol1e-05"]) * 100
        signal = any(x for x in (one.get("reward") or []) + (two.get("reward") or []) if x)
        out.append({"algorithm": alg, "loss_max_rel_diff": rel,
                    "reward_signal": signal if alg in ONLINE else None,  # random weights: often no reward
                    "loss_verdict": ("sampled: not compared step by step" if alg in SAMPLED_PER_RANK
                                     else ("pass" if ok else "FAIL")),
                    "sparsity_diff_points": round(dsp, 3), "sparsity_verdict": "pass" if dsp <= 1 else "FAIL",
                    "memory_ratio": round(peak2 / peak1, 3) if peak1 and peak2 else None,
                    "memory_verdict": ("pass" if peak1 and peak2 and peak2 <= 0.55 * peak1 else "FAIL")
                    if peak1 and peak2 else "n/a",
                    "s_per_step_1": one.get("seconds_per_step"), "s_per_step_2": two.get("seconds_per_step"),
                    "tokens_per_s_1": one.get("tokens_per_second") or one.get("completion_tokens_per_second"),
                    "tokens_per_s_2": two.get("tokens_per_second") or two.get("completion_tokens_per_second")})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--phase", choices=["equiv", "big", "all"], default="all")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--shape", choices=sorted(SHAPES), default=None, help="equiv shape (default: 1b; cpu: tiny)")
    p.add_argument("--big-shape", choices=sorted(SHAPES), default="9b", help="shape of the big GRPO run")
    p.add_argument("--big-ppo-shape", choices=sorted(SHAPES), default="6b",
                   help="shape of the big PPO run (the largest the memory model fits on two H200s)")
    p.add_argument("--big-algorithms", default="grpo,ppo", help="which big runs (comma list of grpo, ppo)")
    p.add_argument("--algorithms", default=",".join(OURS + TRL), help="comma list (default: all nine)")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32-master", "fp32"])
    p.add_argument("--steps", type=int, default=3)
    from rlsparsity.algorithms.distributed import UNITS

    p.add_argument("--fsdp-units", choices=list(UNITS), default="block",
                   help="the FSDP runs' family fsdp_units (sublayer: attention and MLP units too; mem_sim.py)")
    p.add_argument("--eval-n", type=int, default=4)
    p.add_argument("--concurrent", action="store_true",
                   help="start all 1-GPU runs together, then all FSDP runs together (fast; s/step then "
                        "measures shared GPUs, memory per process stays exact); rows record concurrent_runs")
    p.add_argument("--loss-rtol", type=float, default=0.02)
    p.add_argument("--time-cap", type=float, default=540.0, help="seconds for the whole script")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "fsdp" / "results"), help="validate.json/.csv/.md")
    p.add_argument("--work", default=None, help="bases, run folders, logs (default OUT/work; big: ~40 GB)")
    a = p.parse_args(argv)
    shape = a.shape or ("1b" if a.device == "cuda" else "tiny")
    out = Path(a.out)
    work = Path(a.work) if a.work else out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    r = Runner(a, work)
    meta: dict[str, Any] = {"device": a.device, "shape": shape, "precision": a.precision, "steps": a.steps,
                            "concurrent": a.concurrent, "command": " ".join(["python", *sys.argv])}
    if a.device == "cuda":  # the cards every number came from
        import torch

        meta["cards"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if a.phase in ("equiv", "all"):
        base = work / f"base-{shape}"
        meta["params"] = build_base(base, shape, a.device, a.eval_n)
        algs = [x for x in a.algorithms.split(",") if x]
        # checkpoint_every > steps: no resume checkpoints (a FULL_STATE_DICT one is ~12 bytes/param:
        # 18 of them filled the 128 GB disk of the 2-H200 host and failed ppo-2 there)
        singles = [(f"{x}-1", x, 1, base, a.precision, a.steps, 1000, i % 2 if a.device == "cuda" else None)
                   for i, x in enumerate(algs)]
        pairs = [(f"{x}-2", x, 2, base, a.precision, a.steps, 1000, None) for x in algs]
        if a.concurrent:  # every 1-GPU run at once (alternating GPUs), then every FSDP run at once
            r.batch(singles, base)
            r.batch(pairs, base)
        else:
            step = 2 if a.device == "cuda" else 1  # two single-GPU runs at a time, one per GPU
            for i in range(0, len(singles), step):  # algorithm by algorithm: a time cap leaves complete pairs
                r.batch(singles[i:i + step], base)
                for pair in pairs[i:i + step]:
                    r.batch([pair], base)
    if a.phase in ("big", "all"):
        r.keep_weights = True  # `rlsparsity diff` reads them; removed after it
        # GRPO at 9B and PPO (policy + critic + reference) at the largest shape the memory model
        # fits on two H200s, both fp32-master with FSDP on 2; each then read by `rlsparsity diff`
        for alg, shape_name, hp in (("grpo", a.big_shape, {}),
                                    ("ppo", a.big_ppo_shape, {"gradient_checkpointing": True})):
            if alg not in a.big_algorithms.split(","):
                continue
            big = shape_name if a.device == "cuda" else "tiny"
            tag = f"{alg}-{big}-fp32-master-2"
            if r.left() < 120:
                r.rows.append({"tag": tag, "algorithm": alg, "processes": 2, "rc": "skipped: time cap"})
                continue
            base = work / f"base-{big}"
            if not base.exists():
                meta[f"params_{big}"] = build_base(base, big, a.device, 2)
            # checkpoint_every > steps: no resume checkpoint (~16 bytes/param of fp32-master state to disk)
            r.batch([(tag, alg, 2, base, "fp32-master", 2, 1000, None, hp)], base)
            meta[f"{tag}_estimate_gb"] = memory_estimate(alg, big, hp)
            run = work / tag / "runs/rand" / alg / "on_policy/fp32-master/seed1"
            if (run / "model.safetensors").exists() and r.left() > 30:
                t = time.time()
                d = subprocess.run([sys.executable, "-m", "rlsparsity.cli", "diff", str(base), str(run), "--json",
                                    "--quiet", "--threads", str(min(16, os.cpu_count() or 1))], cwd=REPO, env=_env(),
                                   capture_output=True, text=True, timeout=max(10, r.left()))
                ok = d.returncode == 0
                meta[f"{tag}_diff"] = {"rc": d.returncode, "seconds": round(time.time() - t, 1),
                                       "result": json.loads(d.stdout.strip().splitlines()[-1]) if ok
                                       else d.stderr[-500:]}
            shutil.rmtree(work / tag / "runs", ignore_errors=True)  # free the disk for the next one
    summary = compare(r.rows, a.loss_rtol)
    meta["seconds"] = round(time.time() - r.t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "validate.json").write_text(json.dumps({"meta": meta, "runs": r.rows, "comparison": summary},
                                                  indent=1, default=str))
    keys = ["tag", "algorithm", "processes", "precision", "rc", "steps", "seconds_per_step", "tokens_per_second",
            "completion_tokens_per_second",
            "unchanged_tol0", "unchanged_tol1e-05", "peak_torch_mb_per_rank", "peak_nvsmi_mb_per_gpu", "wall_seconds",
            "concurrent_runs"]
    with open(out / "validate.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(r.rows)
    cols = list(summary[0]) if summary else []
    md = [f"# FSDP validation ({a.device}, shape {shape}, {a.precision}, {a.steps} steps, {meta['seconds']} s)", ""]
    if cols:
        md += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        md += ["| " + " | ".join(str(s[c]) for c in cols) + " |" for s in summary]
    md += ["", "```", json.dumps({k: v for k, v in meta.items()}, default=str, indent=1), "```"]
    (out / "validate.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    failed = [x for x in r.rows if x.get("rc") not in (0,) and not str(x.get("rc")).startswith("skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
