# Shared helpers for every stage (functions only: rules live in the stage files). Each
# stage file registers its final targets in TARGETS[stage]; `rule all` requests all of
# them, `snakemake <stage>` one stage.
from snakemake.exceptions import WorkflowError

TARGETS: dict[str, list[str]] = {}


def all_targets():
    return [t for stage in TARGETS.values() for t in stage]


from rlsparsity import gpu as GPU  # noqa: E402


def family_device(family):
    """' --device cuda' for a family with `gpus` >= 1, '' for CPU families."""
    return " --device cuda" if GPU.family_gpus(config, family) > 0 else ""


def family_gpu_slots(family):
    """`gpu_slots` resource of one job of `family` (config gpu.slots_per_gpu packs them)."""
    return GPU.gpu_slots(config, family)


def gpu_env(family, mem_gb=0):
    """Shell prefix with which a GPU job claims a packed slot (rlsparsity.gpu); '' on CPU.
    Called from params functions that take `resources` (derived: no rerun trigger)."""
    return GPU.job_env(config, R, mem_gb) if GPU.family_gpus(config, family) > 0 else ""


def run_dir(run):
    return str(run.dir(R))


def base_folder(family):
    return str(G.base_dir(family, R))


def job_config(stage, name):
    """The config file of job stage/name (rule job_config makes it, see config_slices)."""
    return f"{R}/config/{stage}/{name}.json"


def config_digest(wildcards):
    """The params of job_config, the digest of the job's config slice (a rerun trigger)."""
    return CS.slice_digest(config, wildcards.stage, wildcards.name)


def family_gpus(family):
    """The family's `gpus` (0 = CPU)."""
    return int((config["families"][family] or {}).get("gpus", 0))


def group_runs_of(wildcards):
    runs = TRAIN_GROUPS.get(wildcards.group)
    if runs is None:
        raise WorkflowError(f"no training group {wildcards.group!r} in the config's grids")
    return runs


def group_manifest(group):
    return f"{R}/train/groups/{group}.json"


def run_files(run):
    return [f"{run_dir(run)}/model.safetensors", f"{run_dir(run)}/run.json"]


def trained(runs):
    """Input files standing for trained runs. Without train.group_by: the run files (rule
    train makes them). With it: the manifest of each run's group (rule train_group makes it
    after the group's runs; it lists their files with sha256). A job reads the run folders
    by path (rlsparsity.grid.Run.dir)."""
    runs = list(runs)
    missing = [r.rel for r in runs if r not in RUN_SET]
    if missing:
        raise WorkflowError(f"runs {missing} are needed but not in the config's grids: add them to `grids`")
    if not config["train"]["group_by"]:
        return [f for r in runs for f in run_files(r)]
    return list(dict.fromkeys(group_manifest(CS.group_of(config, r)) for r in runs))


# --- training on GPUs (train.smk)
def train_gpus(wildcards):
    # every algorithm runs on the family's GPUs (ppo/prime: algorithms/distributed.py)
    return family_gpus(wildcards.family)


def train_gpu_slots(wildcards):
    # packing: a 1-GPU job takes one of `--resources gpu_slots=N` (config gpu.slots_per_gpu per GPU)
    return GPU.gpu_slots(config, wildcards.family, train_gpus(wildcards))


def job_gpu_mem(family, algorithm=None, precision=None, gpus=None):
    """`gpu_mem_gb` resource of one packed GPU job (config gpu.job_memory_gb; 0 when unset)."""
    return GPU.gpu_mem_gb(config, family, algorithm, precision, gpus)


def train_env(wildcards, resources):
    return GPU.job_env(config, R, resources.gpu_mem_gb) if int(resources.gpu or 0) == 1 else ""


# --- entropy.job_per_run (entropy.smk: ENTROPY_RUNS, ENTROPY_PER_RUN)
def entropy_runs_of(family):
    return [r for r in ENTROPY_RUNS if r.family == family]


