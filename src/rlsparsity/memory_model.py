"""GPU memory of one training run: bytes per GPU by algorithm x precision x strategy x GPUs.

Pure arithmetic (no torch), used by ``rlsparsity memory`` (the README table), by the default
``sharding`` of a family with several GPUs (:func:`choose_sharding`) and by the tests. An
estimate of what PyTorch allocates, not a measurement (benchmarks/fsdp measures it on H200s).

Per GPU = model states + activations + a fixed overhead (CUDA context, allocator slack).

Model states, bytes per parameter of each model a run holds (AdamW: two moments):

=============  =========  =====  =====  ======  =====  ===========================================
precision      weights    grads  Adam   train   frozen  (frozen = reference model, never updated)
=============  =========  =====  =====  ======  =====  ===========================================
bf16           2          2      2+2    8       2       bf16 parameters, updates rounded to bf16
fp32-master    4          4      4+4    16      4       fp32 master weights and compute; bf16 stored
fp32           4          4      4+4    16      4
=============  =========  =====  =====  ======  =====  ===========================================

Models held (:data:`MODELS`): grpo/rloo the policy (plus a frozen reference when ``beta`` > 0);
dpo/kto policy + reference; orpo/simpo/sft the policy alone; ppo policy + critic (the trunk
with a scalar head: P - vocab x hidden parameters when the LM head is untied) + reference;
prime policy + implicit PRM (a full LM) + reference.

Strategy: ``none`` (one GPU) and ``ddp`` keep every model whole on every GPU; ``fsdp`` (full
shard) divides all model states by N and adds what is unsharded in flight at the backward
peak, in the compute dtype (:data:`GATHERED_LAYERS`): with the family's ``fsdp_units: block``
four layers' worth (the layer being differentiated: its gathered parameters and its full
gradients; the next layer prefetched; the previous layer's reduce-scatter input), with
``sublayer`` (attention and MLP units) about two. Measured by torch's FSDP2 memory tracker
on the 1B shape of benchmarks/fsdp (``mem_sim.py``: 0.48 and 0.22 GiB of unsharded values,
a layer being 0.117 GiB), where the two-layer term of earlier versions undercounted blocks.

Generation (ppo/prime under ``fsdp`` with hparam ``rollout_gather: full``, their default):
the policy is all-gathered whole for the rollout (``algorithms.distributed.full_params``: one
gather, no collective per decoding step), so that phase holds a full compute-dtype copy of the
policy (P x compute bytes) on every GPU beside the sharded states. The two phases do not
overlap: per GPU = states + max(gathered layers + activations, generation). With
``rollout_gather: layer`` they generate through FSDP2's per-layer all-gathers
(``generate(synced_gpus=True)``), as TRL's grpo/rloo do, and this term is 0 (the gathered
layers are already counted; the KV cache of generation is counted for no algorithm). ddp and
none hold the whole policy anyway: no term.

Activations (no activation checkpointing), per trainable LM, for the rows one GPU processes
in one backward (the global batch split over N GPUs for ddp/fsdp): per token and layer
``6h + 2 kv + 4 I`` values in the compute dtype (norm inputs/outputs of both blocks, q, k,
v, attention output; gate, up, act(gate), act(gate)*up of the MLP; flash/SDPA attention
keeps no s x s scores), plus the logits ``vocab x (compute + 4 + 4)`` bytes per token (the
logits, their fp32 upcast and the log-softmax). A critic stores the trunk's activations
without logits. Compute dtype: bf16 for ``bf16``, fp32 otherwise (every strategy: sharding
does not change a run's arithmetic).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GB = 10**9
GPU_BYTES = 80 * GB  # an 80 GB card (A100/H100 80GB); an H200 has 141 GB
OVERHEAD = 4 * GB  # CUDA context, NCCL buffers, allocator fragmentation
PRECISIONS = ("bf16", "fp32-master", "fp32")
STRATEGIES = ("none", "ddp", "fsdp")
GPU_COUNTS = (1, 2, 4, 8)

#: (weights, grads, one AdamW moment) bytes per trainable parameter, and bytes per frozen one
STATE_BYTES = {"bf16": (2, 2, 2), "fp32-master": (4, 4, 4), "fp32": (4, 4, 4)}
FROZEN_BYTES = {"bf16": 2, "fp32-master": 4, "fp32": 4}

#: algorithm -> (trainable LMs, critics, frozen reference); grpo/rloo: reference only if beta > 0
MODELS = {
    "grpo": (1, 0, 0), "rloo": (1, 0, 0), "dpo": (1, 0, 1), "kto": (1, 0, 1), "orpo": (1, 0, 0),
    "simpo": (1, 0, 0), "sft": (1, 0, 0), "ppo": (1, 1, 1), "prime": (2, 0, 1),
}
#: in-project algorithms whose FSDP rollout all-gathers the whole policy with ``rollout_gather: full``
GATHER_FOR_ROLLOUT = ("ppo", "prime")
#: fsdp_units -> layers' worth of unsharded parameters + gradients in flight at the backward peak
GATHERED_LAYERS = {"block": 4, "sublayer": 2}
OFFLINE_MAX_LENGTH = 256  # trl_algos: max_length of the preference / SFT rows
PROMPT_TOKENS = 256  # assumed prompt length of the online algorithms (a gsm-style chat prompt)


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a model's architecture."""

    params: int
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    kv_dim: int  # num_key_value_heads x head_dim
    tied: bool = False

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def layer_params(self) -> int:
        return (self.params - self.embedding_params) // self.layers


