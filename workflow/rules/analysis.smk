# Analysis stage: update sparsity, rank, overlap, layer split and dynamics of every run.
# Rule `analyze`: one job per family diffs all of that family's runs (imports cost ~4 s per
# process; `--workers auto`: bases up to 2B parameters are analysed threads // 2 runs at a time
# in worker processes, the rank pass parallelising across runs far better than inside one) and
# writes the per-run diff folders R/diff/<run>/ plus five per-family CSVs; analysis_table
# stacks the families into results/tables/<table>.csv.
# Logic: rlsparsity.analysis.

ANALYSIS_TABLES = ["sparsity", "rank", "overlap", "layers", "dynamics"]
ANALYSIS_TOPK = config["analysis"]["topk"]  # CPI-FT core region (default top 1% by |Δ|), an extra overlap mask
ANALYSIS_FAMILIES = [f for f in FAMILIES if any(r.family == f for r in RUNS)]


rule analyze:
    input:
        base=f"{R}/base/{{family}}/model.safetensors",
        runs=lambda wildcards: trained(r for r in RUNS if r.family == wildcards.family),
    output:
        tables=expand(f"{R}/analysis/{{{{family}}}}/{{table}}.csv", table=ANALYSIS_TABLES),
    log:
        f"{R}/logs/analysis/{{family}}.log",
    benchmark:
        f"{R}/benchmarks/analysis/{{family}}.tsv"
    wildcard_constraints:
        family="|".join(ANALYSIS_FAMILIES),
    conda:
        f"{ENVS}/analysis.yaml"
    threads: analyze_threads
    resources:
        mem_mb=analyze_mem_mb,
        runtime=analyze_runtime,
    params:
        runs=lambda wildcards: [run_dir(r) for r in RUNS if r.family == wildcards.family],
        base=lambda wildcards, input: str(Path(input.base).parent),
        diff_root=f"{R}/diff",
        out=lambda wildcards, output: str(Path(output.tables[0]).parent),
        topk=ANALYSIS_TOPK,
    shell:
        "rlsparsity analyze-family {params.runs:q} --base {params.base:q} --diff-root {params.diff_root:q}"
        " --out {params.out:q} --topk {params.topk} --threads {threads} --workers auto --quiet > {log:q} 2>&1"


rule analysis_table:
    input:
        lambda wildcards: [f"{R}/analysis/{f}/{wildcards.table}.csv" for f in ANALYSIS_FAMILIES],
    output:
        f"{R}/tables/{{table}}.csv",
    log:
        f"{R}/logs/analysis/table_{{table}}.log",
    benchmark:
        f"{R}/benchmarks/analysis/table_{{table}}.tsv"
    wildcard_constraints:
        table="|".join(ANALYSIS_TABLES),
    conda:
        f"{ENVS}/analysis.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "rlsparsity analysis-table {input:q} --out {output:q} > {log:q} 2>&1"


TARGETS["analysis"] = [f"{R}/tables/{t}.csv" for t in ANALYSIS_TABLES]


rule analysis:
    input:
        TARGETS["analysis"],


# The paper's Table 1 pairs from the hub (tens of GB each): only when asked for by name,
# `snakemake public_pairs`. config key `public_pairs` points at another pairs file.
rule public_pairs:
    input:
        config.get("public_pairs", "config/public_pairs.yaml"),
    output:
        f"{R}/tables/public_pairs.csv",
    log:
        f"{R}/logs/analysis/public_pairs.log",
    benchmark:
        f"{R}/benchmarks/analysis/public_pairs.tsv"
    conda:
        f"{ENVS}/analysis.yaml"
    threads: 8
    resources:
        mem_mb=4000,
        runtime=600,
    shell:
        "rlsparsity public-pairs --pairs {input:q} --out {output:q} --threads {threads} --quiet > {log:q} 2>&1"
