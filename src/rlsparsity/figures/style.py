"""One look for every figure: Agg backend, rcParams, colours per algorithm / precision, the
paper-reference style, saving, and small data helpers shared by the figure modules."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from rlsparsity.grid import ALGORITHMS, PRECISIONS  # noqa: E402

DPI = 110
RC: dict[str, Any] = {
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.6,
    "image.cmap": "viridis",
    "figure.constrained_layout.use": True,
}

_TAB10 = plt.get_cmap("tab10").colors
ALGORITHM_COLORS: dict[str, Any] = {a: _TAB10[i % 10] for i, a in enumerate(ALGORITHMS)}
PRECISION_COLORS: dict[str, str] = {"bf16": "#1b9e77", "fp32-master": "#7570b3", "fp32": "#d95f02"}
#: the decomposition colours: genuinely unchanged / below bf16 half-ulp / changed
SPLIT_COLORS: dict[str, str] = {"unchanged": "#4c72b0", "below_half_ulp": "#dd8452", "changed": "#c7c7c7"}
PAPER_COLOR = "black"
PAPER_KW: dict[str, Any] = {"color": PAPER_COLOR, "linestyle": "--", "linewidth": 1.0}
PAPER_MARKER: dict[str, Any] = {"marker": "*", "s": 90, "color": PAPER_COLOR, "zorder": 5}
HEATMAP_CMAP = "viridis"


@dataclass
class Plot:
    """What a figure function returns: the figure, its axes, and the exact data drawn."""

    fig: Any
    axes: list[Any]
    data: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def apply_style() -> None:
    plt.rcParams.update(RC)


def new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (6.4, 4.0), **kw: Any):
    apply_style()
    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False, **kw)
    return fig, list(axes.ravel())


def save(plot: Plot, out: str | Path | None) -> Plot:
    """Write ``plot`` as PNG (if ``out``) and close the figure; returns it with ``path`` set."""
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        plot.fig.savefig(out, format="png", dpi=DPI)
        plot.path = out
    plt.close(plot.fig)
    return plot


def no_data(ax: Any, message: str) -> None:
    """Mark an axes as empty (the rule still writes a figure that says why)."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.35",
            wrap=True)


def pct(x: Any) -> Any:
    return x * 100.0


def order(values: Iterable[str], reference: Iterable[str] = ALGORITHMS) -> list[str]:
    """``values`` (unique) sorted by their position in ``reference``, unknown ones last."""
    ref = list(reference)
    vals = list(dict.fromkeys(values))
    return sorted(vals, key=lambda v: (ref.index(v) if v in ref else len(ref), str(v)))


def order_precisions(values: Iterable[str]) -> list[str]:
    return order(values, PRECISIONS)


def at_tol(df: pd.DataFrame, tol: float, column: str = "tolerance") -> pd.DataFrame:
    """Rows whose tolerance equals ``tol`` (float compare)."""
    t = pd.to_numeric(df[column], errors="coerce")
    return df[np.isclose(t, tol, rtol=1e-6, atol=0.0)]


def prefer(df: pd.DataFrame, column: str, preferred: str) -> tuple[pd.DataFrame, str | None]:
    """Rows with ``column == preferred`` if any, else those of the first value present."""
    if df.empty or column not in df:
        return df, None
    if (df[column] == preferred).any():
        return df[df[column] == preferred], preferred
    first = order(df[column].astype(str), PRECISIONS if column == "precision" else ALGORITHMS)[0]
    return df[df[column].astype(str) == first], first


def tol_label(t: float) -> str:
    return "0 (exact)" if t == 0 else f"{t:g}"


def read_table(path: str | Path) -> pd.DataFrame:
    """A results table; an empty file (header only, or nothing) gives an empty frame. Columns named
    ``correct*`` (per-problem outcome strings "0110…") are read as text, not numbers."""
    try:
        cols = pd.read_csv(path, nrows=0).columns
        return pd.read_csv(path, dtype={c: str for c in cols if str(c).startswith("correct")})
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def annotate_heatmap(ax: Any, values: np.ndarray, fmt: str = "{:.1f}", vmin: float = 0, vmax: float = 100) -> None:
    mid = (vmin + vmax) / 2
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                    color="white" if v < mid else "black")
