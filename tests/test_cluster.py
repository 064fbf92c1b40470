"""The cluster layer: the SLURM profile + config/paper.yaml dry-run lists every job with
no cluster present, and the multi-GPU launcher (lint: tests/test_lint.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

def snakemake(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(BIN / "snakemake"), "--nolock", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def job_counts(out: str) -> dict[str, int]:
    counts = {}
    for line in out.split("Job stats:")[1].splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def test_slurm_profile_dry_run_of_the_paper_config(tmp_path):
    from rlsparsity.config import load_config
    from rlsparsity.grid import PAPER_ALGORITHMS, expand_runs

    cfg = load_config(REPO / "config" / "paper.yaml")
    runs = expand_runs(cfg)
    assert len(cfg["families"]) == 10 and all("path" in s for s in cfg["families"].values())
    assert len(runs) == 10 * len(PAPER_ALGORITHMS) * 3 * 2 == 420
    # --sdm env-modules: the profile's `conda` would call `conda info` even in a dry run, and
    # there is no conda here (on a login node there is; the rules have no envmodules).
    # The slurm executor itself needs no sinfo/sacct for a dry run, only `jobs` (profile).
    r = snakemake("-n", "--profile", "workflow/profiles/slurm", "--configfile", "config/paper.yaml",
                  "--config", f"results={tmp_path / 'res'}", "--sdm", "env-modules")
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    counts = job_counts(r.stdout)
    assert counts["base"] == 10
    assert counts["train"] == len(runs)
    assert counts["analyze"] == 10
    # multi-GPU families start through accelerate with the family's sharding (all fsdp by the
    # memory model), ppo/prime included (multi-process through algorithms/distributed.py)
    cmds = [c for c in r.stdout.splitlines() if "Shell command:" in c and " train " in c]
    acc = [c for c in cmds if "accelerate launch --config_file config/accelerate/fsdp.yaml --num_processes " in c]
    multi = [x for x in runs if cfg["families"][x.family]["gpus"] > 1]
    assert len(acc) == len(multi) == 10 * 7 * 3 * 2
    assert sum("--num_processes 4 " in c for c in acc) == 7 * 3 * 2  # phi3_mini: 4 GPUs
    assert all(c.rstrip().endswith("2>&1") and "--device cuda" in c for c in cmds)
    assert not (tmp_path / "res").exists()  # a dry run writes nothing (the job configs are jobs)


def test_default_config_keeps_the_single_process_cpu_command(tmp_path):
    # default: train.group_by [family, precision, seed] -> 24 `train-group` jobs, one process each
    r = snakemake("-n", "-p", "--cores", "2", "--config", f"results={tmp_path / 'res'}", "--", "train_all")
    assert r.returncode == 0, r.stderr[-3000:]
    cmds = [c for c in r.stdout.splitlines() if "Shell command:" in c and "rlsparsity train-group " in c]
    assert len(cmds) == 24 and not any("accelerate" in c or "--device" in c for c in cmds)
    assert cmds[0].split("Shell command: ")[1].startswith("(OMP_NUM_THREADS=1 rlsparsity train-group --group family=")
    assert all(" --samples " in c and "rlsparsity manifest " in c for c in cmds)  # shared samples; manifest last
    # group_by: [] -> one `rlsparsity train` job per run (170)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["train"]["group_by"] = []
    cfg["results"] = str(tmp_path / "res2")
    (tmp_path / "per_run.yaml").write_text(yaml.safe_dump(cfg))
    r = snakemake("-n", "-p", "--cores", "2", "--configfile", str(tmp_path / "per_run.yaml"), "--", "train_all")
    assert r.returncode == 0, r.stderr[-3000:]
    cmds = [c for c in r.stdout.splitlines() if "Shell command:" in c and "rlsparsity train " in c]
    assert len(cmds) == 170 and not any("accelerate" in c or "--device" in c for c in cmds)
    assert cmds[0].split("Shell command: ")[1].startswith("OMP_NUM_THREADS=1 rlsparsity train ")


def test_profile_and_accelerate_config_are_complete():
    prof = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    assert prof["executor"] == "slurm" and prof["software-deployment-method"] == "conda"
    assert {"slurm_account", "slurm_partition", "mem_mb", "runtime"} <= set(prof["default-resources"])
    # only site settings: no per-family entries, no set-threads, no cpus_per_task (it follows
    # each rule's threads); what a job needs is computed in the rules (rlsparsity.resources)
    assert set(prof["set-resources"]) == {"train"} and "set-threads" not in prof
    assert set(prof["set-resources"]["train"]) == {"slurm_partition"}
    assert "cpus_per_task" not in prof["default-resources"]
    acc = yaml.safe_load((REPO / "config" / "accelerate" / "ddp.yaml").read_text())
    assert acc["distributed_type"] == "MULTI_GPU" and acc["mixed_precision"] == "no"
    for env in ("train", "analysis"):
        pip = next(
            d["pip"]
            for d in yaml.safe_load((REPO / "envs" / f"{env}.yaml").read_text())["dependencies"]
            if isinstance(d, dict)
        )
        assert not [p for p in pip if p.startswith("-e")]  # relative paths break in .snakemake/conda/
        assert "pip install --no-deps -e ." in (REPO / "envs" / f"{env}.post-deploy.sh").read_text()


def test_resources_scale_with_the_base_model_and_the_family():
    from rlsparsity import resources as RES

    eight_b = 8_000_000_000
    # the values the profile used to carry for 8B models, now computed
    assert RES.train_mem_mb(eight_b) == 200_000 and RES.train_runtime(eight_b, 500) == 1470
    assert RES.analysis_mem_mb(eight_b) == 66_000 and RES.analysis_runtime(eight_b, 42) == 2866
    # tiny models (or no base yet, as in a dry run): the floor
    assert RES.train_mem_mb(30_000) == 2000 and RES.train_runtime(None, 20) == 30
    assert RES.analysis_mem_mb(None) == 2000 and RES.analysis_runtime(30_000, 2) == 11
    hub = {"path": "Qwen/Qwen3-8B", "gpus": 2}
    assert RES.threads("analysis", "llama", {}) == 2 and RES.threads("analysis", "qwen3_8b", hub) == 16
    assert RES.threads("train", "llama", {}) == 1 and RES.threads("train", "qwen3_8b", hub, gpus=2) == 16
    assert RES.threads("base", "qwen3_8b", hub) == 8 and RES.base_mem_mb("qwen3_8b", hub) == 64000
    assert RES.base_runtime("llama", {}) == 60 and RES.base_mem_mb("llama", {"hidden_size": 32}) == 2000
    assert RES.is_pretrained("llama", {"path": "/models/llama"})  # a tiny name with a path is a real model


def test_stored_params_reads_the_bf16_file_size(tmp_path):
    from rlsparsity import resources as RES

    f = tmp_path / "base" / "llama" / "model.safetensors"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"\0" * 2000)
    assert RES.base_model_file(f.parent / "metrics.json") == f and RES.base_model_file(f) == f
    assert RES.stored_params(f) == 1000 and RES.stored_params(tmp_path / "missing") is None


def test_slurm_profile_dry_run_gets_hub_family_resources_from_the_rules(tmp_path):
    # paper config: hub families get the big values from the rules, with no profile entry
    r = snakemake(
        "-n",
        "--profile",
        "workflow/profiles/slurm",
        "--configfile",
        "config/paper.yaml",
        "--config",
        f"results={tmp_path / 'res'}",
        "--sdm",
        "env-modules",
        "--",
        "bases",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    base_res = re.findall(r"^rule base:\n(?:    .*\n)*?    resources: (.*)$", r.stdout, flags=re.M)
    assert len(base_res) == 10 and all("mem_mb=64000" in x and "runtime=720" in x for x in base_res)
