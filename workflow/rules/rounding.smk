# Rounding stage (config analysis.rounding: true): how much of an fp32 run's result is bf16 storage
# rounding. Rule rounding_eval: one job per fp32 run evaluates it on its own test problems as
# stored, rounded to bf16 (as fp32-master stores it), and base + only the part of its update that
# rounding erases / keeps; rounding_table pairs each with its fp32-master run (same family,
# algorithm, data, seed) into results/tables/precision_rounding.csv. The task and test size come
# from each run's run.json, so a job reruns exactly when its run (or base) does.
# Logic: rlsparsity.rounding, rlsparsity.update_parts.

ROUNDING_RUNS = [r for r in RUNS if r.precision == "fp32"] if config["analysis"]["rounding"] else []


rule rounding_eval:
    input:
        base=f"{R}/base/{{family}}/model.safetensors",
        run=lambda wildcards: trained(
            [G.Run(wildcards.family, wildcards.algorithm, wildcards.data, "fp32", int(wildcards.seed))]
        ),
    output:
        f"{R}/rounding/{{family}}/{{algorithm}}/{{data}}/seed{{seed}}.json",
    log:
        f"{R}/logs/rounding/{{family}}/{{algorithm}}/{{data}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/rounding/{{family}}/{{algorithm}}/{{data}}/seed{{seed}}.tsv"
    conda:
        f"{ENVS}/train.yaml"
    threads: 1
    resources:
        mem_mb=train_mem_mb,
        runtime=60,
        gpu=lambda wildcards: min(1, family_gpus(wildcards.family)),
        gpu_slots=lambda wildcards: min(1, family_gpu_slots(wildcards.family)),
        gpu_mem_gb=lambda wildcards: job_gpu_mem(wildcards.family, None, "fp32"),
    params:
        run=lambda wildcards: run_dir(
            G.Run(wildcards.family, wildcards.algorithm, wildcards.data, "fp32", int(wildcards.seed))
        ),
        base=lambda wildcards, input: str(Path(input.base).parent),
        device=lambda wildcards, resources: "cuda" if int(resources.gpu or 0) > 0 else "cpu",
        env=train_env,
    shell:
        "{params.env}OMP_NUM_THREADS={threads} rlsparsity rounding-eval {params.run:q} --base {params.base:q} "
        "--out {output:q} --device {params.device} > {log:q} 2>&1"


rule rounding_table:
    input:
        evals=[rounding_record(r) for r in ROUNDING_RUNS],
        partners=rounding_partners,
    output:
        f"{R}/tables/precision_rounding.csv",
    log:
        f"{R}/logs/rounding/table.log",
    benchmark:
        f"{R}/benchmarks/rounding/table.tsv"
    conda:
        f"{ENVS}/train.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        results=lambda wildcards, output: str(Path(output[0]).parents[1]),  # R/tables/x.csv -> R
    shell:
        "rlsparsity rounding-table {input.evals:q} --results {params.results:q} --out {output:q} > {log:q} 2>&1"


if ROUNDING_RUNS:
    TARGETS["rounding"] = [f"{R}/tables/precision_rounding.csv"]


rule rounding:
    input:
        TARGETS.get("rounding", []),
