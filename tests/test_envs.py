"""envs/*.yaml (conda envs for clusters) must pin exactly what pyproject.toml pins."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def pins(reqs) -> dict[str, str]:
    out = {}
    for r in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", r.strip())
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def project_pins() -> dict[str, str]:
    proj = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(proj["dependencies"])
    for extra in proj.get("optional-dependencies", {}).values():
        reqs += extra
    return pins(reqs)


def test_every_dependency_is_pinned():
    proj = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    unpinned = [r for r in proj["dependencies"] if "==" not in r]
    assert not unpinned, unpinned


@pytest.mark.parametrize("env", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_agrees_with_pyproject(env):
    spec = yaml.safe_load(env.read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
    env_pins = pins(pip)
    want = project_pins()
    assert env_pins, f"{env.name} pins nothing"
    for name, version in env_pins.items():
        assert name in want, f"{env.name} pins {name} which pyproject.toml does not"
        assert want[name] == version, f"{env.name}: {name}=={version} but pyproject.toml has {want[name]}"
    assert "torch" in env_pins and "python=3.11" in spec["dependencies"]


def test_every_rule_names_a_conda_env_log_benchmark_resources():
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        for block in re.split(r"\n(?=\s*rule\b)", text)[1:]:
            name = block.split(":")[0].strip()
            if "shell:" not in block:
                continue  # aggregate targets (rule all-like) run nothing
            for key in ("log:", "benchmark:", "resources:", "conda:"):
                assert key in block, f"{smk.name}: {name} lacks {key}"
