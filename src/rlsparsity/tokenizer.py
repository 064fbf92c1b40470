"""A small tokenizer built locally for the tiny families.

Byte-level BPE trained on the task's own text (prompts in the chat template and
reference solutions), with digits always split one per token (as Llama-3 and Qwen do)
so arithmetic stays learnable. A few hundred tokens: the fixed instruction text
collapses into a handful of tokens, which keeps tiny-model steps cheap. It is saved as
a ``PreTrainedTokenizerFast`` with a minimal chat template, so
``AutoTokenizer.from_pretrained(folder)`` works exactly as for a real model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:\n{% endif %}"
)
# The generation prompt ends in a newline, not a space: the byte-level pre-tokenizer never
# merges across a newline, so tokenize(prompt + completion) == tokenize(prompt) +
# tokenize(completion). TRL's offline trainers tokenize the two jointly; with a trailing
# space they would train " Answer" after "assistant:" while generation sees "assistant: "
# + "Answer" (tested in tests/test_tokenizer_tasks.py).
DEFAULT_VOCAB = 320


def build_tokenizer(corpus: Iterable[str], vocab_size: int = DEFAULT_VOCAB) -> Any:
    """Train the tiny BPE tokenizer on ``corpus`` (deterministic for a given corpus)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(list(corpus), trainer=trainer)
    # "<bos>" stays in the vocabulary but is not the tokenizer's bos_token: nothing here
    # (base SFT, generation, GRPO/DPO/KTO/SFT) puts it in front of a prompt, and TRL's
    # experimental ORPO/CPO trainers prepend bos_token_id whenever one is set, which trained
    # them in a context (BOS + shifted positions) that evaluation never shows.
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",
        unk_token="<unk>", padding_side="left", model_max_length=256,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def task_corpus(task: Any) -> list[str]:
    """The text a tiny tokenizer is trained on: chat-formatted prompts + solutions."""
    from rlsparsity.tasks import INSTRUCTION

    users = [f"user: {e['question']} {INSTRUCTION}\nassistant:\n{task.solution(e)}" for e in task.train]
    return users


def special_ids(tok: Any) -> dict[str, int]:
    return {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.convert_tokens_to_ids("<bos>"),
            "eos_token_id": tok.eos_token_id}


def save_tokenizer(tok: Any, folder: str | Path) -> None:
    tok.save_pretrained(str(folder))
