"""benchmarks/smollm2_gpu/merge_leases.py, lease_tables.py and partial_summary.py on hand-built
GPU leases: each lease is a ``<lease>/results/smollm2-gpu`` folder whose runs were diffed, ranked
and seed-pair overlapped by the real CLI with tools/gpu/finish.sh's own arguments (rank on the
CPU). The tiny bf16 checkpoints carry updates of known support and rank (sums of all-ones blocks
on disjoint rows and columns), so every sparsity, rank, overlap and accuracy is known exactly;
and the tables built from the leases' small outputs equal the rows the DAG's own
``analyze_family`` writes from the same checkpoints."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _analysis_util import save_model

from rlsparsity.analysis.diff import DEFAULT_TOLERANCES
from rlsparsity.analysis.tables import analyze_family
from rlsparsity.cli import main as rlsparsity_main

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "smollm2_gpu"
FAM = "smollm2-135m"

E, Q, U = "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight"
LN, NORM = "model.layers.0.input_layernorm.weight", "model.norm.weight"
SHAPES = {E: (16, 8), Q: (8, 8), U: (12, 8), LN: (8,), NORM: (8,)}
N = 16 * 8 + 8 * 8 + 12 * 8 + 8 + 8  # 304 entries

# (lease, algorithm, seed) -> update: 2-D tensor -> blocks (rows, cols), each adding 1.0 on rows x cols
# (disjoint rows and columns, so the rank of ΔW is the number of blocks); 1-D tensor -> indices (+1.0)
UPDATES: dict[tuple[str, str, int], dict[str, list]] = {
    ("A", "grpo", 1): {Q: [((0, 1), (0, 1, 2))], LN: [3]},  # 6 + 1 = 7 changed
    ("A", "grpo", 2): {Q: [((1, 2), (1, 2, 3, 4))], U: [((0,), (0, 1)), ((5,), (7,))]},  # 8 + 3 = 11
    ("A", "dpo", 1): {E: [((i,), (i,)) for i in range(8)], NORM: [0, 1]},  # 8 (rank 8) + 2 = 10
    ("B", "grpo", 1): {Q: [((0, 1), (0, 1))], U: [((3,), (2,)), ((4,), (3,)), ((6,), (5,))], LN: [3]},  # 4+3+1 = 8
    ("B", "dpo", 2): {U: [((0, 1, 2), (0, 1, 2, 3))], NORM: [1]},  # 12 + 1 = 13
    ("C", "grpo", 2): {Q: [((5,), (5, 6))]},  # 2: a rerun of grpo seed 2 alone
}
CHANGED = {("A", "grpo", 1): 7, ("A", "grpo", 2): 11, ("A", "dpo", 1): 10, ("B", "grpo", 1): 8,
           ("B", "dpo", 2): 13, ("C", "grpo", 2): 2}
RANKS = {  # (E, Q, U) ranks, max rank 8 each
    ("A", "grpo", 1): (0, 1, 0), ("A", "grpo", 2): (0, 1, 2), ("A", "dpo", 1): (8, 0, 0),
    ("B", "grpo", 1): (0, 1, 3), ("B", "dpo", 2): (0, 0, 1), ("C", "grpo", 2): (0, 1, 0)}
BASE_BITS = "1111100000"  # base accuracy 0.5 on the 10 test problems
TRAINED = {("A", "grpo", 1): "1111110000", ("A", "grpo", 2): "1111111000", ("A", "dpo", 1): "0111100000",
           ("B", "grpo", 1): "1011111100", ("B", "dpo", 2): "1111100001", ("C", "grpo", 2): "1111000000"}
LEASE_NAME = {"A": "lease-a", "B": "lease-b", "C": "lease-c"}


def _module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _rel(alg: str, seed: int) -> str:
    return f"runs/{FAM}/{alg}/on_policy/bf16/seed{seed}"


def _base_tensors() -> dict[str, torch.Tensor]:
    """Quarter-integers in [-2, 2]: exact in bf16, and so is every +1.0 of an update."""
    g = torch.Generator().manual_seed(0)
    return {k: (torch.randint(-8, 9, s, generator=g).float() / 4).to(torch.bfloat16) for k, s in SHAPES.items()}


def _tuned(base: dict[str, torch.Tensor], update: dict[str, list]) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in base.items()}
    for name, parts in update.items():
        t = out[name].float()
        if t.dim() == 1:
            t[list(parts)] += 1.0
        else:
            for rows, cols in parts:
                t[torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] += 1.0
        out[name] = t.to(torch.bfloat16)
    return out


def _cli(*args: str | Path) -> str:
    """`rlsparsity ARGS` in this process; its stdout (what finish.sh redirects into a file)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = rlsparsity_main([str(a) for a in args])
    assert rc == 0, args
    return buf.getvalue()


