# Analysis stage: update sparsity, rank, overlap, layer split and dynamics of every run.
# One job per family diffs all of that family's runs in one process (imports cost ~4 s per
# process) and writes the per-run diff folders plus five per-family CSVs; analysis_table
# stacks the families into results/tables/<table>.csv. Logic: rlsparsity.analysis.

ANALYSIS_TABLES = ["sparsity", "rank", "overlap", "layers", "dynamics"]
ANALYSIS_TOPK = 0.01  # CPI-FT core region: top 1% of entries by |Δ|, an extra overlap mask
ANALYSIS_FAMILIES = [f for f in FAMILIES if any(r.family == f for r in RUNS)]


def analysis_diff_files(runs, name):
    return [f"{R}/diff/{r.rel}/{name}" for r in runs]


for _fam in ANALYSIS_FAMILIES:
    _runs = [r for r in RUNS if r.family == _fam]

    rule:
        name:
            f"analyze_{_fam}"
        input:
            base=f"{base_folder(_fam)}/model.safetensors",
            models=[f"{run_dir(r)}/model.safetensors" for r in _runs],
        output:
            tables=[f"{R}/analysis/{_fam}/{t}.csv" for t in ANALYSIS_TABLES],
            summaries=analysis_diff_files(_runs, "summary.json"),
            tensors=analysis_diff_files(_runs, "tensors.csv"),
            masks=analysis_diff_files(_runs, "mask.safetensors"),
            topk_masks=analysis_diff_files(_runs, f"mask_topk{ANALYSIS_TOPK:g}.safetensors"),
        params:
            runs=[run_dir(r) for r in _runs],
            base=base_folder(_fam),
            diff_root=f"{R}/diff",
            out=f"{R}/analysis/{_fam}",
            topk=ANALYSIS_TOPK,
        log:
            f"{R}/logs/analysis/{_fam}.log",
        benchmark:
            f"{R}/benchmarks/analysis/{_fam}.tsv"
        threads: analyze_threads
        resources:
            mem_mb=analyze_mem_mb,
            runtime=analyze_runtime,
        conda:
            f"{ENVS}/analysis.yaml"
        shell:
            "rlsparsity analyze-family {params.runs} --base {params.base} --diff-root {params.diff_root}"
            " --out {params.out} --topk {params.topk} --threads {threads} --quiet > {log} 2>&1"


rule analysis_table:
    input:
        lambda wc: [f"{R}/analysis/{f}/{wc.table}.csv" for f in ANALYSIS_FAMILIES],
    output:
        f"{R}/tables/{{table}}.csv",
    wildcard_constraints:
        table="|".join(ANALYSIS_TABLES),
    log:
        f"{R}/logs/analysis/table_{{table}}.log",
    benchmark:
        f"{R}/benchmarks/analysis/table_{{table}}.tsv"
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        f"{ENVS}/analysis.yaml"
    shell:
        "rlsparsity analysis-table {input} --out {output} > {log} 2>&1"


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
    threads: 8
    resources:
        mem_mb=4000,
        runtime=600,
    conda:
        f"{ENVS}/analysis.yaml"
    shell:
        "rlsparsity public-pairs --pairs {input} --out {output} --threads {threads} --quiet > {log} 2>&1"
