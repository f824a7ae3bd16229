"""Fixtures of the API tests: one tiny cloud and one proxy per session (real subprocesses), a
factory for proxies with other flags, and the official OpenAI clients (helpers: api_helpers.py).

Servers are started with the helpers of tests/conftest.py, which pytest loads as a plugin (it
is not importable as a module), so they are looked up through the plugin manager.
"""

from __future__ import annotations

import openai
import pytest

from api_helpers import TIMEOUT


@pytest.fixture(scope="session")
def helpers(request):
    """The root conftest module (start_talaria, free_port, ServerProcess)."""
    for plugin in request.config.pluginmanager.get_plugins():
        if hasattr(plugin, "start_talaria") and hasattr(plugin, "free_port"):
            return plugin
    raise RuntimeError("tests/conftest.py helpers not found")


@pytest.fixture(scope="session")
def model_dir(tiny_model):
    return tiny_model("qwen2")


@pytest.fixture(scope="session")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory):
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def cloud(helpers, model_dir, server_logs):
    server = helpers.start_talaria("cloud", ["--model", str(model_dir)], server_logs / "cloud.log")
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def proxy_factory(helpers, server_logs):
    """proxy_factory(cloud_url, *flags) -> ready proxy; every proxy is stopped at session end."""
    started = []

    def start(cloud_url: str, *flags: str):
        log = server_logs / f"proxy-{len(started)}.log"
        server = helpers.start_talaria("proxy", ["--cloud", cloud_url, "--log-level", "debug", *flags], log)
        started.append(server)
        return server.wait_ready()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def proxy(cloud, proxy_factory):
    """The default proxy (debug logging on, so the no-text-in-logs check sees everything)."""
    return proxy_factory(cloud.url)


@pytest.fixture
def client(proxy):
    with openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT) as c:
        yield c


@pytest.fixture
async def aclient(proxy):
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0,
                                  timeout=TIMEOUT) as c:
        yield c
