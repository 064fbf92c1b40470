"""Resume points: no pickle, one config per resume point, a fresh start clears the old weight
series, planted pickles never run, ppo/prime log one line per step, the model card."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from rlsparsity.algorithms import get_algorithm
from rlsparsity.algorithms.checkpointing import (
    ResumeError,
    fingerprint,
    mark_complete,
    read_state,
    trainer_checkpoints,
    write_state,
)
from rlsparsity.algorithms.common import Interrupted, TrainSpec
from rlsparsity.grid import Run

PPO_FAST = {"prompts_per_rollout": 2, "samples_per_prompt": 2, "minibatch_size": 2, "max_new_tokens": 8}
DPO_FAST = {"batch_size": 4, "n_prompts": 32, "k": 2}


def _spec(alg: str, base: Path, out: Path, task: Any, steps: int = 4, lr: float = 1e-3, **kw: Any) -> TrainSpec:
    data = "on_policy" if alg == "ppo" else "off_policy"
    hp = {**(PPO_FAST if alg == "ppo" else DPO_FAST), "lr": lr}
    return TrainSpec(run=Run("llama", alg, data, "fp32", 1), base_dir=base, out_dir=out, task=task, steps=steps,
                     checkpoint_every=kw.pop("checkpoint_every", 2), hparams=hp, **kw)


def _series(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*"))


def _weights_equal(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


class _Evil:
    """Unpickling this creates a file (stands for arbitrary code)."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self) -> tuple:
        return (open, (self.target, "w"))


# ---------------------------------------------------------------- state file format
def test_resume_state_round_trips_without_pickle(tmp_path: Path) -> None:
    import numpy as np
    from safetensors import safe_open

    rs = random.Random(3)
    state = {"step": 7, "t": torch.arange(6, dtype=torch.bfloat16).view(2, 3), "scalar": torch.tensor(2.5),
             "opt": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"betas": (0.9, 0.999), "lr": 1e-4}]},
             "rng": rs.getstate(), "np": np.random.RandomState(5).get_state(), "history": [{"loss": float("nan")}],
             "__odd": None}
    p = tmp_path / "state.safetensors"
    write_state(p, state, "fp-A")
    with safe_open(str(p), framework="pt") as f:  # a plain safetensors file: tensors + JSON header
        assert f.metadata()["format"] == "rlsparsity-resume-v1" and f.metadata()["fingerprint"] == "fp-A"
    back = read_state(p, "fp-A")
    assert back["step"] == 7 and torch.equal(back["t"], state["t"]) and back["t"].dtype == torch.bfloat16
    assert back["scalar"].shape == () and back["scalar"].item() == 2.5
    assert list(back["opt"]["state"]) == [0] and back["opt"]["state"][0]["step"].item() == 3.0
    assert back["opt"]["param_groups"][0]["betas"] == (0.9, 0.999)
    r2 = random.Random()
    r2.setstate(back["rng"])  # a real tuple again: setstate accepts it and continues the stream
    assert [r2.random() for _ in range(3)] == [rs.random() for _ in range(3)]
    assert back["np"][0] == "MT19937" and np.array_equal(back["np"][1], state["np"][1])
    assert back["np"][1].dtype == np.uint32 and math.isnan(back["history"][0]["loss"]) and back["__odd"] is None
    assert read_state(p, "fp-B") is None  # another config's state is not resumed
    assert not list(tmp_path.glob(".*"))  # no temp file left
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(ResumeError, match="junk.safetensors is unreadable"):
        read_state(tmp_path / "junk.safetensors", "fp-A")
    with pytest.raises(TypeError, match="without pickle"):
        write_state(tmp_path / "x.safetensors", {"f": _Evil(tmp_path / "x")}, "fp")


