"""The SLURM path for real: a one-node Slurm cluster on this machine (tools/local-slurm/up)
runs config/slurm-demo.yaml (2 tiny families x 2 algorithms x 1 seed, analysis, the sparsity
figures) through `snakemake --profile workflow/profiles/slurm --profile tools/local-slurm/profile`.

* every non-local job is an sbatch job that Slurm reports COMPLETED, with --cpus-per-task =
  the rule's threads; the cheap collectors run as local rules (no sbatch job);
* fault: the llama/grpo training job is cancelled (`scancel`) once its first checkpoint is
  complete; the profile's retry resubmits it, it resumes from that checkpoint, and its weights
  end bit-identical to the same runs trained locally (plain snakemake, no Slurm);
* a job that outlives its `runtime` is reported by Snakemake as failed with Slurm's TIMEOUT.

Needs root (it installs and starts Slurm). It never skips in CI: if the cluster cannot start,
the test fails. Outside CI and not root it is skipped. About 4-6 min on 2 cores.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
UP, DOWN = REPO / "tools" / "local-slurm" / "up", REPO / "tools" / "local-slurm" / "down"
PROFILES = ["--profile", str(REPO / "workflow" / "profiles" / "slurm"),
            "--profile", str(REPO / "tools" / "local-slurm" / "profile")]
DEMO = REPO / "config" / "slurm-demo.yaml"
RUNS = [f"{fam}/{alg}/on_policy/bf16/seed1" for fam in ("llama", "gpt2") for alg in ("grpo", "dpo")]
KILLED = "llama/grpo/on_policy/bf16/seed1"  # the run whose job is cancelled mid-training
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: (\S+)/\d+\.log\)")

if os.geteuid() != 0 and not os.environ.get("CI"):
    pytest.skip("the local Slurm cluster needs root (tools/local-slurm/up)", allow_module_level=True)


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO / "src")}


def snakemake_cmd(*args: str) -> list[str]:
    return [str(BIN / "snakemake"), "--nolock", *args]


def slurm_jobs(log: str) -> list[tuple[str, str]]:
    """(Slurm job id, ``rule_<name>[/<wildcards>]``, the plugin's log folder) of every sbatch
    submission in a Snakemake log."""
    jobs = []
    for jid, folder in SUBMITTED.findall(log):
        parts = Path(folder).parts
        first = max(i for i, p in enumerate(parts) if p.startswith("rule_"))
        jobs.append((jid, "/".join(parts[first:])))
    return jobs


def slurm_state(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """State, CPUs, elapsed time and reason of finished and running jobs (MinJobAge keeps them)."""
    out = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i|%T|%C|%M|%r", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return {r[0]: {"state": r[1], "cpus": r[2], "elapsed": r[3], "reason": r[4]} for r in rows}


@pytest.fixture(scope="module")
def cluster():
    was_up = subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0 if shutil.which("sinfo") else False
    r = subprocess.run([str(UP)], capture_output=True, text=True, timeout=900)
    # no skip here: in CI a cluster that cannot start is a failure
    assert r.returncode == 0, f"tools/local-slurm/up failed:\n{r.stdout}\n{r.stderr}"
    again = subprocess.run([str(UP)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already up" in again.stdout, again.stdout + again.stderr  # idempotent
    yield
    if not was_up:
        subprocess.run([str(DOWN)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    """The demo config through the SLURM profile, cancelling one training job mid-run."""
    tmp = tmp_path_factory.mktemp("slurm")
    res = tmp / "results"
    log_path = tmp / "snakemake.log"
    cmd = snakemake_cmd(*PROFILES, "--configfile", str(DEMO), "--config", f"results={res}",
                        "--slurm-logdir", str(tmp / "slurm_logs"), "--",
                        f"{res}/figures/sparsity_heatmap.png", f"{res}/tables/accuracy.csv")
    # complete.json is the checkpoint's completeness marker, written last (after every file was
    # fsynced); a kill before it leaves a checkpoint the retry must NOT resume from
    ckpt = res / "runs" / KILLED / "resume" / "checkpoint-5" / "complete.json"
    t0 = time.time()
    killed: dict[str, object] = {}
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=logf, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None:
                if not killed and ckpt.exists():
                    ids = [
                        j
                        for j, rule in slurm_jobs(log_path.read_text())
                        if rule.endswith("llama_grpo_on_policy_bf16_1")
                    ]
                    assert ids, "checkpoint written but no sbatch job of the llama/grpo run in the log"
                    subprocess.run(["scancel", ids[-1]], check=True)
                    killed = {"job": ids[-1], "time": time.time(), "after_s": round(time.time() - t0, 1)}
                assert time.time() - t0 < 1200, "the SLURM run did not finish in 20 min"
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.kill()
    log = log_path.read_text()
    return {
        "rc": proc.returncode,
        "log": log,
        "res": res,
        "killed": killed,
        "seconds": time.time() - t0,
        "jobs": slurm_jobs(log),
    }


@pytest.fixture(scope="module")
def timeout_and_local(slurm_run, tmp_path_factory):
    """Started together (the sleeping Slurm job needs no CPU): (1) a one-rule Snakefile whose
    job sleeps past its 1-minute runtime, through the same profiles; (2) the four training
    runs of the demo config with plain local snakemake, on the bases the Slurm run built."""
    tmp = tmp_path_factory.mktemp("timeout")
    (tmp / "Snakefile").write_text(
        'rule sleepy:\n    output: "slept.txt"\n    resources: runtime=1\n    shell: "sleep 600 && touch {output}"\n'
    )
    t0 = time.time()
    sleepy = subprocess.Popen(
        snakemake_cmd(
            "-s",
            str(tmp / "Snakefile"),
            "--directory",
            str(tmp),
            *PROFILES,
            "--retries",
            "0",
            "--slurm-logdir",
            str(tmp / "slurm_logs"),
        ),
        cwd=tmp,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    local = tmp_path_factory.mktemp("local") / "results"
    shutil.copytree(slurm_run["res"] / "base", local / "base")
    # the bases' config slices too, with their times (copy2), or the new ones would be newer than the bases
    shutil.copytree(slurm_run["res"] / "config" / "base", local / "config" / "base")
    targets = [f"{local}/runs/{r}/model.safetensors" for r in RUNS]
    loc = subprocess.run(
        snakemake_cmd("--cores", "2", "--configfile", str(DEMO), "--config", f"results={local}", "--", *targets),
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    try:
        out, _ = sleepy.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        sleepy.kill()
        out, _ = sleepy.communicate()
        pytest.fail("snakemake hung on a job past its time limit (no answer in 10 min):\n" + out[-3000:])
    return {
        "local": local,
        "local_run": loc,
        "timeout_rc": sleepy.returncode,
        "timeout_log": out,
        "timeout_seconds": time.time() - t0,
    }


def test_every_cluster_job_completes_and_collectors_stay_local(slurm_run):
    assert slurm_run["rc"] == 0, slurm_run["log"][-4000:]
    jobs = slurm_run["jobs"]
    states = slurm_state([j for j, _ in jobs])
    for jid, rule in jobs:
        print(
            f"slurm job {jid:>4} {rule:<45} {states[jid]['state']:<10} cpus={states[jid]['cpus']} "
            f"elapsed={states[jid]['elapsed']}"
        )
    print(f"SLURM run: {slurm_run['seconds']:.0f} s; cancelled: {slurm_run['killed']}")
    rules = {rule for _, rule in jobs}
    trains = {"rule_train/" + r.replace("/", "_").replace("seed", "") for r in RUNS}
    # one wildcard rule per stage: analyze/<family>; the dpo runs' on-policy samples, one job per family
    samples = {r for r in rules if re.fullmatch(r"rule_preference_samples/(llama|gpt2)_bf16_1_\d+_\d+_1", r)}
    analyses = {"rule_analyze/llama", "rule_analyze/gpt2"}
    assert rules == {"rule_base/llama", "rule_base/gpt2"} | trains | samples | analyses and len(samples) == 2, rules
    killed = slurm_run["killed"]["job"]
    assert states[killed]["state"] == "CANCELLED"
    # the cancelled job was resubmitted once; every other submission (and the resubmission) COMPLETED
    assert len(jobs) == 2 + 2 + 4 + 2 + 1
    assert all(states[j]["state"] == "COMPLETED" for j, _ in jobs if j != killed), states
    # --cpus-per-task follows each rule's threads (tiny families: analysis 2, base/samples/train 1)
    assert {states[j]["cpus"] for j, r in jobs if r.startswith("rule_analyze")} == {"2"}
    assert {states[j]["cpus"] for j, r in jobs if not r.startswith("rule_analyze")} == {"1"}
    # the collectors ran on the submitting host (localrules) and have no sbatch job (rules above);
    # (the failed job's log, printed by show-failed-logs, has its own "localrule train:" line)
    # job_config writes each job's config slice; `figure` makes the sparsity figures
    local_rules = set(re.findall(r"^localrule (\w+):", slurm_run["log"], flags=re.M)) - {"train"}
    assert local_rules == {"job_config", "accuracy_table", "analysis_table", "figure"}, local_rules
    res = slurm_run["res"]
    assert (res / "figures" / "sparsity_heatmap.png").stat().st_size > 1000
    assert len((res / "tables" / "accuracy.csv").read_text().splitlines()) == 1 + 4


def test_cancelled_training_job_resumes_from_its_checkpoint(slurm_run):
    import json

    killed = slurm_run["killed"]
    assert killed, "the llama/grpo job was never cancelled (its first checkpoint did not appear)"
    run = slurm_run["res"] / "runs" / KILLED
    record = json.loads((run / "run.json").read_text())
    assert record["resumed_from"].endswith("resume/checkpoint-5"), record["resumed_from"]
    assert record["steps"] == 10
    # step 5's weights were written before the kill and not again; step 10 after it
    assert (run / "checkpoints" / "step-000005" / "model.safetensors").stat().st_mtime < killed["time"]
    assert (run / "checkpoints" / "step-000010" / "model.safetensors").stat().st_mtime > killed["time"]
    assert not (run / "resume").exists()  # removed once the run completed
    others = [json.loads((slurm_run["res"] / "runs" / r / "run.json").read_text()) for r in RUNS if r != KILLED]
    assert all(o["resumed_from"] is None for o in others)


def tensors(path: Path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_slurm_weights_are_bit_identical_to_a_local_run(slurm_run, timeout_and_local):
    import torch

    loc = timeout_and_local["local_run"]
    assert loc.returncode == 0, loc.stderr[-3000:]
    assert not re.search(r"^rule base:", loc.stdout + loc.stderr, flags=re.M)  # the Slurm run's bases, reused
    local = timeout_and_local["local"]
    for r in RUNS:
        a, b = slurm_run["res"] / "runs" / r, local / "runs" / r
        assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes(), r
        # checkpoint files: same tensors bit for bit and same metadata; not byte-compared, as
        # safetensors writes a multi-key metadata dict in no fixed order
        for step in ("step-000005", "step-000010"):
            ta, ma = tensors(a / "checkpoints" / step / "model.safetensors")
            tb, mb = tensors(b / "checkpoints" / step / "model.safetensors")
            assert ma == mb and ta.keys() == tb.keys(), f"{r}/{step}"
            for k in ta:
                assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), f"{r}/{step}: {k} differs"


def test_job_past_its_runtime_fails_with_slurm_timeout(timeout_and_local):
    out = timeout_and_local["timeout_log"]
    print(f"timeout job reported after {timeout_and_local['timeout_seconds']:.0f} s")
    assert timeout_and_local["timeout_rc"] != 0, out[-3000:]
    m = re.search(r"SLURM-job '(\d+)' failed, SLURM status is: 'TIMEOUT'", out)
    assert m, out[-3000:]
    state = slurm_state([m.group(1)])[m.group(1)]
    assert state["state"] == "TIMEOUT" and state["reason"] == "TimeLimit", state
    assert "Exiting because a job execution failed" in out
