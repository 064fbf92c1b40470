"""Token-entropy statistics (arXiv 2506.01939): responses sampled once from the base, the
entropies of the base and of each trained policy on them, the share below 0.01, the 80th
percentile, and the overlap of the top-20 % positions (selected by the official exact-k rule).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rlsparsity.entropy_mask import select_tokens

#: Paper: the 80th percentile / top 20% defines the high-entropy ("forking") tokens.
STATS_TOP = 0.2
LOW_ENTROPY = 1e-2


def sample_responses(model: Any, tok: Any, task: Any, n_prompts: int, n_samples: int, temperature: float,
                     seed: int = 0, max_new_tokens: int | None = None, batch_prompts: int = 16) -> dict[str, Any]:
    """Held-out responses sampled once from ``model``: ``n_samples`` per test prompt.

    Returns right-aligned tensors padded to one width: input_ids, attention_mask, prompt_len,
    completion_mask (1 up to and including the first EOS)."""
    import torch

    from rlsparsity.algorithms.common import seed_everything
    from rlsparsity.algorithms.rollout import sample
    from rlsparsity.modeling import max_new_tokens_for

    seed_everything(seed)
    mnt = max_new_tokens or max_new_tokens_for(model, task)
    prompts = [task.prompt(e, tok) for e in task.test[:n_prompts]]
    parts = []
    for i in range(0, len(prompts), batch_prompts):
        parts.append(sample(model, tok, prompts[i:i + batch_prompts], n_samples, mnt, temperature))
    P = max(r.prompt_len for r in parts)
    C = max(r.completion_mask.shape[1] for r in parts)
    pad = tok.pad_token_id
    ids, att, cm = [], [], []
    for r in parts:
        B, p = r.input_ids.shape[0], r.prompt_len
        c = r.completion_mask.shape[1]
        left = P - p
        dev = r.input_ids.device
        prompt_ids = torch.cat([torch.full((B, left), pad, dtype=r.input_ids.dtype, device=dev),
                                r.input_ids[:, :p]], 1)
        prompt_att = torch.cat([torch.zeros(B, left, dtype=r.attention_mask.dtype, device=dev),
                                r.attention_mask[:, :p]], 1)
        comp = torch.cat([r.input_ids[:, p:], torch.full((B, C - c), pad, dtype=r.input_ids.dtype, device=dev)], 1)
        catt = torch.cat([r.attention_mask[:, p:], torch.zeros(B, C - c, dtype=r.attention_mask.dtype, device=dev)], 1)
        ids.append(torch.cat([prompt_ids, comp], 1))
        att.append(torch.cat([prompt_att, catt], 1))
        cm.append(torch.cat([r.completion_mask, torch.zeros(B, C - c, device=dev)], 1))
    return {"input_ids": torch.cat(ids), "attention_mask": torch.cat(att), "prompt_len": P,
            "completion_mask": torch.cat(cm), "temperature": float(temperature)}


def score_entropies(model: Any, responses: dict[str, Any], batch_size: int = 64) -> Any:
    """Token entropies (B, C) of the responses' completion tokens under ``model`` (0 on padding)."""
    import torch

    from rlsparsity.algorithms.rollout import token_logprobs

    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, responses["input_ids"].shape[0], batch_size):
            _, ent = token_logprobs(model, responses["input_ids"][i:i + batch_size],
                                    responses["attention_mask"][i:i + batch_size], responses["prompt_len"],
                                    responses["temperature"], with_entropy=True)
            out.append(ent.float())
    if was_training:
        model.train()
    return torch.cat(out) * responses["completion_mask"]


def entropy_stats(entropies: Any, mask: Any) -> dict[str, Any]:
    """Fraction of tokens with H < 1e-2, the 80th percentile, mean, token count."""
    import torch

    v = entropies[mask.bool()].double()
    if v.numel() == 0:
        return {"n_tokens": 0, "mean_entropy": math.nan, "frac_below_1e-2": math.nan, "p80_entropy": math.nan}
    return {"n_tokens": int(v.numel()), "mean_entropy": float(v.mean()),
            "frac_below_1e-2": float((v < LOW_ENTROPY).double().mean()),
            "p80_entropy": float(torch.quantile(v, 1.0 - STATS_TOP))}


