"""PPO and PRIME (our own implementations) on a tiny from-scratch model and a toy task.

The toy task rewards a completion that contains a digit: a random tiny model (uniform
over ~300 tokens, 8 new tokens) gets it ~20% of the time, and either algorithm lifts it
well above that in 40 steps. Everything is single-threaded and seeded on CPU.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from rlsparsity import families as F
from rlsparsity.algorithms import ppo, prime
from rlsparsity.algorithms.common import Interrupted, TrainSpec, checkpoint_path
from rlsparsity.algorithms.rollout import completion_mask_from_ids, gae, masked_whiten, sample, token_logprobs
from rlsparsity.grid import Run
from rlsparsity.modeling import load_model, load_tokenizer, save_model, torch_threads
from rlsparsity.tokenizer import build_tokenizer, special_ids, task_corpus

ALGOS = {"ppo": ppo, "prime": prime}
FAST = {"max_new_tokens": 8, "lr": 3e-3, "prompts_per_rollout": 4, "minibatch_size": 8}  # small rollouts: fast tests


class DigitTask:
    """Duck-typed Task: reward 1 iff the completion contains a digit."""

    name = "toy_digit"

    def __init__(self, n: int = 64):
        r = random.Random(0)
        self.train = [{"question": f"Say {r.randint(0, 99)} {r.choice(['apples', 'pears', 'cats'])}.",
                       "answer": str(r.randint(0, 9))} for _ in range(n)]

    def prompt(self, entry: dict[str, Any], tokenizer: Any) -> str:
        return tokenizer.apply_chat_template([{"role": "user", "content": entry["question"]}], tokenize=False,
                                             add_generation_prompt=True)

    @staticmethod
    def solution(entry: dict[str, Any]) -> str:
        return f"Answer: {entry['answer']}"

    def score(self, completion: str, entry: dict[str, Any]) -> float:
        return 1.0 if any(ch.isdigit() for ch in completion) else 0.0

    def rewards(self, completions: list[str], entries: list[dict[str, Any]]) -> list[float]:
        return [self.score(c, e) for c, e in zip(completions, entries, strict=False)]


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DigitTask]:
    torch_threads()
    task = DigitTask()
    corpus = task_corpus(task) + [f"user: What is {a} + {b}?\nassistant:\nAnswer: {a + b}"
                                  for a in range(20) for b in range(20)]
    tok = build_tokenizer(corpus)
    model = F.build_tiny("llama", len(tok), special_ids(tok))
    folder = tmp_path_factory.mktemp("toy_base")
    save_model(model, tok, folder, "bf16")
    return folder, task


def make_spec(base: tuple[Path, DigitTask], alg: str, out: Path, precision: str = "fp32", seed: int = 1,
              steps: int = 10, **hp: Any) -> TrainSpec:
    folder, task = base
    return TrainSpec(run=Run("llama", alg, "on_policy", precision, seed), base_dir=folder, out_dir=out, task=task,
                     steps=steps, checkpoint_every=5, hparams={**ALGOS[alg].DEFAULTS, **FAST, **hp})


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


# ---------------------------------------------------------------- rollout utilities
def test_completion_mask_stops_at_first_eos() -> None:
    ids = torch.tensor([[5, 6, 2, 7, 2], [2, 5, 5, 5, 5], [5, 5, 5, 5, 5]])
    m = completion_mask_from_ids(ids, eos_id=2)
    assert m.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_logprobs_left_padding_matches_unpadded_and_sampler(base: tuple[Path, DigitTask]) -> None:
    folder, task = base
    torch.manual_seed(0)
    model, tok = load_model(folder, "fp32"), load_tokenizer(folder)
    prompts = [task.prompt(task.train[0], tok), "user: hi\nassistant:\n"]
    ro = sample(model, tok, prompts, n=2, max_new_tokens=6, temperature=0.7)
    assert ro.input_ids.shape[0] == 4 and ro.group.tolist() == [0, 0, 1, 1]
    # tokens after EOS are pad and masked; attention covers exactly prompt + kept completion
    assert torch.all(ro.completion_ids[ro.completion_mask == 0] == tok.pad_token_id)
    with torch.no_grad():
        lp = token_logprobs(model, ro.input_ids, ro.attention_mask, ro.prompt_len, 0.7)
        for i in range(4):  # the short prompt (row 2, 3) is left-padded in the batch
            keep = ro.attention_mask[i].bool()
            ids = ro.input_ids[i][keep][None]
            P = int(ro.attention_mask[i, : ro.prompt_len].sum())
            alone = token_logprobs(model, ids, torch.ones_like(ids), P, 0.7)[0]
            n = int(ro.completion_mask[i].sum())
            torch.testing.assert_close(lp[i, :n], alone[:n], atol=1e-5, rtol=0)
    # and they equal the sampler's own (temperature-scaled) distribution
    from transformers import GenerationConfig

    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    gc = GenerationConfig(do_sample=True, temperature=0.7, top_k=0, top_p=1.0, max_new_tokens=6,
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                          output_scores=True, return_dict_in_generate=True)
    out = model.generate(**enc, generation_config=gc)
    P = enc["input_ids"].shape[1]
    gen_lp = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)
    gen_lp = gen_lp.gather(-1, out.sequences[:, P:, None]).squeeze(-1)
    cm = completion_mask_from_ids(out.sequences[:, P:], tok.eos_token_id)
    with torch.no_grad():
        mine = token_logprobs(model, out.sequences, torch.cat([enc["attention_mask"], cm.long()], 1), P, 0.7)
    torch.testing.assert_close(mine * cm, gen_lp * cm, atol=1e-4, rtol=0)


def test_gae_and_rloo_reduce_to_known_cases() -> None:
    r = torch.tensor([[0.0, 1.0, 2.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    adv, ret = gae(r, torch.zeros_like(r), m, gamma=1.0, lam=1.0)  # V = 0, λ = 1: reward-to-go
    assert adv.tolist() == [[3.0, 3.0, 2.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
    v = torch.tensor([[0.5, 0.5, 0.5, 9.0], [0.2, 0.1, 9.0, 9.0]])
    adv, ret = gae(r, v, m, gamma=1.0, lam=0.0)  # λ = 0: one-step TD errors, V = 0 past the end
    torch.testing.assert_close(adv, torch.tensor([[0.0, 1.0, 1.5, 0.0], [0.9, -0.1, 0.0, 0.0]]))
    w = masked_whiten(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    torch.testing.assert_close(w, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-4, rtol=0)
    # PRIME outcome stream: r_i - mean of the others, on the last token; returns = reverse cumsum
    cm = torch.ones(4, 3)
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0])
    group = torch.tensor([0, 0, 0, 0])
    _, returns = prime.prime_advantages(torch.zeros(4, 3), scores, cm, group, 0.0, 1.0)
    expect = scores - (scores.sum() - scores) / 3
    torch.testing.assert_close(returns[:, 0], expect)
    torch.testing.assert_close(returns[:, 2], expect)
    # process stream: per-token r·K/(K−1) − Σ_j mean_j/(K−1), summed to go
    proc = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    _, returns = prime.prime_advantages(proc, torch.zeros(4), cm, group, 1.0, 0.0)
    torch.testing.assert_close(returns[0], torch.tensor([3 * (4 / 3 - 1 / 3), 2.0, 1.0]))
    torch.testing.assert_close(returns[1], torch.tensor([-1.0, -2 / 3, -1 / 3]))


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("alg", ["ppo", "prime"])
def test_learns_toy_task_and_changes_weights(base: tuple[Path, DigitTask], tmp_path: Path, alg: str) -> None:
    spec = make_spec(base, alg, tmp_path / "run", steps=40)
    stats = ALGOS[alg].train(spec)
    h = stats["history"]
    assert stats["steps"] == 40 and [e["step"] for e in h] == list(range(1, 41))
    assert stats["seconds_per_step"] < 0.5
    first = sum(e["reward_mean"] for e in h[:8]) / 8
    last = sum(e["reward_mean"] for e in h[-8:]) / 8
    print(f"{alg}: reward first 8 steps {first:.3f} -> last 8 steps {last:.3f}, {stats['seconds_per_step']:.3f} s/step")
    assert last >= first + 0.25, (first, last)
    assert all(k in h[-1] for k in ("loss", "reward_mean", "kl"))
    assert h[0]["kl"] == 0.0 and h[-1]["kl"] > 0.0  # policy starts at the reference, then moves away
    if alg == "prime":  # single forward: the first batch is scored by the untrained PRM (= reference)
        assert h[0]["process_reward_mean"] == 0.0 and h[-1]["process_reward_mean"] != 0.0
    b, o = weights(base[0]), weights(spec.out_dir)
    assert set(b) == set(o)
    changed = sum(int((o[k] != b[k].float()).sum()) for k in b)
    assert changed > 0.5 * sum(t.numel() for t in b.values())  # fp32 training: dense update
    assert checkpoint_path(spec.out_dir, 40).exists() and checkpoint_path(spec.out_dir, 5).exists()
    assert not (spec.out_dir / "resume").exists()


@pytest.mark.parametrize("alg,precision", [("ppo", "fp32"), ("prime", "fp32"), ("ppo", "bf16"), ("prime", "bf16")])
def test_same_seed_bit_identical_and_resume(base: tuple[Path, DigitTask], tmp_path: Path, alg: str,
                                            precision: str) -> None:
    a = make_spec(base, alg, tmp_path / "a", precision=precision)
    sa = ALGOS[alg].train(a)
    assert sa["resumed_from"] is None
    c = make_spec(base, alg, tmp_path / "c", precision=precision)
    ALGOS[alg].train(c)
    wa, wc = weights(a.out_dir), weights(c.out_dir)
    assert all(torch.equal(wa[k], wc[k]) for k in wa)
    d = make_spec(base, alg, tmp_path / "d", precision=precision, seed=2)
    ALGOS[alg].train(d)
    wd = weights(d.out_dir)
    assert not all(torch.equal(wa[k], wd[k]) for k in wa)
    # interrupted at step 7 (between checkpoints, mid-rollout), restarted from step 5
    b = make_spec(base, alg, tmp_path / "b", precision=precision)
    b.stop_after = 7
    with pytest.raises(Interrupted):
        ALGOS[alg].train(b)
    assert (b.out_dir / "resume" / "state.safetensors").exists()
    assert checkpoint_path(b.out_dir, 5).exists() and not checkpoint_path(b.out_dir, 10).exists()
    b.stop_after = None
    sb = ALGOS[alg].train(b)
    assert sb["resumed_from"].endswith("step-000005")
    wb = weights(b.out_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [e["loss"] for e in sb["history"]] == [e["loss"] for e in sa["history"]]
    for step in (5, 10):
        ca, cb = load_file(str(checkpoint_path(a.out_dir, step))), load_file(str(checkpoint_path(b.out_dir, step)))
        assert all(torch.equal(ca[k], cb[k]) for k in ca)
    assert not (b.out_dir / "resume").exists()


@pytest.mark.parametrize("alg", ["ppo", "prime"])
def test_precision_storage_dtypes(base: tuple[Path, DigitTask], tmp_path: Path, alg: str) -> None:
    expect = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp32-master": torch.bfloat16}
    for precision, dt in expect.items():
        spec = make_spec(base, alg, tmp_path / precision, precision=precision, steps=5)
        ALGOS[alg].train(spec)
        for sd in (weights(spec.out_dir), load_file(str(checkpoint_path(spec.out_dir, 5)))):
            assert {t.dtype for t in sd.values()} == {dt}, precision
        b, o = weights(base[0]), weights(spec.out_dir)
        assert any(not torch.equal(o[k].float(), b[k].float()) for k in b), precision


@pytest.mark.parametrize("alg", ["ppo", "prime"])
def test_mask_freezes_entries_even_with_weight_decay(base: tuple[Path, DigitTask], tmp_path: Path,
                                                     alg: str) -> None:
    folder, _ = base
    model = load_model(folder, "fp32")
    g = torch.Generator().manual_seed(0)
    mask = {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in model.named_parameters()}
    spec = make_spec(base, alg, tmp_path / "m", steps=6, weight_decay=0.1)
    spec.mask = mask
    ALGOS[alg].train(spec)
    b, o = weights(folder), weights(spec.out_dir)
    moved = 0
    for name, m in mask.items():
        key = name if name in o else next(k for k in o if k.endswith(name))
        assert torch.equal(o[key][~m], b[key].float()[~m]), name
        moved += int((o[key][m] != b[key].float()[m]).sum())
    assert moved > 0.5 * sum(int(m.sum()) for m in mask.values())


def test_prime_options_run(base: tuple[Path, DigitTask], tmp_path: Path) -> None:
    """No accuracy filter, double forward, KL loss: still trains. The PRM loss of the first
    batch is the BCE of a zero implicit reward (log 2); with double forward the process
    rewards of that same batch already come from the updated PRM, so they are not 0."""
    spec = make_spec(base, "prime", tmp_path / "p", steps=4, accuracy_filter=None, double_forward=True,
                     kl_coef=0.1, samples_per_prompt=2, prompts_per_rollout=3, minibatch_size=6)
    stats = prime.train(spec)
    h = stats["history"]
    assert len(h) == 4 and all(e["kept_prompts"] == 3.0 for e in h)
    assert abs(h[0]["prm_loss"] - 0.6931) < 1e-3 and h[0]["process_reward_mean"] != 0.0
