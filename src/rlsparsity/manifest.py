"""``rlsparsity manifest OUT FILE...``: a JSON list of files with their size and sha256.

A training job that writes many run folders (a ``train.group_by`` group, a causes family)
ends with a manifest: the one output Snakemake tracks for that job, so the job reruns when
its config slice changes and downstream jobs rerun when it does. Files over 256 MiB are
recorded by size and modification time (hashing tens of GB would cost minutes).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

HASH_LIMIT = 256 * 2**20


def describe(path: Path) -> dict[str, Any]:
    st = path.stat()
    out: dict[str, Any] = {"path": str(path), "bytes": st.st_size}
    if st.st_size <= HASH_LIMIT:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out["sha256"] = h.hexdigest()
    else:
        out["mtime_ns"] = st.st_mtime_ns
    return out


def write_manifest(out: str | Path, files: list[str | Path]) -> dict[str, Any]:
    from rlsparsity.config_slices import write_json_atomic

    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"manifest: {len(missing)} expected file(s) missing, e.g. {missing[0]}")
    doc = {"files": [describe(Path(f)) for f in files]}
    write_json_atomic(out, doc)
    return doc


def _cmd_manifest(args: argparse.Namespace) -> int:
    doc = write_manifest(args.out, args.files)
    print(f"[manifest] {args.out}: {len(doc['files'])} files")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("manifest", help="write a JSON manifest (size, sha256) of files a job produced")
    p.add_argument("out")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=_cmd_manifest)
