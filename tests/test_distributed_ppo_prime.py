"""PPO and PRIME across processes: torch.distributed with gloo on the CPU, FSDP2 (and DDP).

Two launches of ``torchrun --standalone`` (1 and 2 processes, run side by side by one
module fixture) execute the jobs of tests/_dist_worker.py on a tiny llama and a toy task.

Why the 2-process weights can equal the 1-process ones: in a launched run every rollout
row samples from its own generator seeded from the GLOBAL row index (Gumbel-max), prompts
are padded to the global longest prompt and completions to ``max_new_tokens``, the rows
are gathered in global order, and the minibatch schedule comes from a generator seeded from
the shared data RNG — so both launches draw the SAME global rollouts and minibatches
(checked exactly: the per-step rewards are equal). What differs is only floating-point
reduction order: forwards over 8 instead of 16 rows, the gradient summed over 2 shards,
and the loss split into two partial sums. Those are ~1e-7 relative per step; Adam
normalises each update, so after 4 steps at lr 3e-3 the weights agree to ~1e-5
(measured 8.6e-6 ppo, 5.2e-6 prime). Tolerance: |Δw| ≤ 5e-5 absolute and ≤ 1 % of the
largest weight change the run made (so it could fail: a wrong reduction — a missing
global count, a doubled gradient — changes the update by O(100 %)). A plain ``python`` run
(not launched) keeps the single-process sampler (one global torch RNG stream), so it is
compared with the other single-process tests, not here.

Resume: the same world size, the same seeds, full state dicts → bit-identical weights.

Rollouts through FSDP2's per-layer all-gathers (``rollout_gather: layer``, ``generate(...,
synced_gpus=True)``) against the policy all-gathered whole (``full``, the default): the
all-gathers reassemble the same fp32 values and the forwards run the same ops on the same
batch, so the logits are expected bit-identical (at worst they differ in reduction order,
which could flip a per-row Gumbel-max sample only at a near-tie) and so the rollouts:
checked exactly, rows and per-step rewards. A direct generation in which rank 0 stops after 3
tokens and rank 1 after 8 checks that per layer rank 0 keeps stepping (each forward a
collective) and that with the whole policy (``synced_gpus=False``) each rank stops on its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _dist_worker import DigitTask, M, X
from safetensors.torch import load_file, save_file

from rlsparsity import families as F
from rlsparsity.algorithms.distributed import Dist, check_share, choose_strategy, chunk
from rlsparsity.algorithms.rollout import masked_mean, masked_whiten, sample_seeded
from rlsparsity.config import ConfigError
from rlsparsity.modeling import load_model, load_tokenizer, save_model
from rlsparsity.tokenizer import build_tokenizer, special_ids, task_corpus

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_dist_worker.py")
ATOL, REL = 5e-5, 1e-2


def _base(folder: Path) -> Path:
    task = DigitTask()
    corpus = task_corpus(task) + [f"user: What is {a} + {b}?\nassistant:\nAnswer: {a + b}"
                                  for a in range(20) for b in range(20)]
    tok = build_tokenizer(corpus)
    save_model(F.build_tiny("llama", len(tok), special_ids(tok)), tok, folder, "bf16")
    return folder


def _launch(n: int, base: Path, results: Path, jobs: list[dict[str, Any]]) -> subprocess.Popen[bytes]:
    results.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("RLSPARSITY_SHARDING", None)
    log = open(results / "log.txt", "wb")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                             str(n), str(WORKER), str(base), str(results), json.dumps(jobs)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dist")
    base = _base(root / "base")
    r1, r2 = root / "one", root / "two"
    g = torch.Generator().manual_seed(3)
    save_file({k: (torch.rand(v.shape, generator=g) < 0.5).to(torch.uint8) for k, v in _weights(base).items()
               if v.dim() == 2}, str(root / "mask.safetensors"))
    masked = {"precision": "fp32", "steps": 4, "mask": str(root / "mask.safetensors")}
    p1 = _launch(1, base, root / "res1", [
        {"reduce": True},
        {"alg": "ppo", "out": str(r1 / "ppo"), "precision": "fp32", "steps": 4},
        {"alg": "prime", "out": str(r1 / "prime"), "precision": "fp32", "steps": 4},
        {"alg": "ppo", "out": str(r1 / "ppo_masked"), **masked},
        {"alg": "ppo", "out": str(r1 / "ppo_ckpt"), "precision": "fp32", "steps": 4,
         "hp": {"gradient_checkpointing": True}},
    ])
    p2 = _launch(2, base, root / "res2", [
        {"reduce": True},
        {"alg": "ppo", "out": str(r2 / "ppo"), "precision": "fp32", "steps": 4},
        {"alg": "prime", "out": str(r2 / "prime"), "precision": "fp32", "steps": 4},
        {"alg": "ppo", "out": str(r2 / "ppo_resumed"), "precision": "fp32", "steps": 4, "stop_after": 3},
        {"alg": "ppo", "out": str(r2 / "ppo_ddp"), "precision": "fp32", "steps": 4, "sharding": "ddp"},
        {"alg": "ppo", "out": str(r2 / "ppo_masked"), **masked},
        {"alg": "prime", "out": str(r2 / "prime_master"), "precision": "fp32-master", "steps": 1,
         "checkpoint_every": 1},
        {"alg": "prime", "out": str(r2 / "prime_ckpt"), "precision": "fp32", "steps": 4,
         "hp": {"gradient_checkpointing": True}},
        {"alg": "ppo", "out": str(r2 / "ppo_layer"), "precision": "fp32", "steps": 4,
         "hp": {"rollout_gather": "layer"}},
        {"alg": "ppo", "out": str(r2 / "ppo_sublayer"), "precision": "fp32", "steps": 4, "units": "sublayer"},
        {"gen": True},
    ])
    for p, res in ((p1, root / "res1"), (p2, root / "res2")):
        rc = p.wait(timeout=600)
        assert rc == 0, (res / "log.txt").read_text()[-4000:]
    return {"base": base, "one": r1, "two": r2, "res1": root / "res1", "res2": root / "res2"}


def _result(runs: dict[str, Path], res: str, rank: int) -> dict[str, Any]:
    return json.loads((runs[res] / f"rank{rank}.json").read_text())


def _run(result: dict[str, Any], out: Path) -> dict[str, Any]:
    return next(r for r in result["runs"] if Path(r["out"]) == out)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _assert_close(a: Path, b: Path, base: Path) -> float:
    wa, wb, w0 = _weights(a), _weights(b), _weights(base)
    assert sorted(wa) == sorted(wb) == sorted(w0)
    diff = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)
    moved = max(float((wa[k].double() - w0[k].double()).abs().max()) for k in wa)
    assert moved > 1e-3, f"the run did not train (max change {moved})"
    assert diff <= ATOL and diff <= REL * moved, f"max |dw| {diff:.3g} (largest update {moved:.3g})"
    return diff


# --------------------------------------------------------------------------- in-process pieces
def test_chunk_splits_rows_contiguously_in_rank_order() -> None:
    assert [chunk(5, r, 2) for r in range(2)] == [(0, 3), (3, 5)]
    assert [chunk(7, r, 3) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    assert [chunk(1, r, 2) for r in range(2)] == [(0, 1), (1, 1)]


def test_strategy_choice_and_share_check(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("RLSPARSITY_SHARDING", "ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(k, raising=False)
    assert choose_strategy() == "fsdp"  # torchrun
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert choose_strategy() == "ddp"  # accelerate launch with a DDP config
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert choose_strategy() == "fsdp"
    monkeypatch.setenv("RLSPARSITY_SHARDING", "ddp")
    assert choose_strategy() == "ddp"
    monkeypatch.setenv("RLSPARSITY_SHARDING", "zero3")
    with pytest.raises(ConfigError, match="RLSPARSITY_SHARDING='zero3'"):
        choose_strategy()
    with pytest.raises(ConfigError, match="prompts_per_rollout=2 is less than the 4 processes"):
        check_share(Dist(0, 4, "fsdp"), 2, "ppo")
    check_share(Dist(0, 4, "fsdp"), 4, "ppo")
    check_share(Dist(), 1, "ppo")
    assert (Dist(0, 4, "ddp").loss_scale, Dist(0, 4, "fsdp").loss_scale, Dist().active) == (4.0, 1.0, False)


def test_seeded_sampling_does_not_depend_on_the_split(runs: dict[str, Path]) -> None:
    """Rows sampled in one batch equal the same rows sampled in two batches (row seeds)."""
    base = runs["base"]
    model, tok, task = load_model(base, "fp32").eval(), load_tokenizer(base), DigitTask()
    prompts = [task.prompt(e, tok) for e in task.train[:4]]
    P = max(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    seeds = [11 * i + 5 for i in range(8)]
    whole = sample_seeded(model, tok, prompts, 2, 8, 1.0, seeds, P)
    parts = [sample_seeded(model, tok, prompts[:3], 2, 8, 1.0, seeds[:6], P),
             sample_seeded(model, tok, prompts[3:], 2, 8, 1.0, seeds[6:], P)]
    assert torch.equal(whole.input_ids, torch.cat([p.input_ids for p in parts]))
    assert torch.equal(whole.completion_mask, torch.cat([p.completion_mask for p in parts]))
    other = sample_seeded(model, tok, prompts, 2, 8, 1.0, [s + 1 for s in seeds], P)
    assert not torch.equal(whole.input_ids, other.input_ids)  # the seeds do drive the samples


# --------------------------------------------------------------------------- launched runs
def test_cross_rank_reductions_equal_single_process(runs: dict[str, Path]) -> None:
    """Hand-built 5x4 batch (dyadic values, 16 masked tokens): gathered rows, whitening and a
    token mean split over 2 ranks equal the single-process results exactly."""
    x, m = torch.tensor(X), torch.tensor(M, dtype=torch.float32)
    want_white = masked_whiten(x, m)
    r0, r1 = (_result(runs, "res2", r)["reduce"] for r in (0, 1))
    assert (r0["chunk"], r1["chunk"]) == ([0, 3], [3, 5])
    assert (r0["share_rows"], r1["share_rows"]) == (3, 2)
    for r in (r0, r1, _result(runs, "res1", 0)["reduce"]):
        assert torch.equal(torch.tensor(r["gathered_x"]), x)
        assert torch.equal(torch.tensor(r["whitened"]), want_white)
        assert r["token_mean"] == 33.75 / 16 == float(masked_mean(x, m))
    assert r0["sum_of_ranks"] == r1["sum_of_ranks"] == 3.0
    # a 1-row minibatch over 2 ranks: rank 1 runs a dummy row that weighs nothing
    assert (r0["tiny_weight"], r1["tiny_weight"], r1["tiny_mask_sum"]) == ([1.0], [0.0], 0.0)


@pytest.mark.parametrize("alg", ["ppo", "prime"])
def test_two_processes_give_the_one_process_weights(runs: dict[str, Path], alg: str) -> None:
    one = _run(_result(runs, "res1", 0), runs["one"] / alg)
    two = _run(_result(runs, "res2", 0), runs["two"] / alg)
    assert one["reward_mean"] == two["reward_mean"]  # the same global rollouts, exactly
    assert torch.allclose(torch.tensor(one["loss"]), torch.tensor(two["loss"]), rtol=1e-3, atol=1e-5)
    _assert_close(runs["one"] / alg, runs["two"] / alg, runs["base"])


def test_sublayer_units_give_the_one_process_weights(runs: dict[str, Path]) -> None:
    """fsdp_units sublayer: attention and MLP are FSDP units of their own (3 per decoder layer + the
    root, for the policy, the reference and the critic alike), and the run is still the
    1-process one (same rollouts; weights as in test_two_processes_give_the_one_process_weights)."""
    one = _run(_result(runs, "res1", 0), runs["one"] / "ppo")
    block = _run(_result(runs, "res2", 0), runs["two"] / "ppo")
    sub = _run(_result(runs, "res2", 0), runs["two"] / "ppo_sublayer")
    layers = json.loads((runs["base"] / "config.json").read_text())["num_hidden_layers"]
    assert (block["fsdp_units"], block["units_made"]) == ("block", [layers + 1] * 3)
    assert (sub["fsdp_units"], sub["units_made"]) == ("sublayer", [3 * layers + 1] * 3)
    assert one["units_made"] == [layers + 1] * 3  # one process under torchrun: FSDP2 on one rank, block units
    assert one["reward_mean"] == sub["reward_mean"]
    assert torch.allclose(torch.tensor(one["loss"]), torch.tensor(sub["loss"]), rtol=1e-3, atol=1e-5)
    _assert_close(runs["one"] / "ppo", runs["two"] / "ppo_sublayer", runs["base"])


def test_sharded_subnetwork_finetuning_moves_only_the_mask(runs: dict[str, Path]) -> None:
    """The update mask, sharded like the parameters: entries outside it keep their base
    values exactly; the run matches the 1-process masked run."""
    mask = load_file(str(runs["base"].parent / "mask.safetensors"))
    w, w0 = _weights(runs["two"] / "ppo_masked"), _weights(runs["base"])
    for k, m in mask.items():
        frozen = ~m.bool()
        assert torch.equal(w[k][frozen], w0[k].float()[frozen]), k
    assert any(bool((w[k] != w0[k].float())[m.bool()].any()) for k, m in mask.items())
    _assert_close(runs["one"] / "ppo_masked", runs["two"] / "ppo_masked", runs["base"])


def test_ddp_gives_the_fsdp_weights(runs: dict[str, Path]) -> None:
    _assert_close(runs["two"] / "ppo_ddp", runs["two"] / "ppo", runs["base"])


def test_only_rank0_writes_and_the_folder_is_a_single_process_one(runs: dict[str, Path]) -> None:
    w0, w1 = (_result(runs, "res2", r)["writes"] for r in (0, 1))
    assert w1 == []
    assert any(str(runs["two"] / "ppo" / "checkpoints") in p for _, p in w0)  # the audit does see writes

    def tree(d: Path) -> list[str]:
        return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())

    for alg in ("ppo", "prime"):
        assert tree(runs["two"] / alg) == tree(runs["one"] / alg)
        assert "checkpoints/step-000003/model.safetensors" in tree(runs["two"] / alg)
        assert not (runs["two"] / alg / "resume").exists()


def test_fp32_master_saves_bf16_from_the_sharded_fp32_run(runs: dict[str, Path]) -> None:
    out = runs["two"] / "prime_master"
    assert {v.dtype for v in _weights(out).values()} == {torch.bfloat16}
    ck = load_file(str(out / "checkpoints" / "step-000001" / "model.safetensors"))
    assert {v.dtype for v in ck.values()} == {torch.bfloat16}
    assert sorted(ck) == sorted(_weights(runs["two"] / "prime"))


def test_resume_from_a_two_process_checkpoint_is_bit_identical(runs: dict[str, Path]) -> None:
    res = _result(runs, "res2", 0)
    resumed, full = _run(res, runs["two"] / "ppo_resumed"), _run(res, runs["two"] / "ppo")
    assert resumed["resumed_from"] and resumed["resumed_from"].endswith("@step-000003")
    assert resumed["loss"] == full["loss"]
    wa, wb = _weights(runs["two"] / "ppo_resumed"), _weights(runs["two"] / "ppo")
    assert all(torch.equal(wa[k], wb[k]) for k in wb)


def test_activation_checkpointing_changes_no_weight(runs: dict[str, Path]) -> None:
    """hparams.gradient_checkpointing (torch checkpoint_wrapper around every decoder layer,
    before sharding): each layer's forward is recomputed in backward from the same inputs, so
    the weights are bit-identical to the run without it -- 1 process (ppo: policy and critic
    trunk wrapped) and FSDP on 2 processes (prime: policy and implicit PRM wrapped) -- and the
    saved names are the HF ones (no wrapper prefix)."""
    for a, b in ((runs["one"] / "ppo_ckpt", runs["one"] / "ppo"), (runs["two"] / "prime_ckpt", runs["two"] / "prime")):
        wa, wb = _weights(a), _weights(b)
        assert sorted(wa) == sorted(wb) and not any("checkpoint" in k for k in wa)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), a


def test_per_layer_generation_keeps_finished_ranks_stepping(runs: dict[str, Path]) -> None:
    """FSDP-sharded policy: the rows sampled through per-layer all-gathers (synced_gpus) equal
    those of the whole gathered policy, exactly (the same gathered values and ops, see the
    module doc); rank 0 (3 new tokens) runs as many forwards as rank 1 (8: prefill + 7 steps)."""
    g0, g1 = (_result(runs, "res2", r)["gen"] for r in (0, 1))
    for g in (g0, g1):
        assert g["layer"] == g["full"] and len(g["full"]) == 4
    assert (len(g0["full"][0]) + 5, g0["new_tokens"], g1["new_tokens"]) == (len(g1["full"][0]), 3, 8)
    assert g0["forwards"] == [3, 8] and g1["forwards"] == [8, 8]  # full: each rank its own; layer: in step


def test_rollout_gather_layer_gives_the_full_rollouts_and_weights(runs: dict[str, Path]) -> None:
    """ppo on 2 processes under FSDP with rollout_gather: layer vs full (the default): the same
    rollouts (per-step rewards and completion lengths equal exactly) and weights within the
    1-vs-2-process tolerance (5e-5 absolute, 1 % of the largest update: it would catch a
    different rollout, which moves the weights by O(lr) = 3e-3; measured: identical)."""
    res = _result(runs, "res2", 0)
    layer, full = _run(res, runs["two"] / "ppo_layer"), _run(res, runs["two"] / "ppo")
    assert layer["reward_mean"] == full["reward_mean"]
    assert layer["completion_length"] == full["completion_length"]
    assert torch.allclose(torch.tensor(layer["loss"]), torch.tensor(full["loss"]), rtol=1e-3, atol=1e-5)
    _assert_close(runs["two"] / "ppo_layer", runs["two"] / "ppo", runs["base"])


def test_rollout_gather_value_is_checked() -> None:
    from rlsparsity.algorithms import ppo, prime
    from rlsparsity.algorithms.common import check_choices

    for mod, name in ((ppo, "ppo"), (prime, "prime")):
        assert mod.DEFAULTS["rollout_gather"] == "full" and mod.CHOICES == {"rollout_gather": ("full", "layer")}
        check_choices({**mod.DEFAULTS, "rollout_gather": "layer"}, mod.CHOICES, name)
        with pytest.raises(ConfigError, match=f"^{name}: rollout_gather='all' is not one of 'full', 'layer'$"):
            check_choices({**mod.DEFAULTS, "rollout_gather": "all"}, mod.CHOICES, name)


def test_run_records_the_strategy_it_ran_with(runs: dict[str, Path]) -> None:
    """run.json's ``sharding`` for ppo/prime is the strategy of the launch (it said "none" for the
    6B fp32-master ppo that ran sharded on 2 H200s at 119.8 GB per rank)."""
    for rank in (0, 1):
        res = _result(runs, "res2", rank)
        assert _run(res, runs["two"] / "ppo")["sharding"] == "fsdp"
        assert _run(res, runs["two"] / "prime")["sharding"] == "fsdp"
        assert _run(res, runs["two"] / "ppo_ddp")["sharding"] == "ddp"