def entropy_run_files(wildcards):
    """The family job's inputs from the per-run jobs (entropy.job_per_run), else none."""
    if not ENTROPY_PER_RUN:
        return []
    return [f"{r.dir(R)}/{f}" for r in entropy_runs_of(wildcards.family) for f in ("run.json", "model.safetensors")]


# --- subnetwork.job_per_run (subnetwork.smk: SUB_JOBS)
def sub_job_rows(wildcards):
    """rows.csv of the family's masked reruns (SubJob.dir), made by rule subnetwork_job."""
    return [f"{j.dir(R)}/rows.csv" for j in SUB_JOBS if j.run.family == wildcards.family]


def sub_full_run(wildcards):
    """The full run a masked rerun copies (its files, or its group's manifest)."""
    run = G.Run(wildcards.family, wildcards.algorithm, wildcards.data, wildcards.precision, int(wildcards.seed))
    return trained([run])


# --- rounding stage (rounding.smk: ROUNDING_RUNS)
def rounding_record(run):
    return f"{R}/rounding/{run.family}/{run.algorithm}/{run.data}/seed{run.seed}.json"


def rounding_partners(wildcards):
    """The fp32-master partners in the grid (their run files): rounding_table reads their answers."""
    partners = [G.Run(r.family, r.algorithm, r.data, "fp32-master", r.seed) for r in ROUNDING_RUNS]
    return trained(p for p in partners if p in RUN_SET)


# --- cluster resources of the heavy rules (issue 14), computed from the family's config and
# its base model's size (rlsparsity.resources), so the SLURM profile needs no per-family
# entries. Each takes the family from the `family` wildcard or, for train_group, from the
# rule's `base` input paths (R/base/<family>/...); memory and time are re-evaluated when the
# job is submitted, i.e. once the base model exists.
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


def _train_threads(family):
    n = RES.threads("train", family, _spec(family), family_gpus(family))
    # packed one-GPU jobs (gpu.slots_per_gpu > 1) share the node's cores as they share the GPU
    return max(1, n // GPU.slots_per_gpu(config)) if family_gpus(family) == 1 else n


def train_threads(wildcards, input):
    return max(_train_threads(f) for f in _families_of(wildcards, input))


def train_mem_mb(wildcards, input):
    return RES.train_mem_mb(_max_params(input))


def train_runtime(wildcards, input):
    return RES.train_runtime(_max_params(input), config["train"]["steps"])


def analyze_threads(wildcards, input):
    return max(RES.threads("analysis", f, _spec(f)) for f in _families_of(wildcards, input))


def analyze_mem_mb(wildcards, input):  # per worker process (analyze-family --workers auto)
    n_runs = sum(r.family == wildcards.family for r in RUNS)
    workers = RES.analysis_workers(_max_params(input), analyze_threads(wildcards, input), n_runs)
    return RES.analysis_mem_mb(_max_params(input)) * workers


def analyze_runtime(wildcards, input):
    return RES.analysis_runtime(_max_params(input), sum(r.family == wildcards.family for r in RUNS))


# Cheap rules (job configs, tables stacked from per-family CSVs, figures, SUMMARY.md, the
# stage targets) run where Snakemake itself runs (the login node on a cluster), not as one
# sbatch job each. Not: base, train*, preference_samples, analyze, entropy_* / subnetwork_*
# jobs, causes_train. subnetwork_family only stacks rows with subnetwork.job_per_run.
LOCAL_RULES = (
    "job_config",
    "accuracy_table",
    "analysis_table",
    "entropy_table",
    "subnetwork_table",
    "causes_table",
    "rounding_table",
    "rounding",
    "figure",
    "summary",
    "all",
    "bases",
    "train_all",
    "analysis",
    "entropy",
    "subnetwork",
    "causes",
    "figures",
)


def local_rule_names(rules):
    local = set(LOCAL_RULES) | ({"subnetwork_family"} if SUB_PER_RUN else set())
    return [r.name for r in rules if r.name in local]
