"""Causes ablations (SPEC Table 5 and the KL result): which runs give each cell, the KL variants
to train, and results/tables/causes.csv.

Update sparsity vs base in every configured precision and seed for: DPO on on-policy vs off-policy
pairs; SFT on the model's own correct samples (rejection sampling, data ``on_policy``) vs reference
solutions (``off_policy``); GRPO with KL (TRL ``beta``) off vs on; PPO with KL (``kl_coef``) on vs
off. Settings that equal a main-grid run (same data and effective hyperparameters) reuse it
(``results/runs/...``); the others (KL variants) are trained under
``results/causes/runs/<family>/<algorithm>/kl<coef>/<precision>/seed<seed>/``.

This module is imported by the Snakefile (through :mod:`rlsparsity.subnetwork`): keep its top
level light (no torch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlsparsity import grid as G

#: The KL knob of each online algorithm and its default when config train.hparams does
#: not set it (tests check these against the algorithms' DEFAULTS).
KL_PARAM: dict[str, tuple[str, float]] = {"grpo": ("beta", 0.0), "rloo": ("beta", 0.0),
                                          "ppo": ("kl_coef", 0.05), "prime": ("kl_coef", 0.0)}
DEFAULT_KL_ON: dict[str, float] = {"grpo": 0.04, "ppo": 0.05}
CAUSES_COLUMNS = ["family", "ablation", "setting", "precision", "sparsity", "tolerance", "sparsity_exact",
                  "below_bf16_half_ulp", "algorithm", "data", "seed", "detail", "source", "acc_base",
                  "acc_trained", "run"]


def _as_list(x: Any) -> list[Any]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _families(config: dict[str, Any], spec: Any) -> list[str]:
    fams = G.family_names(config)
    if spec in (None, "all"):
        return fams
    out = _as_list(spec)
    unknown = [f for f in out if f not in fams]
    if unknown:
        raise ValueError(f"subnetwork/causes name families {unknown} not listed under 'families'")
    return out


@dataclass(frozen=True)
class Setting:
    """One cell of the causes table: which run gives it, and where that run lives."""

    family: str
    ablation: str
    setting: str
    algorithm: str
    data: str
    precision: str
    seed: int
    detail: str
    source: str                 # "grid": a main-grid run folder; "causes": trained by causes-train
    hparams: tuple[tuple[str, Any], ...] = field(default=())  # overrides on top of config train.hparams

    @property
    def run(self) -> G.Run:
        return G.Run(self.family, self.algorithm, self.data, self.precision, self.seed)

    def dir(self, results: str | Path) -> Path:
        if self.source == "grid":
            return self.run.dir(results)
        tag = "_".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in self.hparams) or "default"
        return (Path(results) / "causes" / "runs" / self.family / self.algorithm / tag / self.precision
                / f"seed{self.seed}")


def _effective(config: dict[str, Any], alg: str, key: str, default: float) -> float:
    return float(((config.get("train") or {}).get("hparams") or {}).get(alg, {}).get(key, default))


def causes_settings(config: dict[str, Any]) -> list[Setting]:
    """Every (ablation, setting, precision, seed) of the optional ``causes`` block."""
    b = config.get("causes")
    if not b:
        return []
    fams = _families(config, b.get("family", b.get("families", "all")))
    kl_on = {**DEFAULT_KL_ON, **(b.get("kl_coef") or {})}
    out: list[Setting] = []
    for fam in fams:
        for prec in _as_list(b.get("precisions", list(G.PRECISIONS))):
            for seed in _as_list(b.get("seeds", [1])):
                seed = int(seed)
                out += [Setting(fam, "dpo_data", "on_policy", "dpo", "on_policy", prec, seed,
                                "pairs sampled from the base, labelled by the scorer", "grid"),
                        Setting(fam, "dpo_data", "off_policy", "dpo", "off_policy", prec, seed,
                                "reference answer vs corrupted answer", "grid"),
                        Setting(fam, "sft_data", "on_policy", "sft", "on_policy", prec, seed,
                                "rejection sampling: own correct samples", "grid"),
                        Setting(fam, "sft_data", "off_policy", "sft", "off_policy", prec, seed,
                                "reference solutions", "grid")]
                for alg in ("grpo", "ppo"):
                    key, default = KL_PARAM[alg]
                    grid_value = _effective(config, alg, key, default)
                    for name, value in (("kl_off", 0.0), ("kl_on", float(kl_on[alg]))):
                        src = "grid" if value == grid_value else "causes"
                        hp = () if src == "grid" else ((key, value),)
                        out.append(Setting(fam, f"{alg}_kl", name, alg, "on_policy", prec, seed,
                                           f"{key}={value:g}", src, hp))
    return out


def causes_to_train(config: dict[str, Any], family: str | None = None) -> list[Setting]:
    return [s for s in causes_settings(config) if s.source == "causes" and family in (None, s.family)]


def causes_train(config: dict[str, Any], family: str, results: str | Path | None = None,
                 log: Any = None) -> list[dict[str, Any]]:
    """Train the causes settings that no main-grid run provides (the KL variants)."""
    from rlsparsity.subnetwork import _print, train_variant

    log = log or _print
    results = results or config["results"]
    todo = causes_to_train(config, family)
    log(f"[causes] {family}: {len(todo)} setting(s) to train, the rest reuse main-grid runs")
    recs = []
    for s in todo:
        out = s.dir(results)
        rec = train_variant(s.run, config, out, G.base_dir(s.family, results), hparams=dict(s.hparams),
                            extra_record={"causes": {"ablation": s.ablation, "setting": s.setting, "detail": s.detail}})
        log(f"[causes] {out}: acc {rec['acc_base']} -> {rec['acc_trained']:.3f}")
        recs.append(rec)
    return recs


def causes_table(
    config: dict[str, Any], out_csv: str | Path, results: str | Path | None = None
) -> list[dict[str, Any]]:
    """results/tables/causes.csv: update sparsity vs base of every causes setting."""
    from rlsparsity.analysis.diff import tol_key
    from rlsparsity.analysis.tables import write_csv
    from rlsparsity.masks import sparsity_vs

    results = results or config["results"]
    tol = float((config.get("causes") or {}).get("tolerance", 1e-5))
    rows = []
    for s in causes_settings(config):
        d = s.dir(results)
        summ = sparsity_vs(G.base_dir(s.family, results), d, (0.0, tol))
        rec = json.loads((d / "run.json").read_text()) if (d / "run.json").exists() else {}
        rows.append(
            {
                "family": s.family,
                "ablation": s.ablation,
                "setting": s.setting,
                "precision": s.precision,
                "sparsity": summ["sparsity"][tol_key(tol)],
                "tolerance": tol,
                "sparsity_exact": summ["sparsity"]["0"],
                "below_bf16_half_ulp": summ["below_bf16_half_ulp"],
                "algorithm": s.algorithm,
                "data": s.data,
                "seed": s.seed,
                "detail": s.detail,
                "source": s.source,
                "acc_base": rec.get("acc_base"),
                "acc_trained": rec.get("acc_trained"),
                "run": str(d),
            }
        )
    write_csv(Path(out_csv), rows, CAUSES_COLUMNS)
    return rows