#: architectures of config/paper.yaml's hub models (from their config.json files; params as
#: published). OLMoE: 64 experts of intermediate 1024, 8 active: activations use 8 x 1024.
KNOWN: dict[str, Shape] = {
    "allenai/Llama-3.1-Tulu-3-8B-SFT": Shape(8_030_261_248, 4096, 32, 14336, 128256, 1024),
    "mistralai/Mistral-7B-v0.1": Shape(7_241_732_096, 4096, 32, 14336, 32000, 1024),
    "Qwen/Qwen2.5-7B": Shape(7_615_616_512, 3584, 28, 18944, 152064, 512),
    "Qwen/Qwen2.5-Math-7B": Shape(7_615_616_512, 3584, 28, 18944, 152064, 512),
    "deepseek-ai/deepseek-math-7b-instruct": Shape(6_910_365_696, 4096, 30, 11008, 102400, 4096),
    "allenai/OLMo-2-1124-7B-SFT": Shape(7_298_617_344, 4096, 32, 11008, 100352, 4096),
    "google/gemma-2-9b-it": Shape(9_241_705_984, 3584, 42, 14336, 256000, 2048, tied=True),
    "microsoft/Phi-3-mini-4k-instruct": Shape(3_821_079_552, 3072, 32, 8192, 32064, 3072),
    "Qwen/Qwen3-8B": Shape(8_190_735_360, 4096, 36, 12288, 151936, 1024),
    "allenai/OLMoE-1B-7B-0924": Shape(6_919_161_856, 2048, 16, 8192, 50304, 2048),
}


def llama_params(hidden: int, layers: int, intermediate: int, vocab: int, heads: int, kv_heads: int,
                 head_dim: int | None = None, tied: bool = False) -> int:
    """Parameters of a Llama-shaped decoder (no biases; RMSNorm weights)."""
    hd = head_dim or hidden // heads
    attn = hidden * heads * hd + 2 * hidden * kv_heads * hd + heads * hd * hidden
    mlp = 3 * hidden * intermediate
    per_layer = attn + mlp + 2 * hidden
    return layers * per_layer + hidden + vocab * hidden * (1 if tied else 2)


