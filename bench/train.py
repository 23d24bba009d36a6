"""
bench/train.py -- what the agent costs inside a GRPO step: one step with the agentic rollout_func
against one step of TRL's own generation (no tools), at equal completion lengths, in one run.

Both trainers are built from the same recipe (recipes/cpu-smoke.yaml by default: SmolLM2-135M,
LoRA r 32, CPU) and score the same prompts with the same reward functions. The prompts are
data.arithmetic_messages products, the workload on which the untrained 135M model calls the
tool, so the sandbox is really exercised. Order:
  1. agentic: train.build_trainer (rollout.make_rollout_func on transformers, executor.Sandbox);
     one warm-up step, then two measured steps;
  2. plain: GRPOTrainer with TRL's own generation, min_new_tokens = max_new_tokens = the mean
     completion length (model + inserted tokens) of the measured agentic step, so both steps
     train on the same number of tokens; one warm-up step, two measured steps;
  3. the split of a step (the median of the two measured steps of each side): generation (backend generate calls; for the plain step,
     TRL's generate), sandbox (executor.run_batch calls), grading (the reward functions), and
     the rest, forward/backward and optimizer (TRL's step_time minus those).
Prints each figure beside its baseline and ends with `RESULT agentic_step_vs_plain=<ratio>`
(target <= 1.3). Record the CPU flags with the result (printed first).

Run:  .venv/bin/python bench/train.py                 (several minutes on 2 CPU cores)
      .venv/bin/python bench/train.py --problems 4 --config recipes/cpu-smoke.yaml
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from models import cpu_line  # noqa: E402  (CPU model and flags, beside every figure)


class Clock:
    """Wall time spent inside wrapped callables, per label, reset per step."""

    def __init__(self):
        self.s: dict[str, float] = {}

    def wrap(self, label: str, fn):
        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.s[label] = self.s.get(label, 0.0) + time.perf_counter() - t0

        for attr in ("__name__", "func"):  # keep TRL's reward name
            if hasattr(fn, attr):
                setattr(timed, attr, getattr(fn, attr))
        return timed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "recipes" / "cpu-smoke.yaml"))
    p.add_argument("--problems", type=int, default=2, help="prompts per step (x num_generations completions)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core CPU)")
    a = p.parse_args(argv)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import torch
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOTrainer, get_peft_config

    import backends
    import data
    import executor
    import train

    torch.set_num_threads(a.threads)
    print(f"CPU: {cpu_line()}; torch threads {a.threads}; "
          f"load average {os.getloadavg()[0]:.1f}")
    pairs = data.arithmetic_problems(a.problems * 2, seed=0)
    rows = [{"prompt": data.arithmetic_messages(x, y), "answer": str(x * y)} for x, y in pairs]
    ds = Dataset.from_list(rows)

    def config(out: str, extra: list[str]):
        script, args, model_args = train.parse_args(
            ["--config", a.config, "--output_dir", out, "--max_steps", "3", "--save_strategy", "no",
             "--per_device_train_batch_size", str(a.problems * 2), "--num_generations", "2",
             "--shuffle_dataset", "false", "--disable_tqdm", "true", *extra])
        train.check_config(script, args, model_args)
        return script, args, model_args

    def measured(trainer, clock) -> dict:
        class Mark(train_callback_base()):
            def on_step_begin(self, args, state, control, **kw):
                clock.s.clear()
                self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                steps.append({"wall": time.perf_counter() - self.t0, **clock.s})

        steps: list[dict] = []
        trainer.add_callback(Mark())
        trainer.train()
        measured = steps[1:]  # the first step warmed up
        for s in measured:
            s["forward/backward"] = s["wall"] - sum(s.get(k, 0.0) for k in ("generation", "sandbox", "grading"))
        print("  measured steps (s): " + "; ".join(
            ", ".join(f"{k} {v:.1f}" for k, v in s.items()) for s in measured), flush=True)
        keys = {k for s in measured for k in s}
        return {k: statistics.median(s.get(k, 0.0) for s in measured) for k in keys}

    # 1) agentic
    clock_a = Clock()
    script, args, model_args = config("/tmp/deepmath-bench-train/agentic", [])
    lengths: list[float] = []

    def backend(trainer):
        be = backends.backend_for_trainer(trainer)
        be.generate = clock_a.wrap("generation", be.generate)
        return be

    tr_a = train.build_trainer(script, args, model_args, train_dataset=ds,
                               rollout_overrides={"backend": backend,
                                                  "run_batch": clock_a.wrap("sandbox", executor.run_batch)})
    tr_a.reward_funcs = [clock_a.wrap("grading", f) for f in tr_a.reward_funcs]
    inner = tr_a.rollout_func

    def counting(prompts, trainer):
        out = inner(prompts, trainer)
        lengths.append(sum(len(c) for c in out["completion_ids"]) / len(out["completion_ids"]))
        calls.append(sum(out["num_snippets"]))
        return out

    calls: list[int] = []
    tr_a.rollout_func = counting
    print("agentic:", flush=True)
    step_a = measured(tr_a, clock_a)
    L = max(1, round(statistics.mean(lengths[1:])))
    # 2) plain: TRL's own generation, every completion exactly L tokens
    clock_p = Clock()
    script_p, args_p, model_args_p = config("/tmp/deepmath-bench-train/plain", [])
    args_p.generation_kwargs = {"min_new_tokens": L, "max_new_tokens": L}
    args_p.max_completion_length = L
    args_p.model_init_kwargs = tr_a.args.model_init_kwargs
    funcs, weights = train.build_rewards(script_p, args_p, train.TemperatureSync(args_p.temperature, None, None))
    args_p.reward_weights = weights
    tr_p = GRPOTrainer(model=train.resolve_policy(model_args_p, args_p), reward_funcs=funcs, args=args_p,
                       train_dataset=ds, processing_class=tr_a.processing_class,
                       peft_config=get_peft_config(model_args_p))
    for cb in (ProgressCallback, PrinterCallback):
        tr_p.remove_callback(cb)
    tr_p.reward_funcs = [clock_p.wrap("grading", f) for f in tr_p.reward_funcs]
    tr_p._generate_single_turn = clock_p.wrap("generation", tr_p._generate_single_turn)
    print("plain:", flush=True)
    step_p = measured(tr_p, clock_p)
    # 3) the split
    print(f"\nper step: {a.problems} problems x 2 generations; agentic completions {statistics.mean(lengths[1:]):.0f} "
          f"tokens on average ({statistics.mean(calls[1:]):.1f} agent calls per step); plain completions exactly {L} tokens")
    print(f"{'':18s}{'agentic':>10s}{'plain':>10s}")
    for label in ("generation", "sandbox", "grading"):
        print(f"{label:18s}{step_a.get(label, 0.0):10.2f}{step_p.get(label, 0.0):10.2f}")
    print(f"{'forward/backward':18s}{step_a['forward/backward']:10.2f}{step_p['forward/backward']:10.2f}")
    print(f"{'step (s)':18s}{step_a['wall']:10.2f}{step_p['wall']:10.2f}")
    print(f"load average {os.getloadavg()[0]:.1f}")
    print(f"RESULT agentic_step_vs_plain={step_a['wall'] / step_p['wall']:.2f}")
    return 0


def train_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


if __name__ == "__main__":
    raise SystemExit(main())
