"""The GPU lease scripts (tools/gpu/). They do their work only on the GPU machine, so here: their
syntax, and the DAG command line that `remote.sh smk` builds (every core although the script
exports OMP_NUM_THREADS=1, targets before --configfile, only the targets planned)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "tools" / "gpu").glob("*.sh")))
def test_script_parses(script: str) -> None:
    r = subprocess.run(["bash", "-n", str(REPO / "tools" / "gpu" / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_remote_smk_takes_every_core_and_plans_only_its_targets(tmp_path: Path) -> None:
    """`nproc` obeys OMP_NUM_THREADS, which remote.sh exports as 1: a lease's DAG once ran on one
    core that way. The child `remote.sh smk` (as `dag` starts it) must still pass every core."""
    res = tmp_path / "res"
    run = res / "runs" / "smollm2-135m" / "grpo" / "on_policy" / "fp32" / "seed1" / "run.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}:{os.environ['PATH']}", "RESULTS": str(res)}
    env.pop("CORES", None)
    r = subprocess.run(["bash", "tools/gpu/remote.sh", "smk", "-n", str(run), "--prioritize", str(run),
                        "--config", f"results={res}"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    every = subprocess.run(["nproc", "--all"], capture_output=True, text=True, check=True).stdout.strip()
    line = next(x for x in r.stderr.splitlines() if x.startswith("remote.sh: snakemake"))
    assert f"--cores {every} " in line and line.index(str(run)) < line.index("--configfile"), line
    stats = r.stdout.split("Job stats:")[1].split("total")[0]
    counts = {w[0]: int(w[1]) for w in (x.split() for x in stats.splitlines()) if len(w) == 2 and w[1].isdigit()}
    assert counts == {"job_config": 2, "base": 1, "train": 1}, counts
