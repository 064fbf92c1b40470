import copy
from pathlib import Path

import pytest
import yaml

from rlsparsity import grid as G
from rlsparsity.config import ConfigError, load_config, validate_config
from rlsparsity.families import FamilyError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_default_config_is_valid_and_defaults_filled(cfg):
    out = validate_config(cfg)
    assert out["task"]["name"] == "tiny_arith" and out["train"]["hparams"] == {}
    assert len(out["families"]) == 10


def test_default_grid_covers_the_paper(cfg):
    runs = G.expand_runs(validate_config(cfg))
    fams = {r.family for r in runs}
    assert len(fams) == 10
    for fam in fams:  # all ten families x all seven paper algorithms x >= 2 seeds
        for alg in G.PAPER_ALGORITHMS:
            assert len({r.seed for r in runs if r.family == fam and r.algorithm == alg}) >= 2
    axes = [r for r in runs if r.family == cfg["causes"]["family"]]  # the precision x data family
    assert {r.precision for r in axes} == set(G.PRECISIONS)
    assert {r.data for r in axes} == set(G.DATA_SOURCES)
    assert not [r for r in runs if r.algorithm in G.ONLINE_ALGORITHMS and r.data == "off_policy"]
    assert len(runs) == len(set(runs))


def test_grid_expansion_exact_count():
    cfg = {"families": {"a": {}, "b": {}}, "grids": [
        {"families": "all", "algorithms": ["grpo", "dpo"], "seeds": [1, 2], "precisions": ["bf16"],
         "data": ["on_policy", "off_policy"]},
        {"families": ["a"], "algorithms": ["dpo"], "seeds": [1], "precisions": ["bf16", "fp32"],
         "data": ["on_policy"]},
    ]}
    runs = G.expand_runs(cfg)
    # block 1: 2 fams x (grpo: 2 seeds x on_policy + dpo: 2 seeds x 2 data) = 12; block 2 adds a/dpo/on/fp32/s1
    assert len(runs) == 13
    assert G.Run("a", "dpo", "on_policy", "fp32", 1) in runs
    r = runs[0]
    assert G.parse_run_dir(r.dir("x/results")) == r


def test_grouping_partitions_the_runs_into_jobs():
    cfg = {"families": {"a": {}, "b": {}}, "grids": [
        {"families": "all", "algorithms": ["grpo", "dpo"], "seeds": [1, 2], "precisions": ["bf16"],
         "data": ["on_policy"]},
        {"families": ["a"], "algorithms": ["dpo"], "seeds": [1], "precisions": ["fp32"], "data": ["on_policy"]},
    ]}
    runs = G.expand_runs(cfg)
    groups = G.group_runs(runs, ["family", "precision", "seed"])
    assert list(groups) == ["family=a,precision=bf16,seed=1", "family=a,precision=bf16,seed=2",
                            "family=a,precision=fp32,seed=1", "family=b,precision=bf16,seed=1",
                            "family=b,precision=bf16,seed=2"]
    assert [r.algorithm for r in groups["family=a,precision=bf16,seed=1"]] == ["dpo", "grpo"]
    assert sorted(r for g in groups.values() for r in g) == runs  # a partition: every run exactly once
    assert G.runs_in_group(runs, "family=a,precision=fp32,seed=1") == [G.Run("a", "dpo", "on_policy", "fp32", 1)]
    assert G.group_runs(runs, []) == {"": runs}
    assert len(G.group_runs(runs, G.GROUP_FIELDS)) == len(runs)
    with pytest.raises(ValueError, match="unknown run field"):
        G.group_runs(runs, ["familly"])
    with pytest.raises(ValueError, match="bad group"):
        G.runs_in_group(runs, "fam=a")


@pytest.mark.parametrize("mutate,match", [
    (lambda c: c.update(trian={}), r"<top level>: Additional properties are not allowed \('trian'"),
    (lambda c: c["grids"][0].update(precisions=["fp16"]), r"grids\.0\.precisions\.0: 'fp16' is not one of"),
    (lambda c: c["train"].update(steps=0), r"train\.steps: 0 is less than the minimum of 1"),
    (lambda c: c["train"].update(group_by=["famly"]), r"train\.group_by\.0: 'famly' is not one of"),
    (lambda c: c["grids"][0].update(algorithms=["ppo2"]), r"grids\.0\.algorithms\.0"),
    (lambda c: c["families"]["llama"].update(hidden=3), r"families\.llama: Additional properties"),
    (lambda c: c["base"].update(target_accuracy=0.95), r"base\.target_accuracy"),
    (lambda c: c["grids"][1].update(families=["nosuch"]), r"grids\.1\.families: \['nosuch'\] not listed"),
    (lambda c: c.update(gpu={"job_memory_gb": {"prme@fp32-master": 30}}), r"gpu\.job_memory_gb\.prme@fp32-master: not"),
    (lambda c: c.update(gpu={"job_memory_gb": {"ppo@fp16": 30}}), r"gpu\.job_memory_gb\.ppo@fp16: not"),
    (lambda c: c.update(gpu={"job_memory_gb": {"evals": 6}}), r"gpu\.job_memory_gb\.evals: not"),
])
def test_schema_rejects_bad_configs_naming_the_key(cfg, mutate, match):
    bad = copy.deepcopy(cfg)
    mutate(bad)
    with pytest.raises(ConfigError, match=match):
        validate_config(bad)


def test_unknown_family_is_one_clear_line(cfg):
    bad = copy.deepcopy(cfg)
    bad["families"]["lamma"] = {}
    with pytest.raises(FamilyError) as e:
        validate_config(bad)
    assert "unknown family 'lamma'" in str(e.value) and "\n" not in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
