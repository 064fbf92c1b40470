"""rlsparsity.masks: the magnitude-matched random control and agreement on the mask's entries,
on hand-built tensors with exact expected results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rlsparsity import masks as M


def test_magnitude_bins_are_octaves():
    w = np.array([1.0, 1.5, 2.0, 0.5, 0.75, -3.0, 0.0, 2.0 ** -10, -(2.0 ** -10) * 1.9])
    assert M.magnitude_bins(w).tolist() == [0, 0, 1, -1, -1, 1, -100000, -10, -10]


def test_magnitude_matched_control_keeps_count_per_tensor_and_bin():
    # tensor "a": bins 0 (|w| in [1, 2)) x6, bin 3 (|w| in [8, 16)) x6, zeros x4
    a_w = np.array([1.0, 1.1, 1.2, 1.3, 1.4, 1.9, 8.0, 9.0, 10.0, 11.0, 12.0, 15.0, 0.0, 0.0, 0.0, 0.0]).reshape(4, 4)
    b_w = np.linspace(0.01, 0.02, 10)  # two octaves: [2^-7, 2^-6) and [2^-6, 2^-5)
    a_m = torch.zeros(4, 4, dtype=torch.bool)
    a_m.view(-1)[[0, 1, 12]] = True            # 2 in bin 0, 1 zero entry, none in bin 3
    b_m = torch.zeros(10, dtype=torch.bool)
    b_m[[9]] = True
    mask = {"a": a_m, "b": b_m, "empty": torch.zeros(3, dtype=torch.bool)}
    w = {"a": a_w, "b": b_w, "empty": np.ones(3)}
    want = M.bin_counts(mask, w)
    assert want == {("a", 0): 2, ("a", -100000): 1, ("b", int(M.magnitude_bins(b_w)[9])): 1}
    for seed in range(5):
        r = M.random_mask_magnitude_matched(mask, w, seed)
        assert M.bin_counts(r, w) == want  # exactly the same count in every (tensor, bin)
        assert all(r[k].shape == mask[k].shape and r[k].dtype == torch.bool for k in mask)
        assert not r["a"].view(-1)[6:12].any()  # never in the large-|w| bin the mask avoided
        assert int(r["a"].view(-1)[12:].sum()) == 1
    r1, r2 = M.random_mask_magnitude_matched(mask, w, 7), M.random_mask_magnitude_matched(mask, w, 7)
    assert all(torch.equal(r1[k], r2[k]) for k in mask)  # seeded
    seen = {tuple(M.random_mask_magnitude_matched(mask, w, s)["a"].view(-1)[:6].nonzero().view(-1).tolist())
            for s in range(20)}
    assert len(seen) > 3  # positions are random within the bin


def test_magnitude_matched_control_rejects_mismatch():
    with pytest.raises(ValueError, match="no base weights"):
        M.random_mask_magnitude_matched({"x": torch.ones(2, dtype=torch.bool)}, {}, 0)
    with pytest.raises(ValueError, match="entries"):
        M.random_mask_magnitude_matched({"x": torch.ones(2, dtype=torch.bool)}, {"x": np.ones(3)}, 0)


def _folder(path, tensors):
    path.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    return path


def test_masked_agreement_counts_only_the_mask(tmp_path):
    full = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float32)
    sub = full.clone()
    sub[1] += 1e-3   # masked, disagrees at 1e-5 and 1e-4
    sub[2] += 5e-6   # masked, agrees from 1e-5 on
    sub[5] += 1.0    # NOT masked: ignored
    a, b = (
        _folder(tmp_path / "full", {"w": full, "z": torch.zeros(3)}),
        _folder(tmp_path / "sub", {"w": sub, "z": torch.zeros(3)}),
    )
    mask = {"w": torch.tensor([True, True, True, True, False, False]), "z": torch.zeros(3, dtype=torch.bool)}
    agr = M.masked_agreement(a, b, mask, (0.0, 1e-5, 1e-4))
    assert agr == {"0": 2 / 4, "1e-05": 3 / 4, "0.0001": 3 / 4}
    # all entries (the paper's count) reads higher: the 5 unmasked/frozen entries mostly agree
    assert M.agreement(a, b, (1e-5,)) == {"1e-05": 7 / 9}
    empty = M.masked_agreement(a, b, {"w": torch.zeros(6, dtype=torch.bool)}, (0.0,))
    assert np.isnan(empty["0"])