def position_overlap(a: Any, b: Any) -> dict[str, float]:
    """|A ∩ B| / |A| (share of A's positions that are also in B) and the Jaccard index."""
    inter, na, union = int((a & b).sum()), int(a.sum()), int((a | b).sum())
    return {"overlap": inter / na if na else math.nan, "jaccard": inter / union if union else math.nan}


def forking_tokens(entropies: Any, mask: Any, completion_ids: Any, tok: Any, k: int = 10) -> list[dict[str, Any]]:
    """The tokens most often in the top-20% entropy set: token, count in the top set, count overall."""
    from collections import Counter

    top = select_tokens(entropies, mask, STATS_TOP, "top")
    in_top = Counter(completion_ids[top].tolist())
    total = Counter(completion_ids[mask.bool()].tolist())
    out = []
    for tid, c in in_top.most_common(k):
        out.append({"token": tok.convert_ids_to_tokens(int(tid)), "id": int(tid), "top20": c, "total": total[tid]})
    return out


def format_forking(items: list[dict[str, Any]]) -> str:
    return " ".join(f"{json.dumps(x['token'])}:{x['top20']}/{x['total']}" for x in items)


def compare_entropies(base_ent: Any, other_ent: Any, mask: Any) -> dict[str, float]:
    """Overlap of the top-20% positions of two entropy maps over the same responses."""
    a = select_tokens(base_ent, mask, STATS_TOP, "top")
    b = select_tokens(other_ent, mask, STATS_TOP, "top")
    return position_overlap(a, b)


def stats_rows(base_dir: Path, models: dict[str, Path], task: Any, n_prompts: int, n_samples: int,
               temperature: float, seed: int = 0, row_extra: dict[str, dict[str, Any]] | None = None,
               family: str = "", device: str = "cpu") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """entropy_stats rows: the base and every model in ``models`` (label -> folder), scored on
    the same responses sampled once from the base (on ``device``; statistics on the CPU)."""
    from rlsparsity.modeling import load_model, load_tokenizer

    tok = load_tokenizer(base_dir)
    base = load_model(base_dir, "fp32", device)
    resp = sample_responses(base, tok, task, n_prompts, n_samples, temperature, seed,
                            batch_prompts=16 if device == "cpu" else 128)
    h0 = score_entropies(base, resp).cpu()
    resp = {k: (v.cpu() if hasattr(v, "cpu") else v) for k, v in resp.items()}
    mask = resp["completion_mask"]
    comp_ids = resp["input_ids"][:, resp["prompt_len"]:]
    n_resp = int(mask.shape[0])
    rows = [{"family": family, "model": "base", **(row_extra or {}).get("base", {}), "n_responses": n_resp,
             **entropy_stats(h0, mask), "top20_overlap_with_base": 1.0, "top20_jaccard_with_base": 1.0,
             "forking_tokens": format_forking(forking_tokens(h0, mask, comp_ids, tok))}]
    for label, folder in models.items():
        m = load_model(folder, "fp32", device)
        h = score_entropies(m, {k: (v.to(device) if hasattr(v, "to") else v) for k, v in resp.items()}).cpu()
        ov = compare_entropies(h0, h, mask)
        rows.append({"family": family, "model": label, **(row_extra or {}).get(label, {}), "n_responses": n_resp,
                     **entropy_stats(h, mask), "top20_overlap_with_base": ov["overlap"],
                     "top20_jaccard_with_base": ov["jaccard"],
                     "forking_tokens": format_forking(forking_tokens(h, mask, comp_ids, tok))})
    info = {"n_responses": n_resp, "n_tokens": int(mask.sum()), "temperature": temperature,
            "mean_completion_tokens": float(mask.sum(1).mean())}
    return rows, info
