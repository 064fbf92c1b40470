"""The memory model's arithmetic on hand-computed cases, and its use by the config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlsparsity import memory_model as M

REPO = Path(__file__).resolve().parents[1]
# 3000 params: embeddings 50 x 10 x 2 (untied) = 1000, so 1000 per layer over 2 layers
S = M.Shape(params=3000, hidden=10, layers=2, intermediate=20, vocab=50, kv_dim=5)


def test_state_bytes_by_algorithm_and_precision() -> None:
    assert M.state_bytes(S, "grpo", "bf16") == 3000 * (2 + 2 + 2 * 2) == 24000
    assert M.state_bytes(S, "grpo", "bf16", beta=0.04) == 24000 + 3000 * 2  # beta > 0: a bf16 reference
    assert M.state_bytes(S, "dpo", "fp32-master") == 3000 * 16 + 3000 * 4 == 60000
    assert M.state_bytes(S, "sft", "fp32") == 48000
    # ppo: policy + critic (trunk without the untied LM head: 3000 - 500) trainable, reference frozen
    assert M.state_bytes(S, "ppo", "bf16") == (3000 + 2500) * 8 + 3000 * 2 == 50000
    # prime: policy + implicit PRM (two full LMs) trainable, reference frozen
    assert M.state_bytes(S, "prime", "fp32-master") == 2 * 3000 * 16 + 3000 * 4 == 108000
    tied = M.Shape(params=3000, hidden=10, layers=2, intermediate=20, vocab=50, kv_dim=5, tied=True)
    assert M.state_bytes(tied, "ppo", "bf16") == (3000 + 3000) * 8 + 3000 * 2  # tied: the critic keeps it all


def test_activation_bytes() -> None:
    # per token and layer 6h + 2kv + 4I = 60 + 10 + 80 = 150 values; logits 50 x (2 + 4 + 4) bytes
    assert M.activation_bytes(S, "dpo", "bf16", "none", tokens=3) == 3 * 150 * 2 * 2 + 3 * 50 * 10 == 3300
    # fp32 compute: 4 bytes per value, logits 50 x (4 + 8)
    assert M.activation_bytes(S, "dpo", "fp32-master", "ddp", tokens=3) == 3 * 150 * 4 * 2 + 3 * 50 * 12 == 5400
    # sharding keeps the run's arithmetic: fp32-master computes in fp32 under FSDP too
    assert M.activation_bytes(S, "dpo", "fp32-master", "fsdp", tokens=3) == 5400
    # checkpointing: layer inputs (h per token per layer) + one layer recomputed
    assert M.activation_bytes(S, "sft", "bf16", "none", 3, checkpointing=True) == 3 * 2 * 10 * 2 + 900 + 1500
    # ppo: the critic's trunk without logits; prime: two LMs with logits
    assert M.activation_bytes(S, "ppo", "bf16", "none", 3) == 3300 + 1800
    assert M.activation_bytes(S, "prime", "bf16", "none", 3) == 2 * 3300


def test_per_gpu_strategies() -> None:
    one = M.per_gpu(S, "grpo", "bf16", "none", 1, rows=5, seq_len=3)
    assert (one.states, one.gathered, one.activations) == (24000, 0, 5 * 3 * 150 * 2 * 2 + 15 * 500)
    assert one.total == 24000 + 9000 + 7500 + M.OVERHEAD
    ddp = M.per_gpu(S, "grpo", "bf16", "ddp", 2, rows=5, seq_len=3)  # replicated states, ceil(5/2) = 3 rows
    assert (ddp.states, ddp.gathered, ddp.activations) == (24000, 0, 9 * 600 + 9 * 500)
    fsdp = M.per_gpu(S, "grpo", "bf16", "fsdp", 2, rows=5, seq_len=3)  # states / 2 + four bf16 layers in flight
    assert (fsdp.states, fsdp.gathered, fsdp.activations) == (12000, 4 * 1000 * 2, 9900)
    sub = M.per_gpu(S, "grpo", "bf16", "fsdp", 2, rows=5, seq_len=3, units="sublayer")  # attention/MLP units: two
    assert (sub.states, sub.gathered, sub.activations) == (12000, 2 * 1000 * 2, 9900)
    f3 = M.per_gpu(S, "dpo", "fp32-master", "fsdp", 3, rows=4, seq_len=1)
    assert (f3.states, f3.gathered) == (20000, 16000)  # 60000 / 3; four layers in flight in fp32 (its compute dtype)
    with pytest.raises(KeyError):
        M.per_gpu(S, "grpo", "bf16", "fsdp", 2, 1, 1, units="layer")
    with pytest.raises(ValueError, match="unknown sharding"):
        M.per_gpu(S, "grpo", "bf16", "zero3", 2, 1, 1)
    with pytest.raises(ValueError, match="one GPU"):
        M.per_gpu(S, "grpo", "bf16", "none", 2, 1, 1)


def test_generation_copy_of_ppo_prime_under_fsdp_full_only() -> None:
    """ppo/prime under FSDP with rollout_gather "full" gather the whole policy for a rollout:
    P x compute bytes, in a phase that does not overlap the training step's gathered layers and
    activations; "layer" (per-layer gathers), grpo, and ddp have no such term. fsdp_units sublayer here:
    two layers in flight."""
    # ppo bf16 on 2 GPUs, 4 rows x 3 tokens: states (3000 + 2500) x 8 + 3000 x 2 = 50000 -> 25000 per GPU;
    # gathered 2 layers x 1000 x 2 bytes = 4000; activations of ceil(4/2) x 3 = 6 tokens: policy
    # 6 x 150 x 2 bytes x 2 layers + 6 x 50 x 10 (logits) = 6600, critic trunk 3600 -> 10200
    full = M.per_gpu(S, "ppo", "bf16", "fsdp", 2, rows=4, seq_len=3, units="sublayer")
    assert (full.states, full.gathered, full.activations, full.generation) == (25000, 4000, 10200, 3000 * 2)
    assert full.total == 25000 + max(4000 + 10200, 6000) + M.OVERHEAD  # the step is the larger phase here
    layer = M.per_gpu(S, "ppo", "bf16", "fsdp", 2, rows=4, seq_len=3, rollout_gather="layer", units="sublayer")
    assert (layer.states, layer.gathered, layer.activations, layer.generation) == (25000, 4000, 10200, 0)
    assert layer.total == 25000 + 4000 + 10200 + M.OVERHEAD
    # a shape with a large policy and few activations: the fp32 copy (fp32-master computes in fp32) dominates
    big = M.Shape(params=100_000, hidden=10, layers=2, intermediate=20, vocab=50, kv_dim=5)  # 49500 per layer
    e = M.per_gpu(big, "prime", "fp32-master", "fsdp", 4, rows=4, seq_len=1, units="sublayer")
    # prime: 2 x 100000 x 16 + 100000 x 4 = 3_600_000 / 4; gathered 2 x 49500 x 4; acts 1 token x 2 LMs x
    # (150 x 4 x 2 layers + 50 x 12)
    assert (e.states, e.gathered, e.activations, e.generation) == (900_000, 396_000, 3600, 400_000)
    assert e.total == 900_000 + 400_000 + M.OVERHEAD  # max(396000 + 3600, 400000)
    assert M.per_gpu(big, "prime", "fp32-master", "fsdp", 4, 4, 1, rollout_gather="layer", units="sublayer").total == \
        900_000 + 399_600 + M.OVERHEAD
    # TRL: generates through FSDP2's gathers
    grpo = M.per_gpu(S, "grpo", "bf16", "fsdp", 2, rows=4, seq_len=3, units="sublayer")
    assert grpo.generation == 0 and grpo.total == 12000 + 4000 + 6 * 600 + 6 * 500 + M.OVERHEAD
    # ddp: the policy is whole anyway
    assert M.per_gpu(S, "ppo", "bf16", "ddp", 2, rows=4, seq_len=3, units="sublayer").generation == 0
    # Run carries the setting (default "full") into the estimate
    run = M.Run("ppo", "bf16", rows=4, seq_len=3, units="sublayer")
    assert run.rollout_gather == "full" and run.estimate(S, "fsdp", 2) == full
    assert M.Run("ppo", "bf16", 4, 3, rollout_gather="layer", units="sublayer").estimate(S, "fsdp", 2) == layer


def test_config_runs_read_rollout_gather_by_precision() -> None:
    from rlsparsity.config import load_config

    cfg = load_config(REPO / "config" / "paper.yaml")
    runs = {(r.algorithm, r.precision): r.rollout_gather for r in M.config_runs(cfg, "gemma2_9b")}
    assert runs[("ppo", "fp32-master")] == runs[("prime", "fp32-master")] == "layer"
    assert runs[("ppo", "bf16")] == runs[("prime", "bf16")] == runs[("grpo", "fp32-master")] == "full"
    del cfg["train"]["hparams_by_precision"]  # every run "full": gemma-2-9b ppo/prime fp32-master no longer fit
    bad = [(r["algorithm"], r["precision"], r["fsdp@8"]) for r in M.table(cfg)
           if r["family"] == "gemma2_9b" and not r["fits_configured"]]
    assert bad == [("ppo", "fp32-master", 82.6), ("prime", "fp32-master", 82.6)]


def test_choice_of_strategy_and_gpus() -> None:
    run = M.Run("grpo", "bf16", rows=5, seq_len=3)
    budget = M.OVERHEAD + 30000  # ddp on 2 needs 24000 + 9900; fsdp on 2: 12000 + 4000 + 9900 = 25900
    assert M.choose_sharding(S, [run], 2, budget) == "fsdp"
    assert M.choose_sharding(S, [run], 2, M.OVERHEAD + 40000) == "ddp"
    assert M.choose_sharding(S, [run], 1, budget) == "none" and M.choose_sharding(None, [run], 4) == "ddp"
    assert M.min_gpus(S, run, M.OVERHEAD + 40500) == (1, "none")
    assert M.min_gpus(S, run, budget) == (2, "fsdp")
    assert M.min_gpus(S, run, M.OVERHEAD + 100) is None


def test_llama_params_match_transformers() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=97, tie_word_embeddings=False)
    n = sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())
    assert M.llama_params(48, 3, 80, 97, 4, 2) == n
    shape = M.shape_from_hf_config(cfg.to_dict())
    assert (shape.params, shape.kv_dim, shape.tied) == (n, 24, False)


def test_paper_config_fits_and_cli_table() -> None:
    from rlsparsity.config import load_config

    cfg = load_config(REPO / "config" / "paper.yaml")
    rows = M.table(cfg)
    assert len(rows) == 10 * 7 * 2 and all(r["fits_configured"] is True for r in rows)
    assert {M.family_sharding(cfg, f) for f in cfg["families"]} == {"fsdp"}
    gemma = next(r for r in rows if r["family"] == "gemma2_9b" and r["algorithm"] == "prime"
                 and r["precision"] == "fp32-master")
    assert gemma["min_gpus"] == "8 fsdp" and gemma["fsdp@8"] <= 80
    p = subprocess.run([sys.executable, "-m", "rlsparsity.cli", "memory", "--config", "config/paper.yaml"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("| True |") == 140
    p = subprocess.run([sys.executable, "-m", "rlsparsity.cli", "memory", "--config", "config/paper.yaml",
                        "--gpu-gb", "40"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "does not fit as configured" in p.stdout


@pytest.mark.parametrize(("family", "message"), [
    ({"gpus": 2, "sharding": "none"}, "families.llama.sharding: 'none' runs on one GPU but gpus is 2"),
    ({"gpus": 1, "sharding": "fsdp"}, "families.llama.sharding: 'fsdp' needs gpus >= 2 (gpus is 1)"),
    ({"gpus": 2, "sharding": "zero3"}, "families.llama.sharding"),
    ({"gpus": 2, "sharding": "ddp", "fsdp_units": "sublayer"},
     "families.llama.fsdp_units: applies to sharding fsdp, not 'ddp'"),
    ({"gpus": 2, "sharding": "fsdp", "fsdp_units": "layer"}, "families.llama.fsdp_units"),
    ({"gpus": 8, "hparams": {"dpo": {"batch_size": 12}}},
     "train.hparams.dpo.batch_size: 12 (the global batch) is not divisible by the 8 processes"),
])
def test_bad_sharding_is_a_one_line_error(tmp_path: Path, family: dict, message: str) -> None:
    from rlsparsity.config import ConfigError, load_config

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    family = dict(family)
    cfg["train"]["hparams"] = family.pop("hparams", {})
    cfg["families"]["llama"] = {**(cfg["families"].get("llama") or {}), **family}
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_sharding_is_part_of_the_training_slice_only_of_its_family() -> None:
    import copy

    from rlsparsity import config_slices as CS
    from rlsparsity.config import load_config

    cfg = load_config(REPO / "config" / "paper.yaml")
    groups = CS.train_groups(cfg)
    mine = next(g for g, runs in groups.items() if runs[0].family == "qwen3_8b")
    other = next(g for g, runs in groups.items() if runs[0].family == "phi3_mini")
    d_mine, d_other = CS.slice_digest(cfg, "train", mine), CS.slice_digest(cfg, "train", other)
    c = copy.deepcopy(cfg)
    c["families"]["qwen3_8b"]["sharding"] = "ddp"  # reruns this family's training (results change at float level)
    assert CS.slice_digest(c, "train", mine) != d_mine and CS.slice_digest(c, "train", other) == d_other
    assert M.family_sharding(c, "qwen3_8b") == "ddp" and M.family_sharding(cfg, "qwen3_8b") == "fsdp"
