"""rlsparsity diff: exact sparsity, below-ulp, tied weights, sharding, bad inputs (hand-built tensors)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _analysis_util import run_cli, save_model

from rlsparsity.analysis import diff as D
from rlsparsity.analysis import kernel as K
from rlsparsity.analysis.io import load_mask, open_checkpoint


def _diff(base, tuned, **kw):
    return D.diff_checkpoints(open_checkpoint(base), open_checkpoint(tuned), **kw)


def test_sparsity_at_each_tolerance_exact(tmp_path):
    deltas = [0.0] * 8 + [5e-9] * 3 + [5e-8] * 2 + [5e-7] * 3 + [5e-6] * 2 + [2e-5] * 2
    base = torch.zeros(4, 5)
    tuned = torch.tensor(deltas, dtype=torch.float32).reshape(4, 5)
    tuned.view(-1)[19] = -2e-5  # the sign must not matter
    b = save_model(tmp_path / "b", {"w": base})
    t = save_model(tmp_path / "t", {"w": tuned})
    s = _diff(b, t).summary()
    changed = {"0": 12, "1e-08": 9, "1e-07": 7, "1e-06": 4, "1e-05": 2}
    assert s["n_params"] == 20
    assert s["changed"] == changed
    assert s["sparsity"] == {k: 1.0 - c / 20 for k, c in changed.items()}
    assert list(s["sparsity"]) == ["0", "1e-08", "1e-07", "1e-06", "1e-05"]


def test_below_bf16_half_ulp_exact(tmp_path):
    # bf16-representable base values; half a bf16 ulp: 1.0 -> 2^-8, 0.5 -> 2^-9, 0 -> 2^-134
    base = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.5, 0.0, 2.0], dtype=torch.float32)
    tuned = torch.tensor([1 + 2**-9, 1 + 2**-8, 1 - 2**-9, 1 + 2**-7, 0.5 + 2**-9, 2.0**-135, 2.0],
                         dtype=torch.float32)
    s = _diff(save_model(tmp_path / "b", {"w": base}), save_model(tmp_path / "t", {"w": tuned})).summary()
    # below: 1+2^-9, 1-2^-9, 2^-135; ties (2^-8 at 1.0, 2^-9 at 0.5) are not below
    assert s["below_bf16_half_ulp"] == 3 / 7
    assert s["below_bf16_half_ulp_incl_zero"] == 4 / 7
    assert s["changed"]["0"] == 6


def test_half_ulp_formula():
    w = np.array([1.0, 1.5, 0.75, -3.0, 0.0, 2.0**-130, 2.0**-126, 65280.0])
    assert K.half_bf16_ulp(w).tolist() == [2.0**-8, 2.0**-8, 2.0**-9, 2.0**-7, 2.0**-134, 2.0**-134, 2.0**-134,
                                           2.0**7]


def test_ties_resolved_with_exact_delta():
    # fl64(1 - (-2^-60)) == 1.0 == t, but the exact |Δ| = 1 + 2^-60 > t; and 1 - 2^-60 < t
    a = np.array([-(2.0**-60), 2.0**-60])
    b = np.array([1.0, 1.0])
    st, _ = K.subset_stats(a[:1], b[:1], (1.0,))
    assert st.changed.tolist() == [1]
    st, _ = K.subset_stats(a[1:], b[1:], (1.0,))
    assert st.changed.tolist() == [0]


def test_signed_zero_unchanged_and_nan_inf_changed(tmp_path):
    base = torch.tensor([0.0, 1.0, float("inf"), 2.0, 3.0], dtype=torch.bfloat16)
    tuned = torch.tensor([-0.0, float("nan"), float("inf"), 2.0, 3.0], dtype=torch.bfloat16)
    res = _diff(save_model(tmp_path / "b", {"w": base}), save_model(tmp_path / "t", {"w": tuned}),
                mask_path=tmp_path / "m.safetensors")
    s = res.summary()
    assert s["changed"] == {k: 2 for k in ("0", "1e-08", "1e-07", "1e-06", "1e-05")}
    assert s["nonfinite"] == [{"name": "w", "count": 2}]
    assert load_mask(tmp_path / "m.safetensors")["w"].tolist() == [False, True, True, False, False]


def _llama_like(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"model.embed_tokens.weight": torch.randn(11, 8, generator=g).bfloat16(),
            "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8, generator=g).bfloat16(),
            "model.layers.0.mlp.down_proj.weight": torch.randn(8, 13, generator=g).bfloat16(),
            "model.layers.0.input_layernorm.weight": torch.ones(8).bfloat16(),
            "model.norm.weight": torch.ones(8).bfloat16()}


def _perturb(t: dict[str, torch.Tensor], every: int) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in t.items():
        bits = v.view(torch.int16).flatten().clone()
        bits[::every] ^= 1
        out[k] = bits.view(torch.bfloat16).reshape(v.shape)
    return out


def test_sharded_equals_single_file(tmp_path):
    base = _llama_like()
    tuned = _perturb(base, 3)
    r1 = _diff(save_model(tmp_path / "b1", base), save_model(tmp_path / "t1", tuned), mask_path=tmp_path / "m1")
    r2 = _diff(save_model(tmp_path / "b2", base, shards=3), save_model(tmp_path / "t2", tuned, shards=2),
               mask_path=tmp_path / "m2")
    assert r1.summary() == r2.summary()
    assert D.tensor_rows(r1) == D.tensor_rows(r2)
    m1, m2 = load_mask(tmp_path / "m1"), load_mask(tmp_path / "m2")
    assert m1.keys() == m2.keys() and all(torch.equal(m1[k], m2[k]) for k in m1)
    n = sum(v.numel() for v in base.values())
    assert r1.summary()["changed"]["0"] == sum((v.numel() + 2) // 3 for v in base.values())
    assert r1.n_params == n


def test_mask_matches_delta_and_chunking(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "CHUNK_ELEMS", 16)  # many chunks, mask written piecewise
    base = _llama_like()
    tuned = _perturb(base, 5)
    res = _diff(save_model(tmp_path / "b", base), save_model(tmp_path / "t", tuned), mask_path=tmp_path / "m",
                threads=3)
    masks = load_mask(tmp_path / "m")
    for k in base:
        assert torch.equal(masks[k], base[k].float() != tuned[k].float())
    assert res.summary()["changed"]["0"] == sum(int(m.sum()) for m in masks.values())


def test_tied_weights_counted_once(tmp_path):
    emb = torch.randn(6, 4).bfloat16()
    other = torch.randn(4, 4).bfloat16()
    both = {"model.embed_tokens.weight": emb, "lm_head.weight": emb.clone(), "model.layers.0.mlp.up_proj.weight": other}
    only = {"model.embed_tokens.weight": emb, "model.layers.0.mlp.up_proj.weight": other}
    tied = {"tie_word_embeddings": True}
    s = _diff(save_model(tmp_path / "b", both, tied), save_model(tmp_path / "t", both, tied)).summary()
    assert s["n_params"] == 24 + 16
    assert s["tied"] == [{"name": "lm_head.weight", "tied_to": "model.embed_tokens.weight"}]
    s = _diff(save_model(tmp_path / "b2", only, tied), save_model(tmp_path / "t2", both, tied)).summary()
    assert s["n_params"] == 24 + 16 and s["missing"] == []
    untied = {"tie_word_embeddings": False}
    s = _diff(save_model(tmp_path / "b3", both, untied), save_model(tmp_path / "t3", both, untied)).summary()
    assert s["n_params"] == 24 + 24 + 16 and s["tied"] == []


def test_shape_mismatch_compares_overlap(tmp_path):
    base = torch.zeros(6, 4)
    tuned = torch.zeros(8, 4)
    tuned[2, 1] = 1.0  # one change in the overlap; 8 extra entries count as changed
    s = _diff(save_model(tmp_path / "b", {"emb": base, "n": torch.ones(3)}),
              save_model(tmp_path / "t", {"emb": tuned, "n": torch.ones(3)})).summary()
    assert s["mismatched"] == [{"name": "emb", "base_shape": [6, 4], "tuned_shape": [8, 4], "compared_shape": [6, 4],
                                "extra_tuned_counted_changed": 8, "extra_base_not_counted": 0}]
    assert s["n_params"] == 32 + 3
    assert s["changed"]["0"] == 9 and s["changed"]["1e-05"] == 9


def test_missing_and_dtype_mismatch(tmp_path):
    base = {"a": torch.tensor([1.0, 2.0, 3.0]).bfloat16(), "only_base": torch.ones(2)}
    tuned = {"a": torch.tensor([1.0, 2.0, 3.5], dtype=torch.float32), "only_tuned": torch.ones(5)}
    s = _diff(save_model(tmp_path / "b", base), save_model(tmp_path / "t", tuned)).summary()
    assert s["dtype_mismatch"] == [{"name": "a", "base_dtype": "BF16", "tuned_dtype": "F32"}]
    assert [(m["name"], m["side"]) for m in s["missing"]] == [("only_base", "tuned"), ("only_tuned", "base")]
    assert s["n_params"] == 3 and s["changed"]["0"] == 1


def test_cli_json_and_outputs(tmp_path):
    base = _llama_like()
    tuned = _perturb(base, 4)
    b, t = save_model(tmp_path / "b", base), save_model(tmp_path / "t", tuned)
    p = run_cli("diff", str(b), str(t), "--json", "--out", str(tmp_path / "out"), "--tolerances", "0", "1e-5")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert set(s["sparsity"]) == {"0", "1e-05"}
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["sparsity"] == s["sparsity"] and on_disk["base"] == str(b)
    header = (tmp_path / "out" / "tensors.csv").read_text().splitlines()[0].split(",")
    assert header == ["name", "layer", "matrix_type", "shape", "numel", "changed_0", "changed_1e-05", "below_ulp",
                      "nonfinite", "max_abs_delta", "l2_delta", "dtype_base", "dtype_tuned"]
    assert set(load_mask(tmp_path / "out" / "mask.safetensors")) == set(base)


def _assert_clean_error(p, *words):
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    for w in words:
        assert w in p.stderr


def test_truncated_file_wrong_path_and_pickle_refused(tmp_path):
    b = save_model(tmp_path / "b", {"w": torch.ones(100)})
    t = save_model(tmp_path / "t", {"w": torch.ones(100)})
    f = t / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-40])
    _assert_clean_error(run_cli("diff", str(b), str(t)), "truncated")
    _assert_clean_error(run_cli("diff", str(b), str(tmp_path / "nope")), "no such file")
    (tmp_path / "pt").mkdir()
    (tmp_path / "pt" / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    _assert_clean_error(run_cli("diff", str(b), str(tmp_path / "pt")), "safetensors", "never unpickled")
    _assert_clean_error(run_cli("diff", str(b), str(tmp_path / "pt" / "pytorch_model.bin")), "refused")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    _assert_clean_error(run_cli("diff", str(b), str(tmp_path / "junk")), "corrupt")


@pytest.mark.parametrize("p,expected", [(0.25, [0, 1, 0, 0, 0, 0, 0, 1]), (0.5, [0, 1, 1, 1, 0, 0, 0, 1])])
def test_topk_mask_exact(tmp_path, p, expected):
    from rlsparsity.analysis.overlap import topk_mask

    base = torch.zeros(8)
    tuned = torch.tensor([0.0, -4.0, 2.0, 2.0, 0.5, 0.0, 1.0, 8.0])  # p=0.5: k=4, ties at 2.0 both in
    b = open_checkpoint(save_model(tmp_path / "b", {"w": base}))
    t = open_checkpoint(save_model(tmp_path / "t", {"w": tuned}))
    stream, shapes = D.delta_stream(b, t)
    info = topk_mask(stream, p, shapes, tmp_path / "top.safetensors")
    assert load_mask(tmp_path / "top.safetensors")["w"].int().tolist() == expected
    assert info["k"] == int(p * 8)


def _reference_chunk(a, b, dt, tols, mask_tol):
    """The all-float64 path (exact by TwoSum tie resolution) on the same chunk."""
    m, idx, x, y = K.changed_positions(a, b, dt, dt)
    st = K.Stats.zero(len(tols))
    K._subset_into(st, m, idx, x, y, tols, mask_tol)
    return st, m


def _bits(values: np.ndarray, name: str) -> np.ndarray:
    f32 = values.astype(np.float32)
    if name == "BF16":
        return (f32.view(np.uint32) >> 16).astype(np.uint16)  # truncation: any bf16 pattern will do
    with np.errstate(over="ignore"):
        return values.astype(np.float16).view(np.uint16) if name == "F16" else f32.view(np.uint32)


@pytest.mark.parametrize("name", ["BF16", "F16", "F32"])
@pytest.mark.parametrize("device", ["cpu", "cpu:0"])  # "cpu:0": the torch ops of the --device path
def test_float32_fast_path_equals_float64_path(name, device):
    from rlsparsity.analysis.header import DTYPES

    dt, tols, rng = DTYPES[name], D.DEFAULT_TOLERANCES, np.random.default_rng(7)
    sign = 1 << (8 * dt.itemsize - 1)
    for _ in range(12):
        n = 4000
        base = rng.standard_normal(n) * 10.0 ** rng.integers(-12, 3, n)
        base[rng.random(n) < 0.05] = 0.0
        tuned = base + rng.standard_normal(n) * 10.0 ** rng.integers(-9, 0, n)
        flip = rng.random(n) < 0.02
        tuned[flip] = -base[flip]  # sign flips: not proven exact in float32
        a, b = _bits(base, name), _bits(tuned, name)
        same = rng.random(n) < 0.5
        b[same] = a[same]
        a[:3], b[:3] = 0, _bits(np.array([1e-5, 2e-5, 1e-6]), name)  # Δ on (rounded) tolerances
        a[5], b[5] = 0, sign  # +0 vs -0: unchanged
        b[6], b[7] = dt.nonfinite_at, dt.nonfinite_at + 1  # inf, NaN tuned
        a[8], b[8] = dt.nonfinite_at - 1, (dt.nonfinite_at - 1) | sign  # max vs -max: float32 overflow
        a[9], b[9] = 1, 2  # subnormals
        for mask_tol in (0.0, 1e-6):
            ref, ref_mask = _reference_chunk(a, b, dt, tols, mask_tol)
            st, mask = K.chunk_stats(a, b, dt, dt, tols, mask_tol, device)
            assert st.changed.tolist() == ref.changed.tolist()
            assert (st.below_ulp, st.nonfinite, st.max_abs) == (ref.below_ulp, ref.nonfinite, ref.max_abs)
            assert st.sumsq == pytest.approx(ref.sumsq, rel=1e-12)
            assert np.array_equal(mask, ref_mask)


def test_nonfinite_base_detected_in_both_signs():
    from rlsparsity.analysis.header import DTYPES

    for name in ("BF16", "F16", "F32"):
        dt = DTYPES[name]
        sign = 1 << (8 * dt.itemsize - 1)
        finite = np.array([0, 1, dt.nonfinite_at - 1, (dt.nonfinite_at - 1) | sign, sign], dtype=dt.bits)
        assert not K._has_nonfinite(finite, dt)
        for bad in (dt.nonfinite_at, dt.nonfinite_at | sign, (1 << (8 * dt.itemsize)) - 1, sign - 1):
            assert K._has_nonfinite(np.append(finite, dt.bits.type(bad)), dt)


def test_one_progress_line_per_finished_shard(tmp_path):
    base = _llama_like()
    tuned = _perturb(base, 3)
    lines: list[str] = []
    _diff(save_model(tmp_path / "b", base), save_model(tmp_path / "t", tuned, shards=2), log=lines.append)
    assert [ln.split(":")[0].split()[:3] for ln in lines] == [["[diff]", "shard", "1/2"], ["[diff]", "shard", "2/2"]]
    assert sum(int(ln.split(": ")[1].split()[0]) for ln in lines) == len(base)  # every tensor in one shard line
    assert len({ln.split()[3] for ln in lines}) == 2  # two different shard files named
    single: list[str] = []
    _diff(save_model(tmp_path / "b1", base), save_model(tmp_path / "t1", tuned), log=single.append)
    assert single == []
