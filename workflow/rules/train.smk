# Stage: training. Every run folder gets the model, checkpoints/step-NNNNNN/ and run.json.
# Without train.group_by: rule `train`, one job per run (family x algorithm x data x
# precision x seed). With it: rule `train_group`, one job (one process: saves the start-up
# per run) per group of runs, ending with the manifest R/train/groups/<group>.json, the file
# downstream rules depend on (common.smk: trained). Group names: config_slices.group_slug.
# GPUs per job: the family's `gpus` (default 0 = CPU). 1 GPU: one process with --device cuda;
# more: `accelerate launch` with one process per GPU and the accelerate config of the family's
# `sharding` (config keys accelerate.ddp / accelerate.fsdp; default sharding from the memory
# model, rlsparsity.memory_model.family_sharding); rank 0 alone writes the outputs, so they
# are the same files as a single-process run's.
from rlsparsity import samples as SAMPLES

TRAIN_GROUP_BY = config["train"]["group_by"]
# family -> its accelerate config file, shell-quoted (by the family's sharding)
TRAIN_ACCELERATE = {f: RES.accelerate_config(config, f) for f in config["families"]}


if not TRAIN_GROUP_BY:

    rule train:
        input:
            base=f"{R}/base/{{family}}/metrics.json",
            config=f"{R}/config/train/family_{{family}}__algorithm_{{algorithm}}__data_{{data}}__precision_{{precision}}__seed_{{seed}}.json",
            samples=lambda wildcards: SAMPLES.samples_files(
                config,
                [
                    G.Run(
                        wildcards.family, wildcards.algorithm, wildcards.data, wildcards.precision, int(wildcards.seed)
                    )
                ],
                R,
            ),
        output:
            model=f"{R}/runs/{{family}}/{{algorithm}}/{{data}}/{{precision}}/seed{{seed}}/model.safetensors",
            record=f"{R}/runs/{{family}}/{{algorithm}}/{{data}}/{{precision}}/seed{{seed}}/run.json",
        log:
            f"{R}/logs/train/{{family}}/{{algorithm}}/{{data}}/{{precision}}/seed{{seed}}.log",
        benchmark:
            f"{R}/benchmarks/train/{{family}}/{{algorithm}}/{{data}}/{{precision}}/seed{{seed}}.tsv"
        conda:
            f"{ENVS}/train.yaml"
        threads: train_threads
        resources:
            mem_mb=lambda wildcards, input: RES.train_mem_mb(
                RES.stored_params(RES.base_model_file(input.base)), train_gpus(wildcards)
            ),
            runtime=train_runtime,
            gpu=train_gpus,
            gpu_slots=train_gpu_slots,
            gpu_mem_gb=lambda wildcards: job_gpu_mem(
                wildcards.family, wildcards.algorithm, wildcards.precision, train_gpus(wildcards)
            ),
        params:
            # a params function that reads `resources` follows --set-resources train:gpu=N,
            # and Snakemake treats it as derived (not a rerun trigger)
            launch=lambda wildcards, resources: (
                "accelerate launch --config_file "
                + TRAIN_ACCELERATE[wildcards.family]
                + f" --num_processes {int(resources.gpu)} -m rlsparsity.cli train"
                if int(resources.gpu or 0) > 1
                else "rlsparsity train"
            ),
            device=lambda wildcards, resources: (" --device cuda" if int(resources.gpu or 0) > 0 else ""),
            env=train_env,
        shell:
            "{params.env}OMP_NUM_THREADS={threads} {params.launch} {wildcards.family:q} {wildcards.algorithm:q} "
            "--data {wildcards.data:q} --precision {wildcards.precision:q} --seed {wildcards.seed:q} "
            "--samples {input.samples:q} --config {input.config:q}{params.device} > {log:q} 2>&1"

