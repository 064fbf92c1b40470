# Stage: subnetwork finetuning and causes ablations (logic: rlsparsity.subnetwork).
#
# subnetwork_family (one job per family): ONE process per family reruns every configured full run with only
#   its updated entries free (mask = |θ_full − θ_base| > mask_tol, from the diff engine),
#   plus a same-density random-mask control; compares accuracy and agreement with the full
#   run -> results/subnetwork/<family>/subnetwork.csv -> results/tables/subnetwork.csv.
# causes_train (one job per family): trains the causes settings no main-grid run provides (KL variants)
#   under results/causes/runs/...; causes_table diffs every setting against its base
#   -> results/tables/causes.csv. Main-grid runs are inputs, so they are reused (or trained
#   by the ordinary `train` rule when the grid lacks them).
from rlsparsity import subnetwork as SN  # noqa: E402

SUB_JOBS = SN.subnetwork_jobs(config)
SUB_FAMILIES = sorted({j.run.family for j in SUB_JOBS})
SUB_SETTINGS = SN.subnetwork_settings(config)
CAUSE_SETTINGS = SN.causes_settings(config)
CAUSE_TRAIN_FAMILIES = sorted({s.family for s in CAUSE_SETTINGS if s.source == "causes"})
# subnetwork.job_per_run: one job per masked rerun (rule subnetwork_job, packed on GPUs);
# the family job only stacks their rows.
SUB_PER_RUN = bool((config.get("subnetwork") or {}).get("job_per_run", False))


SUB_RUN = f"{{family}}/{{algorithm}}/{{data}}/{{precision}}/seed{{seed}}"  # G.Run.rel as wildcards


if SUB_PER_RUN:

    # One job per masked rerun (SubJob.dir: R/subnetwork/<run>/<kind>), packed on GPUs; the
    # family job only stacks their rows.
    rule subnetwork_job:
        input:
            base=f"{R}/base/{{family}}/metrics.json",
            run=sub_full_run,
            config=f"{R}/config/subnetwork_job/{{family}}__{{algorithm}}__{{data}}__{{precision}}__seed{{seed}}__{{kind}}.json",
        output:
            rows=f"{R}/subnetwork/{SUB_RUN}/{{kind}}/rows.csv",
            model=f"{R}/subnetwork/{SUB_RUN}/{{kind}}/model.safetensors",
            record=f"{R}/subnetwork/{SUB_RUN}/{{kind}}/run.json",
        log:
            f"{R}/logs/subnetwork/{SUB_RUN}/{{kind}}.log",
        benchmark:
            f"{R}/benchmarks/subnetwork/{SUB_RUN}/{{kind}}.tsv"
        wildcard_constraints:
            family="|".join(SUB_FAMILIES),
            kind="|".join(SN.MASK_KINDS),
        conda:
            f"{ENVS}/train.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=120,
            gpu=lambda wildcards: min(1, family_gpus(wildcards.family)),
            gpu_slots=lambda wildcards: min(1, family_gpu_slots(wildcards.family)),
            gpu_mem_gb=lambda wildcards: job_gpu_mem(
                wildcards.family, wildcards.get("algorithm"), wildcards.get("precision")
            ),
        params:
            env=lambda wildcards, resources: gpu_env(wildcards.family, resources.gpu_mem_gb),
            device=lambda wildcards: family_device(wildcards.family),
        shell:
            "{params.env}OMP_NUM_THREADS={threads} rlsparsity subnetwork-job {wildcards.family:q} "
            "{wildcards.algorithm:q} --data {wildcards.data:q} --precision {wildcards.precision:q} "
            "--seed {wildcards.seed:q} --kind {wildcards.kind:q} --config {input.config:q} "
            "--out {output.rows:q}{params.device} > {log:q} 2>&1"

    rule subnetwork_family:
        input:
            sub_job_rows,
        output:
            table=f"{R}/subnetwork/{{family}}/subnetwork.csv",
        log:
            f"{R}/logs/subnetwork/{{family}}.log",
        benchmark:
            f"{R}/benchmarks/subnetwork/{{family}}.tsv"
        wildcard_constraints:
            family="|".join(SUB_FAMILIES),
        conda:
            f"{ENVS}/train.yaml"
        resources:
            mem_mb=1000,
            runtime=10,
        shell:
            "rlsparsity subnetwork-table {input:q} --out {output.table:q} > {log:q} 2>&1"

