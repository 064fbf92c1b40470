"""Worker of tests/test_distributed_ppo_prime.py, started by ``torchrun --nproc_per_node N``.

``python _dist_worker.py BASE RESULTS JOBS_JSON``: runs each job of JOBS_JSON in order in this
process group — train runs ``{"alg", "out", "precision", "steps", "checkpoint_every",
"stop_after", "sharding", "mask", "device", "hp"}`` (a run stopped by ``stop_after`` is followed by the
same run again, which resumes), ``{"reduce": true}`` (cross-rank reductions on hand-built tensors),
or ``{"gen": true}`` (FSDP generation, whole policy vs per layer) — and writes, per rank,
RESULTS/rank<r>.json: the reductions' and generations' results and every file-system write this rank made
under a run folder (recorded by an audit hook: opens for writing, mkdir, rename/replace,
remove, rmtree), so the test can check that only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from test_own_algorithms import DigitTask  # the toy task (reward: a digit in the completion)

# the hand-built batch of the reduction checks: 5 rows, 4 completion tokens, dyadic values
X = [[1.0, 2.0, 3.0, 4.0], [-2.0, 0.5, 8.0, 0.0], [4.0, 4.0, -1.0, 2.0], [0.25, 6.0, 1.0, -3.0], [2.0, 2.0, 2.0, 7.0]]
M = [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]


def _count_units() -> list[int]:
    """FSDP units of every model the next run wraps (distributed.wrap, counted as it returns)."""
    from torch.distributed.fsdp import FSDPModule

    from rlsparsity.algorithms import distributed as D

    made: list[int] = []
    wrap = getattr(D.wrap, "__wrapped__", D.wrap)

    def counting(d: Any, model: Any, trainable: bool = True) -> Any:
        out = wrap(d, model, trainable)
        made.append(sum(isinstance(m, FSDPModule) for m in out.modules()))
        return out

    counting.__wrapped__ = wrap
    D.wrap = counting
    return made


def reductions(d: Any) -> dict[str, Any]:
    from rlsparsity.algorithms import distributed as D
    from rlsparsity.algorithms.rollout import masked_whiten, token_mean
    from rlsparsity.algorithms.steps import local_share

    x, m = torch.tensor(X), torch.tensor(M, dtype=torch.float32)
    lo, hi = D.chunk(len(X), d.rank, d.world)
    g = D.gather_rows(d, {"x": x[lo:hi], "m": m[lo:hi]}, hi - lo)
    batch = {"input_ids": torch.zeros(5, 6, dtype=torch.long), "completion_mask": m, "prompt_len": 2, "x": x}
    share = local_share(d, batch)
    tiny = local_share(d, {k: (v[:1] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()})
    return {
        "chunk": [lo, hi],
        "gathered_x": g["x"].tolist(),
        "whitened": masked_whiten(g["x"], g["m"]).tolist(),
        "token_mean": D.all_sum(d, {"v": float(token_mean(share["x"], share["completion_mask"],
                                                            share["token_count"]))})["v"],
        "share_rows": share["input_ids"].shape[0],
        "tiny_weight": tiny["row_weight"].tolist(),
        "tiny_mask_sum": float(tiny["completion_mask"].sum()),
        "sum_of_ranks": D.all_sum(d, {"r": float(d.rank + 1)})["r"],
    }


def generation(base: Path) -> dict[str, Any]:
    """This rank's rows (2 prompts x 2 samples, per-row seeds) from an FSDP-sharded fp32 policy,
    sampled as ``rollout.sample_share`` does: with the policy all-gathered whole (``full_params``,
    ``synced_gpus=False``) and through FSDP2's per-layer all-gathers (``synced_gpus=True``). Rank
    0 stops after 3 new tokens and rank 1 after 8: whole, each rank stops on its own; per layer,
    rank 0 must keep running forwards (each one a collective) until rank 1 is done; ``forwards``
    counts the root forwards of each mode."""
    from rlsparsity.algorithms import distributed as D
    from rlsparsity.algorithms.rollout import row_seed, sample_seeded
    from rlsparsity.modeling import load_tokenizer

    os.environ["RLSPARSITY_SHARDING"] = "fsdp"
    d = D.setup("cpu")
    tok, task = load_tokenizer(base), DigitTask()
    model = D.wrap(d, D.load_policy_like(d, base, "fp32"))
    calls: list[int] = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    prompts = [task.prompt(e, tok) for e in task.train[:4]]
    P = max(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    lo, hi = D.chunk(len(prompts), d.rank, d.world)
    seeds = [row_seed(7, r) for r in range(2 * lo, 2 * hi)]
    new = 3 if d.rank == 0 else 8
    with D.full_params(d, model) as m:
        full = sample_seeded(m, tok, prompts[lo:hi], 2, new, 1.0, seeds, P, synced_gpus=False)
    n_full = len(calls)
    layer = sample_seeded(model, tok, prompts[lo:hi], 2, new, 1.0, seeds, P, synced_gpus=True)
    return {"full": full.input_ids.tolist(), "layer": layer.input_ids.tolist(), "new_tokens": new,
            "forwards": [n_full, len(calls) - n_full]}


def main() -> int:
    from rlsparsity.algorithms import distributed as D
    from rlsparsity.algorithms import ppo, prime
    from rlsparsity.algorithms.common import Interrupted, TrainSpec
    from rlsparsity.grid import Run
    from rlsparsity.modeling import torch_threads

    base, results, jobs = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    rank = int(os.environ["RANK"])
    run_dirs = [str(Path(j["out"]).resolve()) for j in jobs if "out" in j]
    writes: list[list[str]] = []

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if event not in ("open", "os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree"):
            return
        if event == "open":
            mode, flags = args[1], args[2]
            if not ((isinstance(mode, str) and any(c in mode for c in "wax+"))
                    or (mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))):
                return
        for a in args[:2]:
            if isinstance(a, (str, os.PathLike)) and any(os.path.abspath(a).startswith(r) for r in run_dirs):
                writes.append([event, os.fspath(a)])
                return

    sys.addaudithook(audit)
    torch_threads()
    out: dict[str, Any] = {"rank": rank, "runs": []}
    for job in jobs:
        if job.get("reduce"):
            out["reduce"] = reductions(D.setup("cpu"))  # gloo: call it before any cuda job
            continue
        if job.get("gen"):
            out["gen"] = generation(base)
            continue
        os.environ["RLSPARSITY_SHARDING"] = job.get("sharding", "fsdp")
        mod = {"ppo": ppo, "prime": prime}[job["alg"]]
        hp = {**mod.DEFAULTS, "max_new_tokens": 8, "lr": 3e-3, "prompts_per_rollout": 4, "minibatch_size": 8,
              **job.get("hp", {})}
        spec = TrainSpec(run=Run("llama", job["alg"], "on_policy", job["precision"], 1), base_dir=base,
                         out_dir=Path(job["out"]), task=DigitTask(), steps=job["steps"],
                         checkpoint_every=job.get("checkpoint_every", 3),
                         hparams=hp, stop_after=job.get("stop_after"),
                         device=job.get("device", "cpu").replace("cuda", f"cuda:{os.environ['LOCAL_RANK']}"),
                         fsdp_units=job.get("units", "block"))
        made = _count_units()
        if job.get("mask"):  # subnetwork finetuning: only True entries may move
            from safetensors.torch import load_file

            spec.mask = {k: v.bool() for k, v in load_file(job["mask"]).items()}
        try:
            stats = mod.train(spec)
        except Interrupted:
            spec.stop_after = None
            stats = mod.train(spec)
        out["runs"].append({"out": job["out"], "resumed_from": stats["resumed_from"], "sharding": stats["sharding"],
                            "fsdp_units": stats["fsdp_units"], "units_made": list(made),
                            "loss": [h["loss"] for h in stats["history"]],
                            "reward_mean": [h["reward_mean"] for h in stats["history"]],
                            "completion_length": [h["completion_length"] for h in stats["history"]]})
    out["writes"] = writes
    sys.addaudithook(lambda *a: None)  # (hooks cannot be removed; the results file is outside the run folders)
    (results / f"rank{rank}.json").write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
