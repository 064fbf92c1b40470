"""Overlap of update masks: o1, o2, chance baselines and Jaccard on hand-built masks."""

from __future__ import annotations

import json

import numpy as np
from _analysis_util import run_cli

from rlsparsity.analysis.io import MaskWriter
from rlsparsity.analysis.overlap import overlap_masks, overlap_stats


def _write(path, masks):
    w = MaskWriter(path, {k: v.shape for k, v in masks.items()})
    for k, v in masks.items():
        w.write(k, 0, v.ravel())
    w.close()
    return path


def test_overlap_stats_exact():
    s = overlap_stats(10, 4, 3, 2)
    assert s["o1"] == 2 / 4 and s["o2"] == 2 / 3 and s["jaccard"] == 2 / 5
    assert s["s1"] == 1 - 4 / 10 and s["s2"] == 1 - 3 / 10
    assert s["o1_random"] == 1 - (1 - 3 / 10) and s["o2_random"] == 1 - (1 - 4 / 10)
    empty = overlap_stats(10, 0, 3, 0)
    assert np.isnan(empty["o1"]) and empty["o2"] == 0.0


def test_overlap_masks_total_and_per_tensor(tmp_path):
    a = {"w": np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool), "m": np.array([[1, 0, 1], [0, 0, 1], [1, 1, 1]], bool)}
    b = {"w": np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 0], bool), "m": np.array([[1, 1, 1], [0, 0, 0], [0, 0, 1]], bool)}
    total, rows = overlap_masks(_write(tmp_path / "a.safetensors", a), _write(tmp_path / "b.safetensors", b))
    per = {r["tensor"]: r for r in rows}
    assert (per["w"]["n_updated_a"], per["w"]["n_updated_b"], per["w"]["n_both"]) == (4, 3, 2)
    assert (per["m"]["n"], per["m"]["n_updated_a"], per["m"]["n_updated_b"], per["m"]["n_both"]) == (9, 6, 4, 3)
    assert total == {**overlap_stats(19, 10, 7, 5), "skipped": []}
    assert total["o1"] == 5 / 10 and total["o2"] == 5 / 7 and total["jaccard"] == 5 / 12
    p = run_cli("overlap", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--json",
                "--per-tensor", str(tmp_path / "per.csv"))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["o2_random"] == 1 - (1 - 10 / 19)
    assert len((tmp_path / "per.csv").read_text().splitlines()) == 3


def test_overlap_skips_and_reports_shape_differences(tmp_path):
    a = {"w": np.ones(4, bool), "x": np.ones(3, bool)}
    b = {"w": np.ones(4, bool), "x": np.ones(5, bool)}
    total, rows = overlap_masks(_write(tmp_path / "a", a), _write(tmp_path / "b", b))
    assert total["skipped"] == ["x"] and [r["tensor"] for r in rows] == ["w"]