else:

    rule subnetwork_family:
        input:
            base=f"{R}/base/{{family}}/metrics.json",
            runs=lambda wildcards: trained(sorted({j.run for j in SUB_JOBS if j.run.family == wildcards.family})),
            config=f"{R}/config/subnetwork/{{family}}.json",
        output:
            table=f"{R}/subnetwork/{{family}}/subnetwork.csv",
        log:
            f"{R}/logs/subnetwork/{{family}}.log",
        benchmark:
            f"{R}/benchmarks/subnetwork/{{family}}.tsv"
        wildcard_constraints:
            family="|".join(SUB_FAMILIES),
        conda:
            f"{ENVS}/train.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=120,
            gpu=lambda wildcards: min(1, family_gpus(wildcards.family)),
            gpu_slots=lambda wildcards: min(1, family_gpu_slots(wildcards.family)),
            gpu_mem_gb=lambda wildcards: job_gpu_mem(
                wildcards.family, wildcards.get("algorithm"), wildcards.get("precision")
            ),
        params:
            env=lambda wildcards, resources: gpu_env(wildcards.family, resources.gpu_mem_gb),
            device=lambda wildcards: family_device(wildcards.family),
        shell:
            "{params.env}OMP_NUM_THREADS={threads} rlsparsity subnetwork-family {wildcards.family:q}"
            " --config {input.config:q} --out {output.table:q}{params.device} > {log:q} 2>&1"


rule subnetwork_table:
    input:
        [f"{R}/subnetwork/{f}/subnetwork.csv" for f in SUB_FAMILIES],
    output:
        f"{R}/tables/subnetwork.csv",
    log:
        f"{R}/logs/subnetwork/table.log",
    benchmark:
        f"{R}/benchmarks/subnetwork/table.tsv"
    conda:
        f"{ENVS}/train.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "rlsparsity subnetwork-table {input:q} --out {output:q} > {log:q} 2>&1"


rule causes_train:
    input:
        base=f"{R}/base/{{family}}/metrics.json",
        config=f"{R}/config/causes/{{family}}.json",
    output:
        manifest=f"{R}/causes/groups/{{family}}.json",
    log:
        f"{R}/logs/causes/train_{{family}}.log",
    benchmark:
        f"{R}/benchmarks/causes/train_{{family}}.tsv"
    wildcard_constraints:
        family="|".join(CAUSE_TRAIN_FAMILIES),
    conda:
        f"{ENVS}/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=0,
    params:
        files=lambda wildcards: [
            f"{s.dir(R)}/{f}"
            for s in CAUSE_SETTINGS
            if s.source == "causes" and s.family == wildcards.family
            for f in ("model.safetensors", "run.json")
        ],
    shell:
        "(OMP_NUM_THREADS={threads} rlsparsity causes-train {wildcards.family:q} --config {input.config:q} && "
        "rlsparsity manifest {output.manifest:q} {params.files:q}) > {log:q} 2>&1"


rule causes_table:
    input:
        bases=sorted({f"{base_folder(s.family)}/model.safetensors" for s in CAUSE_SETTINGS}),
        runs=trained(sorted({s.run for s in CAUSE_SETTINGS if s.source == "grid"})),
        causes=[f"{R}/causes/groups/{f}.json" for f in CAUSE_TRAIN_FAMILIES],
        config=f"{R}/config/causes/table.json",
    output:
        f"{R}/tables/causes.csv",
    log:
        f"{R}/logs/causes/table.log",
    benchmark:
        f"{R}/benchmarks/causes/table.tsv"
    conda:
        f"{ENVS}/train.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "rlsparsity causes-table --config {input.config:q} --out {output:q} > {log:q} 2>&1"


if SUB_JOBS:
    TARGETS["subnetwork"] = [f"{R}/tables/subnetwork.csv"]
if CAUSE_SETTINGS:
    TARGETS["causes"] = [f"{R}/tables/causes.csv"]


rule subnetwork:
    input:
        TARGETS.get("subnetwork", []),


rule causes:
    input:
        TARGETS.get("causes", []),
