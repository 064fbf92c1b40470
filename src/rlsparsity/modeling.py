"""Loading, saving, precision handling and batched generation for every family.

Precision axis (SPEC §3). Every base checkpoint is stored in bf16, as released models
are, so all three precisions start from exactly the same values:

* ``bf16``        parameters live on the bf16 grid and every optimiser step is rounded to it
                  (no fp32 master copy: sub-ulp updates are lost); saved bf16. On GPU the
                  tensors are bf16 (native). On CPU the values are the same bf16 numbers held in
                  fp32 tensors, compute/gradients/AdamW moments are fp32 and the parameters are
                  rounded to bf16 after each step (:func:`snap_to_bf16`): CPUs without a bf16
                  matrix unit (AVX2) run bf16 matmuls ~17x slower than fp32. Set
                  ``RLSPARSITY_BF16_COMPUTE=native`` for bf16 tensors on CPU too; run.json
                  records which (``bf16_compute``).
* ``fp32-master`` parameters and optimiser in fp32; the checkpoint is rounded to bf16.
* ``fp32``        fp32 throughout; saved fp32 (diffed exactly against the bf16 base).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PRECISION_DTYPES = {"bf16": "bfloat16", "fp32-master": "float32", "fp32": "float32"}
SAVE_DTYPES = {"bf16": "bfloat16", "fp32-master": "bfloat16", "fp32": "float32"}


def torch_threads() -> None:
    """Tiny models are fastest single-threaded (2 threads: 40-100x slower GRPO steps)."""
    import torch

    n = int(os.environ.get("RLSPARSITY_THREADS", os.environ.get("OMP_NUM_THREADS", "1")))
    torch.set_num_threads(max(1, n))


def bf16_compute(device: str = "cpu") -> str:
    """How a ``bf16`` run computes: ``native`` (bf16 tensors) or ``fp32`` (bf16 values in fp32
    tensors, rounded to bf16 after every optimiser step). ``RLSPARSITY_BF16_COMPUTE`` =
    auto (default: native on CUDA, fp32 elsewhere) | native | fp32."""
    mode = os.environ.get("RLSPARSITY_BF16_COMPUTE", "auto")
    if mode not in ("auto", "native", "fp32"):
        raise ValueError(f"RLSPARSITY_BF16_COMPUTE={mode!r}: expected auto, native or fp32")
    if mode == "auto":
        return "native" if str(device).startswith("cuda") else "fp32"
    return mode


def train_dtype(precision: str, device: str = "cpu") -> Any:
    import torch

    if precision == "bf16" and bf16_compute(device) == "fp32":
        return torch.float32
    return getattr(torch, PRECISION_DTYPES[precision])


def snap_to_bf16(model: Any, precision: str) -> None:
    """After an optimiser step of a ``bf16`` run held in fp32 tensors: round every parameter
    to the nearest bf16 value (round-to-nearest-even, as a bf16 tensor update would). A no-op
    for other precisions and for native bf16 tensors."""
    import torch

    if precision != "bf16":
        return
    with torch.no_grad():
        for p in model.parameters():
            if p.dtype == torch.float32:
                p.copy_(p.to(torch.bfloat16))


def save_dtype(precision: str) -> Any:
    import torch

    return getattr(torch, SAVE_DTYPES[precision])


def resolve_model(folder: str | Path, weights: bool = True) -> str:
    """A local model folder (checked) or a hub id, by the rule of :mod:`rlsparsity.paths`.

    Anything that looks like a filesystem path is local and must be a usable folder
    (config.json and *.safetensors weights when ``weights``; pickle-only folders are
    refused): :class:`rlsparsity.paths.PathProblem` (a FileNotFoundError) otherwise, never
    a hub lookup."""
    from rlsparsity.paths import check_local, looks_local, model_folder

    arg = str(folder)
    if not looks_local(arg):
        return arg
    return str(model_folder(arg) if weights else check_local(arg))


def load_model(folder: str | Path, precision: str = "fp32", device: str = "cpu") -> Any:
    """Load a causal LM from a local folder (or hub id) in the training dtype."""
    from transformers import AutoModelForCausalLM

    src = resolve_model(folder)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=train_dtype(precision, device))
    model = model.to(device)
    snap_to_bf16(model, precision)  # a bf16 run starts on the bf16 grid whatever the folder holds
    return model


def load_tokenizer(folder: str | Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(folder, weights=False))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def state_dict_for_save(model: Any, precision: str) -> dict[str, Any]:
    """Weights as they are stored for ``precision`` (contiguous, CPU, de-duplicated ties)."""
    dt = save_dtype(precision)
    seen: dict[int, str] = {}
    out: dict[str, Any] = {}
    for name, t in model.state_dict().items():
        key = t.data_ptr()
        if key in seen and t.numel() > 0:
            continue  # tied weight: store once (transformers re-ties on load)
        seen[key] = name
        out[name] = t.detach().to("cpu", dt).contiguous()
    return out


def save_model(model: Any, tokenizer: Any, out_dir: str | Path, precision: str) -> Path:
    """Save a normal HF folder in the precision's storage dtype."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = state_dict_for_save(model, precision)
    model.config.dtype = SAVE_DTYPES[precision]
    model.save_pretrained(out, state_dict=sd, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def save_weights(model: Any, path: str | Path, precision: str) -> Path:
    """Weights only (one safetensors file), for checkpoint series."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file(state_dict_for_save(model, precision), str(p), metadata={"format": "pt", "precision": precision})
    return p


def n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def generate(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int,
             do_sample: bool = False, temperature: float = 1.0, batch_size: int = 64,
             num_return_sequences: int = 1, progress: bool = False) -> list[str]:
    """Batched left-padded generation; returns completions only (special tokens removed),
    ``num_return_sequences`` per prompt in prompt order."""
    import torch
    from tqdm.auto import tqdm

    outs: list[str] = []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    batches = range(0, len(prompts), batch_size)
    for i in tqdm(batches, disable=not progress, desc="generate", leave=False):
        chunk = list(prompts[i : i + batch_size])
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.no_grad():
            gen = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
                temperature=temperature if do_sample else None, top_p=None, top_k=None,
                num_return_sequences=num_return_sequences,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
        new = gen[:, enc["input_ids"].shape[1]:]
        outs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    if was_training:
        model.train()
    return outs


def gen_batch_size(model: Any, default: int = 64) -> int:
    """Rows per ``generate`` call: ``RLSPARSITY_GEN_BATCH`` if set, else 512 on CUDA (decoding a
    small model is launch-bound there, so wider batches are nearly free) and ``default`` on CPU."""
    env = os.environ.get("RLSPARSITY_GEN_BATCH")
    if env:
        return max(1, int(env))
    dev = next(model.parameters()).device
    return 512 if dev.type == "cuda" else default


def max_new_tokens_for(model_or_folder: Any, task: Any = None) -> int:
    """Generation budget: the task's ``max_new_tokens`` (config ``task.max_new_tokens``) when
    set; else tiny char-level models answer in ~12 characters (16) and pretrained models
    write a sentence or two before the answer (64)."""
    if task is not None and getattr(task, "max_new_tokens", None):
        return int(task.max_new_tokens)
    cfg = getattr(model_or_folder, "config", None)
    if cfg is None:
        cfg = json.loads((Path(model_or_folder) / "config.json").read_text())
        vocab = cfg.get("vocab_size", 0)
    else:
        vocab = cfg.vocab_size
    return 16 if vocab <= 1024 else 64


def versions() -> dict[str, str]:
    """Package versions recorded next to every result."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("rlsparsity", "torch", "transformers", "trl", "safetensors", "reasoning-gym", "snakemake"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_json(path: str | Path, obj: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(p)
