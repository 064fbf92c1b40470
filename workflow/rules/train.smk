# Stage: training. One job per run (family x algorithm x data x precision x seed), or,
# with train.group_by, one job per group of runs (one process: saves the start-up per run);
# every run folder gets the model, checkpoints/step-NNNNNN/ and run.json.
# GPUs per job: the family's `gpus` (default 0 = CPU). 1 GPU: one process with --device cuda;
# more: `accelerate launch` (config key accelerate.config, default config/accelerate/ddp.yaml)
# with one process per GPU; rank 0 alone writes the outputs, so they are the same files.


import re

from snakemake.exceptions import WorkflowError


def group_slug(key):
    """``family=llama,precision=bf16,seed=1`` -> ``family_llama__precision_bf16__seed_1``."""
    return re.sub(r"\W", "_", key.replace("=", "_").replace(",", "__")) or "all"


def family_gpus(family):
    """The family's `gpus` (0 = CPU)."""
    return int((config["families"][family] or {}).get("gpus", 0))


def train_gpus(wildcards):
    n = family_gpus(wildcards.family)
    # ppo and prime (written here, algorithms/ppo.py, prime.py) are single-process: one GPU
    return min(n, 1) if wildcards.algorithm in ("ppo", "prime") else n


def train_launch(wildcards, resources):
    # a params function that reads `resources` follows --set-resources train:gpu=N, and
    # Snakemake treats it as derived (not a rerun trigger)
    n = int(resources.gpu or 0)
    if n > 1:
        acc = config.get("accelerate", {}).get("config", "config/accelerate/ddp.yaml")
        return f"accelerate launch --config_file {acc} --num_processes {n} -m rlsparsity.cli train"
    return "rlsparsity train"


def train_device(wildcards, resources):
    return " --device cuda" if int(resources.gpu or 0) > 0 else ""


TRAIN_GROUP_BY = config["train"]["group_by"]


if not TRAIN_GROUP_BY:

    rule train:
        input:
            base=f"{R}/base/{{family}}/metrics.json",
        output:
            model=f"{R}/runs/{{family}}/{{algorithm}}/{{data}}/{{precision}}/seed{{seed}}/model.safetensors",
            record=f"{R}/runs/{{family}}/{{algorithm}}/{{data}}/{{precision}}/seed{{seed}}/run.json",
        log:
            f"{R}/logs/train/{{family}}/{{algorithm}}/{{data}}/{{precision}}/seed{{seed}}.log",
        benchmark:
            f"{R}/benchmarks/train/{{family}}/{{algorithm}}/{{data}}/{{precision}}/seed{{seed}}.tsv"
        params:
            launch=train_launch,
            device=train_device,
        resources:
            mem_mb=train_mem_mb,
            runtime=train_runtime,
            gpu=train_gpus,
        threads: train_threads
        conda:
            f"{ENVS}/train.yaml"
        shell:
            "OMP_NUM_THREADS={threads} {params.launch} {wildcards.family} {wildcards.algorithm} "
            "--data {wildcards.data} --precision {wildcards.precision} --seed {wildcards.seed} "
            "--config {CONFIG_JSON}{params.device} > {log} 2>&1"

else:
    # One job per group of runs (train.group_by): a rule per group, with explicit outputs.
    # Asking for one run's files (or -R on them) runs its whole group.
    for _key, _runs in G.group_runs(RUNS, TRAIN_GROUP_BY).items():
        _fams = sorted({r.family for r in _runs})
        _gpus = max(family_gpus(f) for f in _fams)
        _many = [f for f in _fams if family_gpus(f) > 1]
        if _many:
            raise WorkflowError(f"train.group_by groups runs into one process, but families {_many} "
                                "ask for several GPUs (accelerate launch per run): set train.group_by: []")

        rule:
            name:
                "train_" + group_slug(_key)
            input:
                base=[f"{R}/base/{f}/metrics.json" for f in _fams],
            output:
                model=[f"{run_dir(r)}/model.safetensors" for r in _runs],
                record=[f"{run_dir(r)}/run.json" for r in _runs],
            log:
                f"{R}/logs/train/groups/{group_slug(_key)}.log",
            benchmark:
                f"{R}/benchmarks/train/groups/{group_slug(_key)}.tsv"
            params:
                group=_key,
                device=" --device cuda" if _gpus else "",
            resources:
                mem_mb=train_mem_mb,
                runtime=30 * len(_runs),
                gpu=min(1, _gpus),
            threads: train_threads
            conda:
                f"{ENVS}/train.yaml"
            shell:
                "OMP_NUM_THREADS={threads} rlsparsity train-group --group '{params.group}' "
                "--config {CONFIG_JSON}{params.device} > {log} 2>&1"


rule accuracy_table:
    input:
        [f"{run_dir(r)}/run.json" for r in RUNS],
    output:
        runs=f"{R}/tables/accuracy.csv",
        by_algorithm=f"{R}/tables/accuracy_by_algorithm.csv",
    log:
        f"{R}/logs/tables/accuracy.log",
    benchmark:
        f"{R}/benchmarks/tables/accuracy.tsv"
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        f"{ENVS}/train.yaml"
    shell:
        "rlsparsity accuracy-table --config {CONFIG_JSON} --out {output.runs} "
        "--by-algorithm {output.by_algorithm} > {log} 2>&1"


TARGETS["train"] = [f"{R}/tables/accuracy.csv"]


rule train_all:
    input:
        TARGETS["train"],
