# Stage: subnetwork finetuning and causes ablations (logic: rlsparsity.subnetwork).
#
# subnetwork_<family>: ONE process per family reruns every configured full run with only
#   its updated entries free (mask = |θ_full − θ_base| > mask_tol, from the diff engine),
#   plus a same-density random-mask control; compares accuracy and agreement with the full
#   run -> results/subnetwork/<family>/subnetwork.csv -> results/tables/subnetwork.csv.
# causes_train_<family>: trains the causes settings no main-grid run provides (KL variants)
#   under results/causes/runs/...; causes_table diffs every setting against its base
#   -> results/tables/causes.csv. Main-grid runs are inputs, so they are reused (or trained
#   by the ordinary `train` rule when the grid lacks them).
from rlsparsity import subnetwork as SN  # noqa: E402

SUB_JOBS = SN.subnetwork_jobs(config)
SUB_FAMILIES = sorted({j.run.family for j in SUB_JOBS})
SUB_SETTINGS = SN.subnetwork_settings(config)
CAUSE_SETTINGS = SN.causes_settings(config)
CAUSE_TRAIN_FAMILIES = sorted({s.family for s in CAUSE_SETTINGS if s.source == "causes"})


for _fam in SUB_FAMILIES:
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
        log:
            f"{R}/logs/subnetwork/{_fam}.log",
        benchmark:
            f"{R}/benchmarks/subnetwork/{_fam}.tsv"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=120,
            gpu=0,
        conda:
            f"{ENVS}/train.yaml"
        shell:
            "OMP_NUM_THREADS={threads} rlsparsity subnetwork-family {params.family}"
            " --config {CONFIG_JSON} --out {output.table} > {log} 2>&1"


rule subnetwork_table:
    input:
        [f"{R}/subnetwork/{f}/subnetwork.csv" for f in SUB_FAMILIES],
    output:
        f"{R}/tables/subnetwork.csv",
    log:
        f"{R}/logs/subnetwork/table.log",
    benchmark:
        f"{R}/benchmarks/subnetwork/table.tsv"
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        f"{ENVS}/train.yaml"
    shell:
        "rlsparsity subnetwork-table {input} --out {output} > {log} 2>&1"


for _fam in CAUSE_TRAIN_FAMILIES:
    _todo = [s for s in CAUSE_SETTINGS if s.source == "causes" and s.family == _fam]

    rule:
        name:
            f"causes_train_{_fam}"
        input:
            base=f"{base_folder(_fam)}/metrics.json",
        output:
            models=[f"{s.dir(R)}/model.safetensors" for s in _todo],
            records=[f"{s.dir(R)}/run.json" for s in _todo],
        params:
            family=_fam,
            steps=config["train"]["steps"],
        log:
            f"{R}/logs/causes/train_{_fam}.log",
        benchmark:
            f"{R}/benchmarks/causes/train_{_fam}.tsv"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=120,
            gpu=0,
        conda:
            f"{ENVS}/train.yaml"
        shell:
            "OMP_NUM_THREADS={threads} rlsparsity causes-train {params.family} --config {CONFIG_JSON} > {log} 2>&1"


rule causes_table:
    input:
        bases=sorted({f"{base_folder(s.family)}/model.safetensors" for s in CAUSE_SETTINGS}),
        models=[f"{s.dir(R)}/model.safetensors" for s in CAUSE_SETTINGS],
        records=[f"{s.dir(R)}/run.json" for s in CAUSE_SETTINGS],
    output:
        f"{R}/tables/causes.csv",
    log:
        f"{R}/logs/causes/table.log",
    benchmark:
        f"{R}/benchmarks/causes/table.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        f"{ENVS}/train.yaml"
    shell:
        "rlsparsity causes-table --config {CONFIG_JSON} --out {output} > {log} 2>&1"


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
