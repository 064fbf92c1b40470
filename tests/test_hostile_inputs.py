"""Hostile inputs through the real CLI: the right result, or ONE line on stderr naming the problem.

Every error case runs ``rlsparsity ...`` (``rlsparsity.cli.main`` in-process with captured
output; a few also as a subprocess) and asserts exit code != 0, exactly one line on
stderr containing the expected words, and no traceback (an uncaught exception fails the
test). Every right-result case asserts exact values. Classes: local paths vs hub ids,
safetensors headers, index files, CLI option values, wrong file kinds, exactness
(integers beyond 2^53, tolerances), configs (YAML, hparams, grids, names).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _analysis_util import SRC, save_model
from safetensors.torch import save_file

# ----------------------------------------------------------------------------- helpers

W8 = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}  # a valid one-tensor header


def raw_st(path: Path, header: object, data: bytes = b"\0" * 8, hlen: int | None = None) -> Path:
    """Write a hand-made safetensors file: 8-byte length, header (JSON object or raw bytes), data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw) if hlen is None else hlen) + raw + data)
    return path


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    from rlsparsity.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, words: tuple[str, ...]) -> None:
    assert rc != 0, f"exit 0, expected an error naming {words}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
    for w in words:
        assert w.lower() in lines[0].lower(), f"{w!r} not in: {lines[0]}"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A valid float pair, a valid mask and a valid tensors.csv, shared by all cases."""
    r = tmp_path_factory.mktemp("hostile")
    save_model(r / "base", {"w": torch.tensor([1.0, 2.0]), "v": torch.zeros(3)})
    save_model(r / "tuned", {"w": torch.tensor([1.0, 2.5]), "v": torch.zeros(3)})
    from rlsparsity.cli import main

    assert main(["diff", str(r / "base"), str(r / "tuned"), "--out", str(r / "out"), "--quiet"]) == 0
    return r


# ----------------------------------------------------------------------------- error cases
# (id, setup(root, tmp) -> argv, words that the single stderr line must contain)

def _diff_tuned(make: Callable[[Path], Path]) -> Callable[[Path, Path], list[str]]:
    return lambda r, t: ["diff", str(r / "base"), str(make(t))]


def _tuned_file(header: object, data: bytes = b"\0" * 8, hlen: int | None = None):
    return _diff_tuned(lambda t: raw_st(t / "x.safetensors", header, data, hlen))


def _sharded(index: object, shards: dict[str, dict[str, torch.Tensor]] | None = None):
    def make(t: Path) -> Path:
        d = t / "ck"
        d.mkdir()
        for fname, tensors in (shards or {"a.safetensors": {"w": torch.ones(2)}}).items():
            save_file(tensors, d / fname)
        (d / "model.safetensors.index.json").write_text(index if isinstance(index, str) else json.dumps(index))
        return d
    return _diff_tuned(make)


def _mkdir(t: Path, name: str, files: dict[str, bytes] | None = None) -> Path:
    d = t / name
    d.mkdir()
    for f, data in (files or {}).items():
        (d / f).write_bytes(data)
    return d


def _symlink(t: Path, name: str, target: str) -> Path:
    (t / name).symlink_to(target)
    return t / name


def _config(t: Path, text: str) -> list[str]:
    (t / "c.yaml").write_text(text)
    return ["check-config", str(t / "c.yaml")]


GOOD_CONFIG = """\
experiment: t
results: results
task: {name: tiny_arith}
families: {llama: {}}
base: {}
train:
  hparams: HP
grids:
  - {families: all, algorithms: [grpo, dpo], seeds: [1], precisions: [bf16], data: [on_policy]}
