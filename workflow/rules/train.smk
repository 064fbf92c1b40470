# Stage: training. One job per run (family x algorithm x data x precision x seed);
# every run folder gets the model, checkpoints/step-NNNNNN/ and run.json.


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
    resources:
        mem_mb=4000,
        runtime=120,
        gpus=0,
    threads: 1
    conda:
        f"{ENVS}/train.yaml"
    shell:
        "OMP_NUM_THREADS={threads} rlsparsity train {wildcards.family} {wildcards.algorithm} "
        "--data {wildcards.data} --precision {wildcards.precision} --seed {wildcards.seed} "
        "--config {CONFIG_JSON} > {log} 2>&1"


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
