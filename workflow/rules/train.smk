# Stage: training. One job per run (family x algorithm x data x precision x seed);
# every run folder gets the model, checkpoints/step-NNNNNN/ and run.json.
# GPUs per job: the family's `gpus` (default 0 = CPU). 1 GPU: one process with --device cuda;
# more: `accelerate launch` (config key accelerate.config, default config/accelerate/ddp.yaml)
# with one process per GPU; rank 0 alone writes the outputs, so they are the same files.


def train_gpus(wildcards):
    n = int((config["families"][wildcards.family] or {}).get("gpus", 0))
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
        mem_mb=4000,
        runtime=120,
        gpu=train_gpus,
    threads: 1
    conda:
        f"{ENVS}/train.yaml"
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} {wildcards.family} {wildcards.algorithm} "
        "--data {wildcards.data} --precision {wildcards.precision} --seed {wildcards.seed} "
        "--config {CONFIG_JSON}{params.device} > {log} 2>&1"


rule accuracy_table:
    input:
        [f"{run_dir(r)}/run.json" for r in RUNS],
    output:
        f"{R}/tables/accuracy.csv",
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
        "rlsparsity accuracy-table --config {CONFIG_JSON} --out {output} > {log} 2>&1"


TARGETS["train"] = [f"{R}/tables/accuracy.csv"]


rule train_all:
    input:
        TARGETS["train"],
