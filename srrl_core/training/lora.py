r"""LoRA (Hu et al., 2021) on a frozen network through peft, plus an EMA of the adapter weights.

A target layer :math:`W` becomes :math:`W x + \frac{\alpha}{r} B A x` with :math:`A \in \mathbb R^{r\times d_{in}}`
(Kaiming-uniform) and :math:`B \in \mathbb R^{d_{out}\times r}` initialised to **zero**, so the adapted network
equals the base network exactly until the first update. Only :math:`A, B` are trainable; they are kept in float32
whatever the base weights' dtype.

Targets are module-name suffixes: attention projections ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` (same names in
diffusers' and ComfyUI's SD UNets), optionally the feed-forward ``ff.net.0.proj``, ``ff.net.2`` and, with
``conv=True``, the resnets' 3x3 convolutions (``conv1``/``conv2`` in diffusers, ``in_layers.2``/``out_layers.3``
in LDM naming). ComfyUI's own DiTs have their own names (``img_attn.qkv`` in Flux, ``attn.qkv`` in SD3's MMDiT;
the lists are in ``nodes/comfy_policy.py``).
A ``*`` in a target stands for one module-path component (``single_transformer_blocks.*.proj_out`` adapts the
single blocks' output projection of a Flux transformer, not its final ``proj_out``). :func:`target_matches` says
which layers each target reaches.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence

import torch

from ..validation import check_choice, check_float, check_int

ADAPTER = "default"
CONV_TARGETS = {"diffusers": ("conv1", "conv2"), "ldm": ("in_layers.2", "out_layers.3")}


def target_pattern(targets: Sequence[str], key_style: str = "diffusers", conv: bool = False) -> str:
    """A peft ``target_modules`` regex matching full module names that end in one of ``targets``."""
    check_choice("key_style", key_style, CONV_TARGETS)
    suffixes = list(targets) + (list(CONV_TARGETS[key_style]) if conv else [])
    return r"(.*\.)?(" + "|".join(re.escape(s).replace(r"\*", r"[^.]+") for s in suffixes) + r")"


#: Layer types peft's LoRA adapts (subclasses included, e.g. ComfyUI's ``comfy.ops`` Linear / Conv2d).
ADAPTABLE = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Embedding)


def target_matches(network: torch.nn.Module, targets: Sequence[str]) -> dict[str, list[str]]:
    """For each target suffix, the names of the adaptable layers (:data:`ADAPTABLE`) of ``network`` it matches
    (an empty list: the target reaches nothing)."""
    names = [name for name, module in network.named_modules() if name and isinstance(module, ADAPTABLE)]
    out = {}
    for target in targets:
        pattern = re.compile(target_pattern([target]))
        out[target] = [name for name in names if pattern.fullmatch(name)]
    return out


def add_lora(
    network: torch.nn.Module,
    *,
    rank: int = 4,
    alpha: float = 4.0,
    targets: Sequence[str] = ("to_q", "to_k", "to_v", "to_out.0"),
    key_style: str = "diffusers",
    conv: bool = False,
    seed: int = 0,
) -> list[torch.nn.Parameter]:
    """Inject LoRA into ``network`` in place; freeze everything else. Returns the trainable parameters.

    ``A`` is drawn from a generator seeded with ``seed`` (not the global stream), so every process of a
    distributed run, and every rerun, starts from the same weights.
    """
    from peft import LoraConfig, inject_adapter_in_model

    check_int("rank", rank, 1)
    check_float("alpha", alpha, 1e-6)
    if lora_layers(network):
        raise ValueError("network already holds LoRA layers; call remove_lora(network) first")
    # peft only fails when no target matches; one misspelt suffix among several would train silently without it.
    unmatched = [t for t, names in target_matches(network, targets).items() if not names]
    if unmatched:
        raise ValueError(f"lora_targets {unmatched} match no linear or convolution layer of the network (targets are "
                         f"suffixes of its module names; lora.target_matches lists the layers each one reaches)")
    if conv and not any(target_matches(network, CONV_TARGETS[key_style]).values()):
        raise ValueError(f"lora_conv: the network has no ResNet convolutions named {list(CONV_TARGETS[key_style])}; "
                         f"set lora_conv to false for it")
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=True,
                        target_modules=target_pattern(targets, key_style, conv))  # fmt: skip
    network.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, network, adapter_name=ADAPTER)
    params = lora_parameters(network)
    for p in params:
        p.data = p.data.float()  # full-precision adapter weights over fp16/bf16 bases
        p.requires_grad_(True)
    return params


def lora_layers(network: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Module name -> peft LoRA layer, in module order."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in network.named_modules() if isinstance(m, LoraLayer)}


def lora_parameters(network: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The adapter weights (A and B of every LoRA layer), in a fixed order."""
    return [p for _, p in named_lora_parameters(network)]


