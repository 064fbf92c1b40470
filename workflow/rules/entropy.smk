# Token-entropy stage ("Beyond the 80/20 rule", arXiv 2506.01939): entropy-restricted GRPO
# (DAPO settings) for ρ ∈ config entropy.rhos plus the bottom-80% variant, with the paper's
# (`kept`) and TRL's (`all`) normalisers. One job per family trains all of that family's runs
# in one process (imports cost ~4 s), evaluates, diffs each run against the base (update
# sparsity + mask), overlaps its mask with the ρ = 1 run of the same seed, and computes
# token-entropy statistics of base and trained policies on the same held-out responses.
# entropy_table stacks the families. Logic: rlsparsity.entropy. Only with an `entropy:` block.
from rlsparsity import entropy as E  # noqa: E402

ENTROPY_RUNS = E.expand_entropy_runs(config)
ENTROPY_FAMILIES = sorted({r.family for r in ENTROPY_RUNS})
ENTROPY_TABLES = ["entropy", "entropy_stats"]

for _fam in ENTROPY_FAMILIES:
    _eruns = [r for r in ENTROPY_RUNS if r.family == _fam]

    rule:
        name:
            f"entropy_{_fam}"
        input:
            base=f"{base_folder(_fam)}/metrics.json",
        output:
            tables=[f"{R}/entropy/{_fam}/{t}.csv" for t in ENTROPY_TABLES],
            records=[f"{r.dir(R)}/run.json" for r in _eruns],
            models=[f"{r.dir(R)}/model.safetensors" for r in _eruns],
            masks=[f"{r.dir(R)}/diff/mask.safetensors" for r in _eruns],
        params:
            family=_fam,
        log:
            f"{R}/logs/entropy/{_fam}.log",
        benchmark:
            f"{R}/benchmarks/entropy/{_fam}.tsv"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=120,
            gpu=0,
        conda:
            f"{ENVS}/train.yaml"
        shell:
            "OMP_NUM_THREADS={threads} rlsparsity entropy-family {params.family} --config {CONFIG_JSON}"
            " --threads {threads} > {log} 2>&1"


rule entropy_table:
    input:
        lambda wc: [f"{R}/entropy/{f}/{wc.etable}.csv" for f in ENTROPY_FAMILIES],
    output:
        f"{R}/tables/{{etable}}.csv",
    wildcard_constraints:
        etable="|".join(ENTROPY_TABLES),
    log:
        f"{R}/logs/entropy/table_{{etable}}.log",
    benchmark:
        f"{R}/benchmarks/entropy/table_{{etable}}.tsv"
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        f"{ENVS}/train.yaml"
    shell:
        "rlsparsity entropy-table {input} --out {output} > {log} 2>&1"


TARGETS["entropy"] = [f"{R}/tables/{t}.csv" for t in ENTROPY_TABLES] if ENTROPY_RUNS else []


rule entropy:
    input:
        TARGETS["entropy"],
