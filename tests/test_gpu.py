"""GPU readiness without a GPU: device discipline of our own loops, GPU-slot packing (resource
functions, slot claims, a real Snakemake run that packs 4 jobs on one 'GPU'), the run.json
device record and the smollm2-gpu config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_own_algorithms import base, make_spec  # noqa: F401  (base is a fixture)
from torch.overrides import TorchFunctionMode

from rlsparsity import gpu as GPU

REPO = Path(__file__).resolve().parents[1]
SRC = str(REPO / "src" / "rlsparsity")
TORCH = str(Path(torch.__file__).parent)
BIN = Path(sys.executable).parent

#: tensor factories that put their result on the CPU unless told otherwise
FACTORIES = {"arange", "tensor", "zeros", "ones", "full", "empty", "rand", "randn", "randint", "linspace",
             "as_tensor", "eye", "zeros_like_cpu"}
#: deliberate CPU tensors: minibatch permutations drawn from the seeded CPU generator (used as
#: indices, which torch accepts for tensors on any device)
ALLOWED = {"randperm"}


class DeviceGuard(TorchFunctionMode):
    """Records every tensor factory called from rlsparsity code without ``device=``: on CUDA such a
    tensor lands on the CPU next to CUDA tensors (the issue's ppo/prime crash)."""

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in FACTORIES and name not in ALLOWED and "device" not in kwargs:
            fr = sys._getframe(1)
            while fr is not None and fr.f_code.co_filename.startswith(TORCH):
                fr = fr.f_back
            if fr is not None and fr.f_code.co_filename.startswith(SRC):  # called by our code itself
                self.hits.append(f"{Path(fr.f_code.co_filename).name}:{fr.f_lineno} torch.{name}")
        return func(*args, **kwargs)


def test_guard_flags_the_issue_bug() -> None:
    """The guard catches exactly the pattern of the CUDA crash (torch.arange with no device)."""
    g = DeviceGuard()
    code = compile("import torch\ndef f():\n    return torch.arange(3)\n", f"{SRC}/fake_mod.py", "exec")
    ns: dict[str, Any] = {}
    exec(code, ns)
    with g:
        ns["f"]()
        torch.arange(3)  # from a test file: not ours, not recorded
    assert g.hits == ["fake_mod.py:3 torch.arange"]


@pytest.mark.parametrize("alg", ["ppo", "prime"])
def test_own_loops_create_every_tensor_on_the_model_device(base, tmp_path: Path, alg: str) -> None:  # noqa: F811
    from rlsparsity.algorithms import ppo, prime

    mod = {"ppo": ppo, "prime": prime}[alg]
    spec = make_spec(base, alg, tmp_path / alg, steps=4)
    g = DeviceGuard()
    with g:
        stats = mod.train(spec)
    assert stats["steps"] == 4
    assert g.hits == [], f"tensors created off the model's device in the {alg} loop: {sorted(set(g.hits))}"


def test_generation_and_entropy_paths_create_no_cpu_tensors(base) -> None:  # noqa: F811
    from rlsparsity.entropy import sample_responses, score_entropies
    from rlsparsity.evaluate import evaluate
    from rlsparsity.modeling import load_model, load_tokenizer
    from rlsparsity.preference import sample_labelled

    folder, task = base
    task.test = task.train[:6]
    model, tok = load_model(folder, "fp32"), load_tokenizer(folder)
    g = DeviceGuard()
    with g:
        resp = sample_responses(model, tok, task, 6, 2, 1.0, batch_prompts=4, max_new_tokens=6)
        ent = score_entropies(model, resp)
        ev = evaluate(model, tok, task, task.train[:4], max_new_tokens=6)
        lab = sample_labelled(model, tok, task, task.train[:3], k=2)
    assert ent.shape == resp["completion_mask"].shape and resp["input_ids"].shape[0] == 12
    assert ev["n"] == 4 and len(lab) == 3 and all(len(x[2]) == 2 for x in lab)
    assert g.hits == [], sorted(set(g.hits))


# ------------------------------------------------------------------ packing
def test_gpu_slots_per_job() -> None:
    cfg = {"families": {"cpu": {}, "one": {"gpus": 1}, "two": {"gpus": 2}}, "gpu": {"slots_per_gpu": 4}}
    assert [GPU.gpu_slots(cfg, f) for f in ("cpu", "one", "two")] == [0, 1, 8]
    assert GPU.gpu_slots({"families": {"one": {"gpus": 1}}}, "one") == 1  # default: one job per GPU
    env = GPU.job_env(cfg, "res dir")
    assert env == "RLSPARSITY_GPU_LOCKS='res dir/.gpu_locks' RLSPARSITY_GPU_SLOTS=4 "
    want = "RLSPARSITY_GPU_LOCKS=r/.gpu_locks RLSPARSITY_GPU_SLOTS=4 RLSPARSITY_GPU_MEM_GB=28 "
    assert GPU.job_env(cfg, "r", 28) == want


def test_claims_go_to_the_gpu_with_the_least_declared_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With RLSPARSITY_GPU_MEM_GB (the job's gpu_mem_gb) a claim takes the GPU whose held slots declare
    the fewest GB (ties: fewer held slots, then the lower index): 28 GB lands on GPU 0, then four 9 GB
    jobs on GPU 1 (GPU 1 holds 9, 18, 27 < 28, then 27 < 28 again), and once GPU 1's 4 slots are full
    the next claim goes to GPU 0."""
    got = []
    try:
        for gb in (28, 9, 9, 9, 9):
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
            monkeypatch.setenv("RLSPARSITY_GPU_MEM_GB", str(gb))
            got.append(GPU.claim_gpu_slot(tmp_path, n_gpus=2, slots=4, wait_s=0))
        # loads after each claim: (28,0) (28,9) (28,18) (28,27) -> 5th: 28 vs 27 -> GPU 1 (36)
        assert got == [0, 1, 1, 1, 1]
        assert GPU._held_memory(tmp_path, 2, 4) == [(28, 1), (36, 4)]
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        assert GPU.claim_gpu_slot(tmp_path, n_gpus=2, slots=4, wait_s=0) == 0  # GPU 1's 4 slots are full
        assert (tmp_path / "gpu0-slot1.lock").read_text().split()[1] == "9"
    finally:
        GPU.release_gpu_slots()
    assert GPU._held_memory(tmp_path, 2, 4) == [(0, 0), (0, 0)]  # released: nothing held


def test_claims_spread_over_gpus_and_run_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = []
    try:
        for _ in range(4):
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
            got.append(GPU.claim_gpu_slot(tmp_path, n_gpus=2, slots=2, wait_s=0))
            assert os.environ["CUDA_VISIBLE_DEVICES"] == str(got[-1])
        assert got == [0, 1, 0, 1]
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        with pytest.raises(RuntimeError, match="no free GPU slot"):
            GPU.claim_gpu_slot(tmp_path, n_gpus=2, slots=2, wait_s=0.2, poll_s=0.05)
        GPU.release_gpu_slots()  # released (as at process exit): claimable again
        assert GPU.claim_gpu_slot(tmp_path, n_gpus=2, slots=2, wait_s=0) == 0
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # already placed (SLURM): no claim
        assert GPU.claim_gpu_slot(tmp_path, n_gpus=2, slots=2) is None
    finally:
        GPU.release_gpu_slots()


PACK_SNAKEFILE = r'''
import sys
sys.path.insert(0, {src!r})
from rlsparsity import gpu as GPU
config = {{"families": {{"smol": {{"gpus": 1}}}}, "gpu": {{"slots_per_gpu": 4, "devices": 1}}}}
rule all:
    input: expand("out/job{{i}}.json", i=range(8))
rule job:
    output: "out/job{{i}}.json"
    resources: gpu_slots=GPU.gpu_slots(config, "smol")
    params: env=GPU.job_env(config, "out")
    shell: "{{params.env}}{py} -c 'import json, os, sys, time; from rlsparsity.gpu import claim_gpu_slot; "
           "g = claim_gpu_slot(); t0 = time.time(); time.sleep(1.5); "
           "held = sorted(os.listdir(\"out/.gpu_locks\")); "
           "json.dump(dict(gpu=g, cvd=os.environ[\"CUDA_VISIBLE_DEVICES\"], start=t0, end=time.time()), "
           "open(sys.argv[1], \"w\"))' {{output}}"
'''


def _peak_concurrency(jobs: list[dict[str, Any]]) -> int:
    """Most jobs alive at once, from their recorded start/end times."""
    events = sorted([(j["start"], 1) for j in jobs] + [(j["end"], -1) for j in jobs])
    live = peak = 0
    for _, d in events:
        live += d
        peak = max(peak, live)
    return peak


def test_snakemake_packs_four_jobs_on_one_gpu(tmp_path: Path) -> None:
    """8 one-GPU jobs, gpu.slots_per_gpu 4, --resources gpu_slots=4 on 8 cores: exactly 4 at a time,
    all on GPU 0, each in its own slot."""
    (tmp_path / "Snakefile").write_text(PACK_SNAKEFILE.format(src=str(REPO / "src"), py=sys.executable))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(REPO / "src")}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    r = subprocess.run([str(BIN / "snakemake"), "--cores", "8", "--resources", "gpu_slots=4", "--nolock",
                        "--scheduler", "greedy"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = [json.loads((tmp_path / "out" / f"job{i}.json").read_text()) for i in range(8)]
    assert {j["cvd"] for j in jobs} == {"0"} and {j["gpu"] for j in jobs} == {0}
    peak = _peak_concurrency(jobs)
    assert peak == 4, f"{peak} jobs ran at once (want 4 = gpu_slots)"
    assert sorted(p.name for p in (tmp_path / "out" / ".gpu_locks").iterdir()) == [f"gpu0-slot{s}.lock"
                                                                                      for s in range(4)]


def test_gpu_mem_gb_per_job() -> None:
    """gpu_mem_gb = job_memory_gb[algorithm or 'eval'] (else default), x fp32_memory_factor for fp32 and
    fp32-master, rounded up; 0 without a table, on CPU and for multi-GPU jobs."""
    cfg = {"families": {"one": {"gpus": 1}, "cpu": {}, "two": {"gpus": 2}},
           "gpu": {"job_memory_gb": {"default": 10, "eval": 3, "dpo": 14.1}, "fp32_memory_factor": 1.5}}
    assert GPU.gpu_mem_gb(cfg, "one", "dpo", "bf16") == 15 and GPU.gpu_mem_gb(cfg, "one", "dpo", "fp32-master") == 22
    assert GPU.gpu_mem_gb(cfg, "one", "grpo", "fp32") == 15 and GPU.gpu_mem_gb(cfg, "one", None, None) == 3
    assert GPU.gpu_mem_gb(cfg, "cpu", "dpo", "bf16") == 0 and GPU.gpu_mem_gb(cfg, "two", "dpo", "bf16") == 0
    assert GPU.gpu_mem_gb({"families": {"one": {"gpus": 1}}}, "one", "dpo", "bf16") == 0
    # an "<algorithm>@<precision>" key is that pair's own peak: no factor, other precisions unchanged
    cfg["gpu"]["job_memory_gb"]["dpo@fp32-master"] = 17.2
    assert GPU.gpu_mem_gb(cfg, "one", "dpo", "fp32-master") == 18 and GPU.gpu_mem_gb(cfg, "one", "dpo", "fp32") == 22
    assert GPU.gpu_mem_gb(cfg, "one", "dpo", "bf16") == 15


def test_snakemake_packs_by_gpu_memory(tmp_path: Path) -> None:
    """8 jobs of 40 GB (dpo 20 GB x fp32 factor 2), 4 slots but --resources gpu_mem_gb=100: at most 2 at once."""
    text = PACK_SNAKEFILE.format(src=str(REPO / "src"), py=sys.executable).replace(
        '"devices": 1}}', '"devices": 1, "job_memory_gb": {"dpo": 20}, "fp32_memory_factor": 2}}').replace(
        'resources: gpu_slots=GPU.gpu_slots(config, "smol")',
        'resources: gpu_slots=GPU.gpu_slots(config, "smol"), gpu_mem_gb=GPU.gpu_mem_gb(config, "smol", "dpo", "fp32")')
    assert "gpu_mem_gb=GPU" in text and "job_memory_gb" in text
    (tmp_path / "Snakefile").write_text(text)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(REPO / "src")}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    r = subprocess.run([str(BIN / "snakemake"), "--cores", "8", "--resources", "gpu_slots=4", "gpu_mem_gb=100",
                        "--nolock", "--scheduler", "greedy"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = [json.loads((tmp_path / "out" / f"job{i}.json").read_text()) for i in range(8)]
    peak = _peak_concurrency(jobs)
    assert peak == 2, f"{peak} jobs ran at once (want 2 = 100 GB // 40 GB)"


# ------------------------------------------------------------------ record and config
def test_device_record_on_cpu() -> None:
    rec = GPU.device_record("cpu", train_seconds=12.0, steps=4)
    assert rec["device"] == "cpu" and rec["peak_gpu_memory_mb"] is None and rec["train_seconds_per_step"] == 3.0
    assert GPU.device_record("cpu")["train_seconds_per_step"] is None


def test_smollm2_gpu_config_plans_every_stage(tmp_path: Path) -> None:
    from rlsparsity.config import load_config
    from rlsparsity.entropy import expand_entropy_runs
    from rlsparsity.grid import expand_runs
    from rlsparsity.subnetwork import subnetwork_jobs
    from rlsparsity.tasks import task_from_config

    cfg = load_config(REPO / "config" / "smollm2-gpu.yaml")
    runs = expand_runs(cfg)
    assert len(runs) == 38 and cfg["train"]["steps"] >= 100
    algs = {r.algorithm for r in runs if r.precision in ("bf16", "fp32-master") and r.data == "on_policy"}
    assert algs == {"ppo", "grpo", "dpo", "kto", "orpo", "simpo", "prime", "sft"}
    assert {(r.algorithm, r.seed) for r in runs if r.precision == "fp32"} == {(a, s) for a in ("grpo", "dpo")
                                                                                for s in (1, 2)}
    assert {(r.algorithm, r.data) for r in runs if r.data == "off_policy"} == {("dpo", "off_policy")}
    assert {(e.variant, e.rho) for e in expand_entropy_runs(cfg)} == {("top", 0.2), ("top", 1.0), ("bottom", 0.8)}
    assert len(expand_entropy_runs(cfg)) == 6 and len(subnetwork_jobs(cfg)) == 4
    task = task_from_config(cfg)
    assert task.prompt_style == "cot_shot2" and task.max_new_tokens == cfg["task"]["max_new_tokens"] <= 160
    assert cfg["task"]["n_test"] >= 500 and cfg["gpu"]["slots_per_gpu"] >= 2
    assert "Think step by step" in task.user_message({"question": "What is 2 + 3?"})
    # the whole DAG plans on a CPU-only machine, every GPU job packed and on cuda
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    r = subprocess.run([str(BIN / "snakemake"), "-n", "-p", "--nolock", "--configfile", "config/smollm2-gpu.yaml",
                        "--config", f"results={tmp_path / 'res'}", "--cores", "16", "--resources", "gpu_slots=12"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    cmds = [c.split("Shell command: ")[1] for c in r.stdout.splitlines() if "Shell command:" in c]
    gpu_cmds = [c for c in cmds if "--device cuda" in c]
    assert len([c for c in gpu_cmds if "rlsparsity train " in c]) == 38
    assert len([c for c in gpu_cmds if "rlsparsity entropy-run " in c]) == 6
    assert len([c for c in gpu_cmds if "rlsparsity subnetwork-job " in c]) == 4
    assert all(c.startswith("RLSPARSITY_GPU_LOCKS=") for c in gpu_cmds)
    for stage in ("summary", "figure", "analyze", "entropy_family", "entropy_run", "subnetwork_job"):
        assert f"rule {stage}:" in r.stdout, stage
    assert r.stdout.count("gpu_slots=1") >= 38 + 6 + 4 + 1
    # memory-aware packing: each train job's gpu_mem_gb = job_memory_gb[algorithm] (x1.85 for fp32*),
    # or job_memory_gb["<algorithm>@<precision>"] as it stands (ppo, prime in fp32-master)
    mem: dict[tuple[str, str], set[int]] = {}
    for block in r.stdout.split("\n\n"):
        if "rule train:" in block and "gpu_mem_gb=" in block:
            w = dict(x.split("=", 1) for x in block.split("wildcards: ")[1].splitlines()[0].split(", "))
            gb = int(block.split("gpu_mem_gb=")[1].split(",")[0].split()[0])
            mem.setdefault((w["algorithm"], w["precision"]), set()).add(gb)
    assert mem[("grpo", "bf16")] == {12} and mem[("grpo", "fp32")] == {23} and mem[("prime", "fp32-master")] == {46}
    assert mem[("prime", "bf16")] == {44} and mem[("ppo", "fp32-master")] == {28}
    assert mem[("dpo", "bf16")] == {15} and mem[("dpo", "fp32-master")] == {28} and mem[("sft", "bf16")] == {9}
    assert sum(len(v) for v in mem.values()) == len(mem) == 18  # 8 algs x 2 precisions + grpo/dpo fp32


def test_cpu_overlay_plans_the_same_stages_without_gpu(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    r = subprocess.run([str(BIN / "snakemake"), "-n", "-p", "--nolock", "--configfile", "config/smollm2-gpu.yaml",
                        "config/smollm2-gpu-cpu.yaml", "--config", f"results={tmp_path / 'res'}", "--cores", "2"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    cmds = [c for c in r.stdout.splitlines() if "Shell command:" in c]
    assert len([c for c in cmds if "rlsparsity train " in c]) == 4
    assert not [c for c in cmds if "--device cuda" in c or "RLSPARSITY_GPU" in c]
    for stage in ("summary", "entropy_family", "subnetwork_family", "analyze"):
        assert f"rule {stage}:" in r.stdout, stage


def test_config_gpu_block_is_validated() -> None:
    from rlsparsity.config import ConfigError, validate_config

    cfg = yaml.safe_load((REPO / "config" / "smollm2-gpu.yaml").read_text())
    cfg["gpu"]["slots_per_gpu"] = 0
    with pytest.raises(ConfigError):
        validate_config(cfg)
    cfg = yaml.safe_load((REPO / "config" / "smollm2-gpu.yaml").read_text())
    cfg["task"]["prompt"] = "chatty"
    with pytest.raises(ConfigError):
        validate_config(cfg)


def test_smoke_script_runs_algorithms_in_parallel_on_cpu(tmp_path: Path, task) -> None:
    """The GPU smoke path (benchmarks/smollm2_gpu/smoke.py: runs launched as parallel `rlsparsity train`
    processes), here on CPU with a tiny random base and one algorithm."""
    from conftest import make_random_base

    from rlsparsity.modeling import write_json

    base_dir = make_random_base(tmp_path / "base", task)
    write_json(base_dir / "metrics.json", {"accuracy": 0.0, "n_test": 0, "task": "tiny_arith"})
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "smollm2_gpu" / "smoke.py"), "--device", "cpu",
                        "--family", "llama", "--base", str(base_dir), "--results", str(tmp_path / "res"),
                        "--algorithms", "ppo", "--steps", "2", "--eval-n", "8", "--max-new-tokens", "8",
                        "--task", "tiny_arith", "--prompt", "answer"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["failed"] == [] and [x["algorithm"] for x in summary["runs"]] == ["ppo"]
    assert all(x["steps"] == 2 and x["device"] == "cpu" and x["train_seconds_per_step"] > 0 for x in summary["runs"])


def _bench_module(name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "smollm2_gpu" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sweep_choice_is_per_family_and_precision_smaller_lr_on_exact_ties() -> None:
    sweep = _bench_module("sweep")
    rows = [{"algorithm": "grpo", "precision": "bf16", "lr": 1e-5, "val_accuracy": 0.40},
            {"algorithm": "grpo", "precision": "bf16", "lr": 3e-5, "val_accuracy": 0.40},  # exact tie: smaller lr
            {"algorithm": "grpo", "precision": "fp32-master", "lr": 3e-6, "val_accuracy": 0.30},
            {"algorithm": "grpo", "precision": "fp32-master", "lr": 1e-5, "val_accuracy": 0.36},
            {"algorithm": "dpo", "precision": "bf16", "lr": 1e-6, "val_accuracy": None}]
    hp = sweep.choose(rows, n_val=200)["train"]["hparams_by_precision"]
    assert hp["bf16"] == {a: {"lr": 1e-5} for a in ("grpo", "ppo", "prime")}
    assert hp["fp32-master"] == hp["fp32"] == {a: {"lr": 1e-5} for a in ("grpo", "ppo", "prime")}
    from rlsparsity.grid import run_hparams

    cfg = {"train": {"hparams": {"ppo": {"lr": 1.0, "kl_coef": 0.1}}, "hparams_by_precision": hp}}
    assert run_hparams(cfg, "ppo", "bf16") == {"lr": 1e-5, "kl_coef": 0.1}
    assert run_hparams(cfg, "dpo", "bf16") == {}

    # kto swept on its own leaves dpo's family: its own lr; dpo still covers orpo and simpo
    rows = [{"algorithm": "dpo", "precision": "bf16", "lr": 3e-5, "val_accuracy": 0.40},
            {"algorithm": "kto", "precision": "bf16", "lr": 3e-6, "val_accuracy": 0.35},
            {"algorithm": "kto", "precision": "bf16", "lr": 3e-5, "val_accuracy": 0.05}]
    hp = sweep.choose(rows, n_val=200)["train"]["hparams_by_precision"]
    assert hp == {"bf16": {"dpo": {"lr": 3e-5}, "orpo": {"lr": 3e-5}, "simpo": {"lr": 3e-5}, "kto": {"lr": 3e-6}}}
    assert sweep.lr_grid("kto") == sweep.LRS["dpo"] and sweep.members_of("dpo", ["dpo"]) == ["dpo", "kto", "orpo",
                                                                                            "simpo"]


def test_sweep_runs_packed_jobs_and_scores_on_validation(tmp_path: Path, trained_base: Path) -> None:
    """grpo and dpo, 2 steps each, scored on validation; dpo trains on samples drawn once before
    the jobs (the trained tiny base: its samples are partly right, so there are pairs)."""
    import shutil

    shutil.copytree(trained_base, tmp_path / "res" / "base" / "llama")
    fam = json.dumps({"llama": {}})
    tsk = json.dumps({"name": "tiny_arith", "prompt": "answer", "max_new_tokens": 8, "n_train": 200, "n_test": 16})
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "smollm2_gpu" / "sweep.py"), "--device", "cpu",
                        "--results", str(tmp_path / "res"), "--set", f"families={fam}", f"task={tsk}",
                        "train.hparams={\"dpo\": {\"n_prompts\": 16, \"k\": 4, \"sample_temperature\": 0.7}}",
                        "--representatives", "grpo", "dpo", "--precisions", "bf16", "--lrs", "1e-3",
                        "--steps", "2", "--val-n", "8", "--slots", "2"],
                       env={**os.environ, "PYTHONPATH": str(REPO / "src")}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    import csv

    rows = list(csv.DictReader(open(tmp_path / "res" / "sweep" / "sweep.csv")))
    assert [(x["algorithm"], float(x["lr"])) for x in rows] == [("grpo", 1e-3), ("dpo", 1e-3)]
    assert all(0.0 <= float(x["val_accuracy"]) <= 1.0 for x in rows)
    assert all(x["n_val"] == "8" and x["steps"] == "2" and x["device"] == "cpu" for x in rows)
    # dpo's on-policy samples: drawn once, before the jobs, where the DAG's rule would put them
    doc = json.loads((tmp_path / "res" / "sweep" / "samples" / "llama" / "bf16" / "seed1" / "n16_k4_t0.7.json")
                     .read_text())
    assert (doc["precision"], doc["seed"], doc["k"], doc["temperature"]) == ("bf16", 1, 4, 0.7)
    assert len(doc["samples"]) == 16 and all(len(x["completions"]) == 4 for x in doc["samples"])
    chosen = yaml.safe_load((tmp_path / "res" / "sweep" / "chosen_hparams.yaml").read_text())
    assert chosen["train"]["hparams_by_precision"]["bf16"] == {a: {"lr": 1e-3} for a in
                                                               ("grpo", "ppo", "prime", "dpo", "kto", "orpo", "simpo")}
    assert not list((tmp_path / "res" / "sweep").rglob("*.safetensors"))  # weights are not kept


def test_entropy_kept_normaliser_with_several_steps_per_generation(random_base, task, tmp_path: Path) -> None:
    """The GPU config generates once per 4 optimiser steps (steps_per_generation 4): TRL then
    normalises the DAPO loss by the generation batch's tokens / 4; the kept normaliser (paper
    Eq. 6) must still divide by the kept tokens of the update batch, exactly."""
    from test_entropy import _batch, _loss, _spec

    from rlsparsity import entropy as E

    tr, hp = E.build_trainer(_spec(random_base, tmp_path / "tr", task, steps_per_generation=4), 0.2, "top", "kept")
    assert tr.args.steps_per_generation == 4 and hp["steps_per_generation"] == 4
    tr.current_gradient_accumulation_steps = 1
    tr.model.train()
    inputs, _ = _batch(tr)
    mask = inputs["completion_mask"]
    A = inputs["advantages"][:, None]
    N = float(mask.sum())
    inputs["num_items_in_batch"] = torch.tensor(4 * N)  # the generation batch holds 4 such update batches
    kept_l, sel = _loss(tr, inputs, 0.2, "top", "kept")
    all_l, sel2 = _loss(tr, inputs, 0.2, "top", "all")
    K = float(sel.sum())
    assert torch.equal(sel, sel2) and 0 < K < N
    masked_sum = -float((A * sel).sum())
    assert all_l == pytest.approx(masked_sum / N, abs=1e-6)   # TRL: 4N / 4 tokens
    assert kept_l == pytest.approx(masked_sum / K, abs=1e-6)  # Eq. 6: kept tokens of this batch


def test_entropy_run_command_needs_precision_and_seed_when_the_config_has_several(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Found on the H200: with 2 seeds every tag names 2 runs, and `entropy-run FAMILY TAG` alone
    refused all six runs. The rule now passes --precision/--seed; without them the command says
    the tag is ambiguous (one line, exit 2), and an unknown tag is 'not in the config'."""
    from rlsparsity.cli import main

    cfg = yaml.safe_load((REPO / "config" / "smollm2-gpu.yaml").read_text())
    cfg["results"] = str(tmp_path / "res")
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    assert main(["entropy-run", "smollm2-135m", "rho0.2-top-kept", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ambiguous" in err[0] and "--seed 2" in err[0]
    assert (
        main(
            [
                "entropy-run",
                "smollm2-135m",
                "rho0.3-top-kept",
                "--precision",
                "bf16",
                "--seed",
                "1",
                "--config",
                str(path),
            ]
        )
        == 2
    )
    assert "not in the config" in capsys.readouterr().err
    rule = (REPO / "workflow" / "rules" / "entropy.smk").read_text()
    assert "--precision {wildcards.precision:q} --seed {wildcards.seed:q}" in rule


def test_choose_task_takes_the_most_accurate_case_inside_the_band(tmp_path: Path) -> None:
    """choose_task.py: among the measured cases with validation accuracy in the issue's [0.15, 0.60],
    median completion >= 20 tokens and <= 10 % truncated, the most accurate (ties: the first
    listed); the overlay keeps the config's split sizes; no qualifying case -> exit 1, nothing written."""
    import csv

    cols = ["task", "prompt", "kwargs", "n_val", "greedy_accuracy", "median_completion_tokens", "frac_truncated"]
    rows = [["chain_sum", "cot", "{}", 200, 0.13, 54, 0.01],              # too hard
            ["chain_sum", "explain", "{}", 200, 0.30, 10, 0.0],           # does not reason
            ["arith2d", "cot", "{}", 200, 0.35, 60, 0.12],                # too often cut
            ["arith2d", "answer", "{}", 200, 0.65, 30, 0.0],              # too easy
            ["chain_sum", "cot_shot", "{}", 200, 0.16, 23, 0.07],         # qualifies, less accurate
            ["chain_sum", "cot", "{'min_terms': 3, 'max_terms': 3, 'max_digits': 1}", 200, 0.31, 48, 0.02],
            ["arith2d", "cot_example", "{}", 200, 0.31, 50, 0.0]]         # as accurate, but later
    src = tmp_path / "check.csv"
    with open(src, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"task": {"name": "chain_sum", "prompt": "cot", "n_train": 4000, "n_test": 500,
                                            "seed": 1234, "max_new_tokens": 128}}))
    script = str(REPO / "benchmarks" / "smollm2_gpu" / "choose_task.py")
    r = subprocess.run([sys.executable, script, str(src), "--config", str(cfg), "--out", str(tmp_path / "t.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = yaml.safe_load((tmp_path / "t.yaml").read_text())
    assert got == {"task": {"name": "chain_sum", "prompt": "cot", "n_train": 4000, "n_test": 500, "seed": 1234,
                            "max_new_tokens": 128, "kwargs": {"min_terms": 3, "max_terms": 3, "max_digits": 1}}}
    assert json.loads((tmp_path / "t.json").read_text()) == got["task"]
    with open(src, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows[:4])
    r = subprocess.run([sys.executable, script, str(src), "--config", str(cfg), "--out", str(tmp_path / "u.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "no case qualifies" in r.stderr and not (tmp_path / "u.yaml").exists()


def test_cuda_device_initialises_cuda_and_picks_this_ranks_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """reset_peak/device_record resolve the device through cuda_device(): CUDA is initialised first (the
    stats calls raised "Invalid device argument: did you call init?" under torchrun on an H200 host);
    a bare 'cuda' is cuda:<LOCAL_RANK> under a multi-process launch, else the current device."""
    calls = []
    monkeypatch.setattr(torch.cuda, "init", lambda: calls.append("init"))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert GPU.cuda_device("cuda") == torch.device("cuda", 3) and calls == ["init"]
    assert GPU.cuda_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert GPU.cuda_device("cuda") == torch.device("cuda", 1)
    monkeypatch.setenv("WORLD_SIZE", "1")  # a 1-process launch: whatever CUDA_VISIBLE_DEVICES left current
    assert GPU.cuda_device("cuda") == torch.device("cuda", 3) and len(calls) == 4


def test_partial_summary_tables_from_a_hand_built_results_folder(tmp_path: Path) -> None:
    """benchmarks/smollm2_gpu/partial_summary.py (docs/smollm2/ is made with it): per-algorithm
    accuracy change pooled over seeds, sparsity per precision, and the 80/20 comparison, on
    hand-built run.json files whose outcomes give exact expected values."""
    import csv
    import json

    mod = _bench_module("partial_summary")
    res, out = tmp_path / "res", tmp_path / "out"
    base_bits = "0000000000"
    (res / "base" / "smollm2-135m").mkdir(parents=True)
    (res / "base" / "smollm2-135m" / "metrics.json").write_text(json.dumps({"accuracy": 0.0}))

    def run(folder: Path, trained: str, **extra: Any) -> None:
        folder.mkdir(parents=True)
        rec = {"algorithm": "grpo", "data": "on_policy", "precision": "bf16", "seed": 1, "hparams": {"lr": 3e-5},
               "steps": 100, "acc_base": 0.0, "acc_trained": trained.count("1") / 10, "n_eval": 10,
               "correct_base": base_bits, "correct_trained": trained, **extra}
        (folder / "run.json").write_text(json.dumps(rec))

    g = res / "runs" / "smollm2-135m" / "grpo" / "on_policy"
    for seed, bits, sp in ((1, "1111000000", 0.96), (2, "1111110000", 0.94)):  # +40 and +60 points
        run(g / "bf16" / f"seed{seed}", bits, seed=seed)
        (g / "bf16" / f"seed{seed}" / "diff").mkdir()
        (g / "bf16" / f"seed{seed}" / "diff" / "summary.json").write_text(json.dumps({"sparsity": {"0": sp}}))
    e = res / "entropy" / "smollm2-135m"
    for tag, bits in (("rho1-top-kept", "1111100000"), ("rho0.2-top-kept", "1100000000")):
        for seed in (1, 2):
            run(e / tag / "bf16" / f"seed{seed}", bits, seed=seed)
    mod.main(res, out)

    alg = list(csv.DictReader((out / "algorithms.csv").open()))
    assert [(r["algorithm"], r["seeds"]) for r in alg] == [("grpo", "2")]
    assert float(alg[0]["delta_pts"]) == 50.0  # (40 + 60) / 2
    assert float(alg[0]["delta_lo95"]) <= 50.0 <= float(alg[0]["delta_hi95"])
    prec = list(csv.DictReader((out / "sparsity_by_precision.csv").open()))
    assert prec[0]["precision"] == "bf16" and float(prec[0]["sparsity_tol0_mean"]) == 0.95
    ent = {r["variant"]: r for r in csv.DictReader((out / "entropy_8020.csv").open())}
    assert float(ent["rho0.2-top-kept"]["delta_vs_all_tokens_pts"]) == -30.0  # 2 of 10 vs 5 of 10
    assert float(ent["rho0.2-top-kept"]["delta_vs_base_pts"]) == 20.0
    assert float(ent["rho1-top-kept"]["delta_vs_all_tokens_pts"]) == 0.0
    assert (out / "runs" / "smollm2-135m" / "grpo" / "on_policy" / "bf16" / "seed2" / "run.json").exists()
    assert (out / "entropy" / "smollm2-135m" / "rho0.2-top-kept" / "bf16" / "seed1" / "run.json").exists()


def test_sample_yield_counts_rows_as_the_offline_data_builds_them() -> None:
    y = _bench_module("sample_yield").yields([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0], [0.0, 0.0], [1.0]])
    # pairs = sum of min(#right, #wrong) per prompt (preference._on_policy_rows zips them)
    assert (y["samples"], y["prompts_with_pair"], y["pairs"], y["kto_desirable"], y["kto_undesirable"]) == (11, 2, 2,
                                                                                                            5, 6)
    assert y["sample_accuracy"] == round(5 / 11, 4)
    assert y["accuracy_95_half_width"] == round(1.959964 * (5 / 11 * 6 / 11 / 11) ** 0.5, 4)
