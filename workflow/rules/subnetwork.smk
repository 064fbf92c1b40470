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
# subnetwork.job_per_run: one job per masked rerun (subnetwork_job_<...>, packed on GPUs);
# the family job only stacks their rows.
SUB_PER_RUN = bool((config.get("subnetwork") or {}).get("job_per_run", False))


<<<<<<< HEAD
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
        gpus=0,
    shell:
        "OMP_NUM_THREADS={threads} rlsparsity subnetwork-family {wildcards.family:q}"
        " --config {input.config:q} --out {output.table:q} > {log:q} 2>&1"
=======
def sub_job_name(j):
    return re.sub(r"\W", "_", f"subnetwork_job_{j.run.rel}_{j.kind}")


if SUB_PER_RUN:
    for _j in SUB_JOBS:

        rule:
            name:
                sub_job_name(_j)
            input:
                base=f"{base_folder(_j.run.family)}/metrics.json",
                model=f"{run_dir(_j.run)}/model.safetensors",
                record=f"{run_dir(_j.run)}/run.json",
            output:
                rows=f"{_j.dir(R)}/rows.csv",
                model=f"{_j.dir(R)}/model.safetensors",
                record=f"{_j.dir(R)}/run.json",
            params:
                args=(f"{_j.run.family} {_j.run.algorithm} --data {_j.run.data} --precision {_j.run.precision}"
                      f" --seed {_j.run.seed} --kind {_j.kind}"),
                env=gpu_env(_j.run.family),
                device=family_device(_j.run.family),
            log:
                f"{R}/logs/subnetwork/{_j.run.rel}/{_j.kind}.log",
            benchmark:
                f"{R}/benchmarks/subnetwork/{_j.run.rel}/{_j.kind}.tsv"
            threads: 1
            resources:
                mem_mb=4000,
                runtime=120,
                gpu_slots=min(1, family_gpu_slots(_j.run.family)),
            conda:
                f"{ENVS}/train.yaml"
            shell:
                "{params.env}OMP_NUM_THREADS={threads} rlsparsity subnetwork-job {params.args}"
                " --config {CONFIG_JSON} --out {output.rows}{params.device} > {log} 2>&1"

    for _fam in SUB_FAMILIES:

        rule:
            name:
                f"subnetwork_{_fam}"
            input:
                [f"{j.dir(R)}/rows.csv" for j in SUB_JOBS if j.run.family == _fam],
            output:
                f"{R}/subnetwork/{_fam}/subnetwork.csv",
            log:
                f"{R}/logs/subnetwork/{_fam}.log",
            benchmark:
                f"{R}/benchmarks/subnetwork/{_fam}.tsv"
            resources:
                mem_mb=1000,
                runtime=10,
            conda:
                f"{ENVS}/train.yaml"
            shell:
                "rlsparsity subnetwork-table {input} --out {output} > {log} 2>&1"


for _fam in SUB_FAMILIES if not SUB_PER_RUN else []:
    _jobs = [j for j in SUB_JOBS if j.run.family == _fam]
    _full = sorted({j.run for j in _jobs})

    rule:
        name:
            f"subnetwork_{_fam}"
        input:
            base=f"{base_folder(_fam)}/metrics.json",
            models=[f"{run_dir(r)}/model.safetensors" for r in _full],
            records=[f"{run_dir(r)}/run.json" for r in _full],
        output:
            table=f"{R}/subnetwork/{_fam}/subnetwork.csv",
            models=[f"{j.dir(R)}/model.safetensors" for j in _jobs],
            records=[f"{j.dir(R)}/run.json" for j in _jobs],
            masks=[f"{j.dir(R)}/mask.safetensors" for j in _jobs],
        params:
            family=_fam,  # shell: is evaluated at job time, when the loop variable has moved on
            settings=SUB_SETTINGS,
            steps=config["train"]["steps"],
            env=gpu_env(_fam),
            device=family_device(_fam),
        log:
            f"{R}/logs/subnetwork/{_fam}.log",
        benchmark:
            f"{R}/benchmarks/subnetwork/{_fam}.tsv"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=120,
            gpus=0,
            gpu_slots=min(1, family_gpu_slots(_fam)),
        conda:
            f"{ENVS}/train.yaml"
        shell:
            "{params.env}OMP_NUM_THREADS={threads} rlsparsity subnetwork-family {params.family}"
            " --config {CONFIG_JSON} --out {output.table}{params.device} > {log} 2>&1"
>>>>>>> gpu


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
        gpus=0,
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