"""


def _cfg(hp: str = "{}", extra: str = "", replace: tuple[str, str] = ("", "")) -> Callable[[Path, Path], list[str]]:
    return lambda r, t: _config(t, GOOD_CONFIG.replace("HP", hp).replace(*replace) + extra)


def _by_precision(block: str) -> Callable[[Path, Path], list[str]]:
    return _cfg(replace=("  hparams: {}\n", f"  hparams: {{}}\n  hparams_by_precision: {block}\n"))


def _csv(text: str) -> Callable[[Path, Path], list[str]]:
    def make(r: Path, t: Path) -> list[str]:
        (t / "t.csv").write_text(text)
        return ["layers", str(t / "t.csv")]
    return make


ERROR_CASES: list[tuple[str, Callable[[Path, Path], list[str]], tuple[str, ...]]] = [
    # --- local paths are never hub ids
    ("missing ./path", lambda r, t: ["diff", str(r / "base"), "./no/such/model"], ("./no/such/model", "no such file")),
    ("missing abs path", lambda r, t: ["diff", str(t / "nope"), str(r / "tuned")], ("nope", "no such file")),
    (
        "missing under existing dir",
        lambda r, t: ["diff", str(r / "base"), f"{os.path.relpath(t)}/missing"],
        ("missing", "no such file"),
    ),
    (
        "symlink loop",
        lambda r, t: ["diff", str(r / "base"), str(_symlink(t, "loop", "loop"))],
        ("loop", "symlink loop"),
    ),
    (
        "broken symlink",
        lambda r, t: ["diff", str(r / "base"), str(_symlink(t, "dangling", str(t / "gone")))],
        ("dangling", "broken symlink"),
    ),
    ("empty folder", lambda r, t: ["diff", str(r / "base"), str(_mkdir(t, "empty"))], ("empty", "no model weights")),
    (
        "pickle-only folder",
        lambda r, t: ["diff", str(r / "base"), str(_mkdir(t, "pk", {"pytorch_model.bin": b"x"}))],
        ("pk", "never unpickled"),
    ),
    (
        "text file as checkpoint",
        lambda r, t: ["diff", str(r / "base"), str(_write(t / "notes.txt", b"hi"))],
        ("notes.txt", "not a checkpoint"),
    ),
    (
        "hub id offline",
        lambda r, t: ["diff", str(r / "base"), "no-such-org-xyz/no-such-model"],
        ("no-such-org-xyz/no-such-model", "no such local file", "hub"),
    ),
    ("eval missing model", lambda r, t: ["eval", "./no/model", "--task", "tiny_arith"], ("./no/model", "no such file")),
    (
        "eval symlink loop",
        lambda r, t: ["eval", str(_symlink(t, "l2", "l2")), "--task", "tiny_arith"],
        ("symlink loop",),
    ),
    ("eval empty folder", lambda r, t: ["eval", str(_mkdir(t, "e2")), "--task", "tiny_arith"], ("no config.json",)),
    (
        "eval folder without weights",
        lambda r, t: ["eval", str(_mkdir(t, "nw", {"config.json": b"{}"})), "--task", "tiny_arith"],
        ("no model weights",),
    ),
    # --- safetensors headers
    ("header length 0", _tuned_file(b"", hlen=0), ("x.safetensors", "header length 0")),
    ("header length huge", _tuned_file(json.dumps(W8).encode(), hlen=1 << 40), ("x.safetensors", "header length")),
    ("file of 3 bytes", _diff_tuned(lambda t: _write(t / "x.safetensors", b"abc")), ("not a safetensors file",)),
    ("header not JSON", _tuned_file(b"{not json}"), ("x.safetensors", "not json")),
    ("header a JSON list", _tuned_file([1, 2]), ("x.safetensors", "not an object")),
    ("entry a number", _tuned_file({"w": 5}), ("'w'", "not an object")),
    ("entry lacks dtype", _tuned_file({"w": {"shape": [2], "data_offsets": [0, 8]}}), ("'w'", "lacks dtype")),
    ("dtype unknown", _tuned_file({"w": {**W8["w"], "dtype": "F4"}}), ("'w'", "unknown dtype 'F4'")),
    ("dtype not a string", _tuned_file({"w": {**W8["w"], "dtype": 7}}), ("'w'", "unknown dtype 7")),
    ("shape a string", _tuned_file({"w": {**W8["w"], "shape": "2"}}), ("'w'", "shape", "not a list of integers")),
    ("shape float", _tuned_file({"w": {**W8["w"], "shape": [2.0]}}), ("'w'", "not a list of integers")),
    ("shape bool", _tuned_file({"w": {**W8["w"], "shape": [True, 2]}}), ("'w'", "not a list of integers")),
    ("negative shape", _tuned_file({"w": {**W8["w"], "shape": [-2, -1]}}), ("'w'", "negative dimension")),
    ("offsets one int", _tuned_file({"w": {**W8["w"], "data_offsets": [0]}}), ("'w'", "data_offsets")),
    ("offsets strings", _tuned_file({"w": {**W8["w"], "data_offsets": ["0", "8"]}}), ("'w'", "data_offsets")),
    ("offsets vs shape", _tuned_file({"w": {**W8["w"], "data_offsets": [0, 4]}}), ("'w'", "byte range 0..4")),
    ("offsets negative", _tuned_file({"w": {**W8["w"], "data_offsets": [-8, 0]}}), ("'w'", "byte range -8..0")),
    ("offsets past end", _tuned_file({"w": {**W8["w"], "data_offsets": [8, 16]}}), ("'w'", "out of range")),
    (
        "partial overlap",
        _tuned_file({"w": W8["w"], "u": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
        ("overlap",),
    ),
    (
        "duplicate tensor key in header",
        _tuned_file(b'{"w": ' + json.dumps(W8["w"]).encode() + b', "w": ' + json.dumps(W8["w"]).encode() + b"}"),
        ("'w'", "given twice"),
    ),
    ("metadata not a mapping", _tuned_file({**W8, "__metadata__": [1]}), ("__metadata__",)),
    ("empty header", _tuned_file({}, b""), ("no tensors",)),
    ("only metadata", _tuned_file({"__metadata__": {"a": "b"}}, b""), ("no tensors",)),
    ("truncated data", _diff_tuned(lambda t: _truncated(t)), ("truncated",)),
    # --- index files
    ("index not JSON", _sharded("{oops"), ("model.safetensors.index.json", "not json")),
    ("index a list", _sharded([1]), ("index", "not an object")),
    ("index without weight_map", _sharded({"metadata": {}}), ("weight_map is missing",)),
    ("weight_map a list", _sharded({"weight_map": ["w"]}), ("weight_map is a json list",)),
    ("weight_map value int", _sharded({"weight_map": {"w": 5}}), ("'w'", "maps to 5")),
    ("weight_map escapes folder", _sharded({"weight_map": {"w": "../a.safetensors"}}), ("inside the folder",)),
    ("weight_map empty", _sharded({"weight_map": {}}), ("lists no tensors",)),
    ("shard missing", _sharded({"weight_map": {"w": "b.safetensors"}}), ("shard(s) missing", "b.safetensors")),
    (
        "tensor in two shards",
        _sharded(
            {"weight_map": {"w": "a.safetensors", "v": "b.safetensors"}},
            {"a.safetensors": {"w": torch.ones(2)}, "b.safetensors": {"w": torch.ones(2), "v": torch.ones(2)}},
        ),
        ("'w'", "two shards"),
    ),
    ("tensor in two unindexed files", _diff_tuned(lambda t: _two_files(t)), ("'w'", "two shards")),
    (
        "index names wrong shard",
        _sharded(
            {"weight_map": {"w": "a.safetensors", "v": "a.safetensors"}},
            {"a.safetensors": {"w": torch.ones(2)}, "b.safetensors": {"v": torch.ones(2)}},
        ),
        ("'v'", "index maps"),
    ),
    ("config.json corrupt", _diff_tuned(lambda t: _with_config(t, b"{bad")), ("config.json", "not json")),
    ("config.json a list", _diff_tuned(lambda t: _with_config(t, b"[]")), ("config.json", "not an object")),
    # --- exactness / nothing to compare
    (
        "no names in common",
        _diff_tuned(lambda t: save_model(t / "o", {"other": torch.ones(2)})),
        ("no tensor names in common",),
    ),
    (
        "only empty tensors in common",
        lambda r, t: [
            "diff",
            str(save_model(t / "z1", {"e": torch.ones(0, 4)})),
            str(save_model(t / "z2", {"e": torch.ones(0, 4)})),
        ],
        ("nothing to compare",),
    ),
    # --- option values
    (
        "--tolerances nan",
        lambda r, t: ["diff", str(r / "base"), str(r / "tuned"), "--tolerances", "nan"],
        ("--tolerances", "'nan'"),
    ),
    (
        "--tolerances inf",
        lambda r, t: ["diff", str(r / "base"), str(r / "tuned"), "--tolerances", "0", "inf"],
        ("--tolerances", "'inf'"),
    ),
    (
        "--tolerances negative",
        lambda r, t: ["diff", str(r / "base"), str(r / "tuned"), "--tolerances", "-0.5"],
        ("--tolerances", "'-0.5'"),
    ),
    (
        "--tolerances word",
        lambda r, t: ["diff", str(r / "base"), str(r / "tuned"), "--tolerances", "tight"],
        ("--tolerances", "not a number"),
    ),
    ("--mask-tol nan", lambda r, t: ["diff", str(r / "base"), str(r / "tuned"), "--mask-tol", "nan"], ("--mask-tol",)),
    (
        "--device gpu",
        lambda r, t: ["diff", str(r / "base"), str(r / "tuned"), "--device", "gpu"],
        ("--device", "'gpu'"),
    ),
    ("--device cuda:x", lambda r, t: ["diff", str(r / "base"), str(r / "tuned"), "--device", "cuda:x"], ("--device",)),
    (
        "--topk 1.5",
        lambda r, t: ["diff", str(r / "base"), str(r / "tuned"), "--out", str(t), "--topk", "1.5"],
        ("--topk", "fraction"),
    ),
    (
        "--topk nan",
        lambda r, t: ["diff", str(r / "base"), str(r / "tuned"), "--out", str(t), "--topk", "nan"],
        ("--topk",),
    ),
    ("--topk 0", lambda r, t: ["diff", str(r / "base"), str(r / "tuned"), "--out", str(t), "--topk", "0"], ("--topk",)),
    (
        "--topk without --out",
        lambda r, t: ["diff", str(r / "base"), str(r / "tuned"), "--topk", "0.5"],
        ("--topk needs --out",),
    ),
    ("--threads 0", lambda r, t: ["diff", str(r / "base"), str(r / "tuned"), "--threads", "0"], ("--threads",)),
    ("rank --rtol nan", lambda r, t: ["rank", str(r / "base"), str(r / "tuned"), "--rtol", "nan"], ("--rtol",)),
    ("rank --device tpu", lambda r, t: ["rank", str(r / "base"), str(r / "tuned"), "--device", "tpu"], ("--device",)),
    (
        "analyze-family --topk 3",
        lambda r, t: ["analyze-family", "x", "--base", "b", "--diff-root", "d", "--out", "o", "--topk", "3"],
        ("--topk",),
    ),
    (
        "analyze-family --workers 0",
        lambda r, t: ["analyze-family", "x", "--base", "b", "--diff-root", "d", "--out", "o", "--workers", "0"],
        ("--workers", "auto"),
    ),
    ("eval --n -1", lambda r, t: ["eval", str(r / "base"), "--task", "tiny_arith", "--n", "-1"], ("--n",)),
    ("unknown subcommand", lambda r, t: ["difff"], ("invalid choice", "difff")),
    # --- wrong file kinds
    (
        "overlap: checkpoint not mask",
        lambda r, t: ["overlap", str(r / "base" / "model.safetensors"), str(r / "out")],
        ("not an update mask file",),
    ),
    (
        "overlap: CSV not mask",
        lambda r, t: ["overlap", str(r / "out" / "tensors.csv"), str(r / "out")],
        ("tensors.csv", "not a safetensors file"),
    ),
    (
        "overlap: folder without mask",
        lambda r, t: ["overlap", str(_mkdir(t, "nomask")), str(r / "out")],
        ("nomask", "no such file"),
    ),
    ("overlap: missing file", lambda r, t: ["overlap", str(t / "m.safetensors"), str(r / "out")], ("no such file",)),
    (
        "overlap: disjoint masks",
        lambda r, t: ["overlap", str(r / "out"), str(_mask(t / "m.safetensors"))],
        ("share no tensor",),
    ),
    (
        "dynamics: missing run dir",
        lambda r, t: ["dynamics", str(r / "base"), str(t / "no_run")],
        ("no_run", "no such file"),
    ),
    (
        "analysis-table: missing input",
        lambda r, t: ["analysis-table", str(t / "a.csv"), "--out", str(t / "o.csv")],
        ("a.csv",),
    ),
    (
        "overlap --mask topk:abc",
        lambda r, t: ["overlap", str(r / "out"), str(r / "out"), "--mask", "topk:abc"],
        ("--mask",),
    ),
    ("overlap --mask fuzzy", lambda r, t: ["overlap", str(r / "out"), str(r / "out"), "--mask", "fuzzy"], ("--mask",)),
    ("layers: safetensors file", lambda r, t: ["layers", str(r / "base" / "model.safetensors")], ("not a csv",)),
    ("layers: folder", lambda r, t: ["layers", str(r / "out")], ("is a folder",)),
    ("layers: missing", lambda r, t: ["layers", str(t / "nope.csv")], ("nope.csv", "no such file")),
    ("layers: wrong columns", _csv("a,b\n1,2\n"), ("missing column",)),
    ("layers: header only", _csv("name,layer,matrix_type,numel,below_ulp,changed_0\n"), ("no data rows",)),
    (
        "layers: numel not a count",
        _csv("name,layer,matrix_type,numel,below_ulp,changed_0\nw,0,q,abc,0,0\n"),
        ("line 2", "numel"),
    ),
    (
        "layers: ragged row",
        _csv("name,layer,matrix_type,numel,below_ulp,changed_0\nw,0,q,4,0,0,9,9\n"),
        ("more fields",),
    ),
    (
        "public-pairs: not a list",
        lambda r, t: ["public-pairs", "--pairs", str(_write(t / "p.yaml", b"pairs: 3")), "--out", str(t / "o.csv")],
        ("'pairs'",),
    ),
    (
        "public-pairs: missing field",
        lambda r, t: [
            "public-pairs",
            "--pairs",
            str(_write(t / "p.yaml", b"pairs: [{name: a, base: b}]")),
            "--out",
            str(t / "o.csv"),
        ],
        ("pairs[0]", "algorithm"),
    ),
    # --- configs
    (
        "hparams misspelt key",
        _cfg("{grpo: {weight_decy: 0.1}}"),
        ("train.hparams.grpo.weight_decy", "did you mean 'weight_decay'"),
    ),
    (
        "hparams HF name",
        _cfg("{grpo: {learning_rate: 1.0e-5}}"),
        ("train.hparams.grpo.learning_rate", "accepted:", " lr,"),
    ),
    (
        "hparams key of another algorithm",
        _cfg("{dpo: {num_generations: 4}}"),
        ("train.hparams.dpo.num_generations", "unknown hyperparameter"),
    ),
    ("hparams lr a word", _cfg("{grpo: {lr: fast}}"), ("train.hparams.grpo.lr", "'fast' is a string")),
    ("hparams batch_size float", _cfg("{grpo: {batch_size: 64.5}}"), ("train.hparams.grpo.batch_size", "integer")),
    ("hparams bool as number", _cfg("{ppo: {kl_coef: true}}"), ("train.hparams.ppo.kl_coef", "not a number")),
    ("hparams lr nan", _cfg("{grpo: {lr: .nan}}"), ("train.hparams.grpo.lr", "finite")),
    ("hparams number as bool", _cfg("{grpo: {gradient_checkpointing: 1}}"), ("gradient_checkpointing", "boolean")),
    ("hparams list length", _cfg("{prime: {accuracy_filter: [0.1]}}"), ("accuracy_filter", "list of 2")),
    (
        "hparams value not a choice",
        _cfg("{ppo: {rollout_gather: all}}"),
        ("train.hparams.ppo.rollout_gather: 'all' is not one of 'full', 'layer'",),
    ),
    (
        "hparams_by_precision value not a choice",
        _by_precision("{fp32-master: {prime: {rollout_gather: layers}}}"),
        ("train.hparams_by_precision.fp32-master.prime.rollout_gather: 'layers' is not one of 'full', 'layer'",),
    ),
    (
        "hparams_by_precision misspelt key",
        _by_precision("{bf16: {ppo: {rollout_gathr: layer}}}"),
        ("train.hparams_by_precision.bf16.ppo.rollout_gathr", "did you mean 'rollout_gather'"),
    ),
    ("hparams unknown algorithm", _cfg("{grpoo: {lr: 1.0e-5}}"), ("train.hparams",)),
    ("hparams zero sample_temperature", _cfg("{dpo: {sample_temperature: 0}}"),
     ("train.hparams.dpo.sample_temperature: 0 is not a positive number",)),
    ("hparams negative lr", _cfg("{grpo: {lr: -1.0e-5}}"), ("train.hparams.grpo.lr", "not a positive number")),
    ("hparams class_balance not a choice", _cfg("{kto: {class_balance: even}}"),
     ("train.hparams.kto.class_balance: 'even' is not one of 'balanced', 'none'",)),
    (
        "preference-samples --temperature 0",
        lambda r, t: ["preference-samples", "--config", "c.yaml", "--family", "llama", "--precision", "bf16",
                      "--seed", "1", "--n-prompts", "4", "--k", "2", "--temperature", "0", "--out", str(t / "o.json")],
        ("--temperature 0.0", "not a positive number"),
    ),
    ("hparams block not a mapping", _cfg("{grpo: 5}"), ("train.hparams.grpo",)),
    (
        "entropy hparams misspelt",
        _cfg(extra="entropy: {families: all, hparams: {epsilon_hi: 0.3}}\n"),
        ("entropy.hparams.epsilon_hi", "did you mean 'epsilon_high'"),
    ),
    ("YAML syntax error", _cfg(extra="oops: [1, 2\n"), ("line", "c.yaml")),
    ("YAML tab indentation", lambda r, t: _config(t, "experiment: t\n\tresults: r\n"), ("line 2",)),
    ("duplicate YAML key", _cfg(extra="experiment: again\n"), ("duplicate key 'experiment'", "line 1")),
    ("duplicate nested key", _cfg("{grpo: {lr: 1.0e-5, lr: 2.0e-5}}"), ("duplicate key 'lr'",)),
    (
        "grid zero runs",
        _cfg(
            replace=(
                "algorithms: [grpo, dpo], seeds: [1], precisions: [bf16], data: [on_policy]",
                "algorithms: [grpo, ppo], seeds: [1], precisions: [bf16], data: [off_policy]",
            )
        ),
        ("grids.0", "zero runs"),
    ),
    ("unknown task", _cfg(replace=("tiny_arith", "tiny_arithh")), ("task.name", "did you mean 'tiny_arith'")),
    ("top level a list", lambda r, t: _config(t, "- 1\n- 2\n"), ("top level",)),
    ("empty file", lambda r, t: _config(t, ""), ("config error",)),
    ("unknown top-level key", _cfg(extra="trian: {}\n"), ("trian",)),
    ("string where number", _cfg(extra="causes: {tolerance: tiny}\n"), ("causes.tolerance",)),
    ("stage names unknown family", _cfg(extra="subnetwork: {families: [qwen3]}\n"), ("subnetwork.families", "qwen3")),
    (
        "family path missing",
        _cfg(replace=("families: {llama: {}}", "families: {mine: {path: ./no/such/model}}")),
        ("families.mine.path", "no such file"),
    ),
    ("config file missing", lambda r, t: ["check-config", str(t / "none.yaml")], ("not found",)),
]


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def _truncated(t: Path) -> Path:
    d = save_model(t / "tr", {"w": torch.ones(100)})
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-40])
    return d


def _mask(p: Path) -> Path:
    import numpy as np

    from rlsparsity.analysis.io import MaskWriter

    w = MaskWriter(p, {"other": (3,)})
    w.write("other", 0, np.zeros(3, dtype=bool))
    w.close()
    return p


def _two_files(t: Path) -> Path:
    d = t / "two"
    d.mkdir()
    save_file({"w": torch.ones(2)}, d / "a.safetensors")
    save_file({"w": torch.ones(2)}, d / "b.safetensors")
    return d


def _with_config(t: Path, cfg: bytes) -> Path:
    d = save_model(t / "wc", {"w": torch.ones(2)})
    (d / "config.json").write_bytes(cfg)
    return d


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_error_case(case, root, tmp_path, capsys, monkeypatch):
    _, setup, words = case
    monkeypatch.chdir(tmp_path.parent)  # relative paths ("./no/such/model") resolve somewhere harmless
    argv = setup(root, tmp_path)
    rc, _, err = run_main(argv, capsys)
    assert_one_line_error(rc, err, words)


@pytest.mark.parametrize(
    "argv,words",
    [
        (["diff", "./nope", "./nope2"], ("./nope", "no such file")),
        (["diff", "a", "b", "--tolerances", "nan"], ("--tolerances",)),
        (["check-config", "/no/such/config.yaml"], ("not found",)),
    ],
)
def test_error_case_subprocess(argv, words, tmp_path):
    """The same contract through a fresh interpreter (the console script's code path)."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "rlsparsity.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert_one_line_error(p.returncode, p.stderr, words)


# ----------------------------------------------------------------------------- right results


def _diff_json(capsys, base: Path, tuned: Path, *extra: str) -> dict:
    rc, out, err = run_main(["diff", str(base), str(tuned), "--json", "--quiet", *extra], capsys)
    assert rc == 0 and "Traceback" not in err, err
    return json.loads(out)


def test_int64_beyond_2_53_exact(tmp_path, capsys):
    big = 2**53
    b = save_model(tmp_path / "b", {"i": torch.tensor([big, big, 2**62, -(2**63), 2**20, 7], dtype=torch.int64)})
    t = save_model(
        tmp_path / "t", {"i": torch.tensor([big + 1, big, 2**62, 2**63 - 1, 2**20 + 1, 7], dtype=torch.int64)}
    )
    s = _diff_json(
        capsys, b, t, "--tolerances", "0", "1e-5", "1", "1e30", "--out", str(tmp_path / "o"), "--topk", "0.5"
    )
    assert s["n_params"] == 6
    # changed: 2^53 -> 2^53+1 (Δ 1), -2^63 -> 2^63-1 (Δ 2^64-1), 2^20 -> 2^20+1 (Δ 1)
    assert s["changed"] == {"0": 3, "1e-05": 3, "1": 1, "1e+30": 0}
    assert s["max_abs_delta"] == float(2**64 - 1)
    # below half a bf16 ulp of the base: Δ=1 at 2^53 (h=2^45) and at 2^20 (h=2^12)
    assert s["below_bf16_half_ulp"] == 2 / 6
    assert s["topk"]["n_selected"] == 3  # k = 3: every changed entry, none of the unchanged
    from rlsparsity.analysis.io import load_mask

    assert load_mask(tmp_path / "o" / "mask.safetensors")["i"].tolist() == [True, False, False, True, True, False]


def test_int_dtype_mismatch_and_mixed_int_float_exact(tmp_path, capsys):
    b = save_model(
        tmp_path / "b",
        {
            "a": torch.tensor([5, -3, 2**30], dtype=torch.int32),
            "m": torch.tensor([2**53 + 1, 5, 4], dtype=torch.int64),
            "f": torch.tensor([True, False]),
        },
    )
    t = save_model(
        tmp_path / "t",
        {
            "a": torch.tensor([5, -3, 2**30 + 1], dtype=torch.int64),
            "m": torch.tensor([float(2**53), 5.5, 4.0], dtype=torch.float64),
            "f": torch.tensor([True, True]),
        },
    )
    s = _diff_json(capsys, b, t, "--tolerances", "0", "0.5", "1")
    assert s["n_params"] == 8
    # a: one Δ=1; m: 2^53+1 vs 2^53 (Δ=1, float64 would call it equal), 5 vs 5.5 (Δ=0.5); f: one flip
    assert s["changed"] == {"0": 4, "0.5": 3, "1": 0}
    assert {d["name"] for d in s["dtype_mismatch"]} == {"a", "m"}


def test_float_pair_through_symlink_and_numeric_string_hparams(tmp_path, capsys, root):
    (tmp_path / "link").symlink_to(root / "tuned")
    s = _diff_json(capsys, root / "base", tmp_path / "link", "--tolerances", "0", "0.5")
    assert (s["n_params"], s["changed"]) == (5, {"0": 1, "0.5": 0})
    # YAML 1.1 reads 1e-5 as a string: coerced to the float it spells, for hparams and schema numbers
    (tmp_path / "c.yaml").write_text(
        GOOD_CONFIG.replace("HP", "{grpo: {lr: 1e-5, batch_size: '32'}}").replace("base: {}", "base: {lr: 3e-3}")
    )
    rc, out, err = run_main(["check-config", str(tmp_path / "c.yaml")], capsys)
    assert rc == 0 and "2 training run(s)" in out, err
    from rlsparsity.config import load_config

    cfg = load_config(tmp_path / "c.yaml")
    assert cfg["train"]["hparams"]["grpo"] == {"lr": 1e-5, "batch_size": 32}
    assert cfg["base"]["lr"] == 0.003 and isinstance(cfg["train"]["hparams"]["grpo"]["lr"], float)


def test_accepted_hparams_match_the_algorithms_defaults():
    """The validator reads the algorithm modules' source; it must agree with their imported DEFAULTS."""
    from rlsparsity.algorithms import defaults
    from rlsparsity.config_validate import accepted_hparams, entropy_accepted_hparams
    from rlsparsity.entropy import entropy_hparams
    from rlsparsity.grid import ALGORITHMS

    for alg in ALGORITHMS:
        acc = accepted_hparams(alg)
        assert {k: acc[k] for k in defaults(alg)} == defaults(alg), alg
    assert "max_grad_norm" in accepted_hparams("dpo")  # optional: read with hp.get in trl_algos
    assert set(entropy_accepted_hparams()) >= set(entropy_hparams({}))


def test_duplicate_keys_in_files_read_by_another_loader(tmp_path):
    """Snakemake reads --configfile itself (keeping the last duplicate key): validate_config(files=...) re-reads."""
    from rlsparsity.config import ConfigError, validate_config
    from rlsparsity.config_validate import load_yaml

    text = GOOD_CONFIG.replace("HP", "{}") + "results: other\n"
    (tmp_path / "c.yaml").write_text(text)
    cfg = load_yaml(GOOD_CONFIG.replace("HP", "{}"), "x")
    assert validate_config(cfg)["results"] == "results"
    with pytest.raises(
        ConfigError, match=r"c.yaml, line 10, column 1: .*duplicate key 'results' \(first given on line 2\)"
    ):
        validate_config(cfg, files=[tmp_path / "c.yaml"])
