# Token-entropy stage ("Beyond the 80/20 rule", arXiv 2506.01939): entropy-restricted GRPO
# (DAPO settings) for ρ ∈ config entropy.rhos plus the bottom-80% variant, with the paper's
# (`kept`) and TRL's (`all`) normalisers. Rule entropy_family: one job per family trains all of that family's runs
# in one process (imports cost ~4 s), evaluates, diffs each run against the base (update
# sparsity + mask), overlaps its mask with the ρ = 1 run of the same seed, and computes
# token-entropy statistics of base and trained policies on the same held-out responses.
# entropy_table stacks the families. Logic: rlsparsity.entropy. Only with an `entropy:` block.
from rlsparsity import entropy as E  # noqa: E402

ENTROPY_RUNS = E.expand_entropy_runs(config)
ENTROPY_FAMILIES = sorted({r.family for r in ENTROPY_RUNS})
ENTROPY_TABLES = ["entropy", "entropy_stats"]
# entropy.job_per_run: every run trains in its own job (entropy_run_<family>_<tag>_...,
# packed on GPUs like train jobs); the family job then finds their run.json and only
# diffs, overlaps and computes the statistics.
ENTROPY_PER_RUN = bool((config.get("entropy") or {}).get("job_per_run", False))

<<<<<<< HEAD

rule entropy_family:
    input:
        base=f"{R}/base/{{family}}/metrics.json",
        config=f"{R}/config/entropy/{{family}}.json",
    output:
        tables=expand(f"{R}/entropy/{{{{family}}}}/{{table}}.csv", table=ENTROPY_TABLES),
    log:
        f"{R}/logs/entropy/{{family}}.log",
    benchmark:
        f"{R}/benchmarks/entropy/{{family}}.tsv"
    wildcard_constraints:
        family="|".join(ENTROPY_FAMILIES),
    conda:
        f"{ENVS}/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
        gpus=0,
    shell:
        "OMP_NUM_THREADS={threads} rlsparsity entropy-family {wildcards.family:q} --config {input.config:q}"
        " --threads {threads} > {log:q} 2>&1"
=======
for _fam in ENTROPY_FAMILIES:
    _eruns = [r for r in ENTROPY_RUNS if r.family == _fam]
    _trained = [f"{r.dir(R)}/{f}" for r in _eruns for f in ("run.json", "model.safetensors")]

    if ENTROPY_PER_RUN:
        for _r in _eruns:

            rule:
                name:
                    f"entropy_run_{_fam}_{_r.tag}_{_r.precision}_seed{_r.seed}".replace(".", "_")
                input:
                    base=f"{base_folder(_fam)}/metrics.json",
                output:
                    record=f"{_r.dir(R)}/run.json",
                    model=f"{_r.dir(R)}/model.safetensors",
                params:
                    family=_fam,
                    tag=_r.tag,
                    env=gpu_env(_fam),
                    device=family_device(_fam),
                log:
                    f"{R}/logs/entropy/{_r.rel}.log",
                benchmark:
                    f"{R}/benchmarks/entropy/{_r.rel}.tsv"
                threads: 1
                resources:
                    mem_mb=4000,
                    runtime=120,
                    gpu_slots=min(1, family_gpu_slots(_fam)),
                conda:
                    f"{ENVS}/train.yaml"
                shell:
                    "{params.env}OMP_NUM_THREADS={threads} rlsparsity entropy-run {params.family} {params.tag}"
                    " --config {CONFIG_JSON}{params.device} > {log} 2>&1"

    rule:
        name:
            f"entropy_{_fam}"
        input:
            base=f"{base_folder(_fam)}/metrics.json",
            trained=_trained if ENTROPY_PER_RUN else [],
        output:
            tables=[f"{R}/entropy/{_fam}/{t}.csv" for t in ENTROPY_TABLES],
            records=[] if ENTROPY_PER_RUN else [f"{r.dir(R)}/run.json" for r in _eruns],
            models=[] if ENTROPY_PER_RUN else [f"{r.dir(R)}/model.safetensors" for r in _eruns],
            masks=[f"{r.dir(R)}/diff/mask.safetensors" for r in _eruns],
        params:
            family=_fam,
            env=gpu_env(_fam),
            device=family_device(_fam),
        log:
            f"{R}/logs/entropy/{_fam}.log",
        benchmark:
            f"{R}/benchmarks/entropy/{_fam}.tsv"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=120,
            gpus=0,
            gpu_slots=min(1, family_gpu_slots(_fam)),
        conda:
            f"{ENVS}/train.yaml"
        shell:
            "{params.env}OMP_NUM_THREADS={threads} rlsparsity entropy-family {params.family} --config {CONFIG_JSON}"
            " --threads {threads}{params.device} > {log} 2>&1"
>>>>>>> gpu


rule entropy_table:
    input:
        lambda wc: [f"{R}/entropy/{f}/{wc.etable}.csv" for f in ENTROPY_FAMILIES],
    output:
        f"{R}/tables/{{etable}}.csv",
    log:
        f"{R}/logs/entropy/table_{{etable}}.log",
    benchmark:
        f"{R}/benchmarks/entropy/table_{{etable}}.tsv"
    wildcard_constraints:
        etable="|".join(ENTROPY_TABLES),
    conda:
        f"{ENVS}/train.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "rlsparsity entropy-table {input:q} --out {output:q} > {log:q} 2>&1"


TARGETS["entropy"] = [f"{R}/tables/{t}.csv" for t in ENTROPY_TABLES] if ENTROPY_RUNS else []


rule entropy:
    input:
        TARGETS["entropy"],
