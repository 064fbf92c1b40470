"""Token-entropy stage (arXiv 2506.01939): the mask keeps exactly the expected tokens, the
trainer really applies it (kept fraction ≈ ρ every step, loss ≠ ρ = 1 on the same batch, both
normalisers), the statistics, the run grid / config, and the DAG wiring."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rlsparsity import entropy as E
from rlsparsity.algorithms.common import TrainSpec
from rlsparsity.grid import Run

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------- hand-built entropies
# 2 rows x 6 positions; row 1 has 2 padding positions with huge entropy that must never be kept.
ENT = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
                    [6.0, 7.0, 8.0, 9.0, 99.0, 98.0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1],
                     [1, 1, 1, 1, 0, 0]])
# valid entropies 0..9 (n = 10); torch.quantile(q) interpolates at (n-1)·q, so H >= τ keeps
# n - ceil(9(1-ρ)) tokens: ρ=0.1 -> {9}, 0.2 -> {8, 9}, 0.5 -> {5..9}, 1.0 -> all
EXPECTED_TOP = {0.1: {9.0}, 0.2: {8.0, 9.0}, 0.5: {5.0, 6.0, 7.0, 8.0, 9.0}, 1.0: set(map(float, range(10)))}


def kept_values(sel: torch.Tensor, ent: torch.Tensor = ENT) -> set[float]:
    return set(ent[sel].tolist())


@pytest.mark.parametrize("selection", ["exact_k", "threshold"])
@pytest.mark.parametrize("rho", sorted(EXPECTED_TOP))
def test_top_rho_keeps_exactly_the_expected_tokens(rho, selection):
    # no ties: the official exact-k rule (k = int(10ρ + 0.9999) = 1, 2, 5, 10) and TRL's agree
    sel = E.select_tokens(ENT, MASK, rho, "top", selection)
    assert kept_values(sel) == EXPECTED_TOP[rho]
    assert not sel[MASK == 0].any(), "padding kept"


def test_exact_k_count():
    assert [E.exact_k(10, r) for r in (0.1, 0.2, 0.25, 0.5, 1.0)] == [1, 2, 3, 5, 10]
    assert E.exact_k(7, 0.2) == 2 and E.exact_k(3, 0.01) == 1 and E.exact_k(0, 0.2) == 0
    assert E.exact_k(100, 0.2) == 20  # 100 · 0.2 = 20.000000000000004 in floats: still 20, not 21
    with pytest.raises(ValueError, match="selection"):
        E.select_tokens(ENT, MASK, 0.2, "top", "quantile")


def test_bottom_keeps_the_lowest_80_percent_and_complements_top20():
    sel = E.select_tokens(ENT, MASK, 0.8, "bottom")
    assert kept_values(sel) == set(map(float, range(8)))
    top = E.select_tokens(ENT, MASK, 0.2, "top")
    assert not (sel & top).any() and torch.equal(sel | top, MASK.bool())


TIED = torch.tensor([[0.5, 0.5, 0.5, 1.0, 2.0, 2.0, 2.0, 3.0, 9.0, 9.0]])
TIED_MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 0, 0]])


def test_exact_k_keeps_exactly_k_under_ties_and_padding_never():
    ent, mask = TIED, TIED_MASK
    # n = 8, ρ = 0.2: k = int(1.6 + 0.9999) = 2: the 3.0 and the FIRST of the three tied 2.0s
    sel = E.select_tokens(ent, mask, 0.2, "top")
    assert sel[0].nonzero().reshape(-1).tolist() == [4, 7]
    bottom = E.select_tokens(ent, mask, 0.8, "bottom")
    assert bottom[0].nonzero().reshape(-1).tolist() == [0, 1, 2, 3, 5, 6]  # exactly n − k = 6
    # all entropies equal: exactly k kept (k = 1 of 5 at ρ = 0.2; 5 of 20 at ρ = 0.25), bottom the rest
    flat = torch.ones(1, 5)
    assert E.select_tokens(flat, torch.ones(1, 5), 0.2, "top")[0].tolist() == [True, False, False, False, False]
    assert int(E.select_tokens(flat, torch.ones(1, 5), 0.8, "bottom").sum()) == 4
    assert int(E.select_tokens(torch.zeros(4, 5), torch.ones(4, 5), 0.25, "top").sum()) == 5
    assert not E.select_tokens(ent, torch.zeros_like(mask), 0.2, "top").any()
    # deterministic: the same call gives the same positions
    assert torch.equal(E.select_tokens(ent, mask, 0.2, "top"), sel)


def test_threshold_option_keeps_every_tie():
    ent, mask = TIED, TIED_MASK
    # n = 8: τ_0.1 = quantile(0.9) = 2.3 (between 2.0 and 3.0) -> {3.0}
    assert kept_values(E.select_tokens(ent, mask, 0.1, "top", "threshold"), ent) == {3.0}
    # τ_0.2 = quantile(0.8) = 2.0, a 3-way tie: every tied token is kept -> 4 of 8 (> ρ·n = 1.6)
    sel = E.select_tokens(ent, mask, 0.2, "top", "threshold")
    assert int(sel.sum()) == 4 and kept_values(sel, ent) == {2.0, 3.0}
    bottom = E.select_tokens(ent, mask, 0.8, "bottom", "threshold")
    assert int(bottom.sum()) == 4 and kept_values(bottom, ent) == {0.5, 1.0}
    # all entropies equal: the tie-inclusive rule keeps everything (kept fraction 100 %), bottom nothing
    flat = torch.ones(1, 5)
    assert E.select_tokens(flat, torch.ones(1, 5), 0.2, "top", "threshold").all()
    assert not E.select_tokens(flat, torch.ones(1, 5), 0.8, "bottom", "threshold").any()


def test_statistics_on_hand_built_entropies():
    ent = torch.tensor([[0.0, 0.005, 0.02, 1.0, 2.0], [3.0, 4.0, 0.001, 50.0, 50.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    st = E.entropy_stats(ent, mask)
    assert st["n_tokens"] == 8 and st["frac_below_1e-2"] == pytest.approx(3 / 8)
    vals = torch.tensor([0.0, 0.005, 0.02, 1.0, 2.0, 3.0, 4.0, 0.001], dtype=torch.float64)
    assert st["p80_entropy"] == pytest.approx(float(torch.quantile(vals, 0.8)))
    a = torch.tensor([True, True, False, False])
    b = torch.tensor([True, False, True, False])
    ov = E.position_overlap(a, b)
    assert ov["overlap"] == 0.5 and ov["jaccard"] == pytest.approx(1 / 3)

    class Tok:
        def convert_ids_to_tokens(self, i):
            return f"t{i}"

    ids = torch.tensor([[7, 7, 3, 7, 5], [7, 3, 3, 1, 1]])
    ent2 = torch.tensor([[9.0, 8.0, 0.0, 0.1, 0.2], [7.0, 0.3, 0.4, 99.0, 99.0]])
    fk = E.forking_tokens(ent2, mask, ids, Tok(), k=3)
    assert fk[0] == {"token": "t7", "id": 7, "top20": 2, "total": 4}  # two 7s among the top 20% (9.0, 8.0)


# --------------------------------------------------------------------------- run grid and config
def test_default_config_grid_and_schema(tmp_path):
    from rlsparsity.config import ConfigError, load_config

    cfg = load_config(REPO / "config" / "config.yaml")
    runs = E.expand_entropy_runs(cfg)
    fams = {r.family for r in runs}
    assert len(fams) >= 3 and {r.seed for r in runs} >= {1, 2}
    for fam in fams:
        for seed in (1, 2):
            tags = {r.tag for r in runs if r.family == fam and r.seed == seed}
            assert {"rho0.1-top-kept", "rho0.2-top-kept", "rho0.5-top-kept", "rho1-top-kept",
                    "rho0.8-bottom-kept", "rho0.2-top-all"} <= tags
    assert sum(r.is_full for r in runs) == len(fams) * 2  # ρ = 1 trained once (kept == all there)
    r = runs[0]
    assert r.dir("res") == Path("res/entropy") / r.family / r.tag / r.precision / f"seed{r.seed}"
    assert E.reference_run(r, runs).is_full
    smol = load_config(REPO / "config" / "smollm2.yaml")
    assert {x.tag for x in E.expand_entropy_runs(smol)} == {"rho0.2-top-kept", "rho0.2-top-all", "rho1-top-kept"}
    bad = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    bad["entropy"]["normalizers"] = ["kept"]
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="entropy"):
        load_config(p)


# --------------------------------------------------------------------------- the trainer
class _VarianceReward:
    """A task whose reward varies on a random model's samples (it has no correct answers),
    so group advantages are non-zero and the policy gradient is not trivially 0."""

    def __init__(self, task):
        self._t = task

    def __getattr__(self, name):
        return getattr(self._t, name)

    def rewards(self, completions, entries):
        return [float(len(set(c)) % 2) for c in completions]


def _spec(base: Path, out: Path, task, steps: int = 3, **hp) -> TrainSpec:
    hparams = {"batch_size": 16, "num_generations": 4, "lr": 1e-3, **hp}
    return TrainSpec(run=Run("llama", "grpo", "on_policy", "fp32", 3), base_dir=base, out_dir=out,
                     task=_VarianceReward(task), steps=steps, checkpoint_every=steps, hparams=hparams)


@pytest.fixture(scope="module")
def trainer(random_base, task, tmp_path_factory):
    tr, hp = E.build_trainer(_spec(random_base, tmp_path_factory.mktemp("tr"), task), 0.2, "top", "kept")
    assert hp["loss_type"] == "dapo" and hp["epsilon"] == 0.2 and hp["epsilon_high"] == 0.28
    assert hp["beta"] == 0.0 and hp["entropy_coef"] == 0.0 and tr.args.top_entropy_quantile == 0.2
    tr.current_gradient_accumulation_steps = 1  # set by Trainer's loop; we call _compute_loss directly
    tr.model.train()
    return tr


def _batch(tr):
    """A hand-made batch: 4 prompts (left padding; distinct, so no entropy ties), completions of
    lengths 6, 4, 5, 3 (right padding)."""
    tok = tr.processing_class
    tok.padding_side = "left"
    g = torch.Generator().manual_seed(0)
    prompt = tok(["3 + 4 = ?", "12 - 7 = ?", "5 + 61 =", "what is 9 + 9?"], return_tensors="pt",
                 add_special_tokens=False, padding=True)
    P = prompt["input_ids"].shape[1]
    comp = torch.randint(4, len(tok), (4, 6), generator=g)
    lengths = torch.tensor([6, 4, 5, 3])
    cmask = (torch.arange(6)[None, :] < lengths[:, None]).long()
    comp = torch.where(cmask.bool(), comp, torch.full_like(comp, tok.pad_token_id))
    adv = torch.tensor([1.0, -0.5, 0.3, -0.8])
    return {"prompt_ids": prompt["input_ids"], "prompt_mask": prompt["attention_mask"],
            "completion_ids": comp, "completion_mask": cmask, "advantages": adv,
            "num_items_in_batch": cmask.sum().float(), "old_per_token_logps": None}, P


def _loss(tr, inputs, quantile, variant, normaliser):
    tr.args.top_entropy_quantile = tr.top_entropy_quantile = quantile
    tr.entropy_variant, tr.entropy_normaliser = variant, normaliser
    loss = tr._compute_loss(tr.model, inputs)
    sel = tr._selection if tr._selection is not None else inputs["completion_mask"].bool()
    return float(loss.detach()), sel


def test_trainer_applies_the_mask_and_both_normalisers_on_the_same_batch(trainer):
    inputs, P = _batch(trainer)
    mask = inputs["completion_mask"]
    A = inputs["advantages"][:, None]
    N = float(mask.sum())
    with torch.no_grad():  # H_t from logits / temperature over the full vocabulary, called as TRL calls the model
        logits = trainer.model(input_ids=torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
                               attention_mask=torch.cat([inputs["prompt_mask"], mask], 1)).logits
        logp = torch.log_softmax(logits[:, P - 1:-1].float() / trainer.args.temperature, -1)
        ent = -(logp.exp() * logp).sum(-1)
    # at the first (only) iteration the ratio is 1, so the DAPO term of a token is exactly -A
    full, sel_full = _loss(trainer, inputs, 1.0, "top", "kept")
    assert sel_full.sum() == N and full == pytest.approx(-float((A * mask).sum()) / N, abs=1e-6)
    for quantile, variant, rho in ((0.2, "top", 0.2), (0.5, "top", 0.5), (0.2, "bottom", 0.8)):
        ref = E.select_tokens(ent, mask, rho, variant)
        kept_l, sel = _loss(trainer, inputs, quantile, variant, "kept")
        assert torch.equal(sel, ref), (variant, rho)  # TRL's mask (through our override) == Eq. 6 reference
        K = float(sel.sum())
        assert 0 < K < N
        assert abs(K / N - rho) <= 2 / N  # kept fraction ≈ ρ (n - ceil((n-1)(1-ρ)) tokens)
        all_l, sel2 = _loss(trainer, inputs, quantile, variant, "all")
        assert torch.equal(sel2, sel)
        masked_sum = -float((A * sel).sum())
        assert all_l == pytest.approx(masked_sum / N, abs=1e-6)   # TRL: denominator = all tokens
        assert kept_l == pytest.approx(masked_sum / K, abs=1e-6)  # paper Eq. 6: kept tokens
        assert kept_l != pytest.approx(full, abs=1e-4) and all_l != pytest.approx(full, abs=1e-4)
    m = trainer._metrics["train"]
    assert m["entropy_mask/kept_fraction"][-1] == pytest.approx(float(sel.sum()) / N)


def test_trainer_refuses_an_entropy_bonus_and_accumulation(random_base, task, tmp_path):
    with pytest.raises(ValueError, match="entropy bonus"):
        E.build_trainer(_spec(random_base, tmp_path / "a", task, entropy_coef=0.01), 0.2)
    with pytest.raises(ValueError, match="normaliser"):
        E.build_trainer(_spec(random_base, tmp_path / "b", task), 0.2, "top", "tokens")
    with pytest.raises(ValueError, match="selection"):
        E.build_trainer(_spec(random_base, tmp_path / "c", task), 0.2, "top", "kept", "quantile")


def test_end_to_end_kept_fraction_logged_and_loss_differs_from_full(random_base, task, tmp_path):
    """Real training: the per-step kept fraction is ≈ ρ and the same first batch gives a
    different loss and different weights than ρ = 1 (the flag reaches the loss)."""
    from safetensors.torch import load_file

    steps = 3
    out = {}
    for name, rho, variant in (("top", 0.2, "top"), ("full", 1.0, "top"), ("bottom", 0.8, "bottom")):
        out[name] = E.train_entropy(_spec(random_base, tmp_path / name, task, steps=steps), rho, variant, "kept")
        hist = out[name]["history"]
        assert len(hist) == steps and all("entropy_mask/kept_fraction" in h for h in hist)
        for h in hist:
            kf, n = h["entropy_mask/kept_fraction"], h["entropy_mask/tokens"]
            # exact-k: k = ⌈ρN⌉ of the N tokens (top), N − ⌈0.2N⌉ (bottom): within 1/N of ρ
            assert (kf == 1.0) if name == "full" else abs(kf - rho) < 1.0 / n + 1e-9, (name, h)
    first = {k: v["history"][0] for k, v in out.items()}
    assert first["top"]["reward"] == first["full"]["reward"] and first["top"]["reward_std"] > 0  # same batch
    assert first["top"]["loss"] != pytest.approx(first["full"]["loss"], abs=1e-6)
    assert first["bottom"]["loss"] != pytest.approx(first["full"]["loss"], abs=1e-6)
    a = load_file(str(tmp_path / "top" / "model.safetensors"))
    b = load_file(str(tmp_path / "full" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert out["top"]["hparams"]["top_entropy_quantile"] == 0.2 and out["bottom"]["hparams"]["variant"] == "bottom"


# --------------------------------------------------------------------------- the family job and the DAG
def test_entropy_family_job_writes_both_tables(random_base, task, tmp_path):
    """One family end to end (tiny: 2 runs, 2 steps): run folders, sparsity/overlap columns and
    the statistics of base and trained policies on the same base-sampled responses."""
    import shutil

    res = tmp_path / "results"
    shutil.copytree(random_base, res / "base" / "llama")
    (res / "base" / "llama" / "metrics.json").write_text(json.dumps({"accuracy": 0.0}))
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg.update(
        results=str(res),
        families={"llama": {}},
        task={"name": "tiny_arith", "n_train": 200, "n_test": 16, "seed": 7},
        train={**cfg["train"], "eval_n": 16},
    )
    # the default grid names its precision-axis family (qwen3): this test has llama only
    cfg["grids"] = [{**b, "families": "all"} for b in cfg["grids"]]
    cfg["entropy"] = {
        "families": ["llama"],
        "rhos": [0.2, 1.0],
        "variants": ["top"],
        "normalisers": ["kept"],
        "seeds": [1],
        "steps": 2,
        "checkpoint_every": 2,
        "stats_prompts": 4,
        "stats_samples": 2,
        "hparams": {"batch_size": 8, "num_generations": 4},
    }
    for k in ("subnetwork", "causes"):
        cfg.pop(k, None)
    from rlsparsity.config import validate_config

    cfg = validate_config(cfg)
    paths = E.entropy_family(cfg, "llama", log=lambda *a: None)
    import csv

    rows = list(csv.DictReader(open(paths["entropy"])))
    assert [r["rho"] for r in rows] == ["0.2", "1.0"] and list(rows[0])[:14] == E.RUN_COLUMNS[:14]
    assert 0.2 <= float(rows[0]["kept_fraction"]) <= 0.25 and float(rows[1]["kept_fraction"]) == 1.0
    assert rows[0]["selection"] == "exact_k" and len(rows[0]["correct_trained"]) == 16
    assert all(0.0 <= float(r["sparsity"]) <= 1.0 for r in rows)
    assert (res / "entropy/llama/rho0.2-top-kept/bf16/seed1/diff/mask.safetensors").exists()
    stats = list(csv.DictReader(open(paths["entropy_stats"])))
    assert [s["model"] for s in stats] == ["base", "rho0.2-top-kept/bf16/seed1", "rho1-top-kept/bf16/seed1"]
    assert len({s["n_tokens"] for s in stats}) == 1  # the same responses scored under every model
    assert all(0.0 <= float(s["frac_below_1e-2"]) <= 1.0 and float(s["p80_entropy"]) >= 0 for s in stats)
    assert stats[0]["forking_tokens"]
    assert not math.isnan(float(stats[1]["top20_overlap_with_base"]))


def test_dag_entropy_target_dry_run(tmp_path):
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["results"] = str(tmp_path / "results")
    p = tmp_path / "config.json"  # JSON: YAML 1.1 would read a dumped 1e-05 as a string
    p.write_text(json.dumps(cfg))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [str(BIN / "snakemake"), "--nolock", "-n", "--configfile", str(p), "--cores", "2", "entropy"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    fams = cfg["entropy"]["families"]
    for f in fams:
        assert f"{tmp_path}/results/entropy/{f}/entropy.csv" in r.stdout
    assert r.stdout.count("rule entropy_family:") == len(fams)
    assert "entropy_table" in r.stdout and "rule train:" not in r.stdout
    assert f"{tmp_path}/results/tables/entropy_stats.csv" in r.stdout


def test_entropy_stage_task_and_its_own_bases():
    cfg = {
        "results": "res",
        "task": {"name": "tiny_arith", "n_train": 10, "n_test": 5, "seed": 1},
        "families": {"llama": {}},
        "entropy": {"families": ["llama"]},
    }
    assert E.entropy_config(cfg) is cfg and E.entropy_base_dir(cfg, "llama") == Path("res/base/llama")
    cfg["entropy"]["task"] = "tiny_column_add"
    ec = E.entropy_config(cfg)
    assert ec["task"] == {"name": "tiny_column_add", "n_train": 10, "n_test": 5, "seed": 1}
    assert cfg["task"]["name"] == "tiny_arith"  # the experiment's config is not changed
    assert E.entropy_base_dir(cfg, "llama") == Path("res/entropy/llama/base-tiny_column_add")
    from rlsparsity.tasks import task_from_config

    assert task_from_config(ec).spec.max_new_tokens == 48  # the reasoning task's generation budget
