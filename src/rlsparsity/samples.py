"""On-policy preference samples, drawn once and shared by dpo, kto, orpo, simpo and sft.

The offline algorithms on ``on_policy`` data label completions sampled from the base model
(rlsparsity.preference). Those samples depend on the base, the run's precision (the model
is loaded as the run loads it), the device, the seed, the task and three hyperparameters
(``n_prompts``, ``k``, ``sample_temperature``): not on the algorithm. Rule
``preference_samples`` draws them once per (family, precision, seed, n_prompts, k,
temperature) into

    results/samples/<family>/<precision>/seed<seed>/n<n_prompts>_k<k>_t<temperature>.json

(JSON, no pickle), and the training jobs pass the files on (``rlsparsity train --samples``).
The draw is exactly the one the training run would make itself (same seeds, same model
loading), so a run's data and weights do not depend on where its samples came from (tested).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from rlsparsity import grid as G

#: Algorithms that train on labelled samples of the base (rlsparsity.preference).
OFFLINE_ALGORITHMS: tuple[str, ...] = ("dpo", "kto", "orpo", "simpo", "sft")
FORMAT = "rlsparsity.preference_samples/1"


def sample_params(config: dict[str, Any], algorithm: str) -> tuple[int, int, float]:
    """(n_prompts, k, sample_temperature) of ``algorithm``: its defaults under config ``train.hparams``."""
    from rlsparsity.algorithms.trl_algos import DEFAULTS

    hp = {**DEFAULTS[algorithm], **((config["train"].get("hparams") or {}).get(algorithm) or {})}
    return int(hp["n_prompts"]), int(hp["k"]), float(hp["sample_temperature"])


def positive_temperature(temperature: float, what: str = "sample_temperature") -> float:
    """``temperature`` as a float; ValueError naming ``what`` unless it is finite and > 0."""
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"{what} {temperature!r} is not a positive number")
    return t


def temperature_tag(temperature: float) -> str:
    """The temperature as it appears in file names: 1.0 -> ``1``, 0.7 -> ``0.7`` (never an exponent)."""
    return f"{positive_temperature(temperature):.6f}".rstrip("0").rstrip(".")


def needs_samples(run: G.Run) -> bool:
    return run.data == "on_policy" and run.algorithm in OFFLINE_ALGORITHMS


def samples_rel(family: str, precision: str, seed: int, n_prompts: int, k: int, temperature: float) -> str:
    return f"samples/{family}/{precision}/seed{seed}/n{n_prompts}_k{k}_t{temperature_tag(temperature)}.json"


def samples_files(config: dict[str, Any], runs: list[G.Run], results: str | Path) -> list[str]:
    """The sample files a list of runs trains on (each file once)."""
    out: dict[str, None] = {}
    for r in runs:
        if needs_samples(r):
            n, k, t = sample_params(config, r.algorithm)
            out[str(Path(results) / samples_rel(r.family, r.precision, r.seed, n, k, t))] = None
    return list(out)


def header(family: str, precision: str, seed: int, n_prompts: int, k: int, temperature: float, task: str,
           device: str) -> dict[str, Any]:
    return {"format": FORMAT, "family": family, "precision": precision, "seed": int(seed),
            "n_prompts": int(n_prompts), "k": int(k), "temperature": float(temperature), "task": task,
            "device": device}


def draw(config: dict[str, Any], family: str, precision: str, seed: int, n_prompts: int, k: int,
         temperature: float, device: str = "cpu") -> dict[str, Any]:
    """Load the base as a ``precision`` run does and draw its labelled samples."""
    import random

    import torch

    from rlsparsity.algorithms.common import seed_everything
    from rlsparsity.modeling import load_model, load_tokenizer, torch_threads
    from rlsparsity.preference import sample_labelled
    from rlsparsity.tasks import task_from_config

    torch_threads()
    base = G.base_dir(family, config["results"])
    if not (base / "config.json").exists():
        raise FileNotFoundError(f"base model missing: {base}")
    task = task_from_config(config)
    seed_everything(seed)  # as trl_algos._load before loading the model
    model = load_model(base, precision, device)
    tok = load_tokenizer(base)
    entries = random.Random(seed).sample(task.train, min(n_prompts, len(task.train)))
    torch.manual_seed(seed)  # as preference.build_dataset before sampling
    samples = sample_labelled(model, tok, task, entries, k, temperature=temperature)
    return {**header(family, precision, seed, n_prompts, k, temperature, task.name, device),
            "samples": [{"question": e["question"], "prompt": p, "completions": cs, "rewards": rs}
                        for e, p, cs, rs in samples]}


def load(path: str | Path) -> dict[str, Any]:
    """A samples file; ValueError naming the file when it is not one."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read preference samples {p}: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("samples"), list):
        raise ValueError(f"{p} is not a preference samples file ({FORMAT})")
    return doc


def find(files: list[str | Path], family: str, precision: str, seed: int, n_prompts: int, k: int,
         task: str, temperature: float) -> dict[str, Any]:
    """The file among ``files`` drawn for exactly this setting (ValueError if none)."""
    want = {"family": family, "precision": precision, "seed": int(seed), "n_prompts": int(n_prompts), "k": int(k),
            "temperature": float(temperature), "task": task}
    for f in files:
        doc = load(f)
        if all(doc.get(key) == v for key, v in want.items()):
            return doc
    raise ValueError(f"no preference samples file for {want} among {[str(f) for f in files]}")


def _cmd_samples(args: argparse.Namespace) -> int:
    from rlsparsity.cli import CLIError
    from rlsparsity.config import load_config
    from rlsparsity.config_slices import write_json_atomic

    try:
        positive_temperature(args.temperature, "--temperature")
    except ValueError as e:
        raise CLIError(str(e)) from e
    cfg = load_config(args.config)
    if args.family not in cfg["families"]:
        raise CLIError(f"family {args.family!r} is not in {args.config}")
    doc = draw(cfg, args.family, args.precision, args.seed, args.n_prompts, args.k, args.temperature, args.device)
    write_json_atomic(args.out, doc)
    n = sum(len(s["rewards"]) for s in doc["samples"])
    print(json.dumps({"out": str(args.out), "prompts": len(doc["samples"]), "samples": n,
                      "correct": sum(sum(s["rewards"]) for s in doc["samples"]) / max(1, n)}))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("preference-samples", help="draw the on-policy samples dpo/kto/orpo/simpo/sft label")
    p.add_argument("--config", required=True)
    p.add_argument("--family", required=True)
    p.add_argument("--precision", required=True, choices=G.PRECISIONS)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--n-prompts", type=int, required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--temperature", type=float, required=True, help="sampling temperature (hparam sample_temperature)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_samples)
