"""Reruns follow the config: a tiny real DAG (one family, grpo + dpo, two steps; base,
training groups, analysis, tables, figures) runs to completion in a results folder whose
path holds a space and a `;` (every shell path is quoted), then dry runs after config
edits plan exactly the jobs whose slice of the config changed and everything downstream."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_cluster import job_counts

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
N_FIGURES = 9  # sparsity x3, layers, rank, overlap, dynamics, accuracy, precision_rounding
DOWNSTREAM = {"accuracy_table": 1, "analyze": 1, "analysis_table": 5, "rounding_eval": 2, "rounding_table": 1,
              "figure": N_FIGURES, "summary": 1, "all": 1}


def snakemake(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg"}
    return subprocess.run([str(BIN / "snakemake"), "--nolock", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def tiny_config(results: Path) -> dict:
    small = {"batch_size": 8, "lr": 1e-3}
    return {
        "experiment": "reruns", "results": str(results),
        "task": {"name": "tiny_arith", "n_train": 300, "n_test": 32, "seed": 5},
        "families": {"llama": {"hidden_size": 32, "intermediate_size": 64}},
        "base": {"seed": 0, "max_steps": 30, "batch_size": 16, "eval_every": 15, "eval_n": 16,
                 "target_accuracy": 0.9},
        "analysis": {"rounding": True},  # both runs are fp32: the rounding stage evaluates each
        "train": {"steps": 2, "checkpoint_every": 1, "eval_n": 16, "group_by": ["algorithm"],
                  "hparams": {"grpo": {**small, "num_generations": 4}, "dpo": {**small, "n_prompts": 16}}},
        # dpo on reference-vs-corrupted pairs: a 30-step base solves nothing, so on-policy pairs would be empty
        "grids": [{"families": "all", "algorithms": ["grpo"], "seeds": [1], "precisions": ["fp32"],
                   "data": ["on_policy"]},
                  {"families": "all", "algorithms": ["dpo"], "seeds": [1], "precisions": ["fp32"],
                   "data": ["off_policy"]}],
    }


def plan(tmp: Path, cfg: dict) -> dict[str, int]:
    """Job counts of a dry run under ``cfg`` ({} when there is nothing to do)."""
    path = tmp / "edited.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = snakemake("-n", "--configfile", str(path), "--cores", "2")
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    out = r.stdout + r.stderr
    if "Nothing to be done" in out:
        return {}
    counts = job_counts(out)
    counts.pop("total", None)
    return counts


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reruns")
    results = tmp / "res dir;touch INJECTED;x"
    cfg = tiny_config(results)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = snakemake("--configfile", str(path), "--cores", "2")
    assert r.returncode == 0, r.stderr[-5000:]
    return tmp, results, cfg


@pytest.mark.slow
def test_tiny_dag_runs_in_a_results_path_with_space_and_semicolon(done):
    tmp, results, cfg = done
    assert not list(REPO.glob("INJECTED")) and not list(tmp.glob("INJECTED"))
    for alg, data in (("grpo", "on_policy"), ("dpo", "off_policy")):
        rec = json.loads((results / "runs" / "llama" / alg / data / "fp32" / "seed1" / "run.json").read_text())
        assert rec["steps"] == 2 and rec["algorithm"] == alg
        man = json.loads((results / "train" / "groups" / f"algorithm_{alg}.json").read_text())
        assert [Path(f["path"]).name for f in man["files"]] == ["model.safetensors", "run.json"]
        assert all(len(f["sha256"]) == 64 for f in man["files"])
    assert len(list((results / "figures").glob("*.png"))) == N_FIGURES and (results / "SUMMARY.md").exists()
    # each job read the config file of its own scope; the file holds the validated config
    job_cfg = json.loads((results / "config" / "train" / "algorithm_dpo.json").read_text())
    assert job_cfg["train"]["steps"] == 2 and job_cfg["results"] == str(results)
    assert sorted(p.name for p in (results / "config").iterdir()) == ["accuracy", "base", "train"]


@pytest.mark.slow
def test_rounding_stage_evaluates_each_fp32_run(done):
    """analysis.rounding: each fp32 run's record reproduces the run's own answers, its counts of
    changed entries equal the analysis's exact count, and the table pairs every model with it."""
    import csv

    _, results, _ = done
    sparsity = {(r["algorithm"], r["data"]): r for r in csv.DictReader((results / "tables" / "sparsity.csv").open())
                if float(r["tolerance"]) == 0.0}
    for alg, data in (("grpo", "on_policy"), ("dpo", "off_policy")):
        rec = json.loads((results / "rounding" / "llama" / alg / data / "seed1.json").read_text())
        assert rec["reproduces_run"] is True and rec["precision"] == "fp32" and rec["n"] == 16
        counts = rec["variants"]["below_half_ulp"]["update_counts"]
        assert counts == rec["variants"]["above_half_ulp"]["update_counts"]
        assert counts["n_below"] + counts["n_above"] == counts["n_changed"]
        assert (counts["n_changed"] > 0) == (alg == "dpo")  # grpo earns no reward from a 30-step base: no update
        sp = sparsity[(alg, data)]  # exact counts both ways: Δ != 0 entries
        assert counts["n_changed"] == round((1 - float(sp["sparsity"])) * counts["n_entries"])
        # the analysis counts 0 < |Δ| < half a bf16 ulp (dpo 171 entries); rounding-to-base differs on exact
        # ties and at powers of two (169)
        assert abs(counts["n_below"] / counts["n_entries"] - float(sp["below_bf16_half_ulp"])) < 1e-3
    rows = list(csv.DictReader((results / "tables" / "precision_rounding.csv").open()))
    models = {(r["algorithm"], r["seed"]): set() for r in rows}
    for r in rows:
        models[(r["algorithm"], r["seed"])].add(r["model"])
    assert models == {(a, s): {"raw", "round_bf16", "below_half_ulp", "above_half_ulp", "base"}
                      for a in ("grpo", "dpo") for s in ("1", "all")}  # no fp32-master partner in this grid
    raw = [r for r in rows if r["model"] == "raw" and r["seed"] == "1"]
    assert all(float(r["vs_raw_pts"]) == 0.0 for r in raw)


