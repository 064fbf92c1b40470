"""tiny_column_add: a tiny task whose targets reason (column addition with carries) before answering."""

from __future__ import annotations

import random

import pytest

from rlsparsity.tasks import TASKS, column_steps, get_task


def test_column_steps_exact():
    assert column_steps(47, 38) == "7+8=15, 4+3+1=8. Answer: 85"
    assert column_steps(125, 7) == "5+7=12, 2+0+1=3, 1+0=1. Answer: 132"
    assert column_steps(95, 17) == "5+7=12, 9+1+1=11. Answer: 112"
    assert column_steps(30, 40) == "0+0=0, 3+4=7. Answer: 70"
    with pytest.raises(ValueError):
        column_steps(-1, 3)


def test_task_solutions_reason_then_answer_and_score():
    assert "tiny_column_add" in TASKS and TASKS["tiny_column_add"].max_new_tokens == 48
    task = get_task("tiny_column_add", n_train=50, n_test=20, seed=3)
    rng = random.Random(0)
    for e in task.test[:20]:
        sol = task.solution(e)
        a, b = map(int, e["question"].removeprefix("Calculate ").rstrip(".").split(" + "))
        assert sol == column_steps(a, b) and sol.endswith(f"Answer: {e['answer']}")
        assert task.score(sol, e) == 1.0
        bad = task.corrupted_solution(e, rng)
        assert "+" in bad and task.score(bad, e) == 0.0  # same form, wrong sum
        assert len(sol) <= 48  # fits the generation budget of the char-level tiny tokenizer
    # the plain tasks keep their short solutions
    plain = get_task("tiny_arith", n_train=20, n_test=5)
    assert plain.solution(plain.test[0]) == f"Answer: {plain.test[0]['answer']}"


def test_base_per_family_overrides(tmp_path, monkeypatch):
    """config base.per_family: one family's base gets its own lr / max_steps, the others the defaults."""
    import yaml

    from rlsparsity import base as B
    from rlsparsity.config import validate_config

    cfg = yaml.safe_load(open("config/config.yaml"))
    cfg["task"] = {"name": "tiny_arith", "n_train": 20, "n_test": 5, "seed": 1}
    cfg["base"]["per_family"] = {"deepseek_v3": {"lr": 1.0e-3, "max_steps": 5000}}
    cfg = validate_config(cfg)
    seen = {}
    monkeypatch.setattr(B, "train_tiny_base", lambda fam, task, out, spec, **kw: seen.setdefault(fam, kw) and {})
    for fam in ("deepseek_v3", "llama"):
        B.build_base(fam, cfg, tmp_path / fam)
    assert (seen["deepseek_v3"]["lr"], seen["deepseek_v3"]["max_steps"]) == (1.0e-3, 5000)
    assert (seen["llama"]["lr"], seen["llama"]["max_steps"]) == (cfg["base"]["lr"], cfg["base"]["max_steps"])