else:
    _many = sorted({r.family for r in RUNS if family_gpus(r.family) > 1})
    if _many:
        raise WorkflowError(
            f"train.group_by groups runs into one process, but families {_many} "
            "ask for several GPUs (accelerate launch per run): set train.group_by: []"
        )

    # One job per group of runs. Asking for one run's files (or -R on the group's
    # manifest) runs its whole group.
    rule train_group:
        input:
            base=lambda wildcards: sorted({f"{R}/base/{r.family}/metrics.json" for r in group_runs_of(wildcards)}),
            config=f"{R}/config/train/{{group}}.json",
            samples=lambda wildcards: SAMPLES.samples_files(config, group_runs_of(wildcards), R),
        output:
            manifest=f"{R}/train/groups/{{group}}.json",
        log:
            f"{R}/logs/train/groups/{{group}}.log",
        benchmark:
            f"{R}/benchmarks/train/groups/{{group}}.tsv"
        conda:
            f"{ENVS}/train.yaml"
        threads: train_threads
        resources:
            mem_mb=train_mem_mb,
            runtime=lambda wildcards: 30 * len(group_runs_of(wildcards)),
            gpu=lambda wildcards: min(1, max(family_gpus(r.family) for r in group_runs_of(wildcards))),
            gpu_slots=lambda wildcards: min(1, max(family_gpus(r.family) for r in group_runs_of(wildcards))),
            gpu_mem_gb=lambda wildcards: max(
                job_gpu_mem(r.family, r.algorithm, r.precision) for r in group_runs_of(wildcards)
            ),
        params:
            key=lambda wildcards: CS.group_key_of(config, wildcards.group),
            files=lambda wildcards: [f for r in group_runs_of(wildcards) for f in run_files(r)],
            device=lambda wildcards, resources: (" --device cuda" if int(resources.gpu or 0) > 0 else ""),
            env=lambda wildcards, resources: (
                GPU.job_env(config, R, resources.gpu_mem_gb) if int(resources.gpu or 0) > 0 else ""
            ),
        shell:
            "({params.env}OMP_NUM_THREADS={threads} rlsparsity train-group --group {params.key:q} "
            "--samples {input.samples:q} --config {input.config:q}{params.device} && "
            "rlsparsity manifest {output.manifest:q} {params.files:q}) > {log:q} 2>&1"


# On-policy samples of the base, drawn once per (family, precision, seed, n_prompts, k, temperature) and
# shared by the dpo/kto/orpo/simpo/sft runs that label them (rlsparsity.samples). Each gates all of
# them, so it starts before other waiting jobs (priority; an H200 lease once drew them last).
rule preference_samples:
    input:
        base=f"{R}/base/{{family}}/metrics.json",
        config=f"{R}/config/samples/{{family}}__{{precision}}__seed{{seed}}__n{{n_prompts}}_k{{k}}_t{{temperature}}.json",
    output:
        samples=f"{R}/samples/{{family}}/{{precision}}/seed{{seed}}/n{{n_prompts}}_k{{k}}_t{{temperature}}.json",
    log:
        f"{R}/logs/samples/{{family}}/{{precision}}/seed{{seed}}/n{{n_prompts}}_k{{k}}_t{{temperature}}.log",
    benchmark:
        f"{R}/benchmarks/samples/{{family}}/{{precision}}/seed{{seed}}/n{{n_prompts}}_k{{k}}_t{{temperature}}.tsv"
    wildcard_constraints:
        n_prompts=r"\d+",
        k=r"\d+",
        temperature=r"\d+(\.\d+)?",
    priority: 10
    conda:
        f"{ENVS}/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=lambda wildcards: min(1, family_gpus(wildcards.family)),
        gpu_slots=lambda wildcards: min(1, family_gpu_slots(wildcards.family)),
        gpu_mem_gb=lambda wildcards: job_gpu_mem(wildcards.family, None, wildcards.precision),
    params:
        device=lambda wildcards, resources: "cuda" if int(resources.gpu or 0) > 0 else "cpu",
        env=lambda wildcards, resources: (
            GPU.job_env(config, R, resources.gpu_mem_gb) if int(resources.gpu or 0) > 0 else ""
        ),
    shell:
        "{params.env}OMP_NUM_THREADS={threads} rlsparsity preference-samples --config {input.config:q} "
        "--family {wildcards.family:q} --precision {wildcards.precision:q} --seed {wildcards.seed} "
        "--n-prompts {wildcards.n_prompts} --k {wildcards.k} --temperature {wildcards.temperature} "
        "--device {params.device} "
        "--out {output.samples:q} > {log:q} 2>&1"


rule accuracy_table:
    input:
        runs=trained(RUNS),
        config=f"{R}/config/accuracy/table.json",
    output:
        runs=f"{R}/tables/accuracy.csv",
        by_algorithm=f"{R}/tables/accuracy_by_algorithm.csv",
    log:
        f"{R}/logs/tables/accuracy.log",
    benchmark:
        f"{R}/benchmarks/tables/accuracy.tsv"
    conda:
        f"{ENVS}/train.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "rlsparsity accuracy-table --config {input.config:q} --out {output.runs:q} "
        "--by-algorithm {output.by_algorithm:q} > {log:q} 2>&1"


TARGETS["train"] = [f"{R}/tables/accuracy.csv"]


rule train_all:
    input:
        TARGETS["train"],