@pytest.mark.slow
def test_no_edit_plans_nothing(done):
    tmp, _, cfg = done
    assert plan(tmp, cfg) == {}


@pytest.mark.slow
def test_training_key_reruns_training_and_everything_downstream(done):
    tmp, _, cfg = done
    c = copy.deepcopy(cfg)
    c["train"]["steps"] = 3
    assert plan(tmp, c) == {"job_config": 2, "train_group": 2, **DOWNSTREAM}  # no base


@pytest.mark.slow
def test_one_algorithms_hparams_rerun_only_its_group(done):
    tmp, _, cfg = done
    c = copy.deepcopy(cfg)
    c["train"]["hparams"]["dpo"]["lr"] = 2e-3
    assert plan(tmp, c) == {"job_config": 1, "train_group": 1, **DOWNSTREAM, "rounding_eval": 1}


@pytest.mark.slow
def test_figure_key_reruns_only_figures(done):
    tmp, _, cfg = done
    c = copy.deepcopy(cfg)
    c["figures"] = {"dpi": 80}
    assert plan(tmp, c) == {"figure": N_FIGURES, "all": 1}


@pytest.mark.slow
def test_analysis_key_reruns_analysis_and_figures_not_training(done):
    tmp, _, cfg = done
    c = copy.deepcopy(cfg)
    c["analysis"] = {"topk": 0.05, "rounding": True}  # accuracy and precision_rounding do not read the analysis
    assert plan(tmp, c) == {"analyze": 1, "analysis_table": 5, "figure": N_FIGURES - 2, "summary": 1, "all": 1}


@pytest.mark.slow
def test_base_key_reruns_everything_and_labels_rerun_nothing(done):
    tmp, _, cfg = done
    c = copy.deepcopy(cfg)
    c["base"]["max_steps"] = 31
    assert plan(tmp, c) == {"job_config": 1, "base": 1, "train_group": 2, **DOWNSTREAM}
    c = copy.deepcopy(cfg)
    c["experiment"] = "renamed"  # a label, in no slice
    assert plan(tmp, c) == {}


@pytest.mark.slow
def test_precision_hparams_rerun_only_their_group_and_gpu_block_reruns_nothing(done):
    tmp, _, cfg = done
    c = copy.deepcopy(cfg)
    c["train"]["hparams_by_precision"] = {"fp32": {"dpo": {"lr": 2e-3}}, "bf16": {"grpo": {"lr": 1e-4}}}
    assert plan(tmp, c) == {"job_config": 1, "train_group": 1, **DOWNSTREAM, "rounding_eval": 1}  # dpo fp32 only
    c = copy.deepcopy(cfg)
    c["gpu"] = {"slots_per_gpu": 4}  # scheduling only
    c["base"]["per_family"] = {"other": {"lr": 1e-2}}  # another family's base
    assert plan(tmp, c) == {}


