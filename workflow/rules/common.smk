# Shared helpers for every stage. Each stage file registers its final targets in
# TARGETS[stage]; `rule all` requests all of them, `snakemake <stage>` one stage.

TARGETS: dict[str, list[str]] = {}


def all_targets():
    return [t for stage in TARGETS.values() for t in stage]


def run_dir(run):
    return str(run.dir(R))


def base_folder(family):
    return str(G.base_dir(family, R))
