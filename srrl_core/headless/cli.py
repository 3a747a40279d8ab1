"""The command line: ``python -m srrl_core.headless WORKFLOW_API.json --server URL --out DIR [overrides]``.

    python -m srrl_core.headless WORKFLOW_API.json --server http://127.0.0.1:8188 --out results/ \\
        [--seed N] [--prompt TEXT] [--rounds K] [--set NODE_ID.INPUT=VALUE ...] [--timeout SECONDS]

Overrides, applied in this order:
  --seed N           every `seed` and `noise_seed` input
  --rounds K         every `rounds` input
  --prompt TEXT      the text of the positive prompt: every text-encoder node (a `text` input) whose output
                     reaches an input named `positive`, possibly through conditioning nodes; also every
                     `reward_prompt` input
  --set ID.IN=VALUE  any input of any node (repeatable). VALUE is converted to the type of the value it
                     replaces (int, float, bool, string); for a new input or a link it is read as JSON
                     when it parses as JSON (["4", 0] is a link), else taken as a string.

Progress comes from ComfyUI's websocket when the `websocket-client` package is installed (and --no-websocket
is not given), otherwise the client polls /history/<prompt_id>. Files written by output nodes (SaveImage...)
are downloaded through /view into --out, under sanitised names that never leave that directory.

Exit codes: 0 success; 1 the server rejected the workflow (validation, node_errors) or its execution failed
or was interrupted; 2 bad command line, workflow file or override; 3 the server could not be reached or
answered nonsense; 4 --timeout expired (the prompt is then removed from the queue or interrupted).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .client import DEFAULT_SERVER, run, websocket_module
from .errors import EXIT_OK, HeadlessError, UsageError
from .overrides import apply_overrides, load_workflow


def _default_progress(event, data):
    if event == "progress":
        value, maximum = data.get("value"), data.get("max")
        node = data.get("node")
        print(f"\r  progress{f' (node {node})' if node else ''}: {value}/{maximum}   ", end="",
              file=sys.stderr, flush=True)
    elif event == "executing" and data.get("node") is not None:
        print(f"\n  executing node {data['node']}", end="", file=sys.stderr, flush=True)
    elif event == "queue":
        print(f"  {data}", file=sys.stderr, flush=True)


def build_parser():
    ap = argparse.ArgumentParser(
        prog="python -m srrl_core.headless",
        description="Queue an API-format workflow on a running ComfyUI, wait, and download its outputs.",
        epilog="Exit codes: 0 ok, 1 workflow refused or failed, 2 usage, 3 server unreachable, 4 timeout.")
    ap.add_argument("workflow", help="API-format workflow JSON (ComfyUI 'Save (API Format)')")
    ap.add_argument("--server", default=DEFAULT_SERVER,
                    help="ComfyUI base URL (default: $COMFYUI_URL or http://127.0.0.1:8188)")
    ap.add_argument("--out", default="comfy_outputs", help="directory for the downloaded outputs")
    ap.add_argument("--set", action="append", default=[], metavar="NODE_ID.INPUT=VALUE",
                    help="override one input (repeatable)")
    ap.add_argument("--seed", type=int, help="set every seed/noise_seed input")
    ap.add_argument("--prompt", dest="prompt_text", metavar="TEXT", help="set the positive prompt text")
    ap.add_argument("--rounds", type=int, help="set every `rounds` input")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the result (default 600)")
    ap.add_argument("--include-previews", action="store_true", help="also download preview (temp) images")
    ap.add_argument("--allow-partial", action="store_true",
                    help="run the valid outputs when some output nodes fail validation (default: refuse)")
    ap.add_argument("--no-websocket", action="store_true", help="poll /history even if websocket-client is there")
    ap.add_argument("--dry-run", action="store_true", help="print the workflow after overrides and exit")
    ap.add_argument("-q", "--quiet", action="store_true", help="print only the downloaded paths")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        prompt = apply_overrides(load_workflow(args.workflow), sets=args.set, seed=args.seed,
                                 prompt_text=args.prompt_text, rounds=args.rounds, log=say)
        if args.dry_run:
            print(json.dumps(prompt, indent=2))
            return EXIT_OK
        types = ("output", "temp") if args.include_previews else ("output",)
        on_progress = None if args.quiet else _default_progress
        use_ws = not args.no_websocket
        if use_ws and websocket_module() is None:
            say("(websocket-client not installed: polling /history, no step progress)")
        t0 = time.monotonic()
        prompt_id, entry, paths = run(args.server, prompt, out_dir=args.out, timeout=args.timeout,
                                      use_websocket=use_ws, on_progress=on_progress, types=types,
                                      allow_partial=args.allow_partial)
        if on_progress is not None:
            print(file=sys.stderr)
        say(f"prompt {prompt_id} finished in {time.monotonic() - t0:.1f} s; {len(paths)} file(s) in "
            f"{os.path.abspath(args.out)}")
        for node_id, out in (entry.get("outputs") or {}).items():
            extra = {k: v for k, v in (out or {}).items() if k not in ("images", "gifs", "audio", "videos")}
            if extra:
                say(f"node {node_id} output: {json.dumps(extra)[:1000]}")
        for p in paths:
            print(p)
        return EXIT_OK
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except HeadlessError as e:
        print(f"\nerror: {e}" if not isinstance(e, UsageError) else f"error: {e}", file=sys.stderr)
        return e.exit_code
