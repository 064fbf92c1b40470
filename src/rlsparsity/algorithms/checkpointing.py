"""Crash-safe checkpoints: what a run may resume from, and what it must clear first.

Invariants (a run may be SIGKILLed at any instant and rerun until it completes; the
result is bit-identical to an uninterrupted run):

* A resume point is *complete* or it does not exist. Our own resume state is ONE file,
  ``resume/state.safetensors``, written to a temp name, fsynced and renamed. A TRL/Trainer
  checkpoint ``resume/checkpoint-N/`` is complete once its marker ``complete.json`` is
  there (written atomically, last, after every file of the folder was fsynced) and every
  file the marker lists has the listed size; folders without it are deleted, never read.
* A resume point belongs to one training configuration: its *fingerprint*
  (:func:`fingerprint`: run, steps, checkpoint interval, hyperparameters with the
  algorithm's defaults, training data, base weights, update mask) is stored with it. A
  mismatch means "another config": the run starts fresh.
* Starting fresh clears ``resume/`` and the whole ``checkpoints/step-*`` series; resuming
  from step s clears the series after s (those steps are re-made, identically).
* Folders are removed by renaming them to ``.deleting-*`` first, so a kill mid-delete
  never leaves a half-deleted checkpoint that still looks complete.
* No pickle: resume state is safetensors (every tensor) plus JSON in the safetensors
  header (everything else: step, RNG states, optimiser hyperparameters, history).

Test hook: ``RLSPARSITY_TEST_SAVE_DELAY=<seconds>`` sleeps inside every save, after the
data is written and before it is made complete (the kill-anywhere test kills there).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlsparsity.algorithms.common import TrainSpec

MARKER = "complete.json"
STATE_FILE = "state.safetensors"
STATE_FORMAT = "rlsparsity-resume-v1"
_CKPT = re.compile(r"checkpoint-(\d+)")
_STEP = re.compile(r"step-(\d+)")


class ResumeError(RuntimeError):
    """A complete-looking resume point that cannot be used safely (corrupt or tampered)."""


def save_delay_hook() -> None:
    d = os.environ.get("RLSPARSITY_TEST_SAVE_DELAY")
    if d:
        time.sleep(float(d))


# --------------------------------------------------------------------------- atomic files and folders
def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temp file next to ``path``, fsync it, rename it over ``path``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def remove_tree(path: Path) -> None:
    """Rename ``path`` out of the way, then delete it (no half-deleted folder keeps its name)."""
    if not path.exists():
        return
    gone = path.with_name(f".deleting-{path.name}-{uuid.uuid4().hex[:8]}")
    os.replace(path, gone)
    shutil.rmtree(gone, ignore_errors=True)


def _clear_leftovers(folder: Path) -> None:
    if folder.is_dir():
        for p in folder.glob(".deleting-*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in folder.glob(".*.tmp"):
            p.unlink(missing_ok=True)


# --------------------------------------------------------------------------- config fingerprint
_BASE_HASHES: dict[tuple[str, int, int], str] = {}


def _file_sha(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _BASE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _BASE_HASHES[key] = h.hexdigest()
    return _BASE_HASHES[key]


def fingerprint(spec: TrainSpec, extra: dict[str, Any] | None = None) -> str:
    """SHA-256 over everything that determines the trained weights (not the device)."""
    from rlsparsity.algorithms import defaults

    try:
        hp = {**defaults(spec.run.algorithm), **spec.hparams}
    except KeyError:
        hp = dict(spec.hparams)
    base = Path(spec.base_dir)
    weights = sorted(base.glob("*.safetensors")) + [base / "config.json"]
    train = getattr(spec.task, "train", None)
    desc = {
        "run": spec.run.as_dict(), "steps": spec.steps, "checkpoint_every": spec.checkpoint_every,
        "hparams": hp, "extra": extra or {}, "task": getattr(spec.task, "name", str(spec.task)),
        "train_data": hashlib.sha256(json.dumps(train, sort_keys=True, default=str).encode()).hexdigest(),
        "base": {p.name: _file_sha(p) for p in weights if p.exists()},
    }
    h = hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode())
    if spec.mask is not None:
        for name in sorted(spec.mask):
            h.update(name.encode())
            h.update(spec.mask[name].detach().to("cpu").bool().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- the weight series
def series_steps(out_dir: Path) -> dict[int, Path]:
    ck = Path(out_dir) / "checkpoints"
    found = {}
    for d in ck.glob("step-*") if ck.is_dir() else []:
        m = _STEP.fullmatch(d.name)
        if m and d.is_dir():
            found[int(m.group(1))] = d
    return found


def trim_series(out_dir: Path, keep_upto: int) -> None:
    """Remove ``checkpoints/step-*`` after ``keep_upto`` (0: all) and any step without its weights."""
    ck = Path(out_dir) / "checkpoints"
    _clear_leftovers(ck)
    for step, d in series_steps(out_dir).items():
        _clear_leftovers(d)
        if step > keep_upto or not (d / "model.safetensors").exists():
            remove_tree(d)


def save_series_weights(state_dict: dict[str, Any], path: Path, precision: str) -> None:
    """``checkpoints/step-N/model.safetensors``: temp file, fsync, rename."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state_dict, str(tmp), metadata={"format": "pt", "precision": precision})
    fsync_file(tmp)
    save_delay_hook()
    os.replace(tmp, path)