def _finish(res: Path) -> None:
    """tools/gpu/finish.sh's diff, rank, dynamics and seed-pair overlap steps, with its arguments (rank on CPU)."""
    base = res / "base" / FAM
    for rec in sorted(res.glob("runs/**/run.json")):
        d = rec.parent
        if not (d / "model.safetensors").is_file() or (d / "diff" / "diff.json").exists():
            continue
        (d / "diff").mkdir()
        (d / "diff" / "diff.json").write_text(_cli("diff", base, d, "--out", d / "diff", "--json", "--threads", "4",
                                                   "--quiet"))
        (d / "diff" / "rank.json").write_text(_cli("rank", base, d, "--json", "--quiet"))
        _cli("dynamics", base, d, "--out", d / "diff" / "dynamics.csv", "--threads", "4")
    for d1 in sorted(res.glob("runs/**/seed1")):
        d2 = d1.parent / "seed2"
        if (d1 / "diff" / "mask.safetensors").is_file() and (d2 / "diff" / "mask.safetensors").is_file():
            # `rlsparsity overlap ... --json > overlap_seed2.json 2>&1`: stderr lands in the file too
            r = subprocess.run([sys.executable, "-m", "rlsparsity.cli", "overlap", str(d1 / "diff"), str(d2 / "diff"),
                                "--json"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
            assert r.returncode == 0, r.stdout
            (d1 / "diff" / "overlap_seed2.json").write_text(r.stdout)


def _lease(root: Path, lease: str, base: dict[str, torch.Tensor], base_acc: float = 0.5) -> Path:
    """<root>/<lease name>/results/smollm2-gpu with the base, the lease's runs and finish.sh's outputs."""
    res = root / LEASE_NAME[lease] / "results" / "smollm2-gpu"
    b = save_model(res / "base" / FAM, base)
    (b / "metrics.json").write_text(json.dumps({"accuracy": base_acc, "correct": BASE_BITS, "n": 10}))
    for (ls, alg, seed), update in UPDATES.items():
        if ls != lease:
            continue
        d = save_model(res / _rel(alg, seed), _tuned(base, update))
        bits = TRAINED[(ls, alg, seed)]
        rec = {"acc_base": BASE_BITS.count("1") / 10, "acc_trained": bits.count("1") / 10,
               "correct_base": BASE_BITS, "correct_trained": bits, "steps": 20, "seconds_per_step": 1.5,
               "wall_seconds": 40.0, "train_seconds_per_step": 1.25 if lease == "A" else 1.5, "algorithm": alg,
               "data": "on_policy", "precision": "bf16", "seed": seed, "family": FAM, "n_eval": 10,
               "hparams": {"lr": 1e-6}, "device": "cuda: NVIDIA H200"}
        (d / "run.json").write_text(json.dumps(rec))
    _finish(res)
    return res


@pytest.fixture(scope="module")
def leases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("leases")
    base = _base_tensors()
    return {ls: _lease(root, ls, base) for ls in ("A", "B", "C")}


def test_hand_built_leases_are_what_finish_sh_makes(leases: dict[str, Path]) -> None:
    """The fixture itself: tuned weights differ from the base exactly where UPDATES says, and the
    CLI wrote finish.sh's files (the overlap only where both seeds are in one lease)."""
    base = _base_tensors()
    for key, update in UPDATES.items():
        tuned = _tuned(base, update)
        assert sum(int((tuned[k] != base[k]).sum()) for k in SHAPES) == CHANGED[key]
        d = leases[key[0]] / _rel(key[1], key[2]) / "diff"
        assert {p.name for p in d.iterdir()} >= {"diff.json", "rank.json", "summary.json", "tensors.csv",
                                                 "mask.safetensors"}
        assert json.loads((d / "summary.json").read_text())["changed"]["0"] == CHANGED[key]
    root = leases["A"].parents[2]
    overlaps = sorted(str(p.relative_to(root)) for p in root.glob("*/results/smollm2-gpu/runs/**/overlap_seed2.json"))
    assert overlaps == [f"lease-a/results/smollm2-gpu/{_rel('grpo', 1)}/diff/overlap_seed2.json"]


def test_merge_takes_each_run_from_the_last_lease_and_compares_the_repeat(leases, tmp_path) -> None:
    merge = _module("merge_leases").merge
    out = tmp_path / "merged"
    assert merge(out, [leases["A"], leases["B"]]) == (4, 1)
    assert {r["run"]: r["lease"] for r in _read(out / "leases.csv")} == {
        _rel("dpo", 1): "lease-a", _rel("dpo", 2): "lease-b", _rel("grpo", 1): "lease-b", _rel("grpo", 2): "lease-a"}
    for alg, seed, lease in (("grpo", 1, "B"), ("grpo", 2, "A"), ("dpo", 1, "A"), ("dpo", 2, "B")):
        d = out / _rel(alg, seed)
        # the kept run's own files, nothing else (no weights, no masks; diff.json is not kept either)
        assert sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()) == [
            "diff/dynamics.csv", "diff/rank.json", "diff/summary.json", "diff/tensors.csv", "run.json"]
        assert (d / "run.json").read_bytes() == (leases[lease] / _rel(alg, seed) / "run.json").read_bytes()
        assert json.loads((d / "diff" / "summary.json").read_text())["changed"]["0"] == CHANGED[(lease, alg, seed)]
    assert json.loads((out / "base" / FAM / "metrics.json").read_text())["accuracy"] == 0.5

    (rep,) = _read(out / "repeats.csv")
    a, b = TRAINED[("A", "grpo", 1)], TRAINED[("B", "grpo", 1)]  # 1111110000 vs 1011111100: problems 1, 6, 7
    assert (rep["run"], rep["lease_kept"], rep["lease_repeat"]) == (_rel("grpo", 1), "lease-b", "lease-a")
    assert int(rep["problems_answered_differently"]) == 3 == sum(x != y for x, y in zip(a, b, strict=True))
    assert (float(rep["acc_kept"]), float(rep["acc_repeat"])) == (0.7, 0.6)
    assert float(rep["acc_diff_pts"]) == 10.0 == round(100 * (0.7 - 0.6), 2)
    assert float(rep["acc_diff_lo95"]) <= 10.0 <= float(rep["acc_diff_hi95"])
    assert rep["base_identical"] == "True"
    assert float(rep["unchanged_kept"]) == 1 - 8 / N and float(rep["unchanged_repeat"]) == 1 - 7 / N
    assert (float(rep["s_per_step_kept"]), float(rep["s_per_step_repeat"])) == (1.5, 1.25)


def test_merge_refuses_other_bases_an_existing_destination_and_non_results_folders(leases, tmp_path) -> None:
    other = tmp_path / "lease-x" / "results" / "smollm2-gpu"
    shutil.copytree(leases["B"], other)
    (other / "base" / FAM / "metrics.json").write_text(json.dumps({"accuracy": 0.6}))
    with pytest.raises(SystemExit) as exc:
        _module("merge_leases").merge(tmp_path / "m1", [leases["A"], other])
    msg = str(exc.value.code)
    assert "\n" not in msg and "bases differ" in msg and "'lease-a': 0.5, 'lease-x': 0.6" in msg

    script = [sys.executable, str(BENCH / "merge_leases.py")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    dest = tmp_path / "exists"
    dest.mkdir()
    r = subprocess.run([*script, str(dest), str(leases["A"]), str(leases["B"])], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 1 and r.stderr.strip() == f"merge_leases.py: {dest} exists; give a new folder"
    assert list(dest.iterdir()) == []
    r = subprocess.run([*script, str(tmp_path / "m2"), str(leases["A"]), str(tmp_path)], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and f"{tmp_path} is not a results" in r.stderr
    assert not (tmp_path / "m2").exists()
    r = subprocess.run([*script, str(tmp_path / "m3"), str(leases["A"]), str(leases["B"])], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"4 runs from 2 leases (1 repeated) -> {tmp_path / 'm3'}"


def test_a_refused_merge_writes_nothing(leases, tmp_path) -> None:
    other = tmp_path / "lease-x" / "results" / "smollm2-gpu"
    shutil.copytree(leases["B"], other)
    (other / "base" / FAM / "metrics.json").write_text(json.dumps({"accuracy": 0.6}))
    with pytest.raises(SystemExit):
        _module("merge_leases").merge(tmp_path / "m", [leases["A"], other])
    assert not (tmp_path / "m").exists()


def _key(r: dict[str, str]) -> tuple[str, int]:
    return r["algorithm"], int(r["seed"])


def test_lease_tables_are_exact_and_equal_analyze_family_rows(leases, tmp_path) -> None:
    merge, grid_tables = _module("merge_leases").merge, _module("lease_tables").grid_tables
    lease_of = {("grpo", 1): "B", ("grpo", 2): "A", ("dpo", 1): "A", ("dpo", 2): "B"}
    out = tmp_path / "merged"
    merge(out, [leases["A"], leases["B"]])
    assert grid_tables(out) == {"sparsity": 4 * len(DEFAULT_TOLERANCES), "layers": 4 * 5 * len(DEFAULT_TOLERANCES),
                                "rank": 12, "overlap": 0, "dynamics": 4 * (len(DEFAULT_TOLERANCES) + 3),
                                "accuracy": 4}
    t = out / "tables"
    sp = _read(t / "sparsity.csv")
    assert {(_key(r), float(r["tolerance"])) for r in sp} == {(k, tol) for k in lease_of for tol in DEFAULT_TOLERANCES}
    for r in sp:  # all updates are +1.0: the same support at every tolerance
        assert float(r["sparsity"]) == 1 - CHANGED[(lease_of[_key(r)], *_key(r))] / N
    rank = _read(t / "rank.csv")
    got = {(_key(r), r["tensor"]): (int(r["rank"]), int(r["max_rank"]), float(r["rank_fraction"])) for r in rank}
    assert got == {(k, name): (RANKS[(lease_of[k], *k)][i], 8, RANKS[(lease_of[k], *k)][i] / 8)
                   for k in lease_of for i, name in enumerate((E, Q, U))}
    methods = {(_key(r), r["tensor"]): r["method"] for r in rank}
    assert methods[(("dpo", 1), E)] == "certified" and methods[(("grpo", 1), Q)] == "gram"
    # A's seed-pair overlap was measured against A's execution of grpo seed 1, which B's replaced;
    # B had no seed 2 to overlap with: no seed pair of the merged folder was overlapped on one machine
    assert _read(t / "overlap.csv") == []
    acc = _read(t / "accuracy.csv")
    assert len(acc) == 4
    for r in acc:
        bits = TRAINED[(lease_of[_key(r)], *_key(r))]
        assert (float(r["acc_base"]), float(r["acc_trained"])) == (0.5, bits.count("1") / 10)
        assert float(r["delta"]) == bits.count("1") / 10 - 0.5 and r["correct_trained"] == bits
    by_alg = {r["algorithm"]: r for r in _read(t / "accuracy_by_algorithm.csv")}
    assert float(by_alg["grpo"]["delta_mean"]) == pytest.approx(0.2) and by_alg["dpo"]["n_runs"] == "2"

    # the DAG's analyze_family on lease B's checkpoints gives the same sparsity, layers and rank rows
    runs_b = [leases["B"] / _rel("grpo", 1), leases["B"] / _rel("dpo", 2)]
    dag = analyze_family(leases["B"] / "base" / FAM, runs_b, tmp_path / "dag" / "diff", tmp_path / "dag", topk=None,
                         threads=1)
    for name in ("sparsity", "layers", "rank", "dynamics"):
        ours = [r for r in _read(t / f"{name}.csv") if lease_of[_key(r)] == "B"]
        assert ours == sorted(_read(dag[name]), key=_key), name  # lease_tables writes runs in Run order
        assert (t / f"{name}.csv").read_text().splitlines()[0] == dag[name].read_text().splitlines()[0]


def test_seed_pair_overlap_from_one_lease_equals_analyze_family(leases, tmp_path) -> None:
    """Leases in the other order: A's grpo seeds 1 and 2 (overlapped on A's machine) are kept, and
    the overlap row, with the rest of A's rows, is the one analyze_family writes from A's weights."""
    out = tmp_path / "merged"
    assert _module("merge_leases").merge(out, [leases["B"], leases["A"]]) == (4, 1)
    (rep,) = _read(out / "repeats.csv")
    assert (rep["lease_kept"], rep["lease_repeat"], float(rep["acc_diff_pts"])) == ("lease-a", "lease-b", -10.0)
    _module("lease_tables").grid_tables(out)
    (ov,) = _read(out / "tables" / "overlap.csv")
    s1, s2 = 1 - 7 / N, 1 - 11 / N  # I1 ∩ I2 = q_proj (1, 1), (1, 2)
    assert (ov["axis"], ov["mask"], ov["run_a"], ov["run_b"]) == ("seed", "exact", "grpo:on_policy:bf16:s1",
                                                                  "grpo:on_policy:bf16:s2")
    assert {k: float(ov[k]) for k in ("o1", "o2", "jaccard", "s1", "s2", "o1_random", "o2_random")} == {
        "o1": 2 / 7, "o2": 2 / 11, "jaccard": 2 / 16, "s1": s1, "s2": s2, "o1_random": 1 - s2, "o2_random": 1 - s1}

    runs_a = [leases["A"] / _rel(alg, seed) for alg, seed in (("grpo", 1), ("grpo", 2), ("dpo", 1))]
    dag = analyze_family(leases["A"] / "base" / FAM, runs_a, tmp_path / "dag" / "diff", tmp_path / "dag", topk=None,
                         threads=1)
    dag_seed = [r for r in _read(dag["overlap"]) if r["axis"] == "seed"]
    assert _read(out / "tables" / "overlap.csv") == dag_seed
    for name in ("sparsity", "layers", "rank", "dynamics"):
        ours = [r for r in _read(out / "tables" / f"{name}.csv") if _key(r) != ("dpo", 2)]
        assert sorted(ours, key=_key) == sorted(_read(dag[name]), key=_key), name


def test_overlap_row_is_about_the_merged_seed2(leases, tmp_path) -> None:
    out = tmp_path / "merged"
    _module("merge_leases").merge(out, [leases["A"], leases["C"]])  # C reran grpo seed 2 alone
    _module("lease_tables").grid_tables(out)
    s2 = {float(r["sparsity"]) for r in _read(out / "tables" / "sparsity.csv")
          if _key(r) == ("grpo", 2) and float(r["tolerance"]) == 0.0}
    assert s2 == {1 - 2 / N}
    for ov in _read(out / "tables" / "overlap.csv"):
        assert float(ov["s2"]) == 1 - 2 / N


def test_partial_summary_of_a_merged_folder_names_each_runs_lease(leases, tmp_path) -> None:
    merged, out = tmp_path / "merged", tmp_path / "summary"
    _module("merge_leases").merge(merged, [leases["A"], leases["B"]])
    _module("lease_tables").grid_tables(merged)
    _module("partial_summary").main(merged, out)
    runs = {(r["algorithm"], int(r["seed"])): r for r in _read(out / "runs.csv")}
    assert {k: r["lease"] for k, r in runs.items()} == {("grpo", 1): "lease-b", ("grpo", 2): "lease-a",
                                                       ("dpo", 1): "lease-a", ("dpo", 2): "lease-b"}
    assert float(runs[("grpo", 1)]["sparsity_tol0"]) == 1 - 8 / N
    assert float(runs[("grpo", 1)]["delta_pts"]) == 20.0
    assert float(runs[("dpo", 1)]["rank_fraction_mean"]) == 0.0  # q and up unchanged; the embedding is left out
    assert float(runs[("grpo", 2)]["rank_fraction_mean"]) == (1 / 8 + 2 / 8) / 2
    assert (out / "leases.csv").read_bytes() == (merged / "leases.csv").read_bytes()
    assert (out / "repeats.csv").read_bytes() == (merged / "repeats.csv").read_bytes()
    assert (out / "tables" / "rank.csv").exists() and not (out / "overlap.csv").exists()


def test_a_merged_folder_can_be_merged_again_with_a_new_lease(leases, tmp_path) -> None:
    """The next lease is merged onto an earlier merge (docs keeps one as lease_outputs.tgz): the
    earlier runs keep their own leases' names and repeats, and the new lease wins where it reran."""
    merge = _module("merge_leases").merge
    first = tmp_path / "first"
    assert merge(first, [leases["A"], leases["B"]]) == (4, 1)
    again = tmp_path / "again"
    assert merge(again, [first, leases["C"]]) == (4, 2)  # C reran grpo seed 2
    assert {r["run"]: r["lease"] for r in _read(again / "leases.csv")} == {
        _rel("dpo", 1): "lease-a", _rel("dpo", 2): "lease-b", _rel("grpo", 1): "lease-b", _rel("grpo", 2): "lease-c"}
    reps = _read(again / "repeats.csv")
    assert [(r["run"], r["lease_kept"], r["lease_repeat"]) for r in reps] == [
        (_rel("grpo", 1), "lease-b", "lease-a"), (_rel("grpo", 2), "lease-c", "lease-a")]
    assert reps[0] == _read(first / "repeats.csv")[0]
