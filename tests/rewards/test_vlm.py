"""VLM judge against a real OpenAI-compatible HTTP server on 127.0.0.1 that answers by a pixel rule."""

import logging
import math
import socket
import time

import pytest
import torch

from srrl_core.rewards import load_reward
from srrl_core.rewards.chat_client import chat_completions_url, endpoint_allowed
from srrl_core.rewards.vlm_judge import VLMJudgeError, parse_answer, yes_probability
from tests.helpers.rewards.judge_server import JudgeServer


@pytest.fixture(scope="module")
def server():
    server = JudgeServer()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def reset(server):
    server.mode, server.failures, server.delay = "logprobs", 0, 0.0
    server.requests.clear()
    server.headers.clear()


def images():
    """[compliant (bright top), violating (bright bottom), slightly compliant]."""
    out = torch.zeros(3, 16, 16, 3)
    out[0, :8], out[1, 8:], out[2, :8], out[2, 8:] = 0.9, 0.9, 0.55, 0.5
    return out


def judge(server, **options):
    options = {"endpoint": server.url, "model": "rule-judge", "rule": "the top half is brighter than the bottom",
               "retries": 0, "backoff": 0.0, "timeout": 5.0, **options}
    return load_reward("vlm_judge", **options)


def test_logprob_scores_are_p_yes(server):
    scores = judge(server).score(images(), "a lamp above a table")
    assert scores[0] > 0.99 and scores[1] < 0.01
    # image 2 as 8-bit PNG: top 140, bottom 128; the server offers "Yes" and " yes" (summed) against "No"
    p = 1 / (1 + math.exp(-20 * 12 / 255))
    yes = p * (math.exp(-0.01) + math.exp(-4.6))
    assert scores[2].item() == pytest.approx(yes / (yes + 1 - p), abs=1e-4)
    request = server.requests[0]
    assert request["logprobs"] is True and request["top_logprobs"] == 5 and request["temperature"] == 0
    text, image = request["messages"][0]["content"]
    assert text["text"] == "Does this image obey: the top half is brighter than the bottom? Answer Yes or No."
    assert image["image_url"]["url"].startswith("data:image/png;base64,")


def test_plain_text_answers_are_parsed(server):
    server.mode = "text"
    scores = judge(server, logprobs=False, question="Is the image lit from above, as in {prompt}? Yes or No.").score(
        images(), "a lamp above a table.")
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.0, 1.0]))
    assert server.requests[0]["messages"][0]["content"][0]["text"] == \
        "Is the image lit from above, as in a lamp above a table? Yes or No."
    assert "logprobs" not in server.requests[0]


def test_concurrent_requests_keep_image_order(server):
    batch = images().repeat(4, 1, 1, 1)
    scores = judge(server, concurrency=4, logprobs=False).score(batch, "x")
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.0, 1.0] * 4))
    assert len(server.requests) == 12


def test_api_key_is_read_from_the_named_environment_variable(server, monkeypatch):
    monkeypatch.setenv("SRRL_TEST_API_KEY", "secret-123")
    judge(server, api_key_env="SRRL_TEST_API_KEY").score(images()[:1], "x")
    assert server.headers[0]["Authorization"] == "Bearer secret-123"
    with pytest.raises(ValueError, match="NAME of an environment variable") as error:
        judge(server, api_key_env="sk-live-abc123")
    assert "sk-live" not in str(error.value)  # a pasted key is never echoed
    with pytest.raises(ValueError, match="'SRRL_UNSET_API_KEY', which is not set"):
        judge(server, api_key_env="SRRL_UNSET_API_KEY")


def test_http_500_is_retried_then_succeeds(server):
    server.mode, server.failures = "flaky", 2
    scores = judge(server, retries=2).score(images()[:1], "x")
    assert scores.item() > 0.99 and len(server.requests) == 3


