"""Subnetwork finetuning and causes ablations: masks from a diff, random control, masked
training that leaves masked-out entries bit-identical (TRL and our own step loop, with
weight decay), exact agreement, and a tiny end-to-end subnetwork run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rlsparsity import subnetwork as SN
from rlsparsity.algorithms import TrainSpec, get_algorithm
from rlsparsity.grid import Run


def _folder(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    return path


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


# ---------------------------------------------------------------- masks


def test_mask_from_hand_built_diff_has_exact_density(tmp_path):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, 5, generator=g, dtype=torch.float64) + 1.0  # values in [1, 2)
    b = torch.rand(8, generator=g, dtype=torch.float64)
    ta, tb = a.clone(), b.clone()
    ta[0, 0] += 0.5          # |Δ| = 0.5
    ta[1, 2] += 2.0 ** -20   # |Δ| ≈ 9.5e-7 (exact in float64): changed at tol 0, not at 1e-5
    tb[3] += 1e-3
    tb[7] = tb[7]            # unchanged
    base = _folder(tmp_path / "base", {"a": a, "b": b})
    tuned = _folder(tmp_path / "tuned", {"a": ta, "b": tb})
    m0 = SN.mask_from_diff(base, tuned, tmp_path / "m0.safetensors", 0.0)
    assert sum(int(v.sum()) for v in m0.values()) == 3
    assert m0["a"][0, 0] and m0["a"][1, 2] and m0["b"][3] and m0["a"].shape == (4, 5)
    m5 = SN.mask_from_diff(base, tuned, tmp_path / "m5.safetensors", 1e-5)
    assert sum(int(v.sum()) for v in m5.values()) == 2 and not m5["a"][1, 2]
    # a stored exact mask is used as is at mask_tol 0 (and copied next to the job)
    m_st = SN.mask_from_diff(base, base, tmp_path / "copy.safetensors", 0.0, stored=tmp_path / "m0.safetensors")
    assert all(torch.equal(m_st[k], m0[k]) for k in m0)
    # the random control reproduces the per-tensor counts exactly
    r = SN.random_mask_like(m0, seed=3)
    assert {k: int(v.sum()) for k, v in r.items()} == {k: int(v.sum()) for k, v in m0.items()}


def test_random_mask_same_per_tensor_count():
    g = torch.Generator().manual_seed(1)
    mask = {"zero": torch.zeros(7, dtype=torch.bool), "full": torch.ones(3, 4, dtype=torch.bool),
            "some": torch.rand(50, 40, generator=g) < 0.13, "one": torch.tensor([True])}
    r1, r2, r3 = SN.random_mask_like(mask, 5), SN.random_mask_like(mask, 5), SN.random_mask_like(mask, 6)
    for k, m in mask.items():
        assert r1[k].shape == m.shape and r1[k].dtype == torch.bool
        assert int(r1[k].sum()) == int(m.sum())
        assert torch.equal(r1[k], r2[k])  # seeded
    assert not torch.equal(r1["some"], r3["some"]) and not torch.equal(r1["some"], mask["some"])


def test_mask_file_roundtrip_and_alignment(tmp_path, random_base):
    from rlsparsity.analysis.io import load_mask
    from rlsparsity.modeling import load_model

    model = load_model(random_base, "fp32")
    params = dict(model.named_parameters())
    stored = load_file(str(random_base / "model.safetensors"))
    mask = {n: torch.rand(t.shape) < 0.3 for n, t in stored.items()}
    mask["not_a_parameter"] = torch.ones(2, 2, dtype=torch.bool)  # e.g. a buffer: dropped
    first = sorted(set(params) & set(stored))[0]
    del mask[first]  # a parameter the mask omits: frozen whole
    SN.write_mask(mask, tmp_path / "m.safetensors")
    back = load_mask(tmp_path / "m.safetensors")
    assert all(torch.equal(back[k], mask[k]) for k in back)
    aligned, info = SN.align_mask(mask, random_base)
    assert set(aligned) == set(params) and info["dropped_not_parameters"] == ["not_a_parameter"]
    assert info["frozen_whole"] == [first] and not aligned[first].any()


# ---------------------------------------------------------------- masked training keeps frozen entries


def _half_mask(base: Path) -> dict[str, torch.Tensor]:
    from rlsparsity.modeling import load_model

    g = torch.Generator().manual_seed(0)
    return {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in load_model(base, "fp32").named_parameters()}


def _assert_frozen(base: Path, out: Path, mask: dict[str, torch.Tensor]) -> None:
    b, t = weights(base), weights(out)
    checked = 0
    for name, m in mask.items():
        if name not in t:  # tied lm_head stored once
            continue
        assert torch.equal(b[name][~m].float(), t[name][~m].float()), f"masked-out entries of {name} moved"
        checked += 1
    assert checked >= len(mask) - 1
    moved = sum(int((b[k].float() != t[k].float())[mask[k]].sum()) for k in mask if k in t)
    assert moved > 100, "the free entries did not move"


@pytest.mark.parametrize("alg", ["grpo", "ppo"])
def test_masked_training_leaves_masked_out_entries_bit_identical(alg, trained_base, task, tmp_path):
    """TRL callback path (grpo) and our run_steps path (ppo), fp32 with weight decay 0.1."""
    hp = {"lr": 1e-3, "weight_decay": 0.1}
    if alg == "grpo":
        hp.update(batch_size=8, num_generations=4)
    else:
        hp.update(max_new_tokens=8)
    mask = _half_mask(trained_base)
    spec = TrainSpec(run=Run("llama", alg, "on_policy", "fp32", 1), base_dir=trained_base, out_dir=tmp_path,
                     task=task, steps=3, checkpoint_every=3, hparams=hp, mask=mask)
    get_algorithm(alg)(spec)
    _assert_frozen(trained_base, tmp_path, mask)


# ---------------------------------------------------------------- agreement


def test_agreement_exact_on_hand_built_tensors(tmp_path):
    full = torch.zeros(6, dtype=torch.float64)
    sub = torch.tensor([0.0, 0.0, 1e-5, 2e-5, 1e-4, 1e-3], dtype=torch.float64)  # ties at 1e-5 and 1e-4 agree
    w_full = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float32)
    w_sub = w_full.clone()
    w_sub[1, 1] = torch.nextafter(w_sub[1, 1], torch.tensor(10.0))  # one ulp (4.8e-7): agrees from 1e-5 on
    a = _folder(tmp_path / "full", {"v": full, "w": w_full})
    b = _folder(tmp_path / "sub", {"v": sub, "w": w_sub})
    agr = SN.agreement(a, b, (0.0, 1e-5, 1e-4))
    assert agr == pytest.approx({"0": 5 / 10, "1e-05": 7 / 10, "0.0001": 9 / 10}, abs=0)


# ---------------------------------------------------------------- config and causes


def test_kl_defaults_match_the_algorithms():
    from rlsparsity.algorithms import defaults

    for alg, (key, value) in SN.KL_PARAM.items():
        assert float(defaults(alg)[key]) == value, alg


def test_causes_settings_reuse_grid_runs():
    from rlsparsity.config import load_config
    from rlsparsity.grid import expand_runs

    cfg = load_config(Path(__file__).resolve().parents[1] / "config" / "config.yaml")
    settings = SN.causes_settings(cfg)
    assert len(settings) == 8 * len(cfg["causes"]["precisions"]) * len(cfg["causes"]["seeds"])
    runs = set(expand_runs(cfg))
    for s in settings:
        if s.source == "grid":
            assert s.run in runs, s  # the default grid already has it: reused, not retrained
    new = {(s.algorithm, s.setting) for s in settings if s.source == "causes"}
    assert new == {("grpo", "kl_on"), ("ppo", "kl_off")}
    d = [s for s in settings if s.source == "causes" and s.algorithm == "grpo"][0].dir("results")
    assert d.parts[:3] == ("results", "causes", "runs") and "beta0.04" in d.parts
    jobs = SN.subnetwork_jobs(cfg)
    assert len(jobs) == 3 * 7 * 2 and all(j.run in runs for j in jobs)


# ---------------------------------------------------------------- end to end


def test_end_to_end_subnetwork_run(trained_base, tmp_path):
    from rlsparsity.config import validate_config
    from rlsparsity.train import train_run

    res = tmp_path / "results"
    (res / "base").mkdir(parents=True)
    os.symlink(trained_base, res / "base" / "llama")
    cfg = validate_config({
        "experiment": "t", "results": str(res),
        "task": {"name": "tiny_arith", "n_train": 600, "n_test": 64, "seed": 7},
        "families": {"llama": {}}, "base": {},
        "train": {"steps": 4, "checkpoint_every": 2, "eval_n": 32,
                  "hparams": {"dpo": {"batch_size": 8, "n_prompts": 32, "k": 2, "lr": 1e-3, "weight_decay": 0.01}}},
        "grids": [{"families": ["llama"], "algorithms": ["dpo"], "seeds": [1], "precisions": ["bf16"],
                   "data": ["off_policy"]}],
        "subnetwork": {"families": ["llama"], "algorithms": ["dpo"], "data": "off_policy"},
    })
    run = Run("llama", "dpo", "off_policy", "bf16", 1)
    train_run(run, cfg)
    # the same rerun with an all-True mask reproduces the full run bit-identically
    full_w = weights(run.dir(res))
    ones, _ = SN.align_mask({k: torch.ones(v.shape, dtype=torch.bool) for k, v in full_w.items()}, trained_base)
    SN.train_variant(run, cfg, tmp_path / "ones", res / "base" / "llama", mask=ones)
    assert SN.agreement(run.dir(res), tmp_path / "ones", (0.0,)) == {"0": 1.0}

    rows = SN.subnetwork_family(cfg, "llama", res / "subnetwork" / "llama" / "subnetwork.csv", log=lambda *a: None)
    assert [(r["mask"], r["tolerance"]) for r in rows] == [(k, t) for k in ("subnetwork", "random")
                                                           for t in (0.0, 1e-5, 1e-4)]
    sub = [r for r in rows if r["mask"] == "subnetwork"]
    rnd = [r for r in rows if r["mask"] == "random"]
    assert all(r["mask_violations"] == 0 for r in rows)
    assert 0 < sub[0]["mask_density"] < 1 and rnd[0]["mask_density"] == sub[0]["mask_density"]
    assert sub[0]["sparsity_full"] == pytest.approx(1 - sub[0]["mask_density"])
    for rs in (sub, rnd):
        ag = [r["agreement"] for r in rs]
        assert 0 <= ag[0] <= ag[1] <= ag[2] <= 1
        # masked-out entries never move and match the full run where the full run did not move
        assert 0 <= rs[0]["acc_subnetwork"] <= 1
    assert sub[0]["agreement"] >= 1 - sub[0]["mask_density"]  # frozen entries agree with the full run exactly
    assert sub[0]["acc_full"] == json.loads((run.dir(res) / "run.json").read_text())["acc_trained"]
    # agreement on the mask's entries (≤ the all-entries number, which counts frozen entries), the
    # per-problem outcomes for paired intervals, and the control's realised sparsity
    for r in rows:
        assert 0 <= r["agreement_on_mask"] <= 1 and len(r["correct_subnetwork"]) == len(r["correct_full"]) == 32
    assert sub[1]["agreement_on_mask"] <= sub[1]["agreement"]
    assert 0 < rnd[0]["sparsity_subnetwork"] < 1
    # the random control matches the subnetwork's count per tensor AND per |w| octave of the base
    from rlsparsity import masks as M
    from rlsparsity.analysis.io import load_mask

    m_sub = load_mask(SN.SubJob(run, "subnetwork").dir(res) / "mask.safetensors")
    m_rnd = load_mask(SN.SubJob(run, "random").dir(res) / "mask.safetensors")
    w0 = M.read_weights(res / "base" / "llama", m_sub)
    assert M.bin_counts(m_rnd, w0) == M.bin_counts(m_sub, w0)
    assert any(not torch.equal(m_rnd[k], m_sub[k]) for k in m_sub)
    d = SN.SubJob(run, "subnetwork").dir(res)
    assert (d / "model.safetensors").exists() and (d / "mask.safetensors").exists() and (d / "run.json").exists()
    assert not (d / "resume").exists()
    import csv

    with open(res / "subnetwork" / "llama" / "subnetwork.csv") as fh:
        header = next(csv.reader(fh))
    assert header[:10] == ["family", "algorithm", "seed", "precision", "mask", "acc_base", "acc_full",
                           "acc_subnetwork", "tolerance", "agreement"]
