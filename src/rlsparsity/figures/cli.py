"""``rlsparsity figures`` and ``rlsparsity summary`` (registered in rlsparsity.cli)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rlsparsity.figures import FIGURES, draw, families, figures_for, tables_of


def cmd_figures(args: argparse.Namespace) -> int:
    tables = tables_of(args.tables)
    missing = [str(p) for p in tables.values() if not p.exists()]
    if missing:
        print(f"rlsparsity figures: error: missing table(s): {', '.join(missing)}", file=sys.stderr)
        return 2
    figs = figures_for(args.family, set(tables))
    if not figs:
        need = sorted({t for f in FIGURES if f.family == args.family for t in f.tables})
        print(f"rlsparsity figures: error: family {args.family!r} needs tables {need}", file=sys.stderr)
        return 2
    if args.only:
        unknown = sorted(set(args.only) - {f.name for f in figs})
        if unknown:
            print(f"rlsparsity figures: error: {unknown} are not figures of family {args.family!r} with these "
                  f"tables (have {[f.name for f in figs]})", file=sys.stderr)
            return 2
        figs = [f for f in figs if f.name in args.only]
    if args.dpi is not None:
        from rlsparsity.figures import style

        if not 30 <= args.dpi <= 600:
            print(f"rlsparsity figures: error: --dpi {args.dpi} is outside 30..600", file=sys.stderr)
            return 2
        style.DPI = args.dpi
    out = Path(args.out_dir)
    for f in figs:
        plot = draw(f, tables, out / f"{f.name}.png")
        print(f"[figures] {plot.path} ({plot.path.stat().st_size} bytes)")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from rlsparsity.figures.summary import write_summary

    res = write_summary(tables_of(args.tables), args.out, figures_dir=args.figures_dir)
    print(f"[summary] {args.out}: {len(res)} verdicts")
    for v in res:
        print(f"  {v['verdict']:22s} {v['claim']}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("figures", help="draw one figure family's PNGs from results tables")
    p.add_argument("family", choices=families())
    p.add_argument("tables", nargs="+", help="results/tables/<name>.csv files (the stem names the table)")
    p.add_argument("--out-dir", required=True, help="folder for <figure>.png")
    p.add_argument("--only", action="append", default=[], metavar="FIGURE",
                   help="draw only this figure (repeatable; default: every figure of the family)")
    p.add_argument("--dpi", type=int, default=None, help="PNG resolution (default: the style's, 110)")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("summary", help="write SUMMARY.md: paper vs this run, one verdict per claim")
    p.add_argument("tables", nargs="*", help="results/tables/<name>.csv files; whichever exist are used")
    p.add_argument("--out", required=True)
    p.add_argument("--figures-dir", default=None, help="link figures from this folder (relative to --out)")
    p.set_defaults(func=cmd_summary)
