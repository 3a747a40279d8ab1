"""Downloading the files a finished prompt's output nodes wrote, under names that never leave the target folder."""

from __future__ import annotations

import os
import re
import urllib.parse

from .errors import ServerError
from .transport import request

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str, default="output") -> str:
    """A plain file name: no directories, no leading dots, only [A-Za-z0-9._-]."""
    name = str(name).replace("\\", "/").split("/")[-1]
    name = _SAFE.sub("_", name).lstrip(".")
    name = name[:200]
    return name or default


def unique_path(out_dir, name):
    """out_dir/name, or name-1, name-2 ... before the extension when taken: a download never overwrites."""
    stem, ext = os.path.splitext(name)
    candidate, n = name, 1
    while os.path.exists(os.path.join(out_dir, candidate)):
        candidate = f"{stem}-{n}{ext}"
        n += 1
    return os.path.join(out_dir, candidate)


def output_files(entry, types=("output",)):
    """[(node_id, {"filename", "subfolder", "type"})] for every file an output node reported."""
    files = []
    for node_id, out in (entry.get("outputs") or {}).items():
        for items in (out or {}).values():
            if not isinstance(items, list):
                continue
            for item in items:
                if (isinstance(item, dict) and isinstance(item.get("filename"), str)
                        and (types is None or item.get("type", "output") in types)):
                    files.append((node_id, item))
    return files


def download_outputs(server, entry, out_dir, types=("output",), timeout=60.0) -> list:
    """Download the files of a history entry into out_dir; returns their paths.

    Names are sanitised (no directories, no leading dots) and made unique; nothing is written outside out_dir.
    `types`: which ComfyUI folders to take ("output", "temp" for previews, "input"); None for all.
    """
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for node_id, item in output_files(entry, types):
        query = urllib.parse.urlencode({"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                                        "type": item.get("type", "output")})
        status, data = request(server, "GET", f"/view?{query}", timeout=timeout)
        if status != 200:
            raise ServerError(f"GET /view for {item['filename']!r} (node {node_id}): HTTP {status}")
        path = os.path.abspath(unique_path(out_dir, safe_filename(item["filename"])))
        if os.path.commonpath([out_dir, path]) != out_dir:  # cannot happen after safe_filename; belt and braces
            raise ServerError(f"refusing to write {path} outside {out_dir}")
        with open(path, "xb") as f:
            f.write(data)
        paths.append(path)
    return paths
