# Token-entropy stage ("Beyond the 80/20 rule", arXiv 2506.01939): entropy-restricted GRPO
# (DAPO settings) for ρ ∈ config entropy.rhos plus the bottom-80% variant, with the paper's
# (`kept`) and TRL's (`all`) normalisers. Rule entropy_family: one job per family trains all of that family's runs
# in one process (imports cost ~4 s), evaluates, diffs each run against the base (update
# sparsity + mask), overlaps its mask with the ρ = 1 run of the same seed, and computes
# token-entropy statistics of base and trained policies on the same held-out responses.
# entropy_table stacks the families. Logic: rlsparsity.entropy. Only with an `entropy:` block.
import re

from rlsparsity import entropy as E  # noqa: E402

ENTROPY_RUNS = E.expand_entropy_runs(config)
ENTROPY_FAMILIES = sorted({r.family for r in ENTROPY_RUNS})
ENTROPY_TABLES = ["entropy", "entropy_stats"]
# entropy.job_per_run: every run trains in its own job (rule entropy_run,
# packed on GPUs like train jobs); the family job then finds their run.json and only
# diffs, overlaps and computes the statistics.
ENTROPY_PER_RUN = bool((config.get("entropy") or {}).get("job_per_run", False))


if ENTROPY_PER_RUN:

    # One job per entropy run (EntropyRun.dir: R/entropy/<family>/<tag>/<precision>/seed<N>),
    # packed on GPUs like train jobs; its config slice is the run's (config_slices.entropy_run_slice).
    rule entropy_run:
        input:
            base=f"{R}/base/{{family}}/metrics.json",
            config=f"{R}/config/entropy_run/{{family}}__{{tag}}__{{precision}}__seed{{seed}}.json",
        output:
            record=f"{R}/entropy/{{family}}/{{tag}}/{{precision}}/seed{{seed}}/run.json",
            model=f"{R}/entropy/{{family}}/{{tag}}/{{precision}}/seed{{seed}}/model.safetensors",
        log:
            f"{R}/logs/entropy/{{family}}/{{tag}}/{{precision}}/seed{{seed}}.log",
        benchmark:
            f"{R}/benchmarks/entropy/{{family}}/{{tag}}/{{precision}}/seed{{seed}}.tsv"
        wildcard_constraints:
            family="|".join(ENTROPY_FAMILIES),
            tag="|".join(sorted({re.escape(r.tag) for r in ENTROPY_RUNS})),
        conda:
            f"{ENVS}/train.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=120,
            gpu=lambda wildcards: min(1, family_gpus(wildcards.family)),
            gpu_slots=lambda wildcards: min(1, family_gpu_slots(wildcards.family)),
            gpu_mem_gb=lambda wildcards: job_gpu_mem(wildcards.family, "grpo", wildcards.precision),
        params:
            env=lambda wildcards, resources: gpu_env(wildcards.family, resources.gpu_mem_gb),
            device=lambda wildcards: family_device(wildcards.family),
        shell:
            "{params.env}OMP_NUM_THREADS={threads} rlsparsity entropy-run {wildcards.family:q} {wildcards.tag:q}"
            " --precision {wildcards.precision:q} --seed {wildcards.seed:q}"
            " --config {input.config:q}{params.device} > {log:q} 2>&1"


# With entropy.job_per_run the runs are inputs (trained by entropy_run) and this job only
# diffs, overlaps and computes the statistics; without it, it trains them too.
rule entropy_family:
    input:
        base=f"{R}/base/{{family}}/metrics.json",
        config=f"{R}/config/entropy/{{family}}.json",
        runs=entropy_run_files,
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
        gpu=lambda wildcards: min(1, family_gpus(wildcards.family)),
        gpu_slots=lambda wildcards: min(1, family_gpu_slots(wildcards.family)),
        gpu_mem_gb=lambda wildcards: job_gpu_mem(wildcards.family),
    params:
        env=lambda wildcards, resources: gpu_env(wildcards.family, resources.gpu_mem_gb),
        device=lambda wildcards: family_device(wildcards.family),
    shell:
        "{params.env}OMP_NUM_THREADS={threads} rlsparsity entropy-family {wildcards.family:q} --config {input.config:q}"
        " --threads {threads}{params.device} > {log:q} 2>&1"


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
