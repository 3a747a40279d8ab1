"""Read a ComfyUI UI-format workflow (what the editor saves) as the API-format prompt it stands for.

The UI format stores links separately and widget values positionally (``widgets_values``, in the order of the node's
widget inputs, with an extra "control after generate" value after seed widgets); the API format names every input.
Node definitions come from the host's /object_info, so this is checked against the real node signatures.
"""

from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
EDITOR_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}  # the editor's own nodes: never in a prompt
SEED_CONTROLS = {"fixed", "increment", "decrement", "randomize"}


def widget_inputs(definition: dict) -> list[tuple[str, str]]:
    """(name, type) of the inputs the editor shows as widgets, in order."""
    widgets = []
    for section in ("required", "optional"):
        for name, spec in definition["input"].get(section, {}).items():
            kind = spec[0]
            if isinstance(kind, list) or kind in WIDGET_TYPES or (isinstance(kind, str) and kind == "COMBO"):
                widgets.append((name, "COMBO" if isinstance(kind, list) else kind))
    return widgets


def has_seed_control(name: str, kind: str, definition: dict) -> bool:
    spec = {**definition["input"].get("required", {}), **definition["input"].get("optional", {})}[name]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return kind == "INT" and (name in ("seed", "noise_seed") or options.get("control_after_generate", False))


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0 or node["type"] in EDITOR_ONLY:
            continue  # muted/bypassed nodes and editor-only nodes (notes) are not part of the prompt
        if node["type"] not in object_info:  # never dropped silently: the comparison would fail far from the cause
            raise KeyError(f"node {node['id']}: this host has no node type {node['type']!r}")
        definition = object_info[node["type"]]
        inputs = {}
        linked = {}
        for entry in node.get("inputs", []):
            if entry.get("link") is not None:
                link = links[entry["link"]]
                linked[entry["name"]] = [str(link[1]), link[2]]
        values = list(node.get("widgets_values", []))
        for name, kind in widget_inputs(definition):
            if not values:
                break
            value = values.pop(0)
            if has_seed_control(name, kind, definition) and values and values[0] in SEED_CONTROLS:
                values.pop(0)
            if name not in linked:
                inputs[name] = value
        inputs.update(linked)
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def normalise(prompt: dict) -> dict:
    """Comparable form: floats rounded, link slots as ints, the editor's _meta titles dropped."""

    def value(v):
        if isinstance(v, float):
            return round(v, 6)
        if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
            return [v[0], int(v[1])]
        return v

    return {
        node_id: {"class_type": node["class_type"], "inputs": {k: value(v) for k, v in node["inputs"].items()}}
        for node_id, node in prompt.items()
    }
