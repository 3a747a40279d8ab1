"""Helpers behind the host fixtures of tests/conftest.py: find the ComfyUI host, prepare it, run it, import it in-process.

Nothing here imports ComfyUI at module import time.

Environment:
  SRRL_COMFYUI_DIR     the host directory (default <repo>/.cache/comfyui-host; tests/host/install_host.sh DIR)
  SRRL_REQUIRE_HOST=1  a missing host fails the tests instead of skipping them (CI)
  SRRL_COMFY_CPU=0     do not pass --cpu to the server / do not force the CPU in-process (GPU machines)
  SRRL_COMFY_ARGS      extra command-line arguments for the server (split like a shell would)
  SRRL_COMFY_START_TIMEOUT  seconds to wait for the server to answer (default 180)
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from srrl_core import headless
from tests.helpers.support import REPO, load_module_from_path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PACK_LINK_NAME = "ComfyUI-SRRL"
TINY_CKPT_NAME = "srrl_tiny_sd15.safetensors"
STOCK_WORKFLOW = FIXTURES / "stock_sd15_api.json"
INSTALL_HINT = "install it with: tests/host/install_host.sh {dir}  (or point SRRL_COMFYUI_DIR at an installed host)"

# Top-level module names of the host that must come from the host directory when imported in-process.
HOST_TOP_LEVEL = ("comfy", "comfy_extras", "nodes", "folder_paths", "execution", "server", "latent_preview",
                  "node_helpers", "comfy_execution", "comfy_api", "comfy_config", "app")


class HostMissing(Exception):
    pass


def host_dir() -> Path:
    return Path(os.environ.get("SRRL_COMFYUI_DIR") or (REPO / ".cache" / "comfyui-host")).expanduser().absolute()


def host_required() -> bool:
    return os.environ.get("SRRL_REQUIRE_HOST", "").strip().lower() in ("1", "true", "yes")


def use_cpu() -> bool:
    return os.environ.get("SRRL_COMFY_CPU", "1").strip().lower() not in ("0", "false", "no")


def check_host(path: Path | None = None) -> Path:
    path = path or host_dir()
    if not (path / "main.py").is_file() or not (path / "comfy").is_dir():
        raise HostMissing(f"no ComfyUI host at {path}; " + INSTALL_HINT.format(dir=path))
    return path


def tiny_sd15_module():
    return load_module_from_path("srrl_fixture_tiny_sd15", FIXTURES / "tiny_sd15.py")


# --- host preparation -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            import fcntl
        except ImportError:  # Windows: no lock, the atomic rename still protects readers
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _checkpoint_is_current(path: Path, fixture) -> bool:
    if not path.is_file():
        return False
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:
        return False
    return (meta.get("srrl_fixture") == "tiny_sd15"
            and meta.get("srrl_fixture_version") == fixture.FIXTURE_VERSION
            and meta.get("srrl_seed") == "0")


def ensure_tiny_checkpoint(host: Path) -> Path:
    """host/models/checkpoints/srrl_tiny_sd15.safetensors, built once (seed 0) and reused while current."""
    fixture = tiny_sd15_module()
    path = host / "models" / "checkpoints" / TINY_CKPT_NAME
    if _checkpoint_is_current(path, fixture):
        return path
    with _file_lock(path.parent / ".srrl_tiny_sd15.lock"):
        if not _checkpoint_is_current(path, fixture):
            fixture.build_tiny_sd15_checkpoint(path, seed=0)
    return path


def ensure_pack_link(host: Path) -> Path:
    """host/custom_nodes/ComfyUI-SRRL -> this checkout (a symlink, replaced if it points elsewhere)."""
    link = host / "custom_nodes" / PACK_LINK_NAME
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        if Path(os.path.realpath(link)) == REPO.resolve():
            return link
        tmp = link.with_name(f".{PACK_LINK_NAME}.tmp{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(REPO, target_is_directory=True)
        os.replace(tmp, link)
        return link
    if link.exists():
        raise RuntimeError(f"{link} exists and is not a symlink to this checkout ({REPO}); remove it, or use "
                           "another host directory (SRRL_COMFYUI_DIR)")
    try:
        link.symlink_to(REPO, target_is_directory=True)
    except FileExistsError:  # a concurrent session made it
        pass
    return link


def prepare_host(host: Path | None = None):
    host = check_host(host)
    return host, ensure_tiny_checkpoint(host), ensure_pack_link(host)


# --- the server -----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _host_supports(host: Path, flag: str) -> bool:
    try:
        return flag in (host / "comfy" / "cli_args.py").read_text(encoding="utf-8")
    except OSError:
        return False


def server_command(host: Path, port: int, output_dir: Path, input_dir: Path, temp_dir: Path, user_dir: Path):
    cmd = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
           "--output-directory", str(output_dir), "--input-directory", str(input_dir),
           "--temp-directory", str(temp_dir), "--deterministic",
           # Live latent previews on (the host default is none): tests/host/test_previews.py checks them.
           "--preview-method", "latent2rgb"]
    if use_cpu():
        cmd.append("--cpu")
    # Flags of current ComfyUI that the March-2024 host does not have.
    if _host_supports(host, "--user-directory"):
        cmd += ["--user-directory", str(user_dir)]
    if _host_supports(host, "--database-url"):  # its default lives in <host>/user/, absent in a fresh copy
        cmd += ["--database-url", f"sqlite:///{user_dir / 'comfyui.db'}"]
    if _host_supports(host, "--disable-api-nodes"):  # paid cloud nodes: not needed, slower start-up
        cmd.append("--disable-api-nodes")
    cmd += shlex.split(os.environ.get("SRRL_COMFY_ARGS", ""))
    return cmd


def _http_ok(url: str, timeout=2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def tail(path: Path, lines=80) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ComfyServer:
    """A running ComfyUI (the `comfy_server` fixture)."""
    host_dir: Path
    port: int
    base_url: str
    output_dir: Path
    input_dir: Path
    temp_dir: Path
    log_path: Path
    process: subprocess.Popen = field(repr=False)
    command: list = field(default_factory=list, repr=False)

    def url(self, path: str) -> str:
        return self.base_url + path

    def get_json(self, path: str, timeout=30.0):
        with urllib.request.urlopen(self.url(path), timeout=timeout) as r:
            return json.loads(r.read().decode("utf-8"))

    def post_json(self, path: str, body, timeout=30.0):
        """(status, parsed JSON or None); HTTP errors are returned, not raised."""
        req = urllib.request.Request(self.url(path), data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw.decode("utf-8")) if raw else None
        except ValueError:
            return status, None

    def object_info(self, node_class: str | None = None) -> dict:
        return self.get_json("/object_info" + (f"/{node_class}" if node_class else ""))

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines=80) -> str:
        return tail(self.log_path, lines)

    def alive(self) -> bool:
        return self.process.poll() is None

    def run_workflow(self, prompt: dict, timeout=300.0, out_dir=None, types=("output",)):
        """Queue `prompt` with the headless client and wait: (prompt_id, history entry, downloaded paths)."""
        return headless.run(self.base_url, prompt, out_dir=out_dir, timeout=timeout, use_websocket=False,
                          types=types)


def _die_with_parent():
    """In the child before exec (Linux): SIGTERM the server if the test process dies without cleaning up."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def start_server(host: Path, workdir: Path, timeout: float | None = None, attempts=3) -> ComfyServer:
    """Start `python main.py` in `host`, wait until /system_stats answers; raises RuntimeError with the log."""
    timeout = float(timeout or os.environ.get("SRRL_COMFY_START_TIMEOUT", 180))
    dirs = {name: workdir / name for name in ("output", "input", "temp", "user")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               DO_NOT_TRACK="1")
    last_error = None
    for attempt in range(attempts):
        port = free_port()
        log_path = workdir / f"comfyui-server-{port}.log"
        cmd = server_command(host, port, dirs["output"], dirs["input"], dirs["temp"], dirs["user"])
        log = open(log_path, "wb")
        proc = subprocess.Popen(cmd, cwd=host, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, preexec_fn=_die_with_parent)
        log.close()  # the child holds its own descriptor
        server = ComfyServer(host_dir=host, port=port, base_url=f"http://127.0.0.1:{port}",
                             output_dir=dirs["output"], input_dir=dirs["input"], temp_dir=dirs["temp"],
                             log_path=log_path, process=proc, command=cmd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _http_ok(server.url("/system_stats")):
                return server
            time.sleep(0.5)
        stop_server(server)
        text = tail(log_path, 120)
        if proc.returncode is not None and "address already in use" in text.lower() and attempt + 1 < attempts:
            continue  # the free port was taken in between: try another
        what = (f"exited with code {proc.returncode}" if proc.returncode is not None and time.monotonic() < deadline
                else f"did not answer /system_stats within {timeout:g} s")
        last_error = RuntimeError(f"ComfyUI server {what}.\ncommand: {shlex.join(cmd)}\ncwd: {host}\n"
                                  f"log {log_path} (last lines):\n{text}")
        break
    raise last_error or RuntimeError("ComfyUI server did not start")


def stop_server(server: ComfyServer, grace=15.0):
    """SIGTERM to the server's own process group, SIGKILL after `grace` seconds."""
    proc = server.process
    if proc.poll() is not None:
        return proc.returncode
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)  # the group start_new_session made for this server only
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


