"""Checkpoints without pickle: safetensors for tensors, JSON for everything else, written atomically.

Layout under ``<output_dir>/checkpoints/``::

    stage-000012/lora.safetensors       LoRA (peft keys) and, with EMA, ``ema.<key>``
    stage-000012/optimizer.safetensors  optimiser moments and RNG states (uint8 tensors)
    stage-000012/state.json             stage counter, config, base-model fingerprint, optimiser hyper-parameters,
                                        normaliser state, grad-scaler state, python / numpy RNG states
    latest.json                         {"stage_dir": "stage-000012", "stage": 12}

A checkpoint folder is written under a temporary name and renamed into place; ``latest.json`` is replaced
atomically afterwards and is the commit point, so a run killed at any moment leaves the last good checkpoint
readable. ``stage`` counts completed stages: a resumed run starts stage ``stage``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

from .export import save_safetensors_atomic

FORMAT, VERSION = "srrl.training_checkpoint", 1


@dataclass
class Checkpoint:
    stage: int
    folder: str
    lora: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    optimizer: dict  # torch optimiser state_dict
    state: dict  # state.json
    rng: tuple[dict[str, torch.Tensor], dict]  # for set_rng_state


def write_json_atomic(data, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# Base-model fingerprint ------------------------------------------------------------------------------------------


def model_fingerprint(network: torch.nn.Module, samples: int = 8) -> dict:
    """Identify the frozen base weights: a hash of every parameter name and shape, and (mean, std) of a few
    tensors spread over the network (compared with a tolerance, so fp16 / bf16 / fp32 loads of one model agree)."""
    params = [(_base_name(n), p) for n, p in network.named_parameters() if ".lora_" not in n]
    if not params:
        raise ValueError("network has no parameters to fingerprint")
    digest = hashlib.sha256("\n".join(f"{n}:{tuple(p.shape)}" for n, p in params).encode()).hexdigest()
    picks = sorted({round(i * (len(params) - 1) / max(samples - 1, 1)) for i in range(samples)})
    stats = []
    for i in picks:
        values = params[i][1].detach().flatten()[:4096].float().cpu()
        stats.append([params[i][0], float(values.mean()), float(values.std(unbiased=False))])
    return {"parameters": len(params), "shapes_sha256": digest, "stats": stats}


def same_model(a: dict, b: dict, tolerance: float = 1e-2) -> bool:
    if a.get("shapes_sha256") != b.get("shapes_sha256") or len(a.get("stats", [])) != len(b.get("stats", [])):
        return False
    for (name_a, mean_a, std_a), (name_b, mean_b, std_b) in zip(a["stats"], b["stats"]):
        scale = max(abs(std_a), abs(std_b), 1e-6)
        if name_a != name_b or abs(mean_a - mean_b) > tolerance * scale or abs(std_a - std_b) > tolerance * scale:
            return False
    return True


def _base_name(name: str) -> str:
    return name.replace(".base_layer.", ".")


# Optimiser and RNG state -----------------------------------------------------------------------------------------


def optimizer_tensors(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser state_dict into tensors (``state.<index>.<name>``) and JSON (hyper-parameters)."""
    tensors, scalars = {}, {}
    for index, entry in state_dict["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {"python": [version, list(internal), gauss], "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# Save / load -------------------------------------------------------------------------------------------------


def checkpoint_root(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def save_checkpoint(
    output_dir: str,
    stage: int,
    *,
    lora: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor] | None,
    optimizer: dict,
    state: dict,
    keep: int = 2,
) -> str:
    """Write checkpoint ``stage`` (completed stages) and make it the latest; returns its folder."""
    root = checkpoint_root(output_dir)
    os.makedirs(root, exist_ok=True)
    name = f"stage-{stage:06d}"
    final = os.path.join(root, name)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root)
    try:
        tensors = dict(lora)
        if ema is not None:
            tensors.update({f"ema.{k}": v for k, v in ema.items()})
        save_safetensors_atomic(tensors, os.path.join(tmp, "lora.safetensors"))
        opt_tensors, opt_meta = optimizer_tensors(optimizer)
        rng_tensors, rng_meta = rng_state()
        save_safetensors_atomic({**opt_tensors, **rng_tensors}, os.path.join(tmp, "optimizer.safetensors"))
        payload = {"format": FORMAT, "version": VERSION, "stage": stage, "optimizer": opt_meta, "rng": rng_meta, **state}
        write_json_atomic(payload, os.path.join(tmp, "state.json"))
        if os.path.exists(final):  # left by a run that died before committing latest.json
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_json_atomic({"stage_dir": name, "stage": stage}, os.path.join(root, "latest.json"))
    _prune(root, keep, name)
    return final


def latest_checkpoint(output_dir: str) -> str | None:
    """The folder of the latest committed checkpoint, or None."""
    pointer = os.path.join(checkpoint_root(output_dir), "latest.json")
    if not os.path.isfile(pointer):
        return None
    with open(pointer, encoding="utf-8") as f:
        name = json.load(f)["stage_dir"]
    folder = os.path.join(checkpoint_root(output_dir), name)
    if not os.path.isdir(folder):
        raise ValueError(f"checkpoint pointer {pointer} names {name}, which does not exist")
    return folder


def load_checkpoint(folder: str) -> Checkpoint:
    from safetensors.torch import load_file

    with open(os.path.join(folder, "state.json"), encoding="utf-8") as f:
        state = json.load(f)
    if state.get("format") != FORMAT or state.get("version") != VERSION:
        raise ValueError(f"{folder} is not an {FORMAT} version {VERSION} checkpoint")
    tensors = load_file(os.path.join(folder, "lora.safetensors"))
    lora = {k: v for k, v in tensors.items() if not k.startswith("ema.")}
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")} or None
    opt = load_file(os.path.join(folder, "optimizer.safetensors"))
    optimizer = optimizer_from_tensors({k: v for k, v in opt.items() if k.startswith("state.")}, state["optimizer"])
    rng = ({k: v for k, v in opt.items() if k.startswith("rng.")}, state["rng"])
    return Checkpoint(int(state["stage"]), folder, lora, ema, optimizer, state, rng)


def _prune(root: str, keep: int, current: str) -> None:
    names = sorted(n for n in os.listdir(root) if n.startswith("stage-") and os.path.isdir(os.path.join(root, n)))
    for name in names[:-keep]:
        if name != current:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