@pytest.mark.parametrize("mode, message", [
    ("error", "HTTP 500"), ("malformed", "malformed judge answer"), ("not_json", "did not answer JSON"),
])
def test_failures_raise_clear_errors(server, mode, message):
    server.mode = mode
    with pytest.raises(VLMJudgeError, match=message):
        judge(server, retries=1).score(images()[:1], "x")


def test_failures_use_the_fallback_with_a_warning(server, caplog):
    server.mode = "malformed"
    with caplog.at_level(logging.WARNING, logger="srrl_core.rewards.vlm_judge"):
        scores = judge(server, fallback=0.25).score(images()[:2], "x")
    torch.testing.assert_close(scores, torch.tensor([0.25, 0.25]))
    assert sum("using fallback score 0.25" in r.getMessage() for r in caplog.records) == 2


def test_timeout(server):
    server.mode, server.delay = "slow", 1.0
    with pytest.raises(VLMJudgeError, match="timeout 0.2s"):
        judge(server, timeout=0.2).score(images()[:1], "x")


def test_unreachable_endpoint():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reward = load_reward("vlm_judge", endpoint=f"http://127.0.0.1:{port}/v1", model="m", retries=1, backoff=0.01)
    with pytest.raises(VLMJudgeError, match=f"could not reach http://127.0.0.1:{port}/v1/chat/completions"):
        reward.score(torch.zeros(1, 8, 8, 3), "x")


def test_configuration_errors():
    with pytest.raises(ValueError, match="endpoint must be an http"):
        load_reward("vlm_judge", endpoint="localhost:8000", model="m")
    with pytest.raises(ValueError, match="placeholders"):
        load_reward("vlm_judge", endpoint="http://h/v1", model="m", question="Is it {colour}?")
    with pytest.raises(ValueError, match="rule is empty"):
        load_reward("vlm_judge", endpoint="http://h/v1", model="m", question="Obeys {rule}?")
    with pytest.raises(ValueError, match="fallback must be"):
        load_reward("vlm_judge", endpoint="http://127.0.0.1:9/v1", model="m", fallback=2.0)
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("https://h/v1/chat/completions") == "https://h/v1/chat/completions"


def test_answer_parsing_helpers():
    assert parse_answer("**Yes**, clearly") == 1.0 and parse_answer("no.") == 0.0
    choice = {"logprobs": {"content": [
        {"token": "\n", "logprob": 0.0, "top_logprobs": [{"token": "\n", "logprob": 0.0}]},
        {"token": "▁Yes", "logprob": math.log(0.6),
         "top_logprobs": [{"token": "▁Yes", "logprob": math.log(0.6)}, {"token": "NO", "logprob": math.log(0.2)}]}]}}
    assert yes_probability(choice) == pytest.approx(0.75)
    assert yes_probability({"logprobs": None}) is None


# Allow-lists: the server's environment decides which variables are keys and which endpoints are called -------


def test_only_allowed_variables_are_sent_as_keys(server, monkeypatch):
    monkeypatch.setenv("HOME", "/root")
    monkeypatch.setenv("hf_abcdefgh12345", "x")  # a pasted key that looks like a variable name
    for name in ("HOME", "hf_abcdefgh12345"):
        with pytest.raises(ValueError, match="SRRL_ALLOWED_KEY_VARS") as error:
            judge(server, api_key_env=name)
        assert name not in str(error.value)
    assert not server.requests
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-1")
    judge(server, api_key_env="OPENAI_API_KEY").score(images()[:1], "x")
    monkeypatch.setenv("MY_COMPANY_TOKEN", "tok-2")
    monkeypatch.setenv("SRRL_ALLOWED_KEY_VARS", "OTHER, MY_COMPANY_TOKEN")
    judge(server, api_key_env="MY_COMPANY_TOKEN").score(images()[:1], "x")
    assert [h["Authorization"] for h in server.headers] == ["Bearer sk-openai-1", "Bearer tok-2"]