# --- in-process -----------------------------------------------------------------------------------------

def _module_dirs(mod):
    paths = list(getattr(mod, "__path__", []) or [])
    if getattr(mod, "__file__", None):
        paths.append(os.path.dirname(mod.__file__))
    return [os.path.realpath(p) for p in paths]


def ensure_host_importable(host: Path, cpu: bool | None = None):
    """Make `import comfy...` (and nodes, folder_paths, ...) resolve to `host`, with ComfyUI's arguments
    not parsed from sys.argv and --cpu set before comfy.model_management picks its device.

    Idempotent. Raises RuntimeError if one of the host's top-level modules was already imported from
    somewhere else (another ComfyUI, or a package of the same name such as this repo's `nodes/`).
    """
    host_real = os.path.realpath(host)
    cpu = use_cpu() if cpu is None else cpu
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != host_real]
    sys.path.insert(0, str(host))  # first: the host's `nodes` must win over this repo's `nodes/` package
    importlib.invalidate_caches()
    for name in HOST_TOP_LEVEL:
        mod = sys.modules.get(name)
        if mod is None:
            continue
        dirs = _module_dirs(mod)
        if name == "nodes" and dirs and all(d == str(REPO / "nodes") for d in dirs):
            # This repo's `nodes/` package, imported as top-level `nodes` by a unit test (pytest's
            # pythonpath "."), collides with ComfyUI's nodes.py. Free the top-level name for the host and
            # keep the package's submodules (nodes.names, ...) registered: modules that imported them keep
            # working, and so do later `from nodes.x import y` / `from .x import y` of submodules already
            # loaded. Submodules not imported yet can no longer be imported as `nodes.x` in this process.
            shadowed = sys.modules.pop("nodes")
            sys.modules.setdefault("srrl_repo_nodes", shadowed)
            continue
        if not dirs or not all(d == host_real or d.startswith(host_real + os.sep) for d in dirs):
            raise RuntimeError(
                f"module {name!r} is already imported from {dirs or mod!r}, not from the ComfyUI host {host}. "
                f"Import the host first (comfy_inprocess fixture), and import this pack's own `nodes` package "
                f"only relatively or through InProcessHost.load_pack().")
    import comfy.options  # noqa: F401  (args parsing stays disabled: parse_args([]))
    from comfy.cli_args import args
    if "comfy.model_management" not in sys.modules:
        if cpu:
            args.cpu = True
    elif cpu and not args.cpu:
        raise RuntimeError("comfy.model_management was imported before --cpu could be set")
    import comfy.model_management  # noqa: F401
    return args


