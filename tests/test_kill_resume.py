"""Kill at any instant: `rlsparsity train` SIGKILLed at seeded random instants (during start-up,
mid-training, inside a weight save, inside a checkpoint save, during evaluation) and rerun
until it completes ends bit-identical to an uninterrupted run, for a TRL algorithm (dpo)
and for our own loop (ppo).

Each attempt is a real process running the CLI entry point (``rlsparsity.cli.main``). It is
forked from this (already imported) test process rather than started with a fresh
interpreter, so an attempt costs its training, not 10 s of importing torch/transformers/trl;
the kill is a real SIGKILL of that process.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import make_random_base
from safetensors.torch import load_file

STEPS = 8
EVAL_N = 8


def _setup(root: Path, task: Any) -> Path:
    base = make_random_base(root / "results" / "base" / "llama", task)
    (base / "metrics.json").write_text(json.dumps({"accuracy": 0.0, "n_test": EVAL_N, "task": task.name}))
    cfg = {"experiment": "kill", "results": str(root / "results"),
           "task": {"name": "tiny_arith", "n_train": 600, "n_test": 64, "seed": 7},
           "families": {"llama": {}}, "base": {},
           "train": {"steps": STEPS, "checkpoint_every": 1, "eval_n": EVAL_N, "group_by": [],
                     "hparams": {"dpo": {"batch_size": 4, "n_prompts": 32, "k": 2, "lr": 1e-3},
                                 "ppo": {"prompts_per_rollout": 2, "samples_per_prompt": 2, "minibatch_size": 2,
                                         "max_new_tokens": 8, "lr": 1e-3}}},
           "grids": [{"families": ["llama"], "algorithms": ["dpo", "ppo"], "seeds": [1], "precisions": ["fp32"],
                      "data": ["off_policy"]}]}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return root / "cfg.yaml"


def _fresh_tqdm_lock() -> None:
    """Give a forked attempt its own tqdm write lock, as a fresh interpreter would have.

    The inherited one holds a multiprocessing RLock: a semaphore shared with the parent and every
    other attempt. A SIGKILL that lands while the attempt refreshes a progress bar (Trainer steps,
    "Writing model shards") leaves it held for good, and the next attempt, and then the test
    process itself, block on it forever (seen: "attempt hung", then the suite hung)."""
    import multiprocessing
    import threading

    from tqdm import std

    std.TqdmDefaultWriteLock.mp_lock = multiprocessing.RLock()
    std.TqdmDefaultWriteLock.th_lock = threading.RLock()
    lock = std.TqdmDefaultWriteLock()
    classes = [std.tqdm]
    while classes:  # tqdm.auto/datasets/huggingface_hub subclasses may hold a lock of their own
        cls = classes.pop()
        if cls is std.tqdm or "_lock" in vars(cls):
            cls._lock = lock
        classes.extend(cls.__subclasses__())


def _fork_cli(argv: list[str], log: Path, env: dict[str, str]) -> int:
    """Start ``rlsparsity <argv>`` in a child process (fork); returns its pid."""
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 70
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)
            os.environ.update(env)
            for k in [k for k in os.environ if k.startswith("RLSPARSITY_TEST_") and k not in env]:
                del os.environ[k]
            _fresh_tqdm_lock()
            from rlsparsity.cli import main

            code = main(argv)
        except BaseException as e:  # noqa: BLE001 - report and exit, whatever happened
            print(f"child failed: {type(e).__name__}: {e}", flush=True)
            code = 71
        finally:
            os._exit(code)
    return pid


def _attempt(argv: list[str], log: Path, kill_when: Callable[[float], bool] | None, env: dict[str, str],
             timeout: float = 240.0) -> tuple[str, float]:
    """Run one attempt; SIGKILL it as soon as ``kill_when(t0)`` is true. Returns
    ("killed" | "exit <code>", seconds)."""
    t0 = time.time()
    pid = _fork_cli(argv, log, env)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return f"exit {os.waitstatus_to_exitcode(status)}", time.time() - t0
        if kill_when is not None and kill_when(t0):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "killed", time.time() - t0
        if time.time() - t0 > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"attempt hung: {argv}")
        time.sleep(0.01)


def _newer(p: Path, t0: float) -> bool:
    try:
        return p.stat().st_mtime >= t0
    except OSError:
        return False


def _after(cond: Callable[[float], bool], delay: float) -> Callable[[float], bool]:
    """Kill ``delay`` seconds after ``cond`` first holds."""
    seen: list[float] = []

    def when(t0: float) -> bool:
        if not seen and cond(t0):
            seen.append(time.time())
        return bool(seen) and time.time() - seen[0] >= delay
    return when


def _kill_plan(run_dir: Path, trl: bool, rng: random.Random) -> list[tuple[str, Callable[[float], bool], dict]]:
    """Seeded kill instants spread over a run: start-up, three mid-training instants after
    randomly chosen steps, inside a weight-series save, inside a resume-checkpoint save, and
    during the final evaluation."""
    ck = run_dir / "checkpoints"
    m1, m2, m3 = sorted(rng.sample(range(1, STEPS), 3))

    def series_written(m: int) -> Callable[[float], bool]:  # this attempt wrote step m or a later one
        return lambda t0: any(_newer(ck / f"step-{s:06d}" / "model.safetensors", t0) for s in range(m, STEPS + 1))

    def in_series_save(t0: float) -> bool:
        return any(_newer(p, t0) for p in ck.glob("step-*/.model.safetensors.tmp"))

    def in_resume_save(t0: float) -> bool:
        if trl:  # the Trainer is writing checkpoint-N: weights and optimizer written, its state not yet
            return any((d / "optimizer.pt").exists() and not (d / "trainer_state.json").exists()
                       for d in (run_dir / "resume").glob("checkpoint-*"))
        return _newer(run_dir / "resume" / ".state.safetensors.tmp", t0)

    slow = {"RLSPARSITY_TEST_SAVE_DELAY": "1.5"}
    t_start = rng.uniform(0.05, 0.6)
    return [
        ("start-up", lambda t0: time.time() - t0 >= t_start, {}),
        (f"after step {m1}", _after(series_written(m1), rng.uniform(0.0, 0.3)), {}),
        ("inside a weight save", in_series_save, slow),
        (f"after step {m2}", _after(series_written(m2), rng.uniform(0.0, 0.3)), {}),
        ("inside a checkpoint save", in_resume_save, slow),
        (f"after step {m3}", _after(series_written(m3), rng.uniform(0.0, 0.3)), {}),
        ("during evaluation", _after(lambda t0: _newer(run_dir / "training_done.json", t0), rng.uniform(0.0, 0.2)), {}),
    ]


def _tensors(p: Path) -> dict[str, torch.Tensor]:
    return load_file(str(p))


def _same(a: Path, b: Path) -> bool:
    ta, tb = _tensors(a), _tensors(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.mark.parametrize("alg,data", [("dpo", "off_policy"), ("ppo", "on_policy")])
def test_killed_at_random_instants_ends_bit_identical(alg: str, data: str, task: Any, tmp_path: Path) -> None:
    import trl  # noqa: F401  - imported here once, so forked attempts do not pay for it

    from rlsparsity.algorithms import get_algorithm
    from rlsparsity.grid import Run

    get_algorithm(alg)
    if alg == "dpo":
        from trl import DPOConfig, DPOTrainer  # noqa: F401

    runs = {}
    for name in ("ref", "killed"):
        cfg = _setup(tmp_path / name, task)
        run_dir = Run("llama", alg, data, "fp32", 1).dir(tmp_path / name / "results")
        runs[name] = (cfg, run_dir)
    argv = lambda cfg: ["train", "llama", alg, "--data", data, "--precision", "fp32", "--config", str(cfg)]  # noqa: E731

    outcome, t_ref = _attempt(argv(runs["ref"][0]), tmp_path / "ref.log", None, {})
    assert outcome == "exit 0", (tmp_path / "ref.log").read_text()[-3000:]

    cfg, run_dir = runs["killed"]
    log = tmp_path / "killed.log"
    kills = []
    for what, when, env in _kill_plan(run_dir, alg != "ppo", random.Random(16)):
        outcome, dt = _attempt(argv(cfg), log, when, env)
        kills.append((what, outcome, round(dt, 2)))
        if what == "inside a checkpoint save" and outcome == "killed":
            if alg == "ppo":  # the new state was not renamed into place: the old one is intact
                assert (run_dir / "resume" / ".state.safetensors.tmp").exists()
            else:  # an incomplete checkpoint-N is left behind, as a real kill would
                assert any(not (d / "complete.json").exists() for d in (run_dir / "resume").glob("checkpoint-*"))
        assert outcome in ("killed", "exit 0"), (what, outcome, log.read_text()[-3000:])
        if outcome == "exit 0":
            break
    n_attempts = len(kills)
    while outcome != "exit 0":  # rerun until it completes
        outcome, _ = _attempt(argv(cfg), log, None, {})
        n_attempts += 1
        assert n_attempts < 15, log.read_text()[-3000:]
    print(f"{alg}: uninterrupted {t_ref:.1f} s; attempts {kills}")
    assert sum(o == "killed" for _, o, _ in kills) >= 6, kills
    assert ("inside a weight save", "killed") in [(w, o) for w, o, _ in kills]
    assert ("inside a checkpoint save", "killed") in [(w, o) for w, o, _ in kills]

    ref_dir = runs["ref"][1]
    assert _same(ref_dir / "model.safetensors", run_dir / "model.safetensors"), "final weights differ"
    steps = sorted(p.name for p in (ref_dir / "checkpoints").iterdir())
    assert steps == [f"step-{s:06d}" for s in range(1, STEPS + 1)]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == steps
    for s in steps:
        assert _same(*(d / "checkpoints" / s / "model.safetensors" for d in (ref_dir, run_dir))), s
    ra, rb = (json.loads((d / "run.json").read_text()) for d in (ref_dir, run_dir))
    assert [h["loss"] for h in ra["history"]] == [h["loss"] for h in rb["history"]]
    assert ra["acc_trained"] == rb["acc_trained"] and ra["steps"] == rb["steps"] == STEPS
    assert not (run_dir / "resume").exists()
    leftovers = [p for p in run_dir.rglob("*") if p.name.startswith(".")]
    assert leftovers == [], leftovers
    card = (run_dir / "README.md").read_text()
    assert f"| held-out accuracy after | {100 * rb['acc_trained']:.2f} % |" in card
