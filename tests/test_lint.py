"""The workflow is lint clean (`snakemake --lint`, no finding accepted), formatted
(`snakefmt --check`) for every shipped config and both training layouts, the Python is `ruff` clean; parsing it
(`-n`, `--lint`) writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLEAN = "Congratulations, your workflow is in a good condition!"


def run(exe: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(BIN / exe), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def per_run_config(tmp_path: Path) -> Path:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["train"]["group_by"] = []  # rule `train`, one job per run
    p = tmp_path / "per_run.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/smollm2.yaml", "config/paper.yaml", "per-run"])
def test_snakemake_lint_is_clean_and_parsing_writes_nothing(tmp_path, configfile):
    if configfile == "per-run":
        configfile = str(per_run_config(tmp_path))
    results = tmp_path / "fresh results"
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run("snakemake", "--nolock", "--lint", "--configfile", configfile, "--config", f"results={results}")
    out = r.stdout + r.stderr
    assert r.returncode == 0 and CLEAN in out, out[-4000:]
    r = run("snakemake", "--nolock", "-n", "--cores", "2", "--configfile", configfile, "--config",
            f"results={results}", "--sdm", "env-modules")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "job_config" in r.stdout  # the config files are planned as jobs ...
    assert not results.exists() and sorted(p.name for p in tmp_path.iterdir()) == before  # ... not written


def test_snakefmt_check_is_clean():
    files = ["Snakefile", *sorted(str(p.relative_to(REPO)) for p in (REPO / "workflow" / "rules").glob("*.smk"))]
    r = run("snakefmt", "--check", *files)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]


def test_ruff_is_clean():
    """Python lint (pyflakes, pycodestyle at line length 120, import order, pyupgrade, bugbear;
    configured in pyproject.toml [tool.ruff]) over the package, tests, benchmarks and tools."""
    r = run("ruff", "check", "--no-cache", ".")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]


def _git_tracked() -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return set(out.splitlines())


def test_committed_result_folders_named_by_benchmark_readmes_exist():
    """A benchmark README that cites `results/<run>/...` under its own folder cites committed files
    (a `results/` ignore rule once kept three GPU result folders out of git while the README cited them)."""
    import re

    tracked = _git_tracked()
    if not tracked:
        pytest.skip("not a git checkout")
    assert "benchmarks/fsdp/results/h200x2-1b-2026-11-30/validate.json" in tracked  # the check can see them
    missing = []
    for readme in sorted(REPO.glob("benchmarks/*/README.md")):
        here = readme.parent.relative_to(REPO).as_posix()
        for ref in re.findall(r"`(results/[A-Za-z0-9_.\-]+)/?", readme.read_text()):
            if "<" in ref or not (REPO / here / "results").is_dir():
                continue  # results/<name>: a placeholder; no results/ here: the DAG's output folder
            if not any(t.startswith(f"{here}/{ref}/") for t in tracked):
                missing.append(f"{here}/README.md cites {ref}/ but no file under it is committed")
    assert not missing, "\n".join(missing)


def test_result_folders_under_benchmarks_and_docs_are_not_ignored():
    for path in ("benchmarks/fsdp/results/new-run/validate.json", "docs/smollm2/runs/x/run.json"):
        r = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO)
        assert r.returncode == 1, path  # 1: not ignored
    r = subprocess.run(["git", "check-ignore", "-q", "--no-index", "results/runs/x/run.json"], cwd=REPO)
    assert r.returncode == 0  # the DAG's own output stays ignored
