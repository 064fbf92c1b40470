"""On-policy preference samples drawn once by `rlsparsity preference-samples` (rule
preference_samples) give exactly the rows, and the weights, a run gets by drawing them itself."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

BIN = Path(sys.executable).parent


def _config(results: Path) -> dict:
    small = {"batch_size": 8, "n_prompts": 48, "k": 4, "lr": 1e-3}
    return {"experiment": "samples-test", "results": str(results),
            "task": {"name": "tiny_arith", "n_train": 600, "n_test": 64, "seed": 7},
            "families": {"llama": {}}, "base": {},
            "train": {"steps": 2, "checkpoint_every": 1, "eval_n": 64, "hparams": {"dpo": small, "kto": small}},
            "grids": [{"families": ["llama"], "algorithms": ["dpo", "kto"], "seeds": [1], "precisions": ["fp32"],
                       "data": ["on_policy"]}]}


@pytest.fixture(scope="module")
def drawn(trained_base, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("samples")
    shutil.copytree(trained_base, tmp / "results" / "base" / "llama")
    cfg = _config(tmp / "results")
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp / "results" / "samples" / "llama" / "fp32" / "seed1" / "n48_k4_t1.json"
    r = subprocess.run([str(BIN / "rlsparsity"), "preference-samples", "--config", str(tmp / "config.yaml"),
                        "--family", "llama", "--precision", "fp32", "--seed", "1", "--n-prompts", "48", "--k", "4",
                        "--temperature", "1.0",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp, cfg, out


@pytest.mark.slow
def test_samples_file_gives_the_same_rows_as_drawing_in_process(drawn):
    from rlsparsity import samples as S
    from rlsparsity.modeling import load_model, load_tokenizer
    from rlsparsity.preference import _SAMPLES, build_dataset
    from rlsparsity.tasks import task_from_config

    tmp, cfg, out = drawn
    doc = json.loads(out.read_text())
    assert doc["format"] == S.FORMAT and len(doc["samples"]) == 48 and all(len(s["completions"]) == 4
                                                                           for s in doc["samples"])
    task = task_from_config(cfg)
    base = tmp / "results" / "base" / "llama"
    for kind in ("pairs", "unpaired", "sft"):
        _SAMPLES.clear()
        torch.manual_seed(123)  # whatever the state before: sampling reseeds
        model = load_model(base, "fp32", "cpu")
        here, st_here = build_dataset(kind, "on_policy", model, load_tokenizer(base), task, 48, 4, 1)
        rows, st = build_dataset(kind, "on_policy", model, load_tokenizer(base), task, 48, 4, 1,
                                 drawn=S.find([out], "llama", "fp32", 1, 48, 4, task.name, temperature=1.0))
        assert rows == here and st == st_here and len(rows) > 0
    with pytest.raises(ValueError, match="no preference samples file"):
        S.find([out], "llama", "fp32", 2, 48, 4, task.name, temperature=1.0)  # another seed
    with pytest.raises(ValueError, match="no preference samples file"):
        S.find([out], "llama", "fp32", 1, 48, 4, task.name, temperature=0.7)  # another temperature
    assert doc["temperature"] == 1.0 and S.temperature_tag(0.7) == "0.7" and S.temperature_tag(1e-5) == "0.00001"
    with pytest.raises(ValueError, match="temperature=0.7"):  # a file drawn at 1.0 is refused at 0.7
        build_dataset("pairs", "on_policy", model, load_tokenizer(base), task, 48, 4, 1, drawn=doc, temperature=0.7)
    bad = tmp / "bad.json"
    bad.write_text('{"format": "x"}')
    with pytest.raises(ValueError, match="is not a preference samples file"):
        S.load(bad)


@pytest.mark.slow
def test_run_on_the_shared_samples_equals_the_run_drawing_its_own(drawn):
    from rlsparsity.grid import Run
    from rlsparsity.preference import _SAMPLES
    from rlsparsity.train import train_run

    tmp, cfg, out = drawn
    dpo = Run("llama", "dpo", "on_policy", "fp32", 1)
    alone = tmp / "alone"
    shutil.copytree(tmp / "results" / "base", alone / "base")
    _SAMPLES.clear()
    a = train_run(dpo, {**cfg, "results": str(alone)})
    b = train_run(dpo, cfg, samples=[out])
    assert a["data_stats"] == b["data_stats"]
    from safetensors.torch import load_file

    wa, wb = load_file(dpo.dir(alone) / "model.safetensors"), load_file(dpo.dir(tmp / "results") / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
