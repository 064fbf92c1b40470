"""Layer parsing, dynamics split, per-family aggregation tables and the Snakemake rules."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _analysis_util import SRC, save_model

from rlsparsity.analysis.dynamics import run_dynamics
from rlsparsity.analysis.layers import layer_table, parse_name
from rlsparsity.analysis.tables import analyze_family, overlap_pairs
from rlsparsity.grid import Run

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name,expected", [
    ("model.layers.3.self_attn.q_proj.weight", (3, "q")),                      # llama/mistral/qwen
    ("model.layers.0.self_attn.k_norm.weight", (0, "norm")),                   # qwen3/olmo2
    ("model.layers.1.post_feedforward_layernorm.weight", (1, "norm")),         # gemma2/olmo2
    ("model.layers.2.self_attn.qkv_proj.weight", (2, "qkv")),                  # phi3
    ("model.layers.2.mlp.gate_up_proj.weight", (2, "gate_up")),                # phi3
    ("model.layers.0.self_attn.q_proj.bias", (0, "q")),                        # qwen2 bias
    ("gpt_neox.layers.4.attention.query_key_value.weight", (4, "qkv")),
    ("gpt_neox.layers.4.attention.dense.weight", (4, "o")),
    ("gpt_neox.layers.4.mlp.dense_h_to_4h.bias", (4, "up")),
    ("gpt_neox.layers.4.mlp.dense_4h_to_h.weight", (4, "down")),
    ("gpt_neox.embed_in.weight", (None, "embed")),
    ("embed_out.weight", (None, "lm_head")),
    ("gpt_neox.final_layer_norm.weight", (None, "norm")),
    ("transformer.h.5.attn.c_attn.weight", (5, "qkv")),
    ("transformer.h.5.attn.c_proj.weight", (5, "o")),
    ("transformer.h.5.mlp.c_proj.weight", (5, "down")),
    ("transformer.h.5.mlp.c_fc.bias", (5, "up")),
    ("transformer.h.5.ln_1.weight", (5, "norm")),
    ("transformer.wte.weight", (None, "embed")),
    ("transformer.wpe.weight", (None, "embed")),
    ("model.layers.7.self_attn.q_a_proj.weight", (7, "q")),                    # deepseek_v3
    ("model.layers.7.self_attn.kv_a_proj_with_mqa.weight", (7, "kv")),
    ("model.layers.7.self_attn.kv_b_proj.weight", (7, "kv")),
    ("model.layers.7.self_attn.q_a_layernorm.weight", (7, "norm")),
    ("model.layers.7.mlp.experts.12.down_proj.weight", (7, "expert")),
    ("model.layers.7.mlp.shared_experts.gate_proj.weight", (7, "expert")),
    ("model.layers.7.mlp.gate.weight", (7, "router")),
    ("model.layers.7.mlp.gate.e_score_correction_bias", (7, "router")),
    ("model.layers.0.mlp.gate_proj.weight", (0, "gate")),
    ("model.embed_tokens.weight", (None, "embed")),
    ("lm_head.weight", (None, "lm_head")),
    ("model.layers.0.self_attn.rotary_emb.inv_freq", (0, "other")),
])
def test_parse_name(name, expected):
    assert parse_name(name) == expected


def test_layer_table_exact():
    rows = [{"layer": "0", "matrix_type": "q", "numel": "10", "changed_0": "4", "below_ulp": "1"},
            {"layer": "0", "matrix_type": "q", "numel": "30", "changed_0": "6", "below_ulp": "2"},
            {"layer": "", "matrix_type": "embed", "numel": "8", "changed_0": "8", "below_ulp": "0"}]
    out = layer_table(rows, ["0"])
    assert out == [
        {"layer": -1, "matrix_type": "embed", "n_tensors": 1, "numel": 8, "tolerance": 0.0, "sparsity": 0.0,
         "below_bf16_half_ulp": 0.0},
        {"layer": 0, "matrix_type": "q", "n_tensors": 2, "numel": 40, "tolerance": 0.0, "sparsity": 1 - 10 / 40,
         "below_bf16_half_ulp": 3 / 40}]


def _with(base: torch.Tensor, idx: list[int]) -> torch.Tensor:
    t = base.clone()
    t[idx] += 1.0
    return t


def _write_run(run_dir: Path, base: torch.Tensor, ckpts: dict[int, list[int]], final: list[int]) -> Path:
    for step, idx in ckpts.items():
        save_model(run_dir / "checkpoints" / f"step-{step:06d}", {"w": _with(base, idx)})
    save_model(run_dir, {"w": _with(base, final)})
    (run_dir / "run.json").write_text(json.dumps({"steps": 30}))
    return run_dir


def test_dynamics_split_exact(tmp_path):
    base = torch.zeros(10)
    b = save_model(tmp_path / "base", {"w": base})
    rd = _write_run(tmp_path / "run", base, {10: [0, 1, 2], 20: [0, 1, 3]}, [0, 4])
    rows = run_dynamics(b, rd, (0.0,))
    got = {(r["point"], r["quantity"]): (r["step"], r["value"]) for r in rows}
    assert got == {("step-000010", "sparsity"): (10, 1 - 3 / 10), ("step-000020", "sparsity"): (20, 1 - 3 / 10),
                   ("final", "sparsity"): (30, 1 - 2 / 10), ("final", "never_updated"): (30, 5 / 10),
                   ("final", "updated_then_cancelled"): (30, 3 / 10), ("final", "final_subnetwork"): (30, 2 / 10)}


def _family(tmp_path: Path) -> tuple[Path, list[Path]]:
    """Base of 20 entries ('w' 4x5 matrix); three runs: seeds 1, 2 of grpo and seed 1 of dpo."""
    base = torch.zeros(4, 5)
    results = tmp_path / "results"
    b = save_model(results / "base" / "fam", {"model.layers.0.mlp.up_proj.weight": base})
    changes = {("grpo", 1): [0, 1, 2, 3], ("grpo", 2): [2, 3, 4], ("dpo", 1): [0, 19]}
    runs = []
    for (alg, seed), idx in changes.items():
        rd = results / "runs" / "fam" / alg / "on_policy" / "bf16" / f"seed{seed}"
        w = base.clone().view(-1)
        w[idx] = torch.arange(1, len(idx) + 1, dtype=torch.float32)
        save_model(rd, {"model.layers.0.mlp.up_proj.weight": w.view(4, 5)})
        save_model(rd / "checkpoints" / "step-000005", {"model.layers.0.mlp.up_proj.weight": base})
        (rd / "run.json").write_text("{}\n")  # the workflow takes model + run.json as a trained run
        runs.append(rd)
    return b, runs


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_overlap_pairs_one_axis():
    runs = [Run("f", "grpo", "on_policy", "bf16", 1), Run("f", "grpo", "on_policy", "bf16", 2),
            Run("f", "dpo", "on_policy", "bf16", 1), Run("f", "dpo", "off_policy", "fp32", 2)]
    pairs = {(ax, a.label, b.label) for ax, a, b in overlap_pairs(runs)}
    assert pairs == {("seed", "grpo:on_policy:bf16:s1", "grpo:on_policy:bf16:s2"),
                     ("algorithm", "dpo:on_policy:bf16:s1", "grpo:on_policy:bf16:s1")}


def test_analyze_family_tables_exact(tmp_path):
    b, runs = _family(tmp_path)
    paths = analyze_family(b, runs, tmp_path / "results" / "diff", tmp_path / "out", (0.0, 1e-5), topk=0.1)
    sp = {(r["algorithm"], r["seed"], r["tolerance"]): float(r["sparsity"]) for r in _read(paths["sparsity"])}
    assert sp == {("grpo", "1", "0.0"): 1 - 4 / 20, ("grpo", "1", "1e-05"): 1 - 4 / 20,
                  ("grpo", "2", "0.0"): 1 - 3 / 20, ("grpo", "2", "1e-05"): 1 - 3 / 20,
                  ("dpo", "1", "0.0"): 1 - 2 / 20, ("dpo", "1", "1e-05"): 1 - 2 / 20}
    ov = {(r["axis"], r["mask"]): r for r in _read(paths["overlap"])}
    assert set(ov) == {("seed", "exact"), ("seed", "topk:0.1"), ("algorithm", "exact"), ("algorithm", "topk:0.1")}
    seed = ov[("seed", "exact")]  # I1 = {0,1,2,3}, I2 = {2,3,4}
    assert (seed["run_a"], seed["run_b"]) == ("grpo:on_policy:bf16:s1", "grpo:on_policy:bf16:s2")
    assert float(seed["o1"]) == 2 / 4 and float(seed["o2"]) == 2 / 3 and float(seed["jaccard"]) == 2 / 5
    assert float(seed["o1_random"]) == 1 - (1 - 3 / 20)
    alg = ov[("algorithm", "exact")]  # dpo {0,19} vs grpo s1 {0,1,2,3}
    assert float(alg["o1"]) == 1 / 2 and float(alg["o2"]) == 1 / 4
    top = ov[("seed", "topk:0.1")]  # top 2 of 20 by |Δ|: s1 {2, 3} (values 3, 4), s2 {3, 4} (values 2, 3)
    assert float(top["o1"]) == 1 / 2 and float(top["jaccard"]) == 1 / 3
    rank = {(r["algorithm"], r["seed"]): (r["rank"], r["max_rank"]) for r in _read(paths["rank"])}
    # rows: 0 | 0 | 0, 3
    assert rank == {("grpo", "1"): ("1", "4"), ("grpo", "2"): ("1", "4"), ("dpo", "1"): ("2", "4")}
    layers = [r for r in _read(paths["layers"]) if r["algorithm"] == "dpo" and r["tolerance"] == "0.0"]
    assert [(r["layer"], r["matrix_type"], float(r["sparsity"])) for r in layers] == [("0", "up", 1 - 2 / 20)]
    dyn = {
        (r["algorithm"], r["seed"], r["point"], r["quantity"], r["tolerance"]): float(r["value"])
        for r in _read(paths["dynamics"])
    }
    assert dyn[("grpo", "2", "step-000005", "sparsity", "0.0")] == 1.0
    assert dyn[("grpo", "2", "final", "final_subnetwork", "0.0")] == 3 / 20
    assert dyn[("grpo", "2", "final", "updated_then_cancelled", "0.0")] == 0.0
    summary = json.loads(
        (tmp_path / "results" / "diff" / "fam" / "grpo" / "on_policy" / "bf16" / "seed2" / "summary.json").read_text()
    )
    assert summary["changed"] == {"0": 3, "1e-05": 3}


SNAKEFILE = """
import sys
sys.path.insert(0, {src!r})
from rlsparsity import grid as G
from rlsparsity import config_slices as CS
config.update({{"analysis": {{"topk": 0.01}}, "train": {{"group_by": []}}, "families": {{"fam": {{}}}}}})
R = {results!r}
RUNS = [G.parse_run_dir(p) for p in {runs!r}]
RUN_SET = set(RUNS)
FAMILIES = ["fam"]
ENVS = {envs!r}
include: {common!r}
include: {analysis!r}
"""


@pytest.mark.slow
def test_snakemake_analysis_and_public_pairs(tmp_path):
    b, runs = _family(tmp_path)
    results = tmp_path / "results"
    sf = tmp_path / "Snakefile"
    envs = tmp_path / "envs"  # conda is not used here; the directive only needs a file to record
    envs.mkdir()
    (envs / "analysis.yaml").write_text("name: analysis\ndependencies: []\n")
    sf.write_text(
        SNAKEFILE.format(
            src=SRC,
            results=str(results),
            runs=[str(r) for r in runs],
            envs=str(envs),
            common=str(ROOT / "workflow/rules/common.smk"),
            analysis=str(ROOT / "workflow/rules/analysis.smk"),
        )
    )
    pairs = tmp_path / "pairs.yaml"
    pairs.write_text(
        json.dumps(
            {
                "pairs": [
                    {
                        "name": "local",
                        "algorithm": "grpo",
                        "base": str(b),
                        "tuned": str(runs[0]),
                        "paper_sparsity": 68.5,
                    }
                ]
            }
        )
    )
    shim = tmp_path / "bin" / "rlsparsity"  # stands in for the installed console script
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m rlsparsity.analysis.cli "$@"\n')
    shim.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": SRC,
        "OMP_NUM_THREADS": "1",
    }
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"
    p = subprocess.run(
        [
            snakemake,
            "-s",
            str(sf),
            "-d",
            str(tmp_path),
            "--cores",
            "2",
            "analysis",
            "public_pairs",
            "--config",
            f"public_pairs={pairs}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    for t in ("sparsity", "rank", "overlap", "layers", "dynamics"):
        assert (results / "tables" / f"{t}.csv").exists()
    assert len(_read(results / "tables" / "sparsity.csv")) == 3 * 5
    pp = _read(results / "tables" / "public_pairs.csv")
    assert [(r["pair"], float(r["paper_sparsity"]), float(r["sparsity_1e-05"])) for r in pp] == [
        ("local", 68.5, 1 - 4 / 20)
    ]
    assert (results / "benchmarks" / "analysis" / "fam.tsv").exists()


def test_analyze_family_in_worker_processes_gives_the_same_tables(tmp_path):
    """Runs analysed in 3 spawned worker processes: every family CSV byte-identical to the
    one-process result (rows in run order, whichever worker finishes first)."""
    b, runs = _family(tmp_path)
    one = analyze_family(b, runs, tmp_path / "r1" / "diff", tmp_path / "one", (0.0, 1e-5), topk=0.1)
    many = analyze_family(b, runs, tmp_path / "r3" / "diff", tmp_path / "many", (0.0, 1e-5), topk=0.1,
                          threads=3, workers=3)
    for name, path in one.items():
        assert many[name].read_bytes() == path.read_bytes(), name
    assert len(_read(one["rank"])) == 3 and len(_read(one["overlap"])) == 4
