"""Diff-and-analysis engine: exact streaming update sparsity, update rank, overlap of
update masks, layer distribution, update dynamics, and the DAG's tidy tables.

Modules: header (safetensors format, strict header validation), io (checkpoint folders,
shards, reads, masks), kernel (exact per-chunk diff maths), exact_int (integer tensors),
pairing (which tensors are compared), diff (orchestration and outputs), rank, overlap,
layers, dynamics, tables, cli (subcommands registered into ``rlsparsity``). Importing this package is light: numpy
only; torch is imported where needed.
"""

from rlsparsity.analysis.io import load_mask

__all__ = ["load_mask"]
