"""One rule for every loader: is an argument a local path or a Hugging Face hub id?

Anything that looks like a filesystem path is local, whether or not it exists, and a
local path that cannot be used gives a one-line error naming it ("no such file or
folder", "symlink loop", "broken symlink") instead of a hub lookup. Looks like a path:
it exists (or is a symlink, even a dangling or looping one); it is absolute or starts
with ``./``, ``../`` or ``~``; it has a file suffix (``.safetensors``, ``.json``, ...);
it has more than one ``/`` or a backslash; its first component of ``a/b`` is an existing
folder here (``results/missing``); or it is not a valid hub id (spaces, trailing ``/``).
Everything else (``gpt2``, ``Qwen/Qwen2.5-0.5B``) is a hub id.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
FILE_SUFFIXES = (".safetensors", ".json", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".csv", ".yaml", ".yml",
                 ".gguf", ".txt")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class PathProblem(FileNotFoundError):
    """A local path that cannot be used; the message is one line naming it."""


def looks_local(arg: str) -> bool:
    """True when ``arg`` must be treated as a local path (see the module docstring)."""
    if arg in ("", ".", "..") or os.path.lexists(arg):
        return True
    if arg.startswith(("/", "./", "../", "~")) or os.path.isabs(arg) or "\\" in arg:
        return True
    if arg.lower().endswith(FILE_SUFFIXES) or arg.count("/") > 1 or not HUB_ID.match(arg):
        return True
    return "/" in arg and os.path.isdir(arg.split("/", 1)[0])


def check_local(arg: str | Path) -> Path:
    """``arg`` as an existing local path, or :class:`PathProblem` saying why it is not usable."""
    p = Path(os.path.expanduser(str(arg)))
    try:
        os.stat(p)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise PathProblem(f"{arg}: symlink loop (the link points back to itself)") from None
        if err.errno == errno.EACCES:
            raise PathProblem(f"{arg}: permission denied") from None
        if os.path.islink(p):
            raise PathProblem(f"{arg}: broken symlink (points to missing {os.readlink(p)})") from None
        if err.errno == errno.ENOTDIR:
            raise PathProblem(f"{arg}: no such file or folder (a parent is a file, not a folder)") from None
        raise PathProblem(f"{arg}: no such file or folder") from None
    return p


def pickle_only(folder: Path) -> bool:
    """A folder that holds pickle weights (.bin/.pt/...) but no *.safetensors."""
    return not any(folder.glob("*.safetensors")) and any(any(folder.glob(f"*{s}")) for s in PICKLE_SUFFIXES)


def model_folder(arg: str | Path, what: str = "model") -> Path:
    """A local Hugging Face model folder: exists, is a folder, has config.json and safetensors weights."""
    p = check_local(arg)
    if not p.is_dir():
        raise PathProblem(f"{arg}: is a file, not a {what} folder")
    if not (p / "config.json").is_file():
        raise PathProblem(f"{arg}: not a Hugging Face {what} folder (no config.json)")
    if pickle_only(p):
        raise PathProblem(f"{arg}: only pickle weights (.bin/.pt) found; they are refused, never unpickled "
                          f"(convert to safetensors first)")
    if not any(p.glob("*.safetensors")):
        raise PathProblem(f"{arg}: folder has no model weights (*.safetensors)")
    return p