def test_job_slices_of_per_run_jobs_and_scheduling_keys() -> None:
    from rlsparsity import config_slices as CS
    from rlsparsity.config import load_config

    cfg = load_config(REPO / "config" / "smollm2-gpu.yaml")
    name = "smollm2-135m__rho0.2-top-kept__bf16__seed1"
    d_run, d_fam = CS.slice_digest(cfg, "entropy_run", name), CS.slice_digest(cfg, "entropy", "smollm2-135m")
    job = "smollm2-135m__grpo__on_policy__bf16__seed1__random"
    d_job = CS.slice_digest(cfg, "subnetwork_job", job)
    c = copy.deepcopy(cfg)
    c["entropy"]["job_per_run"] = c["subnetwork"]["job_per_run"] = False
    c["gpu"]["slots_per_gpu"] = 3
    assert (CS.slice_digest(c, "entropy_run", name), CS.slice_digest(c, "entropy", "smollm2-135m"),
            CS.slice_digest(c, "subnetwork_job", job)) == (d_run, d_fam, d_job)
    c["entropy"]["stats_prompts"] = 7  # the family's statistics, not a run
    assert CS.slice_digest(c, "entropy_run", name) == d_run != CS.slice_digest(c, "entropy", "smollm2-135m")
    c["train"]["hparams_by_precision"]["bf16"]["dpo"] = {"lr": 7e-6}  # dpo only: not this grpo job
    assert CS.slice_digest(c, "subnetwork_job", job) == d_job
    c["train"]["hparams_by_precision"]["bf16"]["grpo"] = {"lr": 7e-6}
    assert CS.slice_digest(c, "subnetwork_job", job) != d_job != CS.slice_digest(cfg, "subnetwork_job",
                                                                                   job.replace("random", "subnetwork"))
    assert CS.slice_digest(c, "entropy_run", name) != d_run
    with pytest.raises(ValueError, match="not in the config"):
        CS.config_slice(cfg, "entropy_run", "smollm2-135m__rho0.5-top-kept__bf16__seed1")
    with pytest.raises(ValueError, match="not in the config"):
        CS.config_slice(cfg, "subnetwork_job", job.replace("seed1", "seed9"))


def test_multi_gpu_keys_rerun_training_but_not_the_base_or_its_samples() -> None:
    """sharding / fsdp_units / gpus above 1 shape only multi-GPU training: the base build and the
    sample draws (one process, one device) keep their digests; CPU vs GPU (gpus 0 vs 1) still counts."""
    from rlsparsity import config_slices as CS
    from rlsparsity.config import load_config

    cfg = load_config(REPO / "config" / "smollm2-gpu.yaml")
    fam, samples = "smollm2-135m", "smollm2-135m__bf16__seed1__n512_k8_t0.7"
    group = sorted(CS.train_groups(cfg))[0]
    # an entry without the keys is passed through untouched, so existing digests do not move
    assert CS.base_slice(cfg, fam)["families"][fam] is cfg["families"][fam]
    before = {s: CS.slice_digest(cfg, s, n) for s, n in (("base", fam), ("samples", samples), ("train", group))}
    c = copy.deepcopy(cfg)
    c["families"][fam].update(gpus=4, sharding="fsdp", fsdp_units="sublayer")
    after = {s: CS.slice_digest(c, s, n) for s, n in (("base", fam), ("samples", samples), ("train", group))}
    assert after["base"] == before["base"] and after["samples"] == before["samples"]
    assert after["train"] != before["train"]
    assert CS.base_slice(c, fam)["families"][fam] == cfg["families"][fam]  # gpus 4 -> 1, keys dropped
    assert c["families"][fam]["gpus"] == 4 and c["families"][fam]["sharding"] == "fsdp"  # config untouched
    c["families"][fam] = {k: v for k, v in cfg["families"][fam].items() if k != "gpus"}  # CPU
    assert CS.slice_digest(c, "base", fam) != before["base"]
    assert CS.slice_digest(c, "samples", samples) != before["samples"]
