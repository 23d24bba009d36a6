"""
Tier 3 smoke runs of the benchmark scripts: each runs end to end on a tiny budget and prints
its machine-readable RESULT line. Nothing here checks a speed: bench/ measures, tests do not
(the figures move with machine load); this only keeps the scripts from rotting.

Run:  .venv/bin/python -m pytest tests/test_bench.py -q        (about 4 minutes on 2 CPU cores)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_bench(script: str, *args: str, timeout: float = 900) -> dict[str, float]:
    run = subprocess.run([sys.executable, f"bench/{script}", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout, env=dict(os.environ, VLLM_LOGGING_LEVEL="WARNING"))
    assert run.returncode == 0, run.stderr[-3000:]
    # the RESULT line is the script's last own line; vLLM may still log to stdout while its engine
    # process exits (seen in CI: "[shutdown] Process manager: force killing ..."), so skip such lines
    own = [ln for ln in run.stdout.strip().splitlines() if not re.match(r"\(\w+ pid=\d+\)", ln)]
    last = own[-1] if own else ""
    assert last.startswith("RESULT "), run.stdout[-2000:]
    return {k: float(v) for k, v in re.findall(r"(\w+)=([-\d.]+)", last)}


def test_executor_bench_quick():
    result = run_bench("executor.py", "--quick", "--sessions", "4")
    assert {"warm_overhead_ms_median", "loop_ratio_vs_bare", "speedup_vs_smolagents_loop"} <= set(result)
    assert all(v > 0 for v in result.values())


def test_rollout_bench_quick(smollm2_dir):
    result = run_bench("rollout.py", "--quick", "--model", smollm2_dir)
    assert set(result) == {"batched_vs_sequential", "agent_vs_plain"}
    assert all(v > 0 for v in result.values())


def test_tool_use_bench_quick(smollm2_dir):
    result = run_bench("tool_use.py", "--n", "1", "--layouts", "turns", "--model", smollm2_dir)
    assert set(result) == {"turns_correct", "turns_called", "n"} and result["n"] == 1



def test_evaluate_bench_quick(smollm2_dir):
    """Both cases (batch; long-tailed: continuous admission, waves, plain generation) on a tiny budget."""
    result = run_bench("evaluate.py", "--n", "2", "--max-tokens", "48", "--short", "2", "--long", "1",
                       "--max-batch", "2", "--long-tokens", "48", "--model", smollm2_dir)
    assert set(result) == {"batched_vs_sequential", "continuous_vs_waves", "continuous_vs_plain"}
    assert all(v > 0 for v in result.values())
