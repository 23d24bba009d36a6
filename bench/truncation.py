"""
bench/truncation.py -- do completions the cap cut earn reward? An A/B of train.py's rule (the
paper's "Training with GRPO": shorter traces come from limiting completions to 5k tokens).

A completion the budget cut may still hold a tentative \\boxed{} and has often already called
code, so under plain GRPO it collects most of the reward while being as long as allowed. The
arms differ in that one rule only (same recipe, seed, problems and schedule):
  zero    reward_truncated=false: a cut completion scores 0 on every reward and stays in the
          loss, with a negative advantage;
  reward  reward_truncated=true (train.py's default since this measurement): it keeps what the
          graders give it (TRL's plain behaviour);
  mask    reward_truncated=true and TRL's mask_truncated_completions=true: it is dropped from the
          loss (its reward still enters its group's mean and std).
Each arm is a real run, `python train.py --config recipes/cpu-mini.yaml --max_steps N
--max_completion_length CAP ...` (a tighter cap than the recipe's 256, so that cuts are common),
on SmolLM2-135M with the agent in the loop. The table is read from each run's trainer_state.json:
per arm, over all steps and over the second half, the truncation rate, the mean completion length
(model tokens, and all tokens with executor output), accuracy and code use as graded (cut
completions included, whatever they were paid), and the training reward. The last line is
machine-readable (means over seeds, second half):
  RESULT trunc_zero=... trunc_reward=... len_all_zero=... len_all_reward=... acc_zero=... acc_reward=...

Run:  python bench/truncation.py                        (3 arms x 10 steps, cap 96; ~20 min here)
      python bench/truncation.py --seeds 0 1 --arms zero reward   (two seeds of two arms)
      python bench/truncation.py --steps 2 --arms zero reward     (a smoke run)
Each run goes to runs/bench-truncation/seed<S>/<arm>/ with its log; a run whose
trainer_state.json is there already is read, not rerun (delete the folder to measure again).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the project is a flat folder
from models import cpu_line  # noqa: E402  (CPU model and flags, beside every figure)

ARMS = {  # arm -> train.py flags that differ
    "zero": ["--reward_truncated", "false", "--mask_truncated_completions", "false"],
    "reward": ["--reward_truncated", "true", "--mask_truncated_completions", "false"],
    "mask": ["--reward_truncated", "true", "--mask_truncated_completions", "true"],
}


def graded(h: dict, reward: str, arm: str) -> float:
    """A reward's mean over ALL completions as the grader scored them: in the zero arm the logged
    mean paid cut completions 0, and truncated/<reward>_raw is what they would have earned."""
    mean = h[f"rewards/{reward}/mean"]
    if arm == "zero" and h.get("agent/truncated_rate"):
        mean += h["agent/truncated_rate"] * h.get(f"truncated/{reward}_raw", 0.0)
    return mean


def row(hist: list[dict], arm: str) -> dict:
    steps = [h for h in hist if "agent/truncated_rate" in h]

    def avg(f):
        return sum(f(h) for h in steps) / len(steps) if steps else float("nan")

    return {
        "trunc": avg(lambda h: h["agent/truncated_rate"]),
        "len": avg(lambda h: h["completions/mean_length"]),
        "len_all": avg(lambda h: h["completions/mean_length_all_tokens"]),
        "acc": avg(lambda h: graded(h, "accuracy_reward", arm)),
        "code": avg(lambda h: graded(h, "code_use_reward", arm)),
        "reward": avg(lambda h: h["reward"]),
    }


def run_arm(arm: str, seed: int, a) -> Path | None:
    """train.py for one arm and seed (skipped if its trainer_state.json is there); the state file."""
    out = Path(a.out) / f"seed{seed}" / arm
    state = out / "trainer_state.json"
    if state.is_file():
        return state
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "recipes" / "cpu-mini.yaml"),
           "--max_steps", str(a.steps), "--max_completion_length", str(a.cap), "--seed", str(seed),
           "--save_strategy", "no", "--output_dir", str(out), *ARMS[arm]]
    out.mkdir(parents=True, exist_ok=True)
    print(f"{arm}, seed {seed}: {' '.join(cmd[1:])}  (log: {out / 'train.log'})", flush=True)
    t0 = time.perf_counter()
    with open(out / "train.log", "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0 or not state.is_file():
        print(f"error: arm {arm}, seed {seed}: train.py exited with {rc}; see {out / 'train.log'}", file=sys.stderr)
        return None
    print(f"{arm}, seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    return state


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--steps", type=int, default=10, help="GRPO steps per arm (8 completions each)")
    ap.add_argument("--cap", type=int, default=96, help="max_completion_length (the recipe's: 256)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds; each arm runs once per seed")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-truncation"))
    a = ap.parse_args()
    print(cpu_line(), flush=True)
    cols = ("trunc", "len", "len_all", "acc", "code", "reward")
    results = {}  # (arm, seed) -> (all steps, second half)
    for seed in a.seeds:
        for arm in a.arms:
            state = run_arm(arm, seed, a)
            if state is None:
                return 1
            hist = json.loads(state.read_text())["log_history"]
            results[arm, seed] = (row(hist, arm), row([h for h in hist if h.get("step", 0) > a.steps // 2], arm))
    for arm in a.arms:  # the mean over seeds
        runs = [results[arm, s] for s in a.seeds]
        results[arm, "mean"] = tuple({c: sum(r[i][c] for r in runs) / len(runs) for c in cols} for i in (0, 1))

    print(f"\n{a.steps} steps x 8 completions per run, cap {a.cap} tokens, seeds {a.seeds}; "
          f"'all' = every step, '2nd' = steps {a.steps // 2 + 1}-{a.steps}")
    print(f"{'arm':<8}{'seed':>5}" + "".join(f"{c + ' all':>13}{c + ' 2nd':>13}" for c in cols))
    for (arm, seed), (full, second) in results.items():
        print(f"{arm:<8}{seed:>5}" + "".join(f"{full[c]:>13.3f}{second[c]:>13.3f}" for c in cols))
    print("trunc: share of completions cut (cap or agent step limit); len: model tokens; len_all: with "
          "executor output; acc, code: as graded, cut completions included; reward: what training paid")
    parts = [f"{c}_{arm}={results[arm, 'mean'][1][c]:.3f}" for c in ("trunc", "len_all", "acc") for arm in a.arms]
    print("RESULT " + " ".join(parts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
