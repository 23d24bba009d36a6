"""
bench/grader.py -- what grading one answer costs: rewards.check() over MATH-500's gold answers.

Each of the 500 gold answers is graded as the completion "\\boxed{gold}" against itself, one
check after another on one helper process (rewards.py's grader), in three ways in one run:
  1) first check     rewards.check() on a problem not seen before: the gold is parsed, then the
                     answer is graded, both in the helper: what a new GRPO group's first completion pays;
  2) group check     the same problem again with a different answer (the gold's first integer
                     plus one, or "gold + 1"), while the gold's kind and parse are cached: what
                     each other completion of a GRPO group pays;
  3) in-process      the same math-verify work in this process, no helper and no deadline (the
                     baseline: what the helper's hard time bound costs on top).
It prints p50 / p90 / max per check in ms for each, the slowest problems, and the machine (CPU
model and flags, load average). The last line is `RESULT key=value ...`:
  grade_ms_p50, grade_ms_max      1) first check through the helper, per answer
  group_ms_p50, group_ms_max      2)
  inprocess_ms_p50, inprocess_ms_max  3)
The deadline (rewards.GRADE_TIMEOUT_S) is 2 s: grade_ms_max shows how far below it honest checks stay.

Run:  .venv/bin/python bench/grader.py              (about 30 s)
      .venv/bin/python bench/grader.py --limit 20   (a smoke run)
Timings depend on the machine and on its load: compare figures from one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from models import cpu_line  # noqa: E402  (CPU model and flags, beside every figure)

import rewards  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "math500.jsonl"


def machine() -> str:
    """CPU model, the flags that matter for benchmark figures here, cores, load average."""
    return f"{cpu_line()}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"


def summary(ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=10) if len(ms) > 1 else ms * 9
    return f"p50 {statistics.median(ms):7.2f}   p90 {q[8]:7.2f}   max {max(ms):7.2f}"


def other_value(answer: str) -> str:
    """A different answer of the same shape: the first integer plus one, or "answer + 1"."""
    m = re.search(r"\d+", answer)
    if m:
        return answer[: m.start()] + str(int(m.group()) + 1) + answer[m.end():]
    return answer + " + 1"


def timed(fn, *args) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args)
    return (time.perf_counter() - t0) * 1e3, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=0, help="grade only the first N problems (0: all 500)")
    args = ap.parse_args()
    if not DATA.is_file():
        sys.exit(f"bench/grader.py: {DATA} not found; it holds MATH-500 (see ../shared/data/SOURCES.md), "
                 "next to this checkout")
    golds = [json.loads(line)["answer"] for line in DATA.open()]
    if args.limit:
        golds = golds[: args.limit]
    print(f"machine: {machine()}; python {sys.version.split()[0]}")
    print(f"{len(golds)} MATH-500 gold answers, each graded as '\\boxed{{gold}}' against itself, one at a time\n")

    rewards.GRADER_PROCESSES = 1  # one helper: checks one after another, as on a single core
    rewards.check(r"\boxed{\frac{1}{2}}", "0.5")  # start the helper (about 1 s), not counted

    first, repeat, local, statuses = [], [], [], []
    for gold in golds:
        text = "\\boxed{" + gold + "}"
        ms, verdict = timed(rewards.check, text, gold)
        first.append(ms)
        statuses.append(verdict.status)
        repeat.append(timed(rewards.check, "\\boxed{" + other_value(gold) + "}", gold)[0])

    # 3) the baseline: the helper's own functions, here, with the parse cache emptied first
    rewards._grade_local(r"\boxed{\frac{1}{2}}", "0.5")  # imports and the parser's tables, not counted
    rewards._parse.cache_clear()
    for gold in golds:
        text = "\\boxed{" + gold + "}"
        local.append(timed(lambda: (rewards._gold_kind_local(gold), rewards._grade_local(text, gold)))[0])
    rewards.close_grader()

    correct = statuses.count("correct")
    print("per check, ms")
    print(f"  1) first check (helper)   {summary(first)}")
    print(f"  2) group check (helper)   {summary(repeat)}")
    print(f"  3) in-process baseline    {summary(local)}")
    print(f"\ngraded correct: {correct}/{len(golds)} (other statuses: "
          f"{ {s: statuses.count(s) for s in set(statuses) - {'correct'}} or 'none'})")
    slowest = sorted(range(len(golds)), key=lambda i: -first[i])[:3]
    print("slowest first checks: " + "; ".join(f"{first[i]:.0f} ms for {golds[i]!r}" for i in slowest))
    print(f"\nRESULT grade_ms_p50={statistics.median(first):.2f} grade_ms_max={max(first):.2f} "
          f"group_ms_p50={statistics.median(repeat):.2f} group_ms_max={max(repeat):.2f} "
          f"inprocess_ms_p50={statistics.median(local):.2f} inprocess_ms_max={max(local):.2f} "
          f"n={len(golds)} correct={correct}")


if __name__ == "__main__":
    main()