# --------------------------------------------------------------------------- starting a run
def start_fresh(out_dir: Path, main: bool = True) -> None:
    """No usable resume point: drop ``resume/`` and the whole weight series."""
    if main:
        _clear_leftovers(Path(out_dir))
        remove_tree(Path(out_dir) / "resume")
        trim_series(out_dir, 0)


def start_resumed(out_dir: Path, step: int, main: bool = True) -> None:
    if main:
        _clear_leftovers(Path(out_dir))
        trim_series(out_dir, step)


def finish_run(out_dir: Path) -> None:
    """The final model is saved: the resume state is no longer needed."""
    remove_tree(Path(out_dir) / "resume")


# --------------------------------------------------------------------------- Trainer checkpoints
def mark_complete(folder: Path, fp: str, step: int) -> None:
    """Fsync every file of a Trainer checkpoint folder, then write its marker (last, atomically)."""
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MARKER:
            fsync_file(p)
            files[p.relative_to(folder).as_posix()] = p.stat().st_size
    save_delay_hook()
    write_text_atomic(folder / MARKER, json.dumps({"step": step, "fingerprint": fp, "files": files}, indent=1))


def is_complete(folder: Path, fp: str) -> bool:
    try:
        m = json.loads((folder / MARKER).read_text())
        if not isinstance(m, dict) or m.get("fingerprint") != fp or not isinstance(m.get("files"), dict):
            return False
        return all((folder / rel).is_file() and (folder / rel).stat().st_size == size
                   for rel, size in m["files"].items())
    except (OSError, ValueError):
        return False


def trainer_checkpoints(resume_dir: Path) -> dict[int, Path]:
    found = {}
    for d in resume_dir.glob("checkpoint-*") if resume_dir.is_dir() else []:
        m = _CKPT.fullmatch(d.name)
        if m and d.is_dir():
            found[int(m.group(1))] = d
    return found


def prune_trainer_checkpoints(resume_dir: Path, keep: Path | None) -> None:
    """Delete every ``checkpoint-*`` folder except ``keep`` (older ones and incomplete ones)."""
    _clear_leftovers(resume_dir)
    for d in trainer_checkpoints(resume_dir).values():
        if keep is None or d.resolve() != keep.resolve():
            remove_tree(d)


def trainer_resume_point(out_dir: Path, fp: str, main: bool = True) -> Path | None:
    """The newest complete Trainer checkpoint of this config (None: start fresh). On the main
    process, everything else is cleared first (incomplete or foreign checkpoints, later steps)."""
    resume_dir = Path(out_dir) / "resume"
    ckpts = trainer_checkpoints(resume_dir)
    best = next((ckpts[s] for s in sorted(ckpts, reverse=True) if is_complete(ckpts[s], fp)), None)
    if best is None:
        start_fresh(out_dir, main)
        return None
    if main:
        prune_trainer_checkpoints(resume_dir, best)
        start_resumed(out_dir, int(_CKPT.fullmatch(best.name).group(1)), main)  # type: ignore[union-attr]
    return best


# --------------------------------------------------------------------------- own resume state, no pickle
def _encode(obj: Any, tensors: dict[str, Any]) -> Any:
    import numpy as np
    import torch

    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return {"__npscalar__": obj.item(), "dtype": str(obj.dtype)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"resume state: cannot store a {type(obj).__name__} without pickle")


def _decode(obj: Any, tensors: dict[str, Any]) -> Any:
    import numpy as np

    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    if "__npscalar__" in obj:
        return np.dtype(obj["dtype"]).type(obj["__npscalar__"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def write_state(path: Path, state: dict[str, Any], fp: str) -> None:
    """``state`` (nested dicts/lists/tuples of tensors, numpy arrays and JSON scalars) as one
    safetensors file: tensors as tensors, the rest as JSON in the header. Atomic."""
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    skeleton = _encode(state, tensors)
    meta = {"format": STATE_FORMAT, "fingerprint": fp, "state": json.dumps(skeleton)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    fsync_file(tmp)
    save_delay_hook()
    os.replace(tmp, path)


def read_state(path: Path, fp: str) -> dict[str, Any] | None:
    """The state in ``path`` if it exists and belongs to config ``fp`` (None otherwise)."""
    from safetensors import SafetensorError, safe_open

    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != STATE_FORMAT:
                raise ValueError(f"not a {STATE_FORMAT} file")
            if meta.get("fingerprint") != fp:
                return None
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return _decode(json.loads(meta["state"]), tensors)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ResumeError(f"resume state {path} is unreadable ({why}); delete {path.parent} to retrain") from e
