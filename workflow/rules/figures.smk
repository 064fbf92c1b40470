# Figures, the Snakemake report and SUMMARY.md (issue 7). Included LAST: every other stage has
# registered its tables in TARGETS by now, and a figure is made only when some stage produces
# its tables, so the DAG works whichever stages are present. Rule `figure`: one job per PNG
# (caption: workflow/report/figure.rst). Logic: rlsparsity.figures.
# `snakemake --report results/report.html figures` (make report) builds the HTML report.
from rlsparsity.figures import SUMMARY_TABLES, families as figure_families, figures_for

FIG_CATEGORIES = {
    "sparsity": "1. Sparsity",
    "layers": "2. Structure",
    "rank": "2. Structure",
    "overlap": "2. Structure",
    "dynamics": "3. Dynamics",
    "accuracy": "4. Accuracy",
    "subnetwork": "5. Subnetwork and causes",
    "causes": "5. Subnetwork and causes",
    "entropy": "6. 80/20 token entropy",
    "rounding": "1. Sparsity",
}
# tables that some stage makes: results/tables/<name>.csv in TARGETS
FIG_TABLES = {Path(t).stem for t in all_targets() if str(Path(t).parent) == str(Path(R) / "tables")}
FIGS = {f.name: f for fam in figure_families() for f in figures_for(fam, FIG_TABLES)}
TARGETS["figures"] = [f"{R}/figures/{name}.png" for name in FIGS] + [f"{R}/SUMMARY.md"]


rule figure:
    input:
        lambda wildcards: [f"{R}/tables/{t}.csv" for t in FIGS[wildcards.figure].tables],
    output:
        report(
            f"{R}/figures/{{figure}}.png",
            caption="../report/figure.rst",
            category=lambda wildcards: FIG_CATEGORIES.get(FIGS[wildcards.figure].family, "Other"),
            labels={"figure": "{figure}"},
        ),
    log:
        f"{R}/logs/figures/{{figure}}.log",
    benchmark:
        f"{R}/benchmarks/figures/{{figure}}.tsv"
    wildcard_constraints:
        figure="|".join(FIGS),
    conda:
        f"{ENVS}/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        family=lambda wildcards: FIGS[wildcards.figure].family,
        dpi=config["figures"]["dpi"],
        out=lambda wildcards, output: str(Path(output[0]).parent),
    shell:
        "MPLBACKEND=Agg rlsparsity figures {params.family:q} {input:q} --out-dir {params.out:q}"
        " --only {wildcards.figure:q} --dpi {params.dpi} > {log:q} 2>&1"


rule summary:
    input:
        [f"{R}/tables/{t}.csv" for t in SUMMARY_TABLES if t in FIG_TABLES],
    output:
        report(
            f"{R}/SUMMARY.md",
            caption="../report/summary.rst",
            category="0. Summary",
            labels={"figure": "SUMMARY.md"},
        ),
    log:
        f"{R}/logs/figures/summary.log",
    benchmark:
        f"{R}/benchmarks/figures/summary.tsv"
    conda:
        f"{ENVS}/analysis.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "rlsparsity summary {input:q} --out {output:q} --figures-dir figures > {log:q} 2>&1"


rule figures:
    input:
        TARGETS["figures"],