def test_endpoints_outside_the_allow_list_are_refused(monkeypatch):
    monkeypatch.delenv("SRRL_ALLOWED_ENDPOINTS", raising=False)
    with pytest.raises(ValueError, match="SRRL_ALLOWED_ENDPOINTS=probe.example") as error:
        load_reward("vlm_judge", endpoint="https://probe.example/v1?token=abc", model="m")
    assert "token=abc" not in str(error.value)
    with pytest.raises(ValueError, match="user name or password"):
        load_reward("vlm_judge", endpoint="http://user:pw@127.0.0.1:1/v1", model="m")
    assert endpoint_allowed("http://localhost:8000/v1") and endpoint_allowed("http://[::1]:1/v1")
    assert endpoint_allowed("http://127.0.0.2/v1") and not endpoint_allowed("http://10.0.0.1/v1")
    monkeypatch.setenv("SRRL_ALLOWED_ENDPOINTS", "api.example.org, https://gw.example.net/v1, h.example:8443")
    assert endpoint_allowed("https://api.example.org/v1/chat/completions")
    assert endpoint_allowed("https://gw.example.net/v1/chat/completions")
    assert not endpoint_allowed("https://gw.example.net/v10/chat/completions")  # prefixes end at a '/'
    assert not endpoint_allowed("https://gw.example.net.evil.io/v1/chat/completions")
    assert endpoint_allowed("http://h.example:8443/v1") and not endpoint_allowed("http://h.example:9/v1")


def test_keys_never_appear_in_errors_or_logs(server, monkeypatch, caplog):
    monkeypatch.setenv("SRRL_TEST_API_KEY", "sk-proj-TOPSECRET42")
    server.mode = "echo_auth"
    with caplog.at_level(logging.DEBUG), pytest.raises(VLMJudgeError) as error:
        judge(server, api_key_env="SRRL_TEST_API_KEY").score(images()[:1], "x")
    assert server.headers[0]["Authorization"] == "Bearer sk-proj-TOPSECRET42"  # the key was sent ...
    assert "HTTP 401" in str(error.value)
    assert "TOPSECRET" not in str(error.value) and "TOPSECRET" not in caplog.text  # ... and never echoed
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        judge(server, api_key_env="SRRL_TEST_API_KEY", fallback=0.5).score(images()[:1], "x")
    assert "HTTP 401" in caplog.text and "TOPSECRET" not in caplog.text


def test_redirects_are_not_followed(server, monkeypatch):
    monkeypatch.setenv("SRRL_TEST_API_KEY", "sk-proj-TOPSECRET42")
    other = JudgeServer()
    try:
        server.mode, server.redirect_to = "redirect", other.url + "/chat/completions"
        with pytest.raises(VLMJudgeError, match="HTTP 307"):
            judge(server, api_key_env="SRRL_TEST_API_KEY").score(images()[:1], "x")
        assert not other.requests
    finally:
        other.close()


def test_timeout_and_depth_are_range_checked(server):
    with pytest.raises(ValueError, match=r"timeout must be a finite number in \[0.01, 3600"):
        judge(server, timeout=1e30)
    deep = {"backend": "brightness_band"}
    for _ in range(40):
        deep = {"backend": "weighted_sum", "terms": [deep]}
    with pytest.raises(ValueError, match="nests dicts/lists more than"):
        load_reward(deep.pop("backend"), **deep)


def test_cancel_abandons_a_hanging_request(server):
    server.mode, server.delay = "hang", 5.0
    reward = judge(server, timeout=30.0)
    started = time.monotonic()

    class Cancelled(Exception):
        pass

    def check():
        if time.monotonic() - started > 0.3:
            raise Cancelled

    with pytest.raises(Cancelled):
        reward.set_interrupt_check(check).score(images()[:2], "x")
    assert time.monotonic() - started < 2.0  # not the 5 s the endpoint hangs, nor the 30 s timeout
