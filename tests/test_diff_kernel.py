"""The CPU diff kernel's two layouts (gathered changed entries / dense blocks) give the exact results."""

from __future__ import annotations

import numpy as np
import pytest
from test_diff import _bits, _reference_chunk

from rlsparsity.analysis import diff as D
from rlsparsity.analysis import kernel as K
from rlsparsity.analysis.header import DTYPES


@pytest.mark.parametrize("name", ["BF16", "F16", "F32"])
@pytest.mark.parametrize("changed", [0.1, 0.9])
@pytest.mark.parametrize("dense", [False, True])
def test_sparse_and_dense_layouts_equal_float64_path(monkeypatch, name, changed, dense):
    monkeypatch.setattr(K, "DENSE_FRACTION", 0.0 if dense else 2.0)
    monkeypatch.setattr(K, "BLOCK", 1000)  # several blocks and a partial one
    dt, tols, rng = DTYPES[name], D.DEFAULT_TOLERANCES, np.random.default_rng(11)
    sign = 1 << (8 * dt.itemsize - 1)
    for _ in range(6):
        n = 4500
        base = rng.standard_normal(n) * 10.0 ** rng.integers(-12, 3, n)
        base[rng.random(n) < 0.05] = 0.0
        tuned = base + rng.standard_normal(n) * 10.0 ** rng.integers(-9, 0, n)
        flip = rng.random(n) < 0.02
        tuned[flip] = -base[flip]
        a, b = _bits(base, name), _bits(tuned, name)
        same = rng.random(n) >= changed
        b[same] = a[same]
        a[:3], b[:3] = 0, _bits(np.array([1e-5, 2e-5, 1e-6]), name)
        a[1200], b[1200] = 0, sign  # +0 vs -0 in the second block: unchanged
        b[2100], b[3333] = dt.nonfinite_at, dt.nonfinite_at + 1  # inf, NaN tuned
        a[4400], b[4400] = dt.nonfinite_at - 1, (dt.nonfinite_at - 1) | sign  # float32 overflow
        a[9], b[9] = 1, 2  # subnormals
        for mask_tol in (0.0, 1e-6):
            ref, ref_mask = _reference_chunk(a, b, dt, tols, mask_tol)
            a0, b0 = a.copy(), b.copy()
            st, mask = K.chunk_stats(a, b, dt, dt, tols, mask_tol)
            assert np.array_equal(a, a0) and np.array_equal(b, b0)  # the read buffers are not scratch space
            assert st.changed.tolist() == ref.changed.tolist()
            assert (st.below_ulp, st.nonfinite, st.max_abs) == (ref.below_ulp, ref.nonfinite, ref.max_abs)
            assert st.sumsq == pytest.approx(ref.sumsq, rel=1e-12)
            assert np.array_equal(mask, ref_mask)


def test_dense_layout_is_taken_for_mostly_changed_blocks(monkeypatch):
    calls = []
    monkeypatch.setattr(K, "_dense_block", lambda *a: calls.append(1) or K.Stats.zero(1))
    dt = DTYPES["BF16"]
    a = np.arange(100, dtype=np.uint16) + 16000
    b = a.copy()
    b[:49] += 1
    K.chunk_stats(a, b, dt, dt, (0.0,))
    assert not calls  # 49 % changed: gathered
    b[49] += 1
    K.chunk_stats(a, b, dt, dt, (0.0,))
    assert calls == [1]  # 50 %: dense


def test_keep_freed_memory_is_harmless():
    D.keep_freed_memory()  # glibc: mallopt; elsewhere a no-op
    x = np.ones(1 << 20)
    assert float(x.sum()) == float(1 << 20)


def test_diff_with_device_cuda_runs_on_the_cpu(tmp_path, monkeypatch):
    """--device cuda: the CPU kernel (measured faster, see diff.kernel_device), one log line, same result."""
    import torch
    from _analysis_util import save_model

    from rlsparsity.analysis.io import open_checkpoint

    monkeypatch.delenv(D.GPU_KERNEL_ENV, raising=False)
    base = torch.zeros(64, dtype=torch.bfloat16)
    tuned = base.clone()
    tuned[:5] = 1.0
    b = open_checkpoint(save_model(tmp_path / "b", {"w": base}))
    t = open_checkpoint(save_model(tmp_path / "t", {"w": tuned}))
    lines: list[str] = []
    res = D.diff_checkpoints(b, t, (0.0,), device="cuda", log=lines.append)
    assert res.summary()["changed"] == {"0": 5}
    assert len(lines) == 1 and "runs on the CPU" in lines[0]
    assert D.kernel_device("cuda:1") == "cpu" and D.kernel_device("cpu:0") == "cpu:0"
    monkeypatch.setenv(D.GPU_KERNEL_ENV, "1")
    assert D.kernel_device("cuda") == "cuda"
