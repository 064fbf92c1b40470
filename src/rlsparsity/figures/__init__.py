"""Figures, the Snakemake report and SUMMARY.md (GitHub issue 7).

Each figure family is one module (sparsity, layers, rank, overlap, dynamics, accuracy,
subnetwork, causes, entropy, rounding) with functions ``fig(df..., out=None) -> Plot``: they take the
results tables as pandas frames, draw with the shared style (:mod:`rlsparsity.figures.style`),
annotate the papers' numbers (:mod:`rlsparsity.figures.paper`) and return the figure, its axes and
the exact data drawn. :data:`FIGURES` is the registry the Snakemake rules
(workflow/rules/figures.smk) and the CLI (``rlsparsity figures``) share; it is pure data, so the
Snakefile can import it without matplotlib.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Figure:
    name: str  # results/figures/<name>.png; caption workflow/report/<name>.rst
    family: str  # one Snakemake rule per family: fig_<family>
    module: str  # rlsparsity.figures.<module>
    function: str
    tables: tuple[str, ...]  # results/tables/<table>.csv, passed to the function in this order


FIGURES: tuple[Figure, ...] = (
    Figure("sparsity_heatmap", "sparsity", "sparsity", "sparsity_heatmap", ("sparsity",)),
    Figure("sparsity_tolerance", "sparsity", "sparsity", "sparsity_tolerance", ("sparsity",)),
    Figure("precision_decomposition", "sparsity", "sparsity", "precision_decomposition", ("sparsity",)),
    Figure("layers_heatmap", "layers", "layers", "layers_heatmap", ("layers",)),
    Figure("rank_distribution", "rank", "rank", "rank_distribution", ("rank",)),
    Figure("overlap_vs_chance", "overlap", "overlap", "overlap_vs_chance", ("overlap",)),
    Figure("dynamics", "dynamics", "dynamics", "dynamics", ("dynamics",)),
    Figure("accuracy", "accuracy", "accuracy", "accuracy", ("accuracy",)),
    Figure("subnetwork", "subnetwork", "subnetwork", "subnetwork", ("subnetwork",)),
    Figure("causes", "causes", "causes", "causes", ("causes",)),
    Figure("entropy_accuracy", "entropy", "entropy", "entropy_accuracy", ("entropy",)),
    Figure("entropy_distribution", "entropy", "entropy", "entropy_distribution", ("entropy_stats",)),
    Figure("precision_rounding", "rounding", "rounding", "precision_rounding", ("precision_rounding",)),
)
#: Every table SUMMARY.md can use (it uses whichever exist).
SUMMARY_TABLES: tuple[str, ...] = ("sparsity", "rank", "overlap", "layers", "dynamics", "accuracy", "subnetwork",
                                   "causes", "entropy", "entropy_stats", "public_pairs",
                                   "precision_rounding")


def families() -> list[str]:
    return list(dict.fromkeys(f.family for f in FIGURES))


def figures_for(family: str, available: set[str] | None = None) -> list[Figure]:
    """The family's figures whose tables are all in ``available`` (all of them if None)."""
    return [f for f in FIGURES if f.family == family and (available is None or set(f.tables) <= available)]


def tables_of(paths: list[str | Path]) -> dict[str, Path]:
    """{table name: path} from table files named <table>.csv."""
    return {Path(p).stem: Path(p) for p in paths}


def draw(fig: Figure, tables: dict[str, Path], out: str | Path) -> Any:
    """Read the figure's tables and write it to ``out``; returns the Plot."""
    import importlib

    from rlsparsity.figures.style import read_table

    fn = getattr(importlib.import_module(f"rlsparsity.figures.{fig.module}"), fig.function)
    return fn(*[read_table(tables[t]) for t in fig.tables], out=out)
