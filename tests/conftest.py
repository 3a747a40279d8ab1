"""Fixtures of the whole suite. The host fixtures are for tests that need a real ComfyUI host (tests/host; see
tests/helpers/hostlib.py for the environment variables); a test that asks for one skips when the host is absent.

  comfy_host_dir     session: the host directory; skips (or fails under SRRL_REQUIRE_HOST=1) when absent
  comfy_prepared     session: (host dir, tiny checkpoint path, pack symlink) - checkpoint built once into
                     models/checkpoints/srrl_tiny_sd15.safetensors, checkout linked as custom_nodes/ComfyUI-SRRL
  tiny_checkpoint    session: the path of that checkpoint
  comfy_server       session: a running `python main.py --cpu ...` (hostlib.ComfyServer: base_url, output_dir,
                     input_dir, log_path, get_json/post_json, run_workflow); stopped at the end of the session
  comfy_inprocess    session: the host imported in this process with the tiny checkpoint loaded by
                     comfy.sd.load_checkpoint_guess_config (hostlib.InProcessHost; `model, clip, vae = ...`)
  headless           the srrl_core.headless package (the headless client)
  stock_workflow     a fresh copy of tests/helpers/fixtures/stock_sd15_api.json (API format)

Helper code lives in the tests.helpers package. Install the host with tests/host/install_host.sh (see
docs/headless.md and that script).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tests.helpers import hostlib


@pytest.fixture
def one_thread():
    """Torch at one thread for the test (``pytestmark = pytest.mark.usefixtures("one_thread")``): the CI box is
    shared, and one thread is faster than two fighting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _host_or_skip():
    try:
        return hostlib.check_host()
    except hostlib.HostMissing as e:
        if hostlib.host_required():
            pytest.fail(f"SRRL_REQUIRE_HOST=1 but {e}", pytrace=False)
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def comfy_host_dir():
    return _host_or_skip()


@pytest.fixture(scope="session")
def comfy_prepared(comfy_host_dir):
    return hostlib.prepare_host(comfy_host_dir)


@pytest.fixture(scope="session")
def tiny_checkpoint(comfy_prepared):
    return comfy_prepared[1]


@pytest.fixture(scope="session")
def comfy_server(comfy_prepared, tmp_path_factory):
    host = comfy_prepared[0]
    server = hostlib.start_server(host, tmp_path_factory.mktemp("comfyui-server"))
    try:
        yield server
    finally:
        hostlib.stop_server(server)
        print(f"\n[comfy_server] stopped; log: {server.log_path}")


@pytest.fixture(scope="session")
def comfy_inprocess(comfy_prepared):
    host, checkpoint, _ = comfy_prepared
    return hostlib.load_inprocess(host, checkpoint)


@pytest.fixture(scope="session")
def headless():
    return hostlib.headless


@pytest.fixture
def stock_workflow():
    with open(hostlib.STOCK_WORKFLOW, encoding="utf-8") as f:
        return copy.deepcopy(json.load(f))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the end of the server log to a failing test that used the server."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and "comfy_server" in getattr(item, "fixturenames", ()):
        server = item.funcargs.get("comfy_server")
        if server is not None:
            report.sections.append(("ComfyUI server log (last lines)", server.log_tail(60)))
