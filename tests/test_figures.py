"""Figure functions on hand-built tables: each writes a non-trivial PNG, and what it draws is
exactly the data (heatmap arrays equal the pivots, bar heights equal the means, ...). Plus the
registry, the CLI and SUMMARY.md verdicts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import _figure_data as D
import numpy as np
import pandas as pd
import pytest
import yaml

from rlsparsity.figures import FIGURES, families, figures_for, paper

REPO = Path(__file__).resolve().parents[1]
MIN_PNG = 8_000  # bytes: a blank 1-axes PNG is ~3-5 kB


def _png(path: Path) -> None:
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > MIN_PNG, path.stat().st_size


def _bars(ax) -> list[float]:
    return [p.get_height() for p in ax.patches]


def test_sparsity_heatmap_values_equal_pivot(tmp_path):
    from rlsparsity.figures.sparsity import sparsity_heatmap

    df = D.sparsity()
    p = sparsity_heatmap(df, tmp_path / "h.png")
    _png(p.path)
    sel = df[np.isclose(df["tolerance"], 1e-5) & (df["precision"] == "bf16") & (df["data"] == "on_policy")]
    want = sel.groupby(["algorithm", "family"])["sparsity"].mean().unstack() * 100
    piv = p.data["pivot"]
    assert list(piv.index) == ["ppo", "grpo", "dpo", "sft"]  # paper order, SFT last
    np.testing.assert_allclose(piv.to_numpy(), want.loc[piv.index, piv.columns].to_numpy())
    np.testing.assert_allclose(np.asarray(p.axes[0].images[0].get_array()), piv.to_numpy())
    assert p.data["paper"]["dpo"] == pytest.approx((81.4 + 95.2) / 2)
    texts = [t.get_text() for t in p.axes[1].texts]
    assert "81.4 / 95.2" in texts and "80.8" in texts


def test_sparsity_tolerance_lines(tmp_path):
    from rlsparsity.figures.sparsity import sparsity_tolerance

    df = D.sparsity()
    p = sparsity_tolerance(df, tmp_path / "t.png")
    _png(p.path)
    assert list(p.data["tables"]) == ["bf16", "fp32-master", "fp32"]
    fp32 = p.data["tables"]["fp32"]
    sel = df[(df["precision"] == "fp32") & (df["algorithm"] == "grpo") & (df["data"] == "on_policy")]
    want = sel.groupby("tolerance")["sparsity"].mean().to_numpy() * 100
    np.testing.assert_allclose(fp32.loc["grpo"].to_numpy(), want)
    line = [ln for ln in p.axes[2].lines if ln.get_label() == "grpo"][0]
    np.testing.assert_allclose(line.get_ydata(), want)


def test_precision_decomposition_sums_to_100(tmp_path):
    from rlsparsity.figures.sparsity import precision_decomposition

    p = precision_decomposition(D.sparsity(), tmp_path / "d.png")
    _png(p.path)
    t = p.data["table"]
    np.testing.assert_allclose(t[["unchanged", "below_half_ulp", "changed"]].sum(axis=1), 100.0)
    row = t[(t["algorithm"] == "ppo") & (t["precision"] == "fp32")].iloc[0]
    assert row["below_half_ulp"] == pytest.approx(60.0) and row["unchanged"] == pytest.approx(
        1.0
    )  # (2 % + 0 %) / 2 families
    # stacked bars: first len(t) patches are "unchanged", next "below", then "changed"
    h = _bars(p.axes[0])
    n = len(t)
    np.testing.assert_allclose(h[:n], t["unchanged"])
    np.testing.assert_allclose(h[n : 2 * n], t["below_half_ulp"])


def test_layers_heatmap(tmp_path):
    from rlsparsity.figures.layers import layers_heatmap

    df = D.layers()
    p = layers_heatmap(df, tmp_path / "l.png")
    _png(p.path)
    lp = p.data["layer_pivot"]
    assert lp.loc["norm", 0] == pytest.approx(95.0) and lp.loc["q", 1] == pytest.approx(81.0)
    np.testing.assert_allclose(np.ma.filled(p.axes[0].images[0].get_array(), np.nan), lp.to_numpy())
    assert list(lp.index)[0] == "embed"


def test_rank_distribution(tmp_path):
    from rlsparsity.figures.rank import rank_distribution

    df = D.rank()
    p = rank_distribution(df, tmp_path / "r.png")
    _png(p.path)
    for alg in ("ppo", "grpo", "dpo"):
        want = df.loc[df["algorithm"] == alg, "rank_fraction"].to_numpy() * 100
        np.testing.assert_allclose(np.sort(p.data["fractions"][alg]), np.sort(want))
        assert p.data["means"][alg] == pytest.approx(want.mean())
    counts = [b.get_height() for b in p.axes[0].containers[0]]  # the histogram's bars
    assert sum(counts) == (df["algorithm"] == "ppo").sum()  # every matrix counted once


def test_overlap_vs_chance(tmp_path):
    from rlsparsity.figures.overlap import overlap_vs_chance

    df = D.overlap()
    p = overlap_vs_chance(df, tmp_path / "o.png")
    _png(p.path)
    s = p.data["summary"]
    seed = s[(s["mask"] == "exact") & (s["axis"] == "seed")].iloc[0]
    assert seed["observed"] == pytest.approx(55.5) and seed["chance"] == pytest.approx(20.0)
    assert list(s[s["mask"] == "exact"]["axis"]) == ["seed", "algorithm", "precision"]
    h = _bars(p.axes[0])
    np.testing.assert_allclose(h[:3], s[s["mask"] == "exact"]["observed"])


def test_dynamics(tmp_path):
    from rlsparsity.figures.dynamics import dynamics

    p = dynamics(D.dynamics(), tmp_path / "dy.png")
    _png(p.path)
    np.testing.assert_allclose(p.data["curve"].loc["grpo"].to_numpy(), [95, 90, 86, 85])
    split = p.data["split"]
    assert list(split.loc["paper"]) == [72.0, 8.0, 20.0]
    np.testing.assert_allclose(split.loc["dpo"].to_numpy(), [75, 10, 15])
    n = len(split)
    np.testing.assert_allclose(_bars(p.axes[1])[:n], split["never_updated"])


def test_accuracy(tmp_path):
    from rlsparsity.figures.accuracy import accuracy

    df = D.accuracy()
    p = accuracy(df, tmp_path / "a.png")
    _png(p.path)
    t = p.data["table"]
    assert t.loc["grpo", "acc_base"] == pytest.approx(25.0)
    assert t.loc["grpo", "acc_trained"] == pytest.approx(df.loc[df["algorithm"] == "grpo", "acc_trained"].mean() * 100)
    offs = p.axes[0].collections[1].get_offsets()
    np.testing.assert_allclose(offs[:, 0], t["acc_trained"])
    # error bars: the 95 % paired bootstrap interval of Δ, drawn around the mean
    iv = p.data["delta_ci"][("grpo", "bf16")]
    assert iv.estimate == pytest.approx(0.065) and iv.low < 0.065 < iv.high
    assert any(getattr(c, "errorbar", None) is not None for c in p.axes[1].containers)


def test_precision_rounding_bars_and_summary_section(tmp_path):
    from rlsparsity.figures.rounding import precision_rounding, section_rounding

    df = D.precision_rounding()
    p = precision_rounding(df, tmp_path / "r.png")
    _png(p.path)
    dpo, grpo = p.data["bars"]["llama dpo (on_policy)"], p.data["bars"]["llama grpo (on_policy)"]
    assert dpo == pytest.approx({"base": 25.0, "raw": 15.0, "round_bf16": 35.0, "below_half_ulp": 30.0,
                                 "above_half_ulp": 35.0, "fp32_master_run": 35.0})
    assert grpo == pytest.approx({"base": 25.0, "raw": 30.0, "round_bf16": 35.0})  # no parts, no partner
    heights = [b.get_height() for b in p.axes[0].patches]
    np.testing.assert_allclose(heights, list(dpo.values()))
    assert "2 seed(s)" in p.axes[0].get_title() and "1 seed(s)" in p.axes[1].get_title()
    md = "\n".join(section_rounding(df))
    # pooled dpo: rounded − raw = mean(0.40 − 0.10, 0.30 − 0.20) = +20 points; identical to the partners
    assert "| llama dpo (on_policy) | fp32 rounded to bf16 | 35.0% | +20.0 [" in md
    assert "| 0 / 400 |" in md and section_rounding(df.iloc[0:0]) == []


def test_subnetwork(tmp_path):
    from rlsparsity.figures.subnetwork import subnetwork

    p = subnetwork(D.subnetwork(), tmp_path / "s.png")
    _png(p.path)
    acc, agr = p.data["accuracy"], p.data["agreement"]
    assert acc.loc["dpo", "acc_full"] == pytest.approx(30.0)
    assert acc.loc["dpo", "acc_subnetwork"] == pytest.approx(31.0)
    assert acc.loc["dpo", "acc_random"] == pytest.approx(22.0)
    assert agr.loc[("dpo", "subnetwork"), 1e-5] == pytest.approx(93.0)
    assert agr.loc[("dpo", "subnetwork"), 1e-4] == pytest.approx(100.0)
    lo, hi = p.data["errors"]["acc_subnetwork"][list(acc.index).index("dpo")]
    assert 0 < lo < 10 and 0 < hi < 10  # 95 % bootstrap interval around 31 %


def test_causes(tmp_path):
    from rlsparsity.figures.causes import causes, paper_value

    p = causes(D.causes(), tmp_path / "c.png")
    _png(p.path)
    t = p.data["table"]
    assert list(t["ablation"]) == ["dpo_data"] * 4 + ["grpo_kl"] * 4 + ["ppo_kl"] * 4 + ["sft_data"] * 4
    np.testing.assert_allclose(_bars(p.axes[0]), t["sparsity"])
    sft = t[t["ablation"] == "sft_data"]
    assert [x for x in sft.loc[sft["setting"] == "off_policy", "paper"]] == [None, None]  # not DPO's 6.8–7.7
    assert list(sft.loc[sft["setting"] == "on_policy", "paper"]) == [(91.2, 91.2)] * 2
    assert paper_value("data", "off_policy") == (6.8, 7.7) == paper_value("dpo_data", "off_policy")
    assert paper_value("dpo_data", "on_policy") == (81.4, 81.4)
    assert paper_value("sft_data", "off_policy") is None
    assert paper_value("kl", "kl_off") == (68.8, 68.8)
    assert paper_value("sft", "rejection_sampling") == (91.2, 91.2)


def test_entropy_accuracy(tmp_path):
    from rlsparsity.figures.entropy import entropy_accuracy

    p = entropy_accuracy(D.entropy(), tmp_path / "e.png")
    _png(p.path)
    t = p.data["table"]
    labels = list(dict.fromkeys(t["label"]))
    assert labels == ["top 10%", "top 20%", "top 50%", "all tokens (ρ=1)", "bottom 80%"]
    kept = t[t["normaliser"] == "kept"].set_index("label").loc[labels, "acc_trained"]
    np.testing.assert_allclose(kept, [30, 33, 31, 30, 20])
    assert all(lo > 0 and hi > 0 for lo, hi in p.data["errors"]["kept"])


def test_entropy_distribution_reads_the_stage_layout_and_long_form(tmp_path):
    from rlsparsity.figures.entropy import entropy_distribution, entropy_summary

    wide = D.entropy_stats()
    p = entropy_distribution(wide, tmp_path / "ed.png")
    _png(p.path)
    s = p.data["summary"]
    assert s["base"]["p80"] == pytest.approx(3.07) and s["base"]["frac_below_001"] == pytest.approx(2.0)
    assert s["top0.2"]["overlap"] == pytest.approx(80.0) and s["base"]["mean"] == pytest.approx(1.9)
    assert p.data["cdf"]["base"] == [(0.01, pytest.approx(2.0)), (pytest.approx(3.07), 80.0)]
    long = pd.DataFrame({"model": ["m"] * 3, "statistic": ["p50", "p80", "frac_below_0.01"], "value": [0.1, 0.7, 0.5]})
    e = entropy_summary(long)["m"]
    assert e["p80"] == 0.7 and e["frac_below_001"] == 50.0 and e["quantiles"] == [(0.5, 0.1), (0.8, 0.7)]


@pytest.mark.parametrize("fig", FIGURES, ids=lambda f: f.name)
def test_every_figure_survives_an_empty_table(fig, tmp_path):
    import importlib

    fn = getattr(importlib.import_module(f"rlsparsity.figures.{fig.module}"), fig.function)
    p = fn(*[pd.DataFrame(columns=D.ALL[t]().columns) for t in fig.tables], out=tmp_path / "x.png")
    assert p.path.exists() and p.path.stat().st_size > 1000


def test_registry_covers_every_figure_and_caption():
    assert len({f.name for f in FIGURES}) == len(FIGURES) == 13
    captions = (REPO / "workflow" / "report" / "figure.rst").read_text()  # one Jinja branch per figure
    for f in FIGURES:
        assert captions.count(f'snakemake.wildcards.figure == "{f.name}" %}}') == 1, f.name
        assert set(f.tables) <= set(D.ALL)
    assert [f.name for f in figures_for("entropy", {"entropy"})] == ["entropy_accuracy"]
    assert figures_for("subnetwork", {"sparsity"}) == []
    assert "sparsity" in families()


def test_paper_table1_agrees_with_public_pairs():
    pairs = yaml.safe_load((REPO / "config" / "public_pairs.yaml").read_text())["pairs"]
    from_yaml: dict[str, list[float]] = {}
    for p in pairs:
        from_yaml.setdefault(p["algorithm"], []).append(p["paper_sparsity"])
    assert {a: sorted(v) for a, v in from_yaml.items()} == {a: sorted(x for _, x in v) for a, v in paper.TABLE1.items()}


def test_summary_verdicts_follow_the_tables(tmp_path):
    from rlsparsity.figures.summary import DEPENDS, FAILS, HOLDS, INCONCLUSIVE, NODATA, build_summary

    tables = D.write_all(tmp_path / "tables")
    md, V = build_summary(tables, figures_dir="figures")
    v = {x["claim"]: x["verdict"] for x in V}
    claim = "RL updates only 5–30 % of parameters (sparsity ≥ 70 %)"
    # bf16 / fp32-master well above 70 %, fp32 at 70.0 [69.1, 70.9]: straddles the threshold
    assert v[claim] == INCONCLUSIVE
    assert v["SFT is dense by contrast"] == DEPENDS  # the fixture's fp32 RL runs are sparser than... SFT is not
    assert v["Subnetworks of different seeds overlap far above chance"] == HOLDS
    assert v["Updates are nearly full rank"] == FAILS  # ~97 % < 99 %
    assert v["Most tokens are low-entropy (80/20 premise)"] == FAILS  # 2–3 % < 40 % (paper 50.64 %)
    assert v["The entropy mask is active (kept fraction ≈ ρ)"] == HOLDS
    assert v["Subnetworks of different data overlap above chance"] == NODATA
    assert (
        "| dpo | 81.4 / 95.2 |" in md
        and "## Verdicts" in md
        and "[sparsity_heatmap](figures/sparsity_heatmap.png)" in md
    )
    assert "200 held-out problems per evaluation" in md and "~200" not in md
    assert "| bf16 | dpo | 25.0% | 31.5% | 6.5 pts [" in md  # accuracy table carries the bootstrap interval
    # change the data, the verdict follows: fp32 sparse too -> holds; fp32 dense -> depends on precision
    sp = D.sparsity()
    sp.loc[sp["precision"] == "fp32", "sparsity"] = 0.9
    sp.to_csv(tables["sparsity"], index=False)
    _, V2 = build_summary(tables)
    assert {x["claim"]: x["verdict"] for x in V2}[claim] == HOLDS
    sp.loc[sp["precision"] == "fp32", "sparsity"] = 0.3
    sp.to_csv(tables["sparsity"], index=False)
    _, V2 = build_summary(tables)
    assert {x["claim"]: x["verdict"] for x in V2}[claim] == DEPENDS
    # no tables at all: every claim says so
    _, V3 = build_summary({"sparsity": tmp_path / "missing.csv"})
    assert {x["verdict"] for x in V3} == {NODATA}


def test_cli_figures_and_summary(tmp_path):
    tables = D.write_all(tmp_path / "tables", ["sparsity", "overlap"])
    cli = [sys.executable, "-m", "rlsparsity.cli"]
    r = subprocess.run(
        cli + ["figures", "sparsity", str(tables["sparsity"]), "--out-dir", str(tmp_path / "f")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert sorted(x.name for x in (tmp_path / "f").iterdir()) == [
        "precision_decomposition.png",
        "sparsity_heatmap.png",
        "sparsity_tolerance.png",
    ]
    r = subprocess.run(
        cli + ["figures", "subnetwork", str(tables["sparsity"]), "--out-dir", str(tmp_path / "f")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "needs tables ['subnetwork']" in r.stderr
    r = subprocess.run(
        cli + ["summary", *map(str, tables.values()), "--out", str(tmp_path / "SUMMARY.md")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "depends on precision" in (tmp_path / "SUMMARY.md").read_text()
