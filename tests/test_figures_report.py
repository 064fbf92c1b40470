"""The figures stage as a DAG: a tiny Snakemake run in a tmp folder (tables seeded as CSVs,
TARGETS pre-filled as the stages would), `--report` writes a self-contained HTML report, and
headless Chromium renders it to a screenshot that is not blank. Figure jobs exist only for
tables some stage registers (here: no subnetwork/entropy stage -> no such jobs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import _figure_data as D
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SEEDED = ["sparsity", "overlap", "accuracy"]  # five figure jobs + summary keep this well under 90 s

SNAKEFILE = """
import sys
from pathlib import Path
sys.path.insert(0, {src!r})
R = {results!r}
ENVS = {envs!r}
config["figures"] = {{"dpi": 110}}
include: {common!r}
TARGETS["analysis"] = [f"{{R}}/tables/sparsity.csv", f"{{R}}/tables/overlap.csv"]
TARGETS["train"] = [f"{{R}}/tables/accuracy.csv"]
report: {report!r}
include: {figures!r}
"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def snakemake(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg"}
    return subprocess.run([str(BIN / "snakemake"), "--nolock", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=240)


@pytest.fixture(scope="module")
def report_dag(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("figdag")
    results = tmp / "results"
    D.write_all(results / "tables", SEEDED)
    (tmp / "envs").mkdir()
    (tmp / "envs" / "analysis.yaml").write_text("name: analysis\ndependencies: []\n")  # recorded, not used
    (tmp / "Snakefile").write_text(SNAKEFILE.format(
        src=str(REPO / "src"), results=str(results), envs=str(tmp / "envs"),
        common=str(REPO / "workflow/rules/common.smk"), figures=str(REPO / "workflow/rules/figures.smk"),
        report=str(REPO / "workflow/report/workflow.rst")))
    run = snakemake(["--cores", "2", "figures"], tmp)
    assert run.returncode == 0, run.stderr[-4000:]
    rep = snakemake(["--report", str(tmp / "report.html"), "figures"], tmp)
    assert rep.returncode == 0, rep.stderr[-4000:]
    return tmp, results, run


@pytest.mark.slow
def test_dag_makes_only_the_figures_of_registered_tables(report_dag):
    tmp, results, run = report_dag
    pngs = sorted(p.stem for p in (results / "figures").glob("*.png"))
    assert pngs == ["accuracy", "overlap_vs_chance", "precision_decomposition", "sparsity_heatmap",
                    "sparsity_tolerance"]
    for p in (results / "figures").glob("*.png"):
        assert p.stat().st_size > 8000
    for fig in pngs:  # one job per figure
        assert (results / "logs" / "figures" / f"{fig}.log").exists()
        assert (results / "benchmarks" / "figures" / f"{fig}.tsv").exists()
    assert "figure=subnetwork" not in run.stdout + run.stderr and "figure=entropy" not in run.stdout + run.stderr
    summary = (results / "SUMMARY.md").read_text()
    assert "## Verdicts" in summary and "depends on precision" in summary


@pytest.mark.slow
def test_report_html_embeds_every_figure_with_caption(report_dag):
    tmp, results, _ = report_dag
    html = (tmp / "report.html").read_text()
    for name in ("sparsity_heatmap", "sparsity_tolerance", "precision_decomposition", "overlap_vs_chance",
                 "accuracy"):
        assert f"filename={name}.png;base64,iVBORw0KGgo" in html, name  # PNG embedded as a data URI
    assert "SUMMARY.md" in html
    assert "60.5" in html  # a caption's paper number (overlap)
    assert "replicates arXiv 2505.11711" in html  # workflow.rst description


@pytest.mark.slow
def test_report_renders_in_headless_chromium(report_dag):
    exe = chromium()
    if exe is None:
        pytest.skip("chromium not installed (.ci/run installs Debian's chromium)")
    tmp, _, _ = report_dag
    shot = tmp / "shot.png"
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        r = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync",
                            f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1280,2000",
                            (tmp / "report.html").resolve().as_uri()], capture_output=True, text=True, timeout=90)
    assert shot.exists(), r.stderr[-2000:]
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (2000, 1280)
    gray = img.mean(axis=2)
    assert gray.std() > 0.03  # not a blank page
    assert (gray < 0.5).mean() > 0.005  # text, the search box and the DAG were drawn
    assert len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50


def test_accuracy_verdict_needs_every_paper_algorithm_up():
    import pandas as pd

    from rlsparsity.figures.summary import FAILS, HOLDS, section_accuracy
    from rlsparsity.figures.verdicts_accuracy import every_algorithm_improves
    from rlsparsity.grid import PAPER_ALGORITHMS

    def table(kto_delta: float) -> pd.DataFrame:
        rows = [{"family": f, "algorithm": a, "data": "on_policy", "precision": "bf16", "seed": 1,
                 "acc_base": 0.30, "acc_trained": 0.30 + (kto_delta if a == "kto" else 0.01)}
                for a in PAPER_ALGORITHMS for f in ("x", "y")]
        # an fp32 llama row that went down must not count: the verdict is on the main (most runs) grid
        rows.append({"family": "x", "algorithm": "dpo", "data": "on_policy", "precision": "fp32", "seed": 1,
                     "acc_base": 0.30, "acc_trained": 0.10})
        return pd.DataFrame(rows)

    for kto, want in ((0.02, HOLDS), (-0.02, FAILS)):
        v = every_algorithm_improves(table(kto))
        assert v["verdict"] == want, v
        assert ("kto: 2.0 pts" if want == HOLDS else "kto: -2.0 pts") in v["ours"] and "dpo: 1.0 pts" in v["ours"]
        text = "\n".join(section_accuracy(table(kto)))
        assert "| bf16 | kto | 30.0% |" in text and "Per paper algorithm (bf16" in text
