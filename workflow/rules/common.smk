# Shared helpers for every stage. Each stage file registers its final targets in
# TARGETS[stage]; `rule all` requests all of them, `snakemake <stage>` one stage.

TARGETS: dict[str, list[str]] = {}


def all_targets():
    return [t for stage in TARGETS.values() for t in stage]


def run_dir(run):
    return str(run.dir(R))


def base_folder(family):
    return str(G.base_dir(family, R))


# Cluster resources of the heavy rules (issue 14), computed from the family's config and its
# base model's size (rlsparsity.resources), so the SLURM profile needs no per-family entries.
# Each takes the family from the `family` wildcard or from the rule's `base` input path
# (results/base/<family>/...); memory and time are re-evaluated when the job is submitted,
# i.e. once the base model exists.
from rlsparsity import resources as RES  # noqa: E402


def _base_inputs(input):
    base = input.base
    return [base] if isinstance(base, str) else list(base)


def _families_of(wildcards, input):
    if "family" in wildcards.keys():
        return [wildcards.family]
    return sorted({Path(b).parent.name for b in _base_inputs(input)})


def _max_params(input):
    sizes = [RES.stored_params(RES.base_model_file(b)) for b in _base_inputs(input)]
    return max((s for s in sizes if s is not None), default=None)


def _spec(family):
    return config["families"].get(family) or {}


def base_threads(wildcards):
    return RES.threads("base", wildcards.family, _spec(wildcards.family))


def base_mem_mb(wildcards):
    return RES.base_mem_mb(wildcards.family, _spec(wildcards.family))


def base_runtime(wildcards):
    return RES.base_runtime(wildcards.family, _spec(wildcards.family))


def train_threads(wildcards, input):
    return max(RES.threads("train", f, _spec(f), int(_spec(f).get("gpus", 0)))
               for f in _families_of(wildcards, input))


def train_mem_mb(wildcards, input):
    return RES.train_mem_mb(_max_params(input))


def train_runtime(wildcards, input):
    return RES.train_runtime(_max_params(input), config["train"]["steps"])


def analyze_threads(wildcards, input):
    return max(RES.threads("analysis", f, _spec(f)) for f in _families_of(wildcards, input))


def analyze_mem_mb(wildcards, input):
    return RES.analysis_mem_mb(_max_params(input))


def analyze_runtime(wildcards, input):
    return RES.analysis_runtime(_max_params(input), len(input.models))


# Cheap collectors (tables stacked from per-family CSVs, figures, SUMMARY.md) run where
# Snakemake itself runs (the login node on a cluster), not as one sbatch job each.
LOCAL_RULE_PATTERNS = ("accuracy_table", "analysis_table", "entropy_table", "subnetwork_table",
                       "fig", "fig_*", "figure*", "summary")


def local_rule_names(rules):
    import fnmatch

    return [r.name for r in rules if any(fnmatch.fnmatch(r.name, p) for p in LOCAL_RULE_PATTERNS)]
