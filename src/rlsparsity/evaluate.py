"""Held-out evaluation: greedy accuracy and mean reward on a task's test split."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlsparsity.modeling import gen_batch_size, generate, max_new_tokens_for
from rlsparsity.tasks import Task


def evaluate(model: Any, tokenizer: Any, task: Task, entries: Sequence[dict[str, Any]] | None = None,
             n: int | None = None, batch_size: int | None = None, max_new_tokens: int | None = None,
             progress: bool = False) -> dict[str, Any]:
    """Greedy decoding on ``entries`` (default: the task's test split, first ``n``).

    ``accuracy`` = fraction scoring exactly 1.0; ``mean_reward`` = mean task reward
    (equal to accuracy for the binary reward used here, kept separate for tasks with
    graded rewards); ``correct`` = the per-problem outcomes as a bit string ("0110…", one
    character per problem, in test order) for paired intervals (:mod:`rlsparsity.stats`);
    also a few sample completions for eyeballing.
    """
    from rlsparsity.stats import encode_bits

    items = list(entries if entries is not None else task.test)
    if n is not None:
        items = items[:n]
    prompts = [task.prompt(e, tokenizer) for e in items]
    mnt = max_new_tokens or max_new_tokens_for(model, task)
    bs = batch_size or gen_batch_size(model)
    comps = generate(model, tokenizer, prompts, mnt, do_sample=False, batch_size=bs, progress=progress)
    rewards = task.rewards(comps, items)
    acc = sum(r >= 1.0 for r in rewards) / max(1, len(items))
    return {"task": task.name, "n": len(items), "accuracy": acc,
            "mean_reward": sum(rewards) / max(1, len(rewards)), "correct": encode_bits(rewards),
            "samples": [{"prompt": items[i]["question"], "completion": comps[i], "answer": items[i]["answer"]}
                        for i in range(min(3, len(items)))]}
