# Shared helpers for every stage. Each stage file registers its final targets in
# TARGETS[stage]; `rule all` requests all of them, `snakemake <stage>` one stage.

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


def gpu_env(family):
    """Shell prefix with which a GPU job claims a packed slot (rlsparsity.gpu); '' on CPU."""
    return GPU.job_env(config, R) if GPU.family_gpus(config, family) > 0 else ""


def run_dir(run):
    return str(run.dir(R))


def base_folder(family):
    return str(G.base_dir(family, R))
