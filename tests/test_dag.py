"""The Snakemake DAG: dry-run of the full default grid, bad configs stop it with a
clear message, and a tiny real run of the base rule for two families."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def snakemake(*args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(BIN / "snakemake"), "--nolock", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def job_counts(out: str) -> dict[str, int]:
    counts = {}
    table = out.split("Job stats:")[1]
    for line in table.splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def small_config(tmp_path: Path, **changes) -> Path:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["results"] = str(tmp_path / "results")
    if "families" in changes:  # stage blocks name default families; drop them with a family override
        for stage in ("subnetwork", "causes", "entropy"):
            cfg.pop(stage, None)
    cfg.update(changes)
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_dry_run_of_the_full_default_grid(tmp_path):
    cfg = small_config(tmp_path)
    r = snakemake("-n", "--configfile", str(cfg), "--cores", "2")
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    counts = job_counts(r.stdout)
    from rlsparsity.config import load_config
    from rlsparsity.grid import expand_runs, group_runs

    c = load_config(cfg)
    runs = expand_runs(c)
    assert counts["base"] == 10 and len(runs) >= 10 * 7 * 2
    # one grouped job per (family, precision, seed) of the grid, each producing its runs' files
    groups = group_runs(runs, c["train"]["group_by"])
    assert c["train"]["group_by"] == ["family", "precision", "seed"] and len(groups) == 24
    assert counts["train_group"] == len(groups)
    assert "wildcards: group=family_qwen3__precision_fp32-master__seed_1" in r.stdout  # precision axis: qwen3


def test_bad_config_stops_the_dag_naming_the_key(tmp_path):
    cfg = small_config(tmp_path, train={"steps": 20, "chekpoint_every": 5})
    r = snakemake("-n", "--configfile", str(cfg), "--cores", "1")
    assert r.returncode != 0
    assert "config error at train: Additional properties are not allowed ('chekpoint_every'" in r.stderr + r.stdout


def test_real_base_rule_for_two_families(tmp_path):
    fams = {"llama": {"hidden_size": 32, "intermediate_size": 64}, "gpt2": {"hidden_size": 32}}
    cfg = small_config(tmp_path, families=fams,
                       base={"seed": 0, "max_steps": 40, "batch_size": 16, "eval_every": 20, "eval_n": 32,
                             "target_accuracy": 0.9},
                       task={"name": "tiny_arith", "n_train": 300, "n_test": 32, "seed": 5},
                       grids=[{"families": "all", "algorithms": ["grpo"], "seeds": [1], "precisions": ["bf16"],
                               "data": ["on_policy"]}])
    res = tmp_path / "results"
    r = snakemake("--configfile", str(cfg), "--cores", "2", "bases")
    assert r.returncode == 0, r.stderr[-3000:]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for fam in fams:
        folder = res / "base" / fam
        m = json.loads((folder / "metrics.json").read_text())
        assert m["steps"] == 40 and m["seed"] == 0 and m["n_test"] == 32
        assert set(m["versions"]) >= {"torch", "transformers", "trl"}
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert m["n_params"] == sum(p.numel() for p in model.parameters())
        assert model.config.hidden_size == 32
        AutoTokenizer.from_pretrained(folder)
        losses = [h["loss"] for h in m["history"]]
        assert losses[-1] < losses[0]  # it learned something
        assert (res / "logs" / "base" / f"{fam}.log").exists()
        assert (res / "benchmarks" / "base" / f"{fam}.tsv").exists()
        # `rlsparsity eval` on the stored base reproduces the recorded accuracy exactly
        out = subprocess.run([str(BIN / "rlsparsity"), "eval", str(folder), "--task", "tiny_arith", "--n", "32",
                              "--split-seed", "5", "--json"], capture_output=True, text=True, check=True)
        assert json.loads(out.stdout)["accuracy"] == m["accuracy"]
    # a second run has nothing to do; rerunning one stage target works
    r = snakemake("--configfile", str(cfg), "--cores", "1", "-n", f"{res}/base/llama/metrics.json")
    assert "Nothing to be done" in r.stdout + r.stderr


def test_eval_cli_bad_model_path_is_one_line(tmp_path):
    r = subprocess.run([str(BIN / "rlsparsity"), "eval", str(tmp_path / "nope"), "--task", "tiny_arith"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("rlsparsity: error: cannot load model") and r.stderr.count("\n") == 1
