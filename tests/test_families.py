import pytest
import torch

from rlsparsity import families as F
from rlsparsity.tokenizer import build_tokenizer, special_ids, task_corpus

TEN = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3", "olmo2", "gpt_neox", "gpt2", "deepseek_v3"]


def test_registry_has_the_ten_families():
    assert sorted(F.FAMILIES) == sorted(TEN)


@pytest.mark.parametrize("name", TEN)
def test_family_forward_backward_generate(name, task):
    tok = build_tokenizer(task_corpus(task))
    model = F.build_tiny(name, len(tok), special_ids(tok), seed=0)
    assert model.config.model_type == F.FAMILIES[name].model_type
    n = sum(p.numel() for p in model.parameters())
    assert 20_000 < n < 300_000, n  # "a few hundred thousand parameters at most"
    ids = torch.tensor([tok("user: Calculate 3 + 4.")["input_ids"]] * 2)
    out = model(input_ids=ids, labels=ids)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    gen = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape == (2, ids.shape[1] + 4) or gen.shape[1] <= ids.shape[1] + 4


def test_moe_family_really_has_experts(task):
    tok = build_tokenizer(task_corpus(task))
    model = F.build_tiny("deepseek_v3", len(tok), special_ids(tok))
    names = [n for n, _ in model.named_parameters()]
    assert any(".experts" in n for n in names) and any("shared_experts" in n for n in names)


def test_size_overrides_apply(task):
    tok = build_tokenizer(task_corpus(task))
    model = F.build_tiny("llama", len(tok), special_ids(tok), {"hidden_size": 32, "num_hidden_layers": 1})
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1


def test_unknown_family_and_bad_path_give_clear_errors(tmp_path):
    with pytest.raises(F.FamilyError, match="unknown family 'lama'"):
        F.check_family_name("lama", {})
    with pytest.raises(F.FamilyError, match="no config.json"):
        F.check_family_name("mine", {"path": str(tmp_path)})
    F.check_family_name("hub-model", {"path": "org/name"})  # hub ids are accepted as such


def test_smollm2_gguf_is_found():
    p = F.smollm2_gguf_path()
    assert p.suffix == ".gguf" and p.stat().st_size > 50_000_000
