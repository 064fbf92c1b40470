"""Diff-and-analysis engine: exact streaming update sparsity, update rank, overlap of
update masks, layer distribution, update dynamics, and the DAG's tidy tables.

Modules: io (checkpoint reading, masks), diff, rank, overlap, layers, dynamics, tables,
cli (subcommands registered into ``rlsparsity``). Importing this package is light: numpy
only; torch is imported where needed.
"""

from rlsparsity.analysis.io import load_mask

__all__ = ["load_mask"]
