"""A stand-in for ComfyUI's ``folder_paths`` module with the March-2024 semantics the nodes rely on:
``folder_names_and_paths[name] = ([folders], {extensions})`` (an empty set lists every file),
``add_model_folder_path``, recursive ``get_filename_list`` and ``get_full_path`` (None when absent)."""

from __future__ import annotations

import os
import types


def make(models_dir: str) -> types.ModuleType:
    module = types.ModuleType("folder_paths")
    module.models_dir = models_dir
    module.folder_names_and_paths = {"clip_vision": ([os.path.join(models_dir, "clip_vision")], {".safetensors"})}

    def add_model_folder_path(folder_name, full_folder_path):
        if folder_name in module.folder_names_and_paths:
            module.folder_names_and_paths[folder_name][0].append(full_folder_path)
        else:
            module.folder_names_and_paths[folder_name] = ([full_folder_path], set())

    def get_filename_list(folder_name):
        folders, extensions = module.folder_names_and_paths[folder_name]
        names = []
        for folder in folders:
            for root, _, files in os.walk(folder):
                for name in files:
                    if not extensions or os.path.splitext(name)[1].lower() in extensions:
                        names.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
        return sorted(names)

    def get_full_path(folder_name, filename):
        for folder in module.folder_names_and_paths[folder_name][0]:
            path = os.path.join(folder, filename)
            if os.path.isfile(path):
                return path
        return None

    module.add_model_folder_path = add_model_folder_path
    module.get_filename_list = get_filename_list
    module.get_full_path = get_full_path
    return module
