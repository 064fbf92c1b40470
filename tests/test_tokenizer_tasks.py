import pytest
from transformers import AutoTokenizer

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
                                     add_generation_prompt=True) == "user: hi\nassistant: "
    assert build_tokenizer(task_corpus(task)).get_vocab() == tok.get_vocab()  # deterministic


@pytest.mark.parametrize("text,expected", [
    ("Answer: 42", "42"),
    ("The answer is -7.", "-7"),
    ("I think 3 then \\boxed{12} and 5", "12"),
    ("first 3, then 8", "8"),
    ("no digits here", None),
    ("", None),
    (None, None),
    (12, None),
])
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


def test_unknown_task_and_too_small_generator():
    with pytest.raises(TaskError, match="unknown task"):
        get_task("nope")
    with pytest.raises(TaskError, match="lower n_train"):
        _ = get_task("tiny_arith", n_train=10, n_test=10_000, kwargs={"max_digits": 1}).train


def test_prompt_uses_chat_template_and_instruction(task):
    tok = build_tokenizer(task_corpus(task))
    p = task.prompt({"question": "Calculate 1 + 2."}, tok)
    assert p == "user: Calculate 1 + 2. Give the final answer as 'Answer: <number>'.\nassistant: "
    assert isinstance(task, Task)
