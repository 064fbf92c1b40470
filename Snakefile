# rlsparsity: does RL update only a small, full-rank subnetwork of an LLM?
# Thin entry point: config validation, shared helpers, stage includes, `rule all`.
# All logic lives in the `rlsparsity` package (src/rlsparsity); rules call its CLI.
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from rlsparsity.config import validate_config  # noqa: E402
from rlsparsity import config_slices as CS  # noqa: E402
from rlsparsity import grid as G  # noqa: E402

# The default grid applies only when no --configfile is given: a user's config file
# replaces it whole (Snakemake would otherwise deep-merge the two, e.g. keep all ten
# tiny families next to the user's). --config KEY=VALUE still overrides single keys.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# Snakemake keeps the last of duplicate YAML keys silently: the files are re-read strictly.
config = validate_config(
    config, files=workflow.overwrite_configfiles or [Path(workflow.basedir) / "config/config.yaml"]
)
R = config["results"]  # every output lives under this folder
# Parsing writes nothing. Jobs read the validated config (with --config/--configfile
# overrides merged) from R/config/<stage>/<name>.json, made by rule job_config whenever
# the part of the config that job depends on changes (rlsparsity.config_slices).
RUNS = G.expand_runs(config)
RUN_SET = set(RUNS)
TRAIN_GROUPS = CS.train_groups(config)
FAMILIES = G.family_names(config)
ENVS = str(Path(workflow.basedir) / "envs")


report: "workflow/report/workflow.rst"


wildcard_constraints:
    family="[A-Za-z0-9_.-]+",
    algorithm="|".join(G.ALGORITHMS),
    data="|".join(G.DATA_SOURCES),
    precision="|".join(G.PRECISIONS),
    seed=r"\d+",


include: "workflow/rules/common.smk"
include: "workflow/rules/base.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/entropy.smk"
include: "workflow/rules/subnetwork.smk"
include: "workflow/rules/rounding.smk"
include: "workflow/rules/figures.smk"  # keep last: wires figures for the tables registered above


rule all:
    default_target: True
    input:
        all_targets(),


# Cheap collectors run where Snakemake runs, not as cluster jobs (common.smk: local_rule_names).
workflow.localrules(*local_rule_names(workflow.rules))