# ---------------------------------------------------------------- fresh start / config change (ppo and a TRL algorithm)
@pytest.mark.parametrize("alg", ["ppo", "dpo"])
def test_retrain_clears_old_series_and_config_change_starts_fresh(alg: str, random_base: Path, task: Any,
                                                                   tmp_path: Path, capsys: Any) -> None:
    train = get_algorithm(alg)
    out = tmp_path / "run"
    train(_spec(alg, random_base, out, task, steps=6))
    assert _series(out) == [2, 4, 6]
    # retrained with fewer steps (another config, nothing to resume): step 6 of the old run must go
    capsys.readouterr()
    st = train(_spec(alg, random_base, out, task, steps=4))
    assert st["resumed_from"] is None and _series(out) == [2, 4]
    if alg == "ppo":  # one progress line per policy step
        lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[ppo] step ")]
        assert [ln.split()[2] for ln in lines] == ["1/4", "2/4", "3/4", "4/4"]
        assert all(" loss " in ln and " reward_mean " in ln and " kl " in ln and ln.endswith(" s/step")
                   for ln in lines)
    # interrupted at step 2 with lr 1e-3, rerun with lr 2e-3: the old checkpoint must not be resumed
    with pytest.raises(Interrupted):
        train(_spec(alg, random_base, out, task, steps=6, stop_after=2))
    assert (out / "resume").exists()
    st = train(_spec(alg, random_base, out, task, steps=6, lr=2e-3))
    assert st["resumed_from"] is None and _series(out) == [2, 4, 6]
    clean = tmp_path / "clean"
    train(_spec(alg, random_base, clean, task, steps=6, lr=2e-3))
    assert _weights_equal(out, clean)
    for s in (2, 4, 6):
        assert _weights_equal(out / "checkpoints" / f"step-{s:06d}", clean / "checkpoints" / f"step-{s:06d}")
    # the same config resumes (and the series after the resume point is re-made identically)
    with pytest.raises(Interrupted):
        train(_spec(alg, random_base, tmp_path / "again", task, steps=6, lr=2e-3, stop_after=4))
    (tmp_path / "again" / "checkpoints" / "step-000006").mkdir()  # stale later step, e.g. from an older run
    st = train(_spec(alg, random_base, tmp_path / "again", task, steps=6, lr=2e-3))
    assert st["resumed_from"] is not None and _series(tmp_path / "again") == [2, 4, 6]
    assert _weights_equal(tmp_path / "again", clean)


