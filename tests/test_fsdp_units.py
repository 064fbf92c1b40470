"""FSDP units (the family's ``fsdp_units``): which modules become FSDP2 units, that accelerate
wraps what we name for the TRL trainers, and what the choice does to the peak memory per rank
(torch's FSDP2 memory tracker over fake tensors, benchmarks/fsdp/mem_sim.py). The 2-process
run with sublayer units giving the 1-process weights is in tests/test_distributed_ppo_prime.py."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from rlsparsity.algorithms import distributed as D

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8)


@pytest.mark.parametrize(("cls", "cfg", "block", "subs"), [
    (LlamaForCausalLM, LlamaConfig, "LlamaDecoderLayer", ["LlamaAttention", "LlamaMLP"]),
    (Qwen2ForCausalLM, Qwen2Config, "Qwen2DecoderLayer", ["Qwen2Attention", "Qwen2MLP"]),
    (Gemma2ForCausalLM, Gemma2Config, "Gemma2DecoderLayer", ["Gemma2Attention", "Gemma2MLP"]),
])
def test_units_are_the_blocks_or_also_their_attention_and_mlp(cls, cfg, block, subs) -> None:
    model = cls(cfg(**SMALL))
    assert D.unit_classes(model) == [block]  # accelerate's default: _no_split_modules
    assert D.unit_classes(model, "sublayer") == sorted([block, *subs])  # norms (tiny, torch-like) stay in the block
    with pytest.raises(ValueError, match="unknown fsdp_units 'layer'"):
        D.unit_classes(model, "layer")


def test_a_plain_torch_child_is_never_a_unit() -> None:
    """A block whose big child is a bare nn.Linear: naming 'Linear' would shard every linear
    layer, lm_head too (TRL's GRPO reads lm_head.weight outside its forward)."""
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(64, 64)
            self.norm = torch.nn.LayerNorm(64)

    class Model(torch.nn.Module):
        _no_split_modules = ["Block"]

        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(), Block()])
            self.head = torch.nn.Linear(64, 10)

    assert D.unit_classes(Model(), "sublayer") == ["Block"]


def test_accelerate_wraps_the_units_named_for_the_trl_trainers(monkeypatch: pytest.MonkeyPatch) -> None:
    """trl_algos._fsdp_units sets accelerate's own FSDP_TRANSFORMER_CLS_TO_WRAP under FSDP; the
    plugin the trainer's Accelerator builds then wraps attention and MLP as units, bottom-up."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    from rlsparsity.algorithms.common import TrainSpec
    from rlsparsity.algorithms.trl_algos import _fsdp_units
    from rlsparsity.grid import Run

    model = LlamaForCausalLM(LlamaConfig(**SMALL))
    spec = TrainSpec(run=Run("llama", "sft", "on_policy", "bf16", 1), base_dir=Path("."), out_dir=Path("."),
                     task=None, fsdp_units="sublayer")
    monkeypatch.delenv("FSDP_TRANSFORMER_CLS_TO_WRAP", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")  # not sharded: nothing is set
    _fsdp_units(spec, model)
    assert "FSDP_TRANSFORMER_CLS_TO_WRAP" not in __import__("os").environ
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    _fsdp_units(spec, model)
    policy = fsdp2_prepare_auto_wrap_policy(
        FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap"), model)
    assert [n for n, m in model.named_modules() if policy(m)] == [
        f"model.layers.{i}{s}" for i in range(2) for s in ("", ".self_attn", ".mlp")]
    with pytest.raises(ValueError, match="fsdp_units 'layers'"):
        _fsdp_units(TrainSpec(run=spec.run, base_dir=Path("."), out_dir=Path("."), task=None, fsdp_units="layers"),
                    model)


def test_sublayer_units_lower_the_tracked_peak_per_rank() -> None:
    """benchmarks/fsdp/mem_sim.py at the tiny shape: exact parameter, gradient and shard bytes,
    the units our wrap made, and a lower peak per rank with sublayer units."""
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fsdp" / "mem_sim.py"), "--shape", "tiny",
                        "--precision", "fp32"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    one, block, sub = json.loads(p.stdout[:p.stdout.rindex("}") + 1])["rows"]
    sys.path.insert(0, str(REPO / "benchmarks" / "fsdp"))
    from validate import SHAPES

    s = SHAPES["tiny"]
    model = LlamaForCausalLM(LlamaConfig(vocab_size=308, tie_word_embeddings=False, **s))
    n = sum(q.numel() for q in model.parameters())
    assert one["params"] == n and (one["world"], one["fsdp_units_made"]) == (1, 0)
    steps = 4 * len(list(model.parameters()))  # AdamW's step counter: one fp32 scalar per parameter
    assert one["parts_bytes"]["Parameter"] == 4 * n and one["parts_bytes"]["Optstate"] == 2 * 4 * n + steps  # fp32
    layers = s["num_hidden_layers"]
    assert (block["fsdp_units_made"], sub["fsdp_units_made"]) == (layers + 1, 3 * layers + 1)  # + the root
    shard = sum(4 * math.ceil(q.shape[0] / 2) * (q.numel() // q.shape[0]) for q in model.parameters())  # dim-0 shards
    assert block["parts_bytes"]["Sharded Param"] == sub["parts_bytes"]["Sharded Param"] == shard
    assert block["parts_bytes"]["OptState"] == 2 * shard + steps  # AdamW's two moments, sharded like the parameters
    assert sub["peak_gib"] < block["peak_gib"] < one["peak_gib"]
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fsdp" / "mem_sim.py"), "--shape", "huge"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "--shape 'huge'" in p.stderr
