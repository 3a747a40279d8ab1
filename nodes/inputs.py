"""Checks every node runs on its own widget values before any work: the host's validation is not enough.

The March-2024 host accepts NaN and infinity for FLOAT widgets (NaN compares false with min and max) and does not
check optional inputs; an API client can send either. Each node therefore checks its FLOAT and INT widgets against
the ranges its INPUT_TYPES declares, with messages that name the input.
"""

from __future__ import annotations

from srrl_core.validation import check_float, check_int


def check_widgets(node_class, values: dict) -> None:
    """ValueError naming the first FLOAT/INT input of ``values`` that is not finite or outside its declared range."""
    spec = node_class.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, declaration in spec.get(section, {}).items():
            if name not in values or values[name] is None or not isinstance(declaration, tuple):
                continue
            kind = declaration[0]
            options = declaration[1] if len(declaration) > 1 and isinstance(declaration[1], dict) else {}
            if kind == "FLOAT":
                check_float(name, values[name], options.get("min"), options.get("max"))
            elif kind == "INT":
                check_int(name, values[name], options.get("min"), options.get("max"))