def test_incomplete_trainer_checkpoint_is_ignored(random_base: Path, task: Any, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        get_algorithm("dpo")(_spec("dpo", random_base, out, task, steps=4, stop_after=2))
    ck = trainer_checkpoints(out / "resume")
    assert list(ck) == [2] and (ck[2] / "complete.json").exists()
    (ck[2] / "optimizer.pt").write_bytes(b"truncated")  # as if killed while it was written
    st = get_algorithm("dpo")(_spec("dpo", random_base, out, task, steps=4))
    assert st["resumed_from"] is None  # not resumed from the damaged checkpoint: trained from scratch
    get_algorithm("dpo")(_spec("dpo", random_base, tmp_path / "clean", task, steps=4))
    assert _weights_equal(out, tmp_path / "clean")


def test_trainer_checkpoints_only_every_checkpoint_every_steps(random_base: Path, task: Any, tmp_path: Path,
                                                               monkeypatch: Any) -> None:
    # transformers' DefaultFlowCallback also saves at max_steps; under FSDP that is the full optimiser
    # state on rank 0's disk (it filled the 2-H200 host at 9B fp32-master). 5 steps, every 2: 2 and 4.
    from rlsparsity.algorithms import trl_algos

    saved: list[int] = []
    real = trl_algos.mark_complete
    monkeypatch.setattr(trl_algos, "mark_complete",
                        lambda folder, fp, step: (saved.append(step), real(folder, fp, step)))
    out = tmp_path / "run"
    get_algorithm("dpo")(_spec("dpo", random_base, out, task, steps=5, checkpoint_every=2))
    assert saved == [2, 4]
    assert _series(out) == [2, 4] and (out / "model.safetensors").exists()


# ---------------------------------------------------------------- planted pickles
def test_planted_pickle_in_trainer_checkpoint_never_runs(random_base: Path, task: Any, tmp_path: Path) -> None:
    out, pwned = tmp_path / "run", tmp_path / "pwned"
    spec = _spec("dpo", random_base, out, task, steps=4, stop_after=2)
    with pytest.raises(Interrupted):
        get_algorithm("dpo")(spec)
    ckpt = trainer_checkpoints(out / "resume")[2]
    for name in ("rng_state.pth", "optimizer.pt"):
        torch.save(_Evil(pwned), ckpt / name)  # a torch file whose unpickling would create `pwned`
    mark_complete(ckpt, fingerprint(spec), 2)  # the attacker also fixes up the completeness marker
    with pytest.raises(ResumeError, match=r"checkpoint-2 holds a file that is not a plain tensor file"):
        get_algorithm("dpo")(_spec("dpo", random_base, out, task, steps=4))
    assert not pwned.exists()


def test_planted_pickle_in_own_resume_folder_never_runs(random_base: Path, task: Any, tmp_path: Path) -> None:
    out, pwned = tmp_path / "run", tmp_path / "pwned"
    (out / "resume").mkdir(parents=True)
    torch.save(_Evil(pwned), out / "resume" / "state.pt")  # the old pickle format: never read
    st = get_algorithm("ppo")(_spec("ppo", random_base, out, task, steps=2))
    assert st["resumed_from"] is None and not pwned.exists() and (out / "model.safetensors").exists()
    (out / "resume").mkdir()
    (out / "resume" / "state.safetensors").write_bytes(b"\x04\x00\x00\x00\x00\x00\x00\x00{}  ")
    with pytest.raises(ResumeError, match="state.safetensors is unreadable"):
        get_algorithm("ppo")(_spec("ppo", random_base, out, task, steps=2))


def test_cli_refused_checkpoint_is_one_line_error(task: Any, tmp_path: Path, capsys: Any) -> None:
    from test_kill_resume import _setup

    from rlsparsity.cli import main
    from rlsparsity.config import load_config
    from rlsparsity.tasks import task_from_config

    cfg_path = _setup(tmp_path, task)
    cfg = load_config(cfg_path)
    run = Run("llama", "dpo", "off_policy", "fp32", 1)
    tc = cfg["train"]
    spec = TrainSpec(run=run, base_dir=tmp_path / "results" / "base" / "llama", out_dir=run.dir(cfg["results"]),
                     task=task_from_config(cfg), steps=tc["steps"], checkpoint_every=tc["checkpoint_every"],
                     hparams=dict(tc["hparams"]["dpo"]), stop_after=1)
    with pytest.raises(Interrupted):
        get_algorithm("dpo")(spec)
    ckpt = trainer_checkpoints(spec.out_dir / "resume")[1]
    torch.save(_Evil(tmp_path / "pwned"), ckpt / "rng_state.pth")
    mark_complete(ckpt, fingerprint(spec), 1)
    capsys.readouterr()
    argv = ["train", "llama", "dpo", "--data", "off_policy", "--precision", "fp32", "--config", str(cfg_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err  # (progress bars aside) one error line, no traceback
    lines = [ln for ln in err.splitlines() if "rlsparsity: error" in ln]
    assert len(lines) == 1 and lines[0].startswith("rlsparsity: error: checkpoint ") and "refused" in lines[0], err
    assert "Traceback" not in err and err.rstrip().endswith(lines[0])
    assert not (tmp_path / "pwned").exists() and not (spec.out_dir / "run.json").exists()


# ---------------------------------------------------------------- model card
def test_model_card_content(tmp_path: Path) -> None:
    from rlsparsity.model_card import write_model_card

    rec = {"family": "llama", "algorithm": "grpo", "data": "on_policy", "precision": "bf16", "seed": 2,
           "experiment": "tiny-default", "task": "tiny_arith", "base": "results/base/llama",
           "acc_base": 0.125, "acc_trained": 0.375, "n_eval": 1000, "steps": 20, "seconds_per_step": 0.5,
           "wall_seconds": 12.25, "hparams": {"lr": 1e-4, "beta": 0.0, "loss_type": "dapo"},
           "checkpoint_every": 5, "storage_dtype": "bfloat16"}
    p = write_model_card(tmp_path, rec)
    text = p.read_text()
    assert text.startswith('---\nbase_model: "results/base/llama"\nlibrary_name: transformers\ntags:\n- rlsparsity\n'
                           "- grpo\n- bf16\n---\n\n# llama / grpo / on_policy / bf16 / seed 2\n")
    for row in ("| base model | `results/base/llama` |", "| algorithm | grpo |", "| data | on_policy |",
                "| precision | bf16 (stored as bfloat16) |", "| seed | 2 |", "| task | tiny_arith |",
                "| held-out accuracy before (base) | 12.50 % |", "| held-out accuracy after | 37.50 % |",
                "| change | +25.00 points |", "| evaluation problems | 1000 |", "| optimiser steps | 20 |",
                "| seconds per step | 0.5 |", "| wall time (s) | 12.25 |",
                "| beta | 0 |\n| loss_type | dapo |\n| lr | 0.0001 |"):
        assert row in text, row
    assert not list(tmp_path.glob(".*"))  # written atomically: no temp file left
    json.dumps(rec)  # the record itself stays JSON


# ---------------------------------------------------------------- train_run: shorter rerun, finished training reused
def test_train_run_shorter_rerun_clears_later_steps_and_reuses_finished_training(task: Any, tmp_path: Path) -> None:
    from test_kill_resume import _setup

    from rlsparsity.config import load_config
    from rlsparsity.train import train_run

    cfg = load_config(_setup(tmp_path, task))
    cfg["train"].update(steps=4, checkpoint_every=2)
    run = Run("llama", "ppo", "on_policy", "fp32", 1)
    out = run.dir(cfg["results"])
    rec = train_run(run, cfg)
    assert _series(out) == [2, 4] and rec["steps"] == 4
    assert "| optimiser steps | 4 |" in (out / "README.md").read_text()
    cfg["train"]["steps"] = 2  # edited config: retrained from scratch, the old step 4 must not survive
    rec2 = train_run(run, cfg)
    assert _series(out) == [2] and rec2["steps"] == 2 and len(rec2["history"]) == 2
    assert json.loads((out / "run.json").read_text())["steps"] == 2
    assert "| optimiser steps | 2 |" in (out / "README.md").read_text()
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    (out / "run.json").unlink()  # as if killed while evaluating: the finished training is reused
    rec3 = train_run(run, cfg)
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    assert rec3["wall_seconds"] == rec2["wall_seconds"] and rec3["history"] == rec2["history"]
