# Figures, the Snakemake report and SUMMARY.md (issue 7). Included LAST: every other stage has
# registered its tables in TARGETS by now, and a figure rule is made only for tables some stage
# produces, so the DAG works whichever stages are present. Logic: rlsparsity.figures.
# `snakemake --report results/report.html figures` (make report) builds the HTML report.
from rlsparsity.figures import SUMMARY_TABLES, families as figure_families, figures_for

FIG_DIR = f"{R}/figures"
FIG_CATEGORIES = {"sparsity": "1. Sparsity", "layers": "2. Structure", "rank": "2. Structure",
                  "overlap": "2. Structure", "dynamics": "3. Dynamics", "accuracy": "4. Accuracy",
                  "subnetwork": "5. Subnetwork and causes", "causes": "5. Subnetwork and causes",
                  "entropy": "6. 80/20 token entropy"}
# tables that some stage makes: results/tables/<name>.csv in TARGETS
FIG_TABLES = {Path(t).stem for t in all_targets() if str(Path(t).parent) == str(Path(R) / "tables")}
TARGETS["figures"] = []

for _fam in figure_families():
    _figs = figures_for(_fam, FIG_TABLES)
    if not _figs:
        continue
    _tabs = sorted({t for f in _figs for t in f.tables})
    TARGETS["figures"] += [f"{FIG_DIR}/{f.name}.png" for f in _figs]

    rule:
        name:
            f"fig_{_fam}"
        input:
            [f"{R}/tables/{t}.csv" for t in _tabs],
        output:
            [report(f"{FIG_DIR}/{f.name}.png", caption=f"../report/{f.name}.rst",
                    category=FIG_CATEGORIES.get(_fam, "Other"), labels={"figure": f.name}) for f in _figs],
        params:
            family=_fam,
            out=FIG_DIR,
        log:
            f"{R}/logs/figures/{_fam}.log",
        benchmark:
            f"{R}/benchmarks/figures/{_fam}.tsv"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        conda:
            f"{ENVS}/analysis.yaml"
        shell:
            "MPLBACKEND=Agg rlsparsity figures {params.family} {input} --out-dir {params.out} > {log} 2>&1"


rule summary:
    input:
        [f"{R}/tables/{t}.csv" for t in SUMMARY_TABLES if t in FIG_TABLES],
    output:
        report(f"{R}/SUMMARY.md", caption="../report/summary.rst", category="0. Summary",
               labels={"figure": "SUMMARY.md"}),
    log:
        f"{R}/logs/figures/summary.log",
    benchmark:
        f"{R}/benchmarks/figures/summary.tsv"
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        f"{ENVS}/analysis.yaml"
    shell:
        "rlsparsity summary {input} --out {output} --figures-dir figures > {log} 2>&1"


TARGETS["figures"] += [f"{R}/SUMMARY.md"]


rule figures:
    input:
        TARGETS["figures"],
