"""
bench/shared_prefix.py -- what reading the shared prompt prefix once buys backends.HFBackend, the
generation path of CPU training (GRPOTrainer's own model under rollout.py's loop).

Every row of a training rollout starts with the same tokens: the instruction and the solved
examples, ~360 of a ~400-token prompt with recipes/cpu-curriculum.yaml's one example.
HFBackend reads that prefix once and repeats its KV cache for every row (backends.shared_prefix);
the baseline, measured in the same run on the same model and prompts, left-pads every row and
prefills it whole (HFBackend(shared_min=a number larger than any prompt)). Both generate the same
batch: the rows of one training step (2 problems + 2 candidates, x 4 samples = 16) from the
hard level's training split, up to 48 new tokens, greedy (so both must produce the same tokens,
which is checked) and sampled at T 1.0 (the schedule's start; same seed for both). Order
alternates between repeats, and the median of --repeats timed calls per setting is printed.

Prints the CPU flags first and ends with `RESULT shared_vs_plain=<plain s / shared s, sampled>`.

Run:  .venv/bin/python bench/shared_prefix.py            (about 3 min on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project is a flat folder
from models import cpu_line  # noqa: E402  (CPU model and flags, beside every figure)


def main() -> None:
    p = argparse.ArgumentParser(description="HFBackend with and without the shared-prefix KV cache")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--rows", type=int, default=16, help="batch rows (16: one cpu-curriculum step)")
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--examples-file", default="examples-multistep.txt")
    a = p.parse_args()
    print(f"CPU: {cpu_line()}", flush=True)

    import backends
    import data
    import protocol
    import rollout as R

    be = backends.HFBackend.from_model(a.model)
    problems = data.procedural(a.rows // 4, seed=5, difficulty="hard", split="train")
    prompts = [R.encode_prompt(be.tokenizer, protocol.build_messages(
        q.problem, layout="turns", examples=1, examples_file=a.examples_file)) for q in problems for _ in range(4)]
    stop = protocol.stop_strings(protocol.Budget(max_steps=3))
    shared = backends.shared_prefix(prompts)
    print(f"{len(prompts)} rows of {min(map(len, prompts))}-{max(map(len, prompts))} prompt tokens, "
          f"{shared} shared; {a.new_tokens} new tokens at most", flush=True)
    settings = {"shared": backends.SHARED_PREFIX_MIN, "plain": 10**9}
    for name, sampling in (("greedy", R.Sampling(0.0)), ("T 1.0", R.Sampling(1.0, top_p=0.8, top_k=50, seed=3))):
        be.shared_min = settings["shared"]
        be.generate(prompts, [a.new_tokens] * len(prompts), stop, sampling)  # warm-up
        times: dict[str, list[float]] = {k: [] for k in settings}
        out = {}
        for r in range(a.repeats):
            for label in (list(settings) if r % 2 == 0 else list(settings)[::-1]):
                be.shared_min = settings[label]
                t0 = time.perf_counter()
                out[label] = be.generate(prompts, [a.new_tokens] * len(prompts), stop, sampling)
                times[label].append(time.perf_counter() - t0)
        same = sum(x.token_ids == y.token_ids for x, y in zip(out["shared"], out["plain"]))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{name}: shared prefix {med['shared']:.2f} s, plain left padding (baseline) {med['plain']:.2f} s "
              f"per call (median of {a.repeats}): {med['plain'] / med['shared']:.2f}x; "
              f"identical rows {same}/{len(prompts)}", flush=True)
    print(f"RESULT shared_vs_plain={med['plain'] / med['shared']:.2f}", flush=True)


if __name__ == "__main__":
    main()