def shape_from_hf_config(cfg: dict[str, Any]) -> Shape:
    """A Shape from a (Llama-like) HF ``config.json`` dict."""
    h, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    hd = int(cfg.get("head_dim") or h // heads)
    tied = bool(cfg.get("tie_word_embeddings", False))
    layers, inter, vocab = int(cfg["num_hidden_layers"]), int(cfg["intermediate_size"]), int(cfg["vocab_size"])
    return Shape(llama_params(h, layers, inter, vocab, heads, kv, hd, tied), h, layers, inter, vocab, kv * hd, tied)


def state_bytes(shape: Shape, algorithm: str, precision: str, beta: float = 0.0) -> int:
    """Bytes of all model states of one run, unsharded (parameters, gradients, AdamW)."""
    lms, critics, frozen = MODELS[algorithm]
    if algorithm in ("grpo", "rloo") and beta > 0:
        frozen = 1
    w, g, o = STATE_BYTES[precision]
    critic_params = shape.params if shape.tied else shape.params - shape.vocab * shape.hidden
    trainable = lms * shape.params + critics * critic_params
    return trainable * (w + g + 2 * o) + frozen * shape.params * FROZEN_BYTES[precision]


def compute_bytes(precision: str) -> int:
    """Bytes of one activation / gathered parameter value: the run's precision in every strategy."""
    return 2 if precision == "bf16" else 4


def activation_bytes(shape: Shape, algorithm: str, precision: str, strategy: str, tokens: int,
                     checkpointing: bool = False) -> int:
    """Stored activations for ``tokens`` tokens of one GPU's backward (see module doc). With
    activation checkpointing each layer keeps only its input (h values per token) and one
    layer's activations exist at a time during the recompute."""
    lms, critics, _ = MODELS[algorithm]
    cb = compute_bytes(precision)
    layer = tokens * (6 * shape.hidden + 2 * shape.kv_dim + 4 * shape.intermediate) * cb
    trunk = tokens * shape.layers * shape.hidden * cb + layer if checkpointing else shape.layers * layer
    logits = tokens * shape.vocab * (cb + 8)
    return lms * (trunk + logits) + critics * trunk


def rows_and_length(algorithm: str, hp: dict[str, Any], max_new_tokens: int = 64) -> tuple[int, int]:
    """(rows of one optimiser step's global batch, tokens per row) from the run's hparams."""
    if algorithm in ("ppo", "prime"):
        return int(hp.get("minibatch_size", 16)), PROMPT_TOKENS + int(hp.get("max_new_tokens") or max_new_tokens)
    if algorithm in ("grpo", "rloo"):
        return int(hp.get("batch_size", 64)), PROMPT_TOKENS + max_new_tokens
    pairs = 2 if algorithm in ("dpo", "orpo", "simpo") else 1  # chosen + rejected rows
    return pairs * int(hp.get("batch_size", 64)), OFFLINE_MAX_LENGTH


@dataclass(frozen=True, order=True)
class Run:
    """What of one configured run the estimate needs."""

    algorithm: str
    precision: str
    rows: int  # rows of one optimiser step's global batch
    seq_len: int
    beta: float = 0.0
    checkpointing: bool = False
    rollout_gather: str = "full"  # ppo/prime: how the FSDP policy generates (see module doc)
    units: str = "block"  # the family's fsdp_units

    def estimate(self, shape: Shape, strategy: str, gpus: int) -> Estimate:
        return per_gpu(shape, self.algorithm, self.precision, strategy, gpus, self.rows, self.seq_len, self.beta,
                       self.checkpointing, self.rollout_gather, self.units)


@dataclass(frozen=True)
class Estimate:
    states: int
    gathered: int
    activations: int
    overhead: int
    generation: int = 0  # the whole policy gathered for a rollout (ppo/prime, fsdp, rollout_gather full)

    @property
    def total(self) -> int:
        return self.states + max(self.gathered + self.activations, self.generation) + self.overhead


def per_gpu(shape: Shape, algorithm: str, precision: str, strategy: str, gpus: int, rows: int, seq_len: int,
            beta: float = 0.0, checkpointing: bool = False, rollout_gather: str = "full",
            units: str = "block") -> Estimate:
    """Bytes on each GPU of a run on ``gpus`` GPUs with ``strategy``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown sharding {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if strategy == "none" and gpus != 1:
        raise ValueError(f"sharding 'none' runs on one GPU, not {gpus}")
    states = state_bytes(shape, algorithm, precision, beta)
    gathered = generation = 0
    if strategy == "fsdp":
        states = math.ceil(states / gpus)
        gathered = GATHERED_LAYERS[units] * shape.layer_params * compute_bytes(precision)
        if algorithm in GATHER_FOR_ROLLOUT and rollout_gather == "full":
            generation = shape.params * compute_bytes(precision)
    tokens = math.ceil(rows / gpus) * seq_len
    acts = activation_bytes(shape, algorithm, precision, strategy, tokens, checkpointing)
    return Estimate(states, gathered, acts, OVERHEAD, generation)


def fits(est: Estimate, gpu_bytes: int = GPU_BYTES) -> bool:
    return est.total <= gpu_bytes


def choose_sharding(shape: Shape | None, runs: list[Run], gpus: int,
                    gpu_bytes: int = GPU_BYTES) -> str:
    """Default ``sharding`` of a family on ``gpus`` GPUs: none on one GPU; ddp when every run
    fits replicated, else fsdp. Unknown shape: ddp."""
    if gpus <= 1:
        return "none"
    if shape is None:
        return "ddp"
    ok = all(fits(r.estimate(shape, "ddp", gpus), gpu_bytes) for r in runs)
    return "ddp" if ok else "fsdp"


def min_gpus(shape: Shape, run: Run, gpu_bytes: int = GPU_BYTES) -> tuple[int, str] | None:
    """Fewest GPUs of :data:`GPU_COUNTS` (and the strategy) on which the run fits; None: not on 8."""
    for n in GPU_COUNTS:
        for strat in (("none",) if n == 1 else ("ddp", "fsdp")):
            if fits(run.estimate(shape, strat, n), gpu_bytes):
                return n, strat
    return None


# --------------------------------------------------------------------------- config side
def family_shape(name: str, spec: dict[str, Any] | None) -> Shape | None:
    """The Shape of a configured family: a known hub id, a local folder's config.json, or a
    tiny registry family (its config built from the registry); None when unknown."""
    spec = spec or {}
    path = spec.get("path")
    if path:
        if path in KNOWN:
            return KNOWN[path]
        cfg = Path(str(path)).expanduser() / "config.json"
        return shape_from_hf_config(json.loads(cfg.read_text())) if cfg.is_file() else None
    from rlsparsity.families import FAMILIES, TINY_DEFAULTS, tiny_size

    if name not in FAMILIES:
        return None
    size = tiny_size(name, spec)
    h, heads = int(size["hidden_size"]), int(size["num_attention_heads"])
    kv = int(size.get("num_key_value_heads") or heads)
    vocab = 64  # the tiny character tokenizer (~40-60 symbols)
    inter = int(size.get("intermediate_size", TINY_DEFAULTS.get("intermediate_size", 4 * h)))
    layers = int(size["num_hidden_layers"])
    hd = h // heads
    return Shape(llama_params(h, layers, inter, vocab, heads, kv, hd), h, layers, inter, vocab, kv * hd)


def config_runs(config: dict[str, Any], family: str) -> list[Run]:
    """The distinct :class:`Run` settings of ``family`` in the config's grids."""
    from rlsparsity import grid as G

    out = set()
    task_new = int((config.get("task") or {}).get("max_new_tokens") or 64)
    units = G.fsdp_units(config, family)
    for r in G.expand_runs(config):
        if r.family != family:
            continue
        hp = G.run_hparams(config, r.algorithm, r.precision)
        rows, seq = rows_and_length(r.algorithm, hp, task_new)
        out.add(Run(r.algorithm, r.precision, rows, seq, float(hp.get("beta", 0.0) or 0.0),
                    bool(hp.get("gradient_checkpointing", False)), str(hp.get("rollout_gather", "full")), units))
    return sorted(out)


def family_sharding(config: dict[str, Any], family: str) -> str:
    """The family's ``sharding``: as configured, else :func:`choose_sharding`."""
    spec = config["families"].get(family) or {}
    gpus = int(spec.get("gpus", 0) or 0)
    if spec.get("sharding"):
        return str(spec["sharding"])
    if gpus <= 1:
        return "none"
    return choose_sharding(family_shape(family, spec), config_runs(config, family), gpus)


def table(config: dict[str, Any], gpu_bytes: int = GPU_BYTES) -> list[dict[str, Any]]:
    """One row per (family, algorithm, precision) of the config: GB per GPU on 1/2/4/8 GPUs
    (none on 1; ddp and fsdp on more), the fewest GPUs that fit, and the family's setting."""
    rows = []
    for fam, spec in config["families"].items():
        shape = family_shape(fam, spec)
        gpus = int((spec or {}).get("gpus", 0) or 0)
        strat = family_sharding(config, fam)
        for run in config_runs(config, fam):
            row: dict[str, Any] = {"family": fam, "algorithm": run.algorithm, "precision": run.precision,
                                   "rows": run.rows, "seq_len": run.seq_len, "checkpointing": run.checkpointing,
                                   "params_B": round(shape.params / 1e9, 2) if shape else None}
            if shape is None:
                rows.append({**row, "fits_configured": None})
                continue
            row["bytes_per_param"] = round(state_bytes(shape, run.algorithm, run.precision, run.beta) / shape.params, 2)
            for n in GPU_COUNTS:
                for s in (("none",) if n == 1 else ("ddp", "fsdp")):
                    row[f"{s}@{n}"] = round(run.estimate(shape, s, n).total / GB, 1)
            best = min_gpus(shape, run, gpu_bytes)
            row["min_gpus"] = f"{best[0]} {best[1]}" if best else "> 8"
            row["configured"] = f"{max(gpus, 1)} {strat}"
            row["fits_configured"] = fits(run.estimate(shape, strat if gpus > 1 else "none", max(gpus, 1)), gpu_bytes)
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    cols = ["family", "algorithm", "precision", "params_B", "bytes_per_param", "none@1", "ddp@2", "fsdp@2",
            "fsdp@4", "fsdp@8", "min_gpus", "configured", "fits_configured"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _cmd_memory(args: argparse.Namespace) -> int:
    from rlsparsity.config import load_config

    rows = table(load_config(args.config), int(args.gpu_gb * GB))
    print(json.dumps(rows, indent=1) if args.json else markdown(rows))
    bad = [f"{r['family']}/{r['algorithm']}/{r['precision']}" for r in rows if r.get("fits_configured") is False]
    if bad:
        print(f"does not fit as configured ({len(bad)}): {', '.join(bad[:8])}")
        return 1
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("memory", help="GPU memory per run by the memory model (algorithm x precision x sharding)")
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--gpu-gb", type=float, default=GPU_BYTES / GB, help="memory of one GPU in GB (default 80)")
    p.add_argument("--json", action="store_true", help="rows as JSON instead of a markdown table")
    p.set_defaults(func=_cmd_memory)
