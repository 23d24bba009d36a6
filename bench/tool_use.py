"""
bench/tool_use.py -- does the model call the tool, per prompt layout? (docs/agent.md, the tool-use table)

agent.py's MathAgent (smolagents) solves the same seeded 3-digit products (data.
arithmetic_problems) once per prompt layout, greedy, and counts the problems answered right
and those on which the model called the tool at least once:
  layout "turns":  the 4 solved examples as earlier chat turns (what the 135M model needs);
  layout "system": the 4 solved examples inside the system prompt (the paper's layout).
The prompt is protocol.build_messages's (the project's instruction and examples); the problem is
"What is A * B?". Without the tool the tiny model answers products from memory, wrongly.

Backends: "vllm" -- agent.VLLMAgentModel on an engine started with the project's settings
(models.vllm_engine_kwargs: whole prefills, explicit KV size, bf16 where the CPU has it, else
float32); "transformers" -- smolagents' TransformersModel in float32 on CPU (about 15 s per
1000-token prefill on 2 cores, so 20 problems take a while). Both as `python agent.py
--backend ...` builds them (agent.make_model).

The header prints the CPU flags that decide the engine's dtype. The last line is machine-readable:
  RESULT <layout>_correct=<k> <layout>_called=<k> ... n=<problems>

Run:  python bench/tool_use.py                       (vllm, 20 problems, both layouts; a few minutes)
      python bench/tool_use.py --backend transformers
      python bench/tool_use.py --n 2                 (a smoke run)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project is a flat folder
from models import cpu_line  # noqa: E402  (CPU model and flags, beside every figure)


def main() -> int:
    p = argparse.ArgumentParser(description="tool calls and accuracy per prompt layout (MathAgent, greedy)")
    p.add_argument("--backend", choices=["vllm", "transformers"], default="vllm")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n", type=int, default=20, help="problems (seeded 3-digit products)")
    p.add_argument("--seed", type=int, default=0, help="which products (data.arithmetic_problems)")
    p.add_argument("--layouts", default="turns,system", help="comma-separated: turns, system")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens per model call")
    p.add_argument("--max-steps", type=int, default=8, help="agent calls per problem")
    a = p.parse_args()
    layouts = a.layouts.split(",")
    if a.n < 1 or any(x not in ("turns", "system") for x in layouts):
        p.error("--n must be at least 1 and --layouts a list of turns/system")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

    import agent
    import data
    from smolagents.monitoring import LogLevel

    cfg = agent.Config(problem="", model=a.model, backend=a.backend, temperature=0.0,
                       max_new_tokens=a.max_new_tokens, max_steps=a.max_steps)
    model = agent.make_model(cfg)
    qs = data.arithmetic_problems(a.n, seed=a.seed)
    print(f"# bench/tool_use.py: backend {a.backend}, model {a.model}, {a.n} products (seed {a.seed}), greedy, "
          f"--max-new-tokens {a.max_new_tokens}; {cpu_line()}; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    if a.backend == "vllm":
        print(f"# engine dtype {model.model.llm_engine.model_config.dtype}", flush=True)
    result = {}
    print("| backend | layout | correct | called the tool | seconds |\n|---|---|---|---|---|", flush=True)
    try:
        for layout in layouts:
            math_agent = agent.MathAgent(model, layout=layout, max_steps=a.max_steps,
                                         verbosity_level=LogLevel.OFF, sandbox_kwargs=dict(timeout_s=10))
            t0 = time.perf_counter()
            correct = called = 0
            try:
                for x, y in qs:
                    solution = math_agent.solve(f"What is {x} * {y}?")
                    correct += solution.answer == str(x * y)
                    called += solution.calls > 0
            finally:
                math_agent.cleanup()
            print(f"| {a.backend} | {layout} | {correct}/{a.n} | {called}/{a.n} | {time.perf_counter() - t0:.0f} |",
                  flush=True)
            result[f"{layout}_correct"], result[f"{layout}_called"] = correct, called
    finally:
        if hasattr(model, "cleanup") and a.backend == "vllm":
            model.cleanup()  # the engine core is a child process
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()) + f" n={a.n}")
    return 0


if __name__ == "__main__":  # the guard vLLM's engine start-up needs
    raise SystemExit(main())