def named_lora_parameters(network: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in network.named_parameters() if ".lora_A." in n or ".lora_B." in n]


def lora_state_dict(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """peft's adapter-name-free state dict (``<module>.lora_A.weight`` ...), detached float32 CPU copies."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(network, adapter_name=ADAPTER)
    return {k: v.detach().float().cpu().clone() for k, v in state.items()}


def load_lora_state_dict(network: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a :func:`lora_state_dict` back; every adapter weight must be present with its shape."""
    from peft import set_peft_model_state_dict

    expected = lora_state_dict(network)
    restart = ("; keep the settings of the saved run, or start a new one (another lora_name / output_dir, or "
               "resume off)")
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"the saved LoRA adapts other layers than this run (lora_targets or lora_conv changed): "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}{restart}")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            saved, wanted = _rank(key, value.shape), _rank(key, expected[key].shape)
            if saved is not None and saved != wanted:
                raise ValueError(f"lora_rank changed: the saved LoRA has rank {saved}, this run asks for lora_rank "
                                 f"{wanted}{restart}")
            raise ValueError(f"LoRA state {key} has shape {tuple(value.shape)}, the network needs "
                             f"{tuple(expected[key].shape)} (the base model's layer sizes differ){restart}")
    with torch.no_grad():
        set_peft_model_state_dict(network, state, adapter_name=ADAPTER)


def _rank(key: str, shape) -> int | None:
    """The LoRA rank a peft weight's shape shows: lora_A is [r, in, ...], lora_B is [out, r, ...]."""
    if ".lora_A." in key and len(shape) >= 2:
        return int(shape[0])
    if ".lora_B." in key and len(shape) >= 2:
        return int(shape[1])
    return None


@contextlib.contextmanager
def adapters_disabled(network: torch.nn.Module) -> Iterator[None]:
    """Evaluate the frozen base model (LoRA bypassed) inside the block, e.g. for a KL reference."""
    layers = list(lora_layers(network).values())
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)  # peft also marks the adapter weights trainable again


def remove_lora(network: torch.nn.Module) -> None:
    """Put every adapted layer's original module back (the network is the base model again)."""
    for name in list(lora_layers(network)):
        parent_name, _, child = name.rpartition(".")
        parent = network.get_submodule(parent_name) if parent_name else network
        setattr(parent, child, getattr(parent, child).get_base_layer())
    if hasattr(network, "peft_config"):
        del network.peft_config


class LoraEMA:
    r"""Exponential moving average :math:`\bar\theta \leftarrow d\,\bar\theta + (1 - d)\,\theta` of the LoRA weights."""

    def __init__(self, params: Sequence[torch.nn.Parameter], decay: float):
        self.decay = check_float("ema_decay", decay, 0.0, 0.999999)
        self.params = list(params)
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for avg, p in zip(self.shadow, self.params):
            avg.lerp_(p.detach(), 1 - self.decay)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Swap the averaged weights in for the duration of the block (export, evaluation)."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, avg in zip(self.params, self.shadow):
                p.copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, saved in zip(self.params, backup):
                    p.copy_(saved)
