"""The documented path of the headless client; it lives in ``srrl_core.headless`` (``python -m srrl_core.headless``).

    python workflows/run_headless.py WORKFLOW_API.json --server http://127.0.0.1:8188 --out results/ [overrides]
"""

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout root, from any working directory
headless = importlib.import_module("srrl_core.headless")
globals().update({name: getattr(headless, name) for name in headless.__all__})  # old `import run_headless` users

if __name__ == "__main__":
    sys.exit(headless.main())