@dataclass
class InProcessHost:
    """The ComfyUI host imported into the test process, with the tiny checkpoint loaded.

    `model, clip, vae = comfy_inprocess` unpacks the loader's (ModelPatcher, CLIP, VAE).
    ComfyUI runs nodes under torch.inference_mode(); so were these loaded (ComfyUI's CLIP init copies into
    parameters in place, which autograd refuses outside no_grad/inference_mode).
    """
    host_dir: Path
    checkpoint: Path
    model: object = None
    clip: object = None
    vae: object = None

    def __iter__(self):
        return iter((self.model, self.clip, self.vae))

    @property
    def model_config_name(self) -> str:
        return type(self.model.model.model_config).__name__

    def import_module(self, name: str):
        return importlib.import_module(name)

    def nodes(self):
        """ComfyUI's nodes.py (built-in node classes, NODE_CLASS_MAPPINGS). The comfy_extras nodes
        (SamplerCustom, ...) are registered only after load_extra_nodes(); or import their module directly:
        import_module("comfy_extras.nodes_custom_sampler")."""
        return importlib.import_module("nodes")

    def load_extra_nodes(self, names=None):
        """Register comfy_extras nodes in nodes.NODE_CLASS_MAPPINGS through the host's own loader, as the
        server does at start-up. `names`: e.g. ["nodes_custom_sampler"]; None for all. Returns the mapping."""
        import asyncio
        import inspect
        nodes = self.nodes()
        extras = self.host_dir / "comfy_extras"
        files = (sorted(extras.glob("nodes_*.py")) if names is None
                 else [extras / (n if n.endswith(".py") else n + ".py") for n in names])
        loaded = self.__dict__.setdefault("_extras_loaded", set())
        kwargs = {}
        if "module_parent" in inspect.signature(nodes.load_custom_node).parameters:
            kwargs["module_parent"] = "comfy_extras"  # current ComfyUI
        for f in files:
            if str(f) in loaded:
                continue
            result = nodes.load_custom_node(str(f), **kwargs)
            if inspect.iscoroutine(result):  # current ComfyUI's loader is async
                result = asyncio.run(result)
            if result is False:
                raise RuntimeError(f"the host could not load {f} (see the log above)")
            loaded.add(str(f))
        return nodes.NODE_CLASS_MAPPINGS

    def load_checkpoint(self, path=None):
        import torch
        import comfy.sd
        with torch.inference_mode():
            out = comfy.sd.load_checkpoint_guess_config(str(path or self.checkpoint), output_vae=True,
                                                        output_clip=True)
        return out[:3]

    def encode(self, text: str):
        """CONDITIONING as CLIPTextEncode returns it: [[cond, {"pooled_output": pooled}]]."""
        import torch
        with torch.inference_mode():
            tokens = self.clip.tokenize(text)
            cond, pooled = self.clip.encode_from_tokens(tokens, return_pooled=True)
        return [[cond, {"pooled_output": pooled}]]

    def load_pack(self, module_name: str = PACK_LINK_NAME):
        """Import this checkout as a custom-node package the way ComfyUI does (tests.helpers.support.load_pack)."""
        from tests.helpers.support import load_pack

        return load_pack(module_name)


