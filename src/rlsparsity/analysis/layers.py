"""Tensor names -> (layer index, matrix type), and sparsity per layer x matrix type.

Matrix types: q, k, v, o, kv (DeepSeek MLA's joint kv_a/kv_b projections), qkv (fused
q/k/v: phi3 qkv_proj, gpt_neox query_key_value, gpt2 c_attn), gate, up, down, gate_up
(phi3's fused gate_up_proj), norm, embed (token and position embeddings), lm_head,
expert (routed and shared MoE experts), router (MoE gate and its bias), other.
A bias gets the type of its weight.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

MATRIX_TYPES: tuple[str, ...] = ("q", "k", "v", "o", "kv", "qkv", "gate", "up", "down", "gate_up",
                                 "norm", "embed", "lm_head", "expert", "router", "other")

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
_MODULE_TYPES = {
    "q_proj": "q", "q_a_proj": "q", "q_b_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
    "kv_a_proj_with_mqa": "kv", "kv_b_proj": "kv",
    "qkv_proj": "qkv", "query_key_value": "qkv", "c_attn": "qkv", "W_pack": "qkv",
    "gate_proj": "gate", "w1": "gate", "up_proj": "up", "w3": "up", "down_proj": "down", "w2": "down",
    "gate_up_proj": "gate_up", "dense_h_to_4h": "up", "dense_4h_to_h": "down", "c_fc": "up",
    "fc1": "up", "fc2": "down",
}
_EMBED = ("embed_tokens", "wte", "wpe", "embed_in", "word_embeddings", "embed_positions")


def parse_name(name: str) -> tuple[int | None, str]:
    """(layer index or None, matrix type) of a parameter name (see module docstring)."""
    m = _LAYER.search(name)
    layer = int(m.group(1)) if m else None
    parts = name.split(".")
    module = parts[-2] if len(parts) >= 2 else parts[0]
    parent = parts[-3] if len(parts) >= 3 else ""
    return layer, _matrix_type(name, parts, module, parent)


def _matrix_type(name: str, parts: list[str], module: str, parent: str) -> str:
    if any(p in _EMBED for p in parts):
        return "embed"
    if parts[0] in ("lm_head", "embed_out"):
        return "lm_head"
    if "norm" in module or module.startswith("ln_") or module == "ln_f":
        return "norm"
    if "experts" in parts or "shared_experts" in parts:
        return "expert"
    if (module == "gate" and parent == "mlp") or module == "router":
        return "router"
    if module in _MODULE_TYPES:
        return _MODULE_TYPES[module]
    if module == "dense" and parent == "attention":
        return "o"
    if module == "c_proj":
        return {"attn": "o", "mlp": "down"}.get(parent, "other")
    return "other"


def layer_table(rows: list[dict[str, Any]], tolerances: list[str]) -> list[dict[str, Any]]:
    """Tidy sparsity per (layer, matrix_type, tolerance) from tensors.csv rows.

    ``sparsity`` = 1 − Σ changed_<tol> / Σ numel over the group's tensors;
    ``below_bf16_half_ulp`` = Σ below_ulp / Σ numel. Layer None sorts first, as -1.
    """
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in rows:
        layer = r["layer"]
        key = (-1 if layer is None or layer == "" or layer != layer else int(layer), r["matrix_type"])
        groups.setdefault(key, []).append(r)
    out = []
    for (layer, mtype), grp in sorted(groups.items()):
        numel = sum(int(r["numel"]) for r in grp)
        below = sum(int(r["below_ulp"]) for r in grp)
        for tol in tolerances:
            changed = sum(int(r[f"changed_{tol}"]) for r in grp)
            out.append({"layer": layer, "matrix_type": mtype, "n_tensors": len(grp), "numel": numel,
                        "tolerance": float(tol), "sparsity": 1 - changed / numel if numel else float("nan"),
                        "below_bf16_half_ulp": below / numel if numel else float("nan")})
    return out


TENSOR_COLUMNS: tuple[str, ...] = ("layer", "matrix_type", "numel", "below_ulp")


def check_tensor_rows(path: Path, rows: list[dict[str, Any]]) -> list[str]:
    """The tolerances (``changed_<tol>`` columns) of a tensors.csv written by ``rlsparsity diff --out``;
    ValueError naming the file, row and column for anything else."""
    if not rows:
        raise ValueError(f"{path}: no data rows (expected a tensors.csv written by `rlsparsity diff --out`)")
    cols = list(rows[0])
    tols = [c[len("changed_"):] for c in cols if c.startswith("changed_")]
    missing = [c for c in TENSOR_COLUMNS if c not in cols]
    if missing or not tols:
        raise ValueError(f"{path}: not a tensors.csv of `rlsparsity diff --out` (missing column(s) "
                         f"{', '.join(missing + ([] if tols else ['changed_<tol>']))})")
    for t in tols:
        try:
            float(t)
        except ValueError:
            raise ValueError(f"{path}: column changed_{t}: {t!r} is not a tolerance") from None
    for i, r in enumerate(rows, start=2):  # line 1 is the header
        for c in ("numel", "below_ulp", *(f"changed_{t}" for t in tols)):
            v = r.get(c)
            if v is None or not v.strip().isdigit():
                raise ValueError(f"{path}, line {i}: column {c} is {v!r}, not a count")
        if r["layer"] not in ("", None) and not str(r["layer"]).strip().lstrip("-").isdigit():
            raise ValueError(f"{path}, line {i}: column layer is {r['layer']!r}, not a layer index")
        if int(r[f"changed_{tols[0]}"]) > int(r["numel"]):
            raise ValueError(f"{path}, line {i}: more changed entries than numel")
    return tols
