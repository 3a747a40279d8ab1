"""API-format workflow files and the override language of the command line (--seed, --rounds, --prompt, --set).

A workflow in API format is a JSON object {node_id: {"class_type": ..., "inputs": {...}}}; a UI workflow (with
"nodes" and "links") is refused with a hint. Overrides never change the file: ``apply_overrides`` returns a copy.
"""

from __future__ import annotations

import copy
import json
import re

from .errors import OverrideError, UsageError

SEED_INPUTS = ("seed", "noise_seed")
TEXT_INPUTS = ("text", "text_g", "text_l")
# Inputs through which conditioning flows from a text encoder to a sampler's `positive` input.
_CONDITIONING_INPUT = re.compile(r"^(positive|conditioning(_\w+)?|cond(_\w+)?)$")


def load_workflow(path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise UsageError(f"cannot read workflow {path}: {e.strerror or e}") from e
    except ValueError as e:
        raise UsageError(f"workflow {path} is not valid JSON: {e}") from e
    return validate_workflow(data, str(path))


def validate_workflow(data, name="workflow") -> dict:
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "class_type" not in data:
        data = data["prompt"]  # a saved /prompt request body
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise UsageError(f"{name} is a UI workflow; export it from ComfyUI with 'Save (API Format)' "
                         "(or use the file under workflows/api/)")
    if not isinstance(data, dict) or not data:
        raise UsageError(f"{name} is not an API-format workflow (a JSON object of nodes)")
    for node_id, node in data.items():
        if not isinstance(node, dict) or "class_type" not in node or not isinstance(node.get("inputs", {}), dict):
            raise UsageError(f"{name}: node {node_id!r} has no class_type/inputs; is this an API-format workflow?")
    return data


def _is_link(value) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def _parse_loose(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _coerce(text: str, current, where: str):
    """Convert the command-line string `text` to the type of `current`."""
    if isinstance(current, bool):
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise OverrideError(f"{where}: expected a boolean (true/false), got {text!r}")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            try:
                f = float(text)
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
            raise OverrideError(f"{where}: expected an integer, got {text!r}") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise OverrideError(f"{where}: expected a number, got {text!r}") from None
    if isinstance(current, str):
        return text
    return _parse_loose(text)  # a link, a list, a new input


def parse_set(spec: str):
    """'NODE_ID.input=value' -> (node_id, input, value_text): split at the first '=', then at the first '.'
    (API node ids are integers as strings, or ids like '12:3' from group nodes, never with dots)."""
    if "=" not in spec:
        raise OverrideError(f"--set {spec!r}: expected NODE_ID.INPUT=VALUE")
    target, value = spec.split("=", 1)
    if "." not in target:
        raise OverrideError(f"--set {spec!r}: expected NODE_ID.INPUT=VALUE")
    node_id, input_name = target.split(".", 1)
    node_id, input_name = node_id.strip(), input_name.strip()
    if not node_id or not input_name:
        raise OverrideError(f"--set {spec!r}: expected NODE_ID.INPUT=VALUE")
    return node_id, input_name, value


def _literal_inputs(prompt, names):
    for node_id, node in prompt.items():
        for name in names:
            if name in node.get("inputs", {}) and not _is_link(node["inputs"][name]):
                yield node_id, name


def positive_text_nodes(prompt) -> list:
    """Ids of the text-encoder nodes whose output reaches an input named `positive`.

    Walks upstream from every `positive` input, through conditioning inputs only (positive, conditioning,
    conditioning_to, cond...), and collects the nodes that have a literal text input.
    """
    found, seen = [], set()
    stack = [node["inputs"]["positive"][0] for node in prompt.values()
             if _is_link(node.get("inputs", {}).get("positive"))]
    while stack:
        node_id = stack.pop()
        if node_id in seen or node_id not in prompt:
            continue
        seen.add(node_id)
        inputs = prompt[node_id].get("inputs", {})
        if any(isinstance(inputs.get(t), str) for t in TEXT_INPUTS):
            found.append(node_id)
            continue
        for name, value in inputs.items():
            if _is_link(value) and _CONDITIONING_INPUT.match(name):
                stack.append(value[0])
    return sorted(found, key=lambda k: (len(k), k))


def apply_overrides(prompt: dict, sets=(), seed=None, prompt_text=None, rounds=None, log=None) -> dict:
    """A copy of `prompt` with the overrides applied; raises OverrideError naming what did not fit."""
    prompt = copy.deepcopy(validate_workflow(prompt))
    say = log or (lambda msg: None)

    if seed is not None:
        targets = list(_literal_inputs(prompt, SEED_INPUTS))
        if not targets:
            raise OverrideError("--seed: the workflow has no seed or noise_seed input")
        for node_id, name in targets:
            prompt[node_id]["inputs"][name] = int(seed)
            say(f"set {node_id}.{name} = {int(seed)}")

    if rounds is not None:
        targets = list(_literal_inputs(prompt, ("rounds",)))
        if not targets:
            raise OverrideError("--rounds: the workflow has no rounds input")
        for node_id, name in targets:
            prompt[node_id]["inputs"][name] = int(rounds)
            say(f"set {node_id}.{name} = {int(rounds)}")

    if prompt_text is not None:
        targets = positive_text_nodes(prompt)
        if not targets:
            raise OverrideError("--prompt: no text-encoder node feeds a `positive` input in this workflow; "
                                "use --set NODE_ID.text=...")
        for node_id in targets:
            inputs = prompt[node_id]["inputs"]
            for t in TEXT_INPUTS:
                if isinstance(inputs.get(t), str):
                    inputs[t] = prompt_text
                    say(f"set {node_id}.{t} = {prompt_text!r}")
        for node_id, name in _literal_inputs(prompt, ("reward_prompt",)):  # what SRRL's reward judges against
            prompt[node_id]["inputs"][name] = prompt_text
            say(f"set {node_id}.{name} = {prompt_text!r}")

    for spec in sets:
        node_id, name, text = parse_set(spec) if isinstance(spec, str) else spec
        if node_id not in prompt:
            raise OverrideError(f"--set {node_id}.{name}: no node {node_id!r} in the workflow "
                                f"(nodes: {', '.join(sorted(prompt, key=lambda k: (len(k), k)))})")
        inputs = prompt[node_id].setdefault("inputs", {})
        where = f"--set {node_id}.{name} ({prompt[node_id]['class_type']})"
        if name in inputs:
            value = _coerce(text, inputs[name], where) if isinstance(text, str) else text
        else:
            value = _parse_loose(text) if isinstance(text, str) else text
        inputs[name] = value
        say(f"set {node_id}.{name} = {value!r}")
    return prompt