def load_inprocess(host: Path, checkpoint: Path) -> InProcessHost:
    ensure_host_importable(host)
    inproc = InProcessHost(host_dir=host, checkpoint=checkpoint)
    inproc.model, inproc.clip, inproc.vae = inproc.load_checkpoint()
    return inproc


def watch_prompt(server, prompt: dict, timeout: float = 600) -> tuple[list[tuple[str, int, int]], list[bytes]]:
    """Queue ``prompt`` and follow it over the websocket until it finishes: its progress messages (node, value,
    max) and every binary frame (previews). Fails the test on an execution error or after ``timeout`` seconds."""
    import uuid

    import pytest
    import websocket

    client_id = uuid.uuid4().hex
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}", timeout=10)
    progress, frames = [], []
    try:
        prompt_id = headless.queue_prompt(server.base_url, prompt, client_id=client_id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ws.settimeout(max(1.0, deadline - time.monotonic()))
            message = ws.recv()
            if isinstance(message, bytes):
                frames.append(message)
                continue
            event = json.loads(message)
            data = event.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if event["type"] == "progress":
                progress.append((data["node"], data["value"], data["max"]))
            elif event["type"] in ("execution_error", "execution_interrupted"):
                pytest.fail(f"the prompt failed: {data}")
            elif event["type"] == "executing" and data.get("node") is None:
                break
        else:
            pytest.fail(f"the prompt did not finish within {timeout:.0f} s")
    finally:
        ws.close()
    return progress, frames
