"""Verifiable tasks: reasoning-gym generators + scorers behind one small interface.

Every task uses one prompt format (``question + INSTRUCTION``, wrapped in the model's
chat template) and one reward: the reasoning-gym scorer applied to the answer extracted
from the completion, counted correct only at a score of 1.0 (the default scorers give
partial credit for substrings and 0.01 for any number on gsm_symbolic).

Reference solutions (supervised base training, off-policy pairs) are ``Answer: <n>`` for most
tasks; ``tiny_column_add`` writes the column addition out before answering (one step per digit,
ones first, carries included: ``7+8=15, 4+3+1=8. Answer: 85``), so its targets contain reasoning
tokens whose next token is genuinely uncertain, not only near-zero-entropy template.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

INSTRUCTION = "Give the final answer as 'Answer: <number>'."
#: Instruction per prompt style (config ``task.prompt``): ``cot`` asks for reasoning first, so
#: that completions have forking tokens before the answer (pretrained models only).
_COT = "Think step by step, then give the final answer as 'Answer: <number>'."
PROMPT_STYLES = {"answer": INSTRUCTION,
                 "cot": _COT,
                 "explain": "Explain your calculation in one or two sentences, then give the final answer as "
                            "'Answer: <number>'.",
                 "cot_shot": _COT,
                 "cot_shot2": _COT}
_SHOT_ADD = (f"Calculate 47 + 38. {_COT}", "First the tens: 47 + 30 = 77. Then the ones: 77 + 8 = 85.\nAnswer: 85")
_SHOT_SUB = (f"Calculate 23 - 58. {_COT}",
             "58 is larger than 23, so the result is negative: 58 - 23 = 35, so 23 - 58 = -35.\nAnswer: -35")
#: Styles that show worked examples as earlier chat turns (user question, assistant solution)
#: before the real question: small pretrained models copy an example written into the
#: instruction itself, but follow one given as a previous exchange. ``cot_shot2`` adds a
#: subtraction whose result is negative (chain_sum's a - b with b > a, where SmolLM2 drops the sign).
SHOTS: dict[str, tuple[tuple[str, str], ...]] = {"cot_shot": (_SHOT_ADD,), "cot_shot2": (_SHOT_ADD, _SHOT_SUB)}
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_AFTER_ANSWER = re.compile(r"answer[\s:=*]*(?:is[\s:=*]*)?(-?\d+(?:\.\d+)?)", re.IGNORECASE)


def extract_answer(completion: Any) -> str | None:
    """Robust answer extraction; never raises.

    Order: the last ``\\boxed{...}``; else the number right after the last "answer"
    (``Answer: 7``, ``the answer is -3``); else the last number in the text; else None.
    """
    if not isinstance(completion, str):
        return None
    boxed = _BOXED.findall(completion)
    if boxed:
        return boxed[-1].strip()
    after = _AFTER_ANSWER.findall(completion)
    if after:
        return after[-1]
    nums = _NUMBER.findall(completion)
    return nums[-1] if nums else None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    dataset: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    solution_style: str = "answer"  # "answer": "Answer: <n>"; "column": column addition steps, then the answer
    max_new_tokens: int | None = None  # generation budget the solutions need (None: the model's default)


_SUM = re.compile(r"(\d+)\s*\+\s*(\d+)")


def column_steps(a: int, b: int) -> str:
    """Column addition of two non-negative integers, ones first, carries written out:
    ``column_steps(47, 38) == "7+8=15, 4+3+1=8. Answer: 85"``."""
    if a < 0 or b < 0:
        raise ValueError(f"column addition needs non-negative operands, got {a}, {b}")
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x, y = int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}" + (f"+{carry}" if carry else "") + f"={s}")
        carry = s // 10
    return ", ".join(steps) + f". Answer: {a + b}"


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("tiny_arith", "basic_arithmetic",
                 dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2, operators=["+", "-"],
                      allow_parentheses=False, allow_negation=False),
                 "a ± b with 1–2 digit operands; sized for the tiny from-scratch families"),
        TaskSpec("arith2d", "basic_arithmetic",
                 dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2, operators=["+", "-"],
                      allow_parentheses=False, allow_negation=False),
                 "same generator, meant for SmolLM2-135M (31% greedy as shipped)"),
        TaskSpec("chain_sum", "chain_sum", dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2),
                 "a ± b phrased differently"),
        TaskSpec("gsm_symbolic", "gsm_symbolic", dict(difficulty=1.0),
                 "grade-school word problems; for 1B+ models (SmolLM2-135M scores 0%)"),
        TaskSpec("tiny_column_add", "basic_arithmetic",
                 dict(min_terms=2, max_terms=2, min_digits=2, max_digits=3, operators=["+"],
                      allow_parentheses=False, allow_negation=False),
                 "a + b with 2–3 digit operands; targets reason (column steps with carries) before answering",
                 solution_style="column", max_new_tokens=48),
    ]
}


class TaskError(ValueError):
    pass


@dataclass
class Task:
    """A task instance with deterministic, disjoint train/test splits."""

    spec: TaskSpec
    n_train: int = 2000
    n_test: int = 200
    seed: int = 1234
    extra_kwargs: dict[str, Any] = field(default_factory=dict)
    prompt_style: str = "answer"           # key of PROMPT_STYLES
    max_new_tokens: int | None = None      # generation budget (None: modeling.max_new_tokens_for's rule)

    def __post_init__(self) -> None:
        if self.max_new_tokens is None:
            self.max_new_tokens = self.spec.max_new_tokens  # the task's own need (e.g. worked solutions)
        if self.prompt_style not in PROMPT_STYLES:
            raise TaskError(f"unknown prompt style {self.prompt_style!r}; known: {sorted(PROMPT_STYLES)}")

    @property
    def name(self) -> str:
        return self.spec.name

    @cached_property
    def _scorer(self) -> Any:
        return self._dataset(1)

    def _dataset(self, size: int) -> Any:
        import reasoning_gym

        kw = {**self.spec.kwargs, **self.extra_kwargs}
        return reasoning_gym.create_dataset(self.spec.dataset, size=size, seed=self.seed, **kw)

    @cached_property
    def _splits(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """The first ``n_train + 2 n_test`` DISTINCT questions of the generator's stream, shuffled
        (seeded) and cut into test (``n_test``), validation (``n_test``: hyperparameters and
        early stopping) and train (``n_train``): disjoint, and drawn from one distribution.

        Why shuffled: a generator over a small problem space repeats its common problems
        (chain_sum's 1-digit pairs: about 200 questions, a quarter of all draws). Taking test
        first, validation next and train from what was left gave test 33 %, validation 6.4 %
        and train 1.2 % of those easy pairs (SmolLM2's 4000/500/500): a test split much easier
        than the problems trained on and the one hyperparameters were chosen on.

        reasoning-gym item i depends only on (seed, i), so a longer stream has the same
        prefix: the stream is doubled until enough distinct questions are found, and the
        splits do not depend on how long it had to be."""
        need = self.n_train + 2 * self.n_test
        size = 2 * need + 100
        for _ in range(5):
            try:
                return self._split(self._dataset(size), need)
            except TaskError:
                size *= 2
        return self._split(self._dataset(size), need)

    def _split(self, ds: Any, need: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        import random

        distinct: list[dict[str, Any]] = []
        seen: set[str] = set()
        for i in range(len(ds)):
            if len(distinct) == need:
                break
            e = ds[i]
            if e["question"] not in seen:
                seen.add(e["question"])
                distinct.append(e)
        if len(distinct) < need:
            raise TaskError(f"task {self.name}: generator gave only {len(distinct)} distinct problems of the "
                            f"{need} needed ({self.n_train} train + 2 x {self.n_test} test/validation); lower "
                            f"n_train/n_test or widen the task")
        random.Random(f"{self.seed}:splits").shuffle(distinct)
        n = self.n_test
        return distinct[2 * n:], distinct[n : 2 * n], distinct[:n]

    @property
    def train(self) -> list[dict[str, Any]]:
        return self._splits[0]

    @property
    def val(self) -> list[dict[str, Any]]:
        return self._splits[1]

    @property
    def test(self) -> list[dict[str, Any]]:
        return self._splits[2]

    def user_message(self, entry: dict[str, Any]) -> str:
        return f"{entry['question']} {PROMPT_STYLES[self.prompt_style]}"

    def prompt(self, entry: dict[str, Any], tokenizer: Any) -> str:
        """The single prompt format: the user message in the model's chat template."""
        msgs = [{"role": role, "content": text} for shot in SHOTS.get(self.prompt_style, ())
                for role, text in zip(("user", "assistant"), shot, strict=False)]
        msgs.append({"role": "user", "content": self.user_message(entry)})
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return "\n".join(m["content"] for m in msgs) + "\n"

    def _operands(self, entry: dict[str, Any]) -> tuple[int, int] | None:
        m = _SUM.search(str(entry.get("question", "")))
        return (int(m.group(1)), int(m.group(2))) if m else None

    def solution(self, entry: dict[str, Any]) -> str:
        """Reference completion used for supervised training (without EOS)."""
        ops = self._operands(entry) if self.spec.solution_style == "column" else None
        if ops is not None and sum(ops) == int(entry["answer"]):
            return column_steps(*ops)
        return f"Answer: {entry['answer']}"

    def corrupted_solution(self, entry: dict[str, Any], rng: Any) -> str:
        """A wrong reference-style answer (off-policy rejected side); for column tasks the steps
        of a sum with one operand off by the same offset, so both sides have the same form."""
        ans = entry["answer"]
        try:
            val = int(ans)
            off = int(rng.choice([-3, -2, -1, 1, 2, 3, 10, -10]))
            ops = self._operands(entry) if self.spec.solution_style == "column" else None
            if ops is not None and ops[1] + off >= 0:
                return column_steps(ops[0], ops[1] + off)
            return f"Answer: {val + off}"
        except ValueError:
            return f"Answer: {ans}0"

    def score(self, completion: Any, entry: dict[str, Any]) -> float:
        """1.0 if the extracted answer scores exactly 1.0 with the task's scorer, else 0.0."""
        ans = extract_answer(completion)
        if ans is None:
            return 0.0
        try:
            s = float(self._scorer.score_answer(ans, entry))
        except Exception:  # a scorer that chokes on odd input means "wrong"
            return 0.0
        return 1.0 if s >= 1.0 else 0.0

    def rewards(self, completions: Sequence[Any], entries: Sequence[dict[str, Any]]) -> list[float]:
        return [self.score(c, e) for c, e in zip(completions, entries, strict=True)]


def get_task(name: str, n_train: int = 2000, n_test: int = 200, seed: int = 1234,
             kwargs: dict[str, Any] | None = None, prompt: str = "answer",
             max_new_tokens: int | None = None) -> Task:
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return Task(TASKS[name], n_train=n_train, n_test=n_test, seed=seed, extra_kwargs=dict(kwargs or {}),
                prompt_style=prompt, max_new_tokens=max_new_tokens)


def task_from_config(cfg: dict[str, Any]) -> Task:
    t = cfg["task"]
    return get_task(t["name"], t.get("n_train", 2000), t.get("n_test", 200), t.get("seed", 1234),
                    t.get("kwargs"), t.get("prompt") or "answer", t.get("max_new_tokens"))
