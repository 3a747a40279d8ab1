"""Names from an untrusted workflow -> files inside the folders the operator configured.

A shared workflow is untrusted input: a file name in it must never reach outside the folders the host lists
(models/..., input/). A name is a relative path (sub-folders allowed) without '..', it is joined to each
allowed folder, fully resolved (symbolic links included) and accepted only when the result stays inside the
resolved folder. So an absolute path, ``../x``, or a link in a models folder that points elsewhere are refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable


class UnsafePath(ValueError):
    """A name that is not a plain relative name inside the allowed folders."""


def check_relative_name(name, label: str) -> str:
    """``name`` if it is a non-empty relative path without '..' or NUL; else UnsafePath naming ``label``."""
    if not isinstance(name, str) or not name.strip():
        raise UnsafePath(f"{label}: expected a file name from the list, got {name!r}")
    parts = name.replace("\\", "/").split("/")
    if "\0" in name or os.path.isabs(name) or name.startswith(("/", "\\", "~")) or (len(name) > 1 and name[1] == ":") \
            or ".." in parts:
        raise UnsafePath(f"{label}: {name!r} is not allowed; choose a file by its name in the list (no absolute "
                         "paths, no '..', no '~')")
    return name


def inside(path: str, folder: str) -> bool:
    """Whether the resolved ``path`` lies inside the resolved ``folder``."""
    root = os.path.realpath(folder)
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def resolve_in_folders(name, folders: Iterable[str], label: str, kind: str = "file") -> str:
    """The resolved path of ``name`` in the first of ``folders`` that holds it (``kind`` "file" or "folder").

    Raises UnsafePath for a hostile name or a link that leaves its folder, FileNotFoundError when no folder
    holds it; both name ``label``.
    """
    check_relative_name(name, label)
    folders = [f for f in folders if f]
    escaped = False
    for folder in folders:
        candidate = os.path.join(folder, name)
        exists = os.path.isfile(candidate) if kind == "file" else os.path.isdir(candidate)
        if not exists:
            continue
        if not inside(candidate, folder):
            escaped = True  # a symbolic link pointing out of the folder: keep looking, refuse if nothing else
            continue
        return os.path.realpath(candidate)
    if escaped:
        raise UnsafePath(f"{label}: {name!r} is a link that points outside its folder; copy the {kind} into the "
                         "folder instead of linking it")
    raise FileNotFoundError(f"{label}: {kind} {name!r} not found in {folders}")
