import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlsparsity.tasks import Task, TaskError, extract_answer, get_task
from rlsparsity.tokenizer import build_tokenizer, task_corpus


def test_tokenizer_round_trip_and_reload(tmp_path, task):
    tok = build_tokenizer(task_corpus(task))
    assert 100 < len(tok) <= 320
    text = task.prompt(task.test[0], tok) + "Answer: -79"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    digits = tok.convert_ids_to_tokens(tok("12345", add_special_tokens=False)["input_ids"])
    assert digits == ["1", "2", "3", "4", "5"]  # digits are split one per token
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text, add_special_tokens=False)["input_ids"] == ids
    assert again.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                     add_generation_prompt=True) == "user: hi\nassistant:\n"
    assert build_tokenizer(task_corpus(task)).get_vocab() == tok.get_vocab()  # deterministic


def test_prompt_and_completion_tokenize_apart_as_together(task, tmp_path):
    """What generation sees (prompt ids, then sampled ids) must be what the offline trainers
    train on: TRL tokenizes prompt + completion jointly. A prompt ending in a space broke
    this (" Answer" merged across the boundary) and made dpo/kto/orpo/sft train on a
    context that evaluation never shows."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from rlsparsity.families import build_tiny
    from rlsparsity.tokenizer import special_ids

    tok = build_tokenizer(task_corpus(task))
    for e in task.test[:20]:
        p, c = task.prompt(e, tok), task.solution(e)
        joint = tok(p + c, add_special_tokens=False)["input_ids"]
        apart = tok(p, add_special_tokens=False)["input_ids"] + tok(c, add_special_tokens=False)["input_ids"]
        assert joint == apart, (p, c)
    e = task.test[0]
    row = {"prompt": task.prompt(e, tok), "chosen": task.solution(e), "rejected": "Answer: 1"}
    build_tiny("llama", len(tok), special_ids(tok)).save_pretrained(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    args = DPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", bf16=False)
    ex = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list([row]), processing_class=tok).train_dataset[
        0
    ]
    assert ex["prompt_ids"] == tok(row["prompt"], add_special_tokens=False)["input_ids"]
    assert ex["chosen_ids"] == tok(row["chosen"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    # ORPO and SimPO (CPO) prepend the tokenizer's bos_token_id when it has one: it has none
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    args = ORPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", bf16=False, max_length=64)
    ex = ORPOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list([row]), processing_class=tok
    ).train_dataset[0]
    assert tok.bos_token is None
    assert ex["prompt_input_ids"] == tok(row["prompt"], add_special_tokens=False)["input_ids"]
    assert ex["chosen_input_ids"][: len(ex["prompt_input_ids"])] == ex["prompt_input_ids"]
    assert [t for t in ex["chosen_labels"] if t != -100] == tok(row["chosen"], add_special_tokens=False)[
        "input_ids"
    ] + [tok.eos_token_id]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Answer: 42", "42"),
        ("The answer is -7.", "-7"),
        ("I think 3 then \\boxed{12} and 5", "12"),
        ("first 3, then 8", "8"),
        ("no digits here", None),
        ("", None),
        (None, None),
        (12, None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_score_right_wrong_malformed(task):
    e = {"question": "Calculate 13 - 92.", "answer": "-79", "metadata": {}}
    assert task.score("Answer: -79", e) == 1.0
    assert task.score("The answer is -79", e) == 1.0
    assert task.score("Answer: 79", e) == 0.0
    assert task.score("Answer: -790", e) == 0.0  # reasoning-gym gives partial credit here; we do not
    assert task.score("<eos>garbage{{", e) == 0.0
    assert task.score(None, e) == 0.0
    assert task.rewards(["Answer: -79", "x"], [e, e]) == [1.0, 0.0]


def test_splits_are_deterministic_and_disjoint():
    a = get_task("tiny_arith", n_train=300, n_test=50, seed=3)
    b = get_task("tiny_arith", n_train=300, n_test=50, seed=3)
    c = get_task("tiny_arith", n_train=300, n_test=50, seed=4)
    qa = [e["question"] for e in a.test]
    assert qa == [e["question"] for e in b.test]
    assert qa != [e["question"] for e in c.test]
    assert len(set(qa)) == 50 and len(a.train) == 300
    held = set(qa) | {e["question"] for e in a.val}
    assert not held & {e["question"] for e in a.train}
    assert not set(qa) & {e["question"] for e in a.val}


def test_splits_have_the_same_difficulty():
    """chain_sum over 1-2 digit operands repeats its ~200 one-digit pairs (a quarter of all
    draws). Test, validation and train must hold them in the same share: the old split (test
    first, validation next, train from the rest) gave 33.2 / 6.4 / 1.2 % at SmolLM2's sizes."""
    import re

    t = get_task("chain_sum", n_train=4000, n_test=500, seed=1234)

    def easy(items):
        ops = [[int(x) for x in re.findall(r"\d+", e["question"].split(":")[-1])] for e in items]
        return sum(all(x < 10 for x in o) for o in ops) / len(items)

    shares = {name: easy(getattr(t, name)) for name in ("train", "val", "test")}
    assert len(t.train) == 4000 and len(t.val) == len(t.test) == 500
    assert len({e["question"] for e in t.train + t.val + t.test}) == 5000  # distinct, so disjoint
    # binomial sd of a 500-problem share at p ~ 0.04 is ~0.9 points
    assert abs(shares["test"] - shares["train"]) < 0.03 and abs(shares["val"] - shares["train"]) < 0.03, shares
    assert 0.01 < shares["train"] < 0.10, shares


def test_unknown_task_and_too_small_generator():
    with pytest.raises(TaskError, match="unknown task"):
        get_task("nope")
    with pytest.raises(TaskError, match="lower n_train"):
        _ = get_task("tiny_arith", n_train=10, n_test=10_000, kwargs={"max_digits": 1}).train


def test_prompt_uses_chat_template_and_instruction(task):
    tok = build_tokenizer(task_corpus(task))
    p = task.prompt({"question": "Calculate 1 + 2."}, tok)
    assert p == "user: Calculate 1 + 2. Give the final answer as 'Answer: <number>'.\nassistant:\n"
    assert isinstance(task, Task)


def test_worked_examples_come_as_earlier_chat_turns_in_order(task):
    """cot_shot2: the addition example, then the negative subtraction, then the question, each
    example as a user turn and its solution as an assistant turn."""
    from rlsparsity.tasks import SHOTS

    tok = build_tokenizer(task_corpus(task))
    t = get_task("tiny_arith", n_train=20, n_test=5, prompt="cot_shot2")
    p = t.prompt({"question": "Calculate 1 + 2."}, tok)
    (add_q, add_a), (sub_q, sub_a) = SHOTS["cot_shot2"]
    assert "Answer: -35" in sub_a and "23 - 58" in sub_q
    cot = "Think step by step, then give the final answer as 'Answer: <number>'."
    assert p == (f"user: {add_q}\nassistant: {add_a}\nuser: {sub_q}\nassistant: {sub_a}\n"
                 f"user: Calculate 1 + 2. {cot}\nassistant:\n")
    one = get_task("tiny_arith", n_train=20, n_test=5, prompt="cot_shot").prompt({"question": "Calculate 1 + 2."}, tok)
    assert one == f"user: {add_q}\nassistant: {add_a}\nuser: Calculate 1 + 2. {cot}\nassistant:\n"
