"""A headless ComfyUI client: queue an API-format workflow on a running server, follow it, download its outputs.

Only the standard library is needed (``websocket-client``, when installed, adds live progress). Command line:
``python -m srrl_core.headless WORKFLOW_API.json --server URL --out DIR`` (see ``cli``). From Python::

    from srrl_core import headless
    wf = headless.apply_overrides(headless.load_workflow("workflows/api/reflective_text_to_image.json"), seed=1)
    prompt_id, entry, paths = headless.run("http://127.0.0.1:8188", wf, out_dir="results/")

Modules: ``overrides`` (workflow files, --seed/--prompt/--rounds/--set), ``client`` (queue, wait, cancel, run),
``downloads`` (output files under safe names), ``transport`` (HTTP), ``errors`` (exceptions and exit codes),
``cli`` (the command line).
"""

from .cli import build_parser, main
from .client import DEFAULT_SERVER, cancel, format_node_errors, open_websocket, queue_prompt, run, wait_for_result
from .downloads import download_outputs, output_files, safe_filename
from .errors import (
    EXIT_CONNECTION,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    EXIT_WORKFLOW,
    ExecutionError,
    HeadlessError,
    OverrideError,
    ServerError,
    TimeoutExpired,
    UsageError,
    WorkflowError,
)
from .overrides import apply_overrides, load_workflow, parse_set, positive_text_nodes, validate_workflow
from .transport import normalize_server

__all__ = [
    "DEFAULT_SERVER", "EXIT_CONNECTION", "EXIT_OK", "EXIT_TIMEOUT", "EXIT_USAGE", "EXIT_WORKFLOW", "ExecutionError",
    "HeadlessError", "OverrideError", "ServerError", "TimeoutExpired", "UsageError", "WorkflowError",
    "apply_overrides", "build_parser", "cancel", "download_outputs", "format_node_errors", "load_workflow", "main",
    "normalize_server", "open_websocket", "output_files", "parse_set", "positive_text_nodes", "queue_prompt", "run",
    "safe_filename", "validate_workflow", "wait_for_result",
]
