"""Training data for the offline algorithms (dpo, kto, orpo, simpo, sft).

``on_policy`` (the paper's in-distribution condition): completions sampled from the base
model itself at temperature 1 and labelled by the task scorer — chosen = a correct
sample, rejected = an incorrect sample of the same prompt; for ``sft``, the model's own
correct samples (rejection sampling). ``off_policy``: text the model did not produce —
chosen = the reference solution, rejected = a corrupted reference answer; for ``sft``
the reference solutions. (SPEC Table 5: DPO off-policy 6.8-7.7% sparsity vs 81.4%.)
"""

from __future__ import annotations

import random
from typing import Any

from rlsparsity.modeling import gen_batch_size, generate, max_new_tokens_for
from rlsparsity.tasks import Task

#: On-policy samples already drawn in this process, keyed by (model folder, dtype, device,
#: task, prompts, k, seed): dpo, kto, orpo, simpo and sft of one group job (same base,
#: precision and seed) label the same samples, so they are drawn once. Drawing them
#: again gives the same result (seeded), so the cache changes no run.
_SAMPLES: dict[tuple[Any, ...], list[Any]] = {}


def sample_labelled(model: Any, tokenizer: Any, task: Task, entries: list[dict[str, Any]], k: int,
                    temperature: float = 1.0) -> list[tuple[dict[str, Any], str, list[str], list[float]]]:
    """For each entry: (entry, prompt, k sampled completions, their rewards)."""
    prompts = [task.prompt(e, tokenizer) for e in entries]
    # rows per generate call: 64 prompts x k on CPU, 512 on CUDA (a 135M model decodes 512
    # rows about as fast as 64 there)
    bs = max(1, gen_batch_size(model, 64 * k) // k)
    comps = generate(model, tokenizer, prompts, max_new_tokens_for(model, task), do_sample=True,
                     temperature=temperature, batch_size=bs, num_return_sequences=k)
    out = []
    for i, e in enumerate(entries):
        cs = [c.strip() for c in comps[i * k : (i + 1) * k]]
        out.append((e, prompts[i], cs, task.rewards(cs, [e] * k)))
    return out


def build_dataset(kind: str, data: str, model: Any, tokenizer: Any, task: Task, n_prompts: int, k: int,
                  seed: int, drawn: dict[str, Any] | None = None,
                  temperature: float = 1.0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows in TRL's format for ``kind`` ∈ {pairs, unpaired, sft}, and statistics.

    ``drawn``: on-policy samples already drawn for this setting (a file of
    :mod:`rlsparsity.samples`); without it they are drawn here (same seeds, same result).
    ``temperature``: the on-policy sampling temperature (hparam ``sample_temperature``).

    pairs    -> {prompt, chosen, rejected}       (dpo, orpo, simpo)
    unpaired -> {prompt, completion, label}      (kto)
    sft      -> {prompt, completion}             (sft)
    """
    rng = random.Random(seed)
    entries = rng.sample(task.train, min(n_prompts, len(task.train)))
    rows: list[dict[str, Any]] = []
    stats: dict[str, Any] = {"data": data, "n_prompts": len(entries)}
    if data == "off_policy":
        for e in entries:
            p = task.prompt(e, tokenizer)
            good, bad = task.solution(e), task.corrupted_solution(e, rng)
            if kind == "pairs":
                rows.append({"prompt": p, "chosen": good, "rejected": bad})
            elif kind == "unpaired":
                rows += [{"prompt": p, "completion": good, "label": True},
                         {"prompt": p, "completion": bad, "label": False}]
            else:
                rows.append({"prompt": p, "completion": good})
    elif data == "on_policy" and drawn is not None:
        got = [d["question"] for d in drawn["samples"]]
        if (got != [e["question"] for e in entries] or drawn.get("k") != k
                or drawn.get("temperature") != float(temperature)):
            raise ValueError(f"preference samples do not match this run's prompts (n_prompts={n_prompts}, k={k}, "
                             f"temperature={temperature}, seed={seed})")
        samples = [(e, d["prompt"], list(d["completions"]), list(d["rewards"]))
                   for e, d in zip(entries, drawn["samples"], strict=False)]
        rows = _on_policy_rows(kind, samples, stats, len(entries) * k)
    elif data == "on_policy":
        import torch

        p0 = next(model.parameters())
        key = (getattr(model.config, "_name_or_path", None), str(p0.dtype), str(p0.device),
               task.name, tuple(e["question"] for e in entries), k, float(temperature), seed)
        samples = _SAMPLES.get(key) if key[0] else None
        if samples is None:
            torch.manual_seed(seed)
            samples = sample_labelled(model, tokenizer, task, entries, k, temperature=temperature)
            if len(_SAMPLES) >= 8:
                _SAMPLES.clear()
            if key[0]:  # a model loaded from a folder (not one built in memory)
                _SAMPLES[key] = samples
        rows = _on_policy_rows(kind, samples, stats, len(entries) * k)
    else:
        raise ValueError(f"unknown data source {data!r}")
    if not rows:
        raise RuntimeError(f"no {kind} training rows from {data} data: the base model never solved "
                           f"a sampled problem (raise n_prompts or k)")
    rng.shuffle(rows)
    stats["n_rows"] = len(rows)
    if kind == "unpaired":
        stats["n_desirable"] = sum(bool(r["label"]) for r in rows)
        stats["n_undesirable"] = len(rows) - stats["n_desirable"]
    return rows, stats


#: kto's class weighting rules (hparam ``class_balance``).
CLASS_BALANCE = ("balanced", "none")


def kto_class_weights(n_desirable: int, n_undesirable: int, rule: str) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) of KTO's loss for a data set with these counts.

    KTO (arXiv 2402.01306, Eq. 8) wants lambda_D * n_D / (lambda_U * n_U) in [1, 4/3]; with
    TRL's default weights (1, 1) a 1 : 57 set -- SmolLM2's temperature-1 samples, 1.8 %
    correct -- is almost only "push this completion down", and KTO lost 16 points of
    accuracy in both precisions. ``balanced`` gives each class half of the total weight,
    lambda = N / (2 n_class): the ratio is exactly 1 and the mean weight per row stays 1, so
    the learning rate keeps its meaning. ``none`` is TRL's (1, 1). A set with no desirable
    row is refused: KTO would only push completions down."""
    if rule not in CLASS_BALANCE:
        raise ValueError(f"kto class_balance {rule!r} is not one of {', '.join(CLASS_BALANCE)}")
    if n_desirable <= 0:
        raise RuntimeError(f"kto: none of the {n_undesirable} training completions is correct, so there is no "
                           "desirable example (raise n_prompts, k or sample_temperature's yield)")
    if rule == "none" or n_undesirable <= 0:
        return 1.0, 1.0
    n = n_desirable + n_undesirable
    return n / (2 * n_desirable), n / (2 * n_undesirable)


def _on_policy_rows(kind: str, samples: list[Any], stats: dict[str, Any], n_samples: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    stats["sample_accuracy"] = sum(sum(r) for *_, r in samples) / max(1, n_samples)
    for _e, p, cs, rs in samples:
        good = [c for c, r in zip(cs, rs, strict=False) if r >= 1.0]
        bad = [c for c, r in zip(cs, rs, strict=False) if r < 1.0]
        if kind == "pairs":
            rows += [{"prompt": p, "chosen": g, "rejected": b} for g, b in zip(good, bad, strict=False)]
        elif kind == "unpaired":
            rows += [{"prompt": p, "completion": c, "label": r >= 1.0} for c, r in zip(cs, rs, strict=False)]
        else:
            rows += [{"prompt": p, "completion": g} for g in dict.fromkeys(good)]
    return rows
