"""
rewards.py -- the GRPO rewards (answer accuracy, agent-call use) and the one shared grader.

Paper ("Training with GRPO"): the policy is trained with two rewards. Accuracy gives +1 when
the final answer is correct. Code use gives +1 when the completion generated code snippets,
weighted 10:1 against accuracy; the released training config writes that as weights
accuracy 0.1, code use 1.0. This module implements both as TRL reward functions, plus the
grader that decides "correct", which evaluate.py uses too, so training and evaluation can
never disagree about what a correct answer is.

Data flow (the numbers are the code's sections, in reading order; one accuracy check runs
1 -> 4 -> 7, then 5 and 6 inside the helper, and its verdict comes back to 1):

  1. accuracy_reward(completions, answer=[gold, ...], **kwargs): TRL's call. 1.0 / 0.0 per
     completion, None where the gold is unusable or its own check failed this time (TRL turns
     None into NaN and leaves it out of the weighted sum). It grades with check_many (4).
  2. code_use_reward(completions, **kwargs): 1.0 if the completion made an agent call holding
     code. The counts come from the rollout's per-snippet record (snippets, snippet_ok: the
     executor's own verdict), else its counts (num_snippets, num_errors), else the text
     (count_calls: protocol.find_snippets, output_blocks, shows_error). A trivial call
     (protocol.is_trivial_snippet: a comment, `pass`, a constant) earns nothing. Model text
     is parsed in the helpers (7), under the same deadline.
  3. reward_funcs_and_weights(): the functions and GRPOConfig.reward_weights (REWARD_WEIGHTS).
  4. The shared grader, check() and check_many(): cheap checks in the calling thread. Is the
     gold usable (asked once per distinct gold per batch; a definite answer is cached, a failed
     check of the gold is retried: see "Grading timeouts")? Is there a \\boxed{} at all? Is the
     text under MAX_COMPLETION_CHARS? Then the text and the gold go to a helper (7).
  5. Reading a completion: completion_text() makes TRL's conversational form a string;
     final_answers() takes the content of the last \\boxed{}, by protocol.last_boxed()'s rules
     (output blocks ignored; a bare "\\boxed 7" counts only before a number or one capital
     letter), or the whole run of boxes it ends, e.g. "\\boxed{1}, \\boxed{2}".
  6. Grading, in the helper: _too_big() refuses answers over MAX_ANSWER_CHARS characters or
     deeper than MAX_ANSWER_DEPTH brackets (the LaTeX parser's time grows exponentially with
     bare nesting); _normalize() fixes the few forms math-verify gets wrong (mixed numbers like
     "137 \\frac{1}{2}", unicode minus, a trailing period), and math-verify's own normalisation
     does the rest (\\text{}, units, ^\\circ, \\!, \\$, \\%, \\dfrac, "x=" prefixes);
     math_verify.parse() turns gold and answer into sympy (the gold once per helper) and
     verify() compares them: numbers, fractions, surds, sets, tuples, intervals, equations.
  7. The helper processes: `python rewards.py --serve` children, each check under a deadline
     (GRADE_TIMEOUT_S). Past it the caller SIGKILLs the helper, starts a replacement at once,
     and scores the check as wrong ("timeout").

Why helper processes: sympy can run for hours on \\boxed{9^{9^{9^{9}}}}, and one hung reward
call stops the whole GRPO step. math-verify's own timeout (signal.alarm) works only in the main
thread and cannot interrupt long C-level work (Math-Verify#65), and a thread cannot be killed;
a process can, so the one bound that always holds is SIGKILL from outside. The helpers are
persistent (sympy imported once, then milliseconds per check over a JSON-lines pipe), started
by fork+exec of a clean interpreter (a forked trainer holding torch/vLLM threads can
deadlock), limited in memory (GRADER_MEMORY_BYTES) and CPU, and up to GRADER_PROCESSES grade
in parallel. Everything that reads untrusted model text runs there. docs/rewards.md has the
design in full and the measured overhead (`python bench/grader.py`).

Not gameable
  - Only the LAST box counts. A correct answer boxed earlier and then changed earns nothing.
  - A box listing candidates is a set: \\boxed{1, 2, 3, 4, 5} is not 3 (math-verify compares
    sets and tuples element by element). Several boxes in a row ("\\boxed{1}, \\boxed{2},
    \\boxed{3}") are read the same way, as one list; so a run of different candidates gets
    nothing, while a multi-value answer written as a run of boxes still matches a multi-value
    gold. A run whose boxes each equal the gold ("\\boxed{3}, or \\boxed{6/2}") is also correct.
  - A multi-value gold (a tuple, an interval, HMMT Feb 2025 problem 10's two roots) matches
    only the full answer: one root of the two earns nothing.
  - Output blocks are ignored: a \\boxed{} printed by a snippet is not an answer.
  - Timeouts, crashes and oversized answers score 0, never None: a policy cannot make a
    completion "skipped" instead of "wrong". (None comes only from the gold side, which the
    policy does not write: an unusable gold, or a gold check that failed this time.)
  - A mention of the macro is not an answer: "\\boxed{4}. (I used \\boxed for it.)" reads 4,
    and a bare \\boxed before a word cannot erase the boxed answer before it.
  - A call that is no code (a comment, `pass`, a docstring) earns no code-use reward, and a
    snippet that does not parse is a failed attempt (an error), not an empty one.

Grading timeouts: if the check of a gold answer itself passes its deadline or crashes (a busy
machine makes any check slow), "unusable" is NOT cached, or the problem would lose its accuracy
reward for the rest of the run: that verdict is None (gold_timeout / gold_crashed) and the next
check asks again. Only after GOLD_MAX_FAILURES failures is the gold cached as unusable.

Departures from the paper, and why
  - The paper does not say how answers are compared. We build on math-verify, as TRL's own
    accuracy_reward does, and add the normalisation and the run-of-boxes rule (steps 5, 6).
  - A hard bound on every check (helper processes) instead of math-verify's signal timeout.
  - code_use_reward has an option, off by default so the defaults stay the paper's, to credit
    only snippets that ran without error, capped per trajectory (see code_use_reward).
  - The paper pays "for generating code snippets" and does not define one; we do not count a
    call holding no code (only comments, `pass`, constants, whitespace), which a policy could
    otherwise emit for the 10:1-weighted reward without computing anything.

Run the tests (unit tests, doctests, the MATH-500 oracle, adversarial inputs):
  .venv/bin/python -m pytest tests/test_rewards.py -q
Time the grader on MATH-500's gold answers (p50/max per check, docs/rewards.md has the figures):
  .venv/bin/python bench/grader.py
Grade one answer by hand:
  .venv/bin/python rewards.py 'so the answer is \\boxed{4/3}' '\\frac43'
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import math
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

# The trace format and its scanners, from protocol.py, where the agent reads them too, so the
# two cannot drift. Not from agent.py: `import agent` loads smolagents when it is installed, and
# neither the trainer's side of this module nor a grader helper should pay for that.
from protocol import (CALL_OPEN, find_snippets, is_trivial_snippet, last_box, output_blocks, shows_error,
                      strip_output_blocks)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Settings: module constants, read when used. The helper-side ones (MAX_ANSWER_CHARS,
# MAX_ANSWER_DEPTH, MAX_RUN, GRADER_MEMORY_BYTES) are handed to each helper when it starts
# and GRADER_PROCESSES when the pool is made: set those before the first check.
# ---------------------------------------------------------------------------

GRADE_TIMEOUT_S = 2.0
"""Wall-clock deadline of one check in a helper. MATH-500's slowest honest check took 0.74 s
here with the 2 cores heavily shared (bench/grader.py); the deadline fires on pathological
answers, and on an overloaded machine, which is why a gold check's timeout is not cached."""
GRADER_PROCESSES = min(4, os.cpu_count() or 1)
"""Helper processes that grade in parallel (each holds about 60 MB)."""
GRADER_MEMORY_BYTES = 2 << 30
"""Address-space limit of a helper (RLIMIT_AS); a helper needs about 60 MB."""
STARTUP_TIMEOUT_S = 60.0
"""How long a new helper may take to import sympy and math-verify before it counts as broken."""
MAX_COMPLETION_CHARS = 8_000_000
"""Longer completions score 0 without a look (a 5k-token completion is about 20k chars)."""
MAX_ANSWER_CHARS = 1000
"""Longer answers score 0 (the longest gold answer in shared/data has 85 characters)."""
MAX_ANSWER_DEPTH = 8
"""Deeper bracket nesting scores 0 (the deepest gold answer in shared/data nests 4 deep)."""
MAX_RUN = 16
"""At most this many boxes in a row are read as one answer."""
GOLD_MAX_FAILURES = 3
"""A gold answer whose own check timed out or crashed this many times is treated as unusable
(None) for the rest of the run; fewer failures are not remembered as a result (retried)."""


# ---------------------------------------------------------------------------
# 1) accuracy_reward: +1 for a correct final answer
# ---------------------------------------------------------------------------

def accuracy_reward(completions: list, answer: list | None = None, log_extra: Callable | None = None,
                    **kwargs) -> list[float | None]:
    """+1.0 when the final \\boxed{} answer equals the gold `answer`, else 0.0; None if the
    gold is unusable, or its own check failed this time (retried on the next call): TRL then
    leaves this reward out for that completion.

    completions: plain strings or TRL conversational lists. answer: the dataset's gold answer
    column, one per completion (TRL repeats it for each generation). log_extra: TRL's hook
    to add columns to its completions table (the answer read and the grade status).
    Grading is grade()'s: last box, math-verify, a hard time bound per check.

    >>> accuracy_reward(["so \\\\boxed{3}", "\\\\boxed{1, 2, 3}", "no box"], answer=["3", "3", "3"])
    [1.0, 0.0, 0.0]
    >>> accuracy_reward([[{"role": "assistant", "content": "$\\\\boxed{\\\\frac{1}{2}}$"}]], answer=["0.5"])
    [1.0]
    >>> accuracy_reward(["\\\\boxed{3}"], answer=[""])
    [None]
    """
    if answer is None:
        raise ValueError("accuracy_reward needs the gold answers: a dataset column named 'answer'")
    verdicts = check_many(completions, answer)
    if log_extra is not None:
        log_extra("final_answer", [v.answer for v in verdicts])
        log_extra("grade", [v.status for v in verdicts])
    return [None if v.correct is None else float(v.correct) for v in verdicts]


# ---------------------------------------------------------------------------
# 2) code_use_reward: +1 for an agent call holding code
# ---------------------------------------------------------------------------

_NO_CALLS = {"snippets": 0, "trivial": 0, "outputs": 0, "errors": 0}


def count_calls(completion: Any, timeout_s: float | None = None) -> dict:
    """Agent calls in a completion's text: {"snippets", "trivial", "outputs", "errors"}.

    snippets: calls holding code (protocol.find_snippets, less the trivial ones); trivial: calls
    that are no code at all (protocol.is_trivial_snippet: a comment, `pass`, a constant);
    outputs: output blocks; errors: output blocks showing an error (protocol.shows_error).
    Parsed in a helper under the deadline; zeros on timeout.

    >>> count_calls("<tool_call>\\n1/0\\n</tool_call>\\n```output\\nZeroDivisionError: division by zero\\n```\\n")
    {'snippets': 1, 'trivial': 0, 'outputs': 1, 'errors': 1}
    >>> count_calls("<tool_call>\\n# think first\\n</tool_call>\\n```output\\n(no output)\\n```\\n")
    {'snippets': 0, 'trivial': 1, 'outputs': 1, 'errors': 0}
    """
    text = completion_text(completion)
    if CALL_OPEN not in text and "```py" not in text:  # no call possible: skip the round trip
        return dict(_NO_CALLS)
    if len(text) > MAX_COMPLETION_CHARS:
        return dict(_NO_CALLS)
    reply, failure = _pool().run({"op": "calls", "text": text}, timeout_s or GRADE_TIMEOUT_S)
    return reply if reply is not None else dict(_NO_CALLS)


def trivial_flags(snippets: list[list[str]], timeout_s: float | None = None) -> list[list[bool]]:
    """protocol.is_trivial_snippet for each snippet of each completion, in the helpers (snippets
    are model text: parsing them gets the same deadline and memory limit as grading).

    A completion whose check fails (deadline, crash) gets False for all its snippets: they
    count as code. (Only very long snippets take long to parse, and the executor rejects any
    over executor.MAX_CODE_CHARS, 20,000 characters, as errors.)

    >>> trivial_flags([["pass", "print(2)"], [], ["'notes'"]])
    [[True, False], [], [True]]
    """
    timeout_s = timeout_s or GRADE_TIMEOUT_S

    def one(codes: list[str]) -> list[bool]:
        if not codes:
            return []
        reply, _ = _pool().run({"op": "trivial", "snippets": codes}, timeout_s)
        return [False] * len(codes) if reply is None else reply["trivial"]

    groups = [[str(c) for c in codes] for codes in snippets]
    return _parallel(one, groups) if any(groups) else [[] for _ in groups]


def _per_completion(name: str, values: Any, n: int) -> list:
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name} must have one value per completion: got {len(values)} for {n} completions")
    return values


def code_use_reward(completions: list, only_successful: bool = False, cap: int = 1,
                    snippets: list[list[str]] | None = None, snippet_ok: list[list[bool]] | None = None,
                    num_snippets: list[int] | None = None, num_errors: list[int] | None = None,
                    log_metric: Callable | None = None, **kwargs) -> list[float]:
    """+1.0 if the completion made at least one agent call holding code (the paper's reward:
    "generating code snippets"), else 0.0.

    Where the counts come from, best first:
      a. `snippets` and `snippet_ok` (rollout.py's rollout_func passes them per completion, and
         TRL hands them on): each code string that was run, and whether it ran without error or
         timeout (the executor's structured result, ExecResult.ok). Exact, and the policy
         cannot forge them.
      b. `num_snippets` and `num_errors` (errors include timeouts): exact counts, but they
         cannot tell a trivial snippet from code, so trivial snippets are paid here.
      c. the text: protocol.find_snippets() for the calls, protocol.shows_error() on the
         ```output blocks for failures (count_calls). So it works on plain strings too
         (evaluation, tests). It matches blocks to calls by count, not position, so a
         completion that writes a fake ```output block itself can fool it, and reading errors
         from text has the ambiguities shows_error() lists.
    A trivial snippet (protocol.is_trivial_snippet: only a comment, `pass`, a constant or
    docstring, whitespace) is not a code snippet and earns nothing in a and c; a snippet that
    does not parse is code that failed (an error), not a trivial one.

    only_successful, cap (off / 1 by default, the paper's behaviour): credit only snippets
    that ran without error, and give min(credited, cap) / cap, so at most 1.0 per trajectory.
    Why: under RL the policy optimises exactly what is rewarded. With code use weighted 10:1
    over accuracy, a completion that emits any snippet -- `print(1)`, or one that crashes --
    already collects 1.0 of the 1.1 a solved problem earns, and emitting it is far easier than
    solving. only_successful removes the broken-snippet shortcut; the cap stops a trajectory
    farming credit with many calls when cap > 1 gives partial credit per snippet. A snippet
    that computes little (`print(1)`) and runs still earns the credit: the accuracy term has to
    make it useful. Use make_code_use_reward() to get this variant as a TRL reward function.

    log_metric: TRL's hook for batch metrics. Where trivial snippets can be seen (a and c), it
    gets "code_use/trivial_snippet_share": trivial calls / all calls in the batch, so a policy
    drifting towards empty calls shows in the training log.

    >>> call = "<tool_call>\\nprint(6*7)\\n</tool_call>\\n```output\\n42\\n```\\n"
    >>> bad = "<tool_call>\\nprint(y)\\n</tool_call>\\n```output\\nNameError: name 'y' is not defined\\n```\\n"
    >>> empty = "<tool_call>\\n# nothing to run\\npass\\n</tool_call>\\n```output\\n(no output)\\n```\\n"
    >>> code_use_reward(["no calls, \\\\boxed{42}", call, bad, empty])
    [0.0, 1.0, 1.0, 0.0]
    >>> code_use_reward(["no calls", call, bad], only_successful=True)
    [0.0, 1.0, 0.0]
    >>> code_use_reward(["", "", ""], snippets=[["pass"], ["print(1)", "1/0"], ["1/0"]],
    ...                 snippet_ok=[[True], [True, False], [False]], only_successful=True)
    [0.0, 1.0, 0.0]
    >>> code_use_reward(["", "", ""], num_snippets=[0, 3, 2], num_errors=[0, 1, 2], only_successful=True, cap=2)
    [0.0, 1.0, 0.0]
    """
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    n = len(completions)
    if snippets is not None:  # a. the rollout's record of each snippet
        if snippet_ok is None:
            raise ValueError("code_use_reward got `snippets` without `snippet_ok` (one bool per snippet)")
        codes = _per_completion("snippets", snippets, n)
        oks = _per_completion("snippet_ok", snippet_ok, n)
        if any(len(c) != len(o) for c, o in zip(codes, oks)):
            raise ValueError("snippets and snippet_ok must have one entry per snippet")
        flags = trivial_flags(codes)
        real = [sum(not t for t in ts) for ts in flags]
        good = [sum(bool(ok) and not t for ok, t in zip(o, ts)) for o, ts in zip(oks, flags)]
        trivial = sum(map(len, flags)) - sum(real)
    elif num_snippets is not None:  # b. the rollout's counts
        real = _per_completion("num_snippets", num_snippets, n)
        errors = _per_completion("num_errors", num_errors, n) if num_errors is not None else [0] * n
        good = [max(0, r - e) for r, e in zip(real, errors)]
        trivial = None  # not known from counts
    else:  # c. the text
        counts = _parallel(count_calls, list(completions))
        real = [c["snippets"] for c in counts]
        # a snippet ran well only if an output block without an error shows it; trivial
        # snippets cannot fail to parse, so each is taken to own one error-free block
        good = [min(c["snippets"], max(0, c["outputs"] - c["errors"] - c["trivial"])) for c in counts]
        trivial = sum(c["trivial"] for c in counts)
    if log_metric is not None and trivial is not None and sum(real) + trivial:
        log_metric("code_use/trivial_snippet_share", trivial / (sum(real) + trivial))
    credited = good if only_successful else real
    return [min(c, cap) / cap for c in credited]


def make_code_use_reward(only_successful: bool = True, cap: int = 1) -> Callable:
    """code_use_reward with its options fixed, as a TRL reward function.

    A functools.partial: picklable, and TRL logs it under the name "code_use_reward", so
    REWARD_WEIGHTS keys still apply.

    >>> f = make_code_use_reward(only_successful=True, cap=1)
    >>> f.func.__name__, f(["", ""], num_snippets=[1, 1], num_errors=[0, 1])
    ('code_use_reward', [1.0, 0.0])
    """
    return functools.partial(code_use_reward, only_successful=only_successful, cap=cap)


# ---------------------------------------------------------------------------
# 3) The weights
# ---------------------------------------------------------------------------

REWARD_WEIGHTS: dict[str, float] = {"accuracy_reward": 0.1, "code_use_reward": 1.0}
"""The released training config's weights (paper: code use weighted 10:1 vs. accuracy)."""


def reward_funcs_and_weights(weights: dict[str, float] | None = None, only_successful: bool = False,
                             cap: int = 1) -> tuple[list[Callable], list[float]]:
    """The reward functions and their weights, for GRPOTrainer(reward_funcs=...) and
    GRPOConfig(reward_weights=...). Defaults: the released config, accuracy 0.1, code use 1.0.

    Why 10:1. TRL sums the weighted rewards, R = 0.1 * accuracy + 1.0 * code_use, and GRPO
    uses only differences within a group of completions for the same prompt. Early on, some
    completions of a group call the executor and some do not: the code-use term dominates the
    advantage and teaches the call format quickly. Once every completion calls code, that term
    is the same for the whole group and cancels out, and the accuracy term alone orders the
    completions. The weighting is a curriculum: first use the tool, then be right with it.
    (With scale_rewards="group", each group's spread is normalised, so the 0.1 does not
    shrink the accuracy signal once code use is saturated.) The risk is that the first stage
    is cheap to satisfy (see code_use_reward's only_successful and cap).

    >>> funcs, w = reward_funcs_and_weights()
    >>> [f.__name__ for f in funcs], w
    (['accuracy_reward', 'code_use_reward'], [0.1, 1.0])
    >>> funcs, w = reward_funcs_and_weights({"accuracy_reward": 1.0}, only_successful=True)
    >>> funcs[1].keywords, w
    ({'only_successful': True, 'cap': 1}, [1.0, 1.0])
    """
    w = {**REWARD_WEIGHTS, **(weights or {})}
    unknown = set(w) - set(REWARD_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown reward(s) {sorted(unknown)}; known: {sorted(REWARD_WEIGHTS)}")
    code = make_code_use_reward(only_successful, cap) if (only_successful or cap != 1) else code_use_reward
    return [accuracy_reward, code], [w["accuracy_reward"], w["code_use_reward"]]


# ---------------------------------------------------------------------------
# 4) The shared grader (accuracy_reward and evaluate.py both use it)
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """The grade of one completion against one gold answer."""

    correct: bool | None
    """True/False; None when the gold answer is unusable, or when checking the gold itself
    failed this time (status gold_timeout / gold_crashed: not cached, retried next time)."""
    answer: str | None
    """What was graded: the last box's content (a run of boxes joined by ", "), or None."""
    status: str
    """correct | wrong | no_answer | too_big | timeout | crashed | bad_gold | gold_timeout | gold_crashed"""


_GOLD_CACHE: dict[str, str | None] = {}
"""gold -> its kind, for definite answers only: a parse, or a gold refused unread (empty, too
big), or one whose check failed GOLD_MAX_FAILURES times."""
_GOLD_FAILURES: dict[str, int] = {}
"""gold -> how many of its checks timed out or crashed so far (until it is cached)."""
_GOLD_LOCK = threading.Lock()


def _gold_status(gold: str, timeout_s: float | None = None) -> tuple[str | None, str | None]:
    """(kind, None), or (None, "timeout" | "crashed") when this check of the gold failed.

    Why a failure is not cached: a gold check times out when the machine is busy as easily as
    when the gold is pathological, and a cached None would take the problem's accuracy reward
    away for the rest of the run. So a failed check is retried on the next call, and only a
    gold that failed GOLD_MAX_FAILURES times is cached as unusable (so a truly pathological
    gold costs at most that many deadlines per run, not one per completion)."""
    with _GOLD_LOCK:
        if gold in _GOLD_CACHE:
            return _GOLD_CACHE[gold], None
    failure = None
    if not gold.strip() or _too_big(gold):
        kind = None
    else:
        reply, failure = _pool().run({"op": "gold", "gold": gold}, timeout_s or GRADE_TIMEOUT_S)
        kind = None if reply is None else reply["kind"]
    with _GOLD_LOCK:
        if failure is not None:
            n = _GOLD_FAILURES[gold] = _GOLD_FAILURES.get(gold, 0) + 1
            if n < GOLD_MAX_FAILURES:
                log.warning("gold answer %r: its check failed (%s, %d of %d); retried next time",
                            gold[:80], failure, n, GOLD_MAX_FAILURES)
                return None, failure
            log.warning("gold answer %r: its check failed %d times (%s); treated as unusable",
                        gold[:80], n, failure)
        if len(_GOLD_CACHE) > 100_000:
            _GOLD_CACHE.clear()
        _GOLD_CACHE[gold] = kind
        _GOLD_FAILURES.pop(gold, None)
    return kind, None


def gold_kind(gold: Any, timeout_s: float | None = None) -> str | None:
    """How a gold answer parses: "sympy", "string" (only the same text matches it) or None
    (unusable, or its check failed this time: see _gold_status, a failure is retried).

    Definite answers are cached per gold string, so a GRPO group asks once.

    >>> gold_kind(r"\\frac43"), gold_kind(""), gold_kind("(" * 20 + "1" + ")" * 20)
    ('sympy', None, None)
    """
    return _gold_status(str(gold), timeout_s)[0]


def _check(text: str, gold: str, timeout_s: float, gold_status: tuple[str | None, str | None]) -> Verdict:
    kind, failure = gold_status
    if failure is not None:  # unknown this time, not wrong: TRL leaves the reward out
        return Verdict(None, None, f"gold_{failure}")
    if kind is None:
        return Verdict(None, None, "bad_gold")
    if "\\boxed" not in text and "\\fbox" not in text:
        return Verdict(False, None, "no_answer")
    if len(text) > MAX_COMPLETION_CHARS:
        return Verdict(False, None, "too_big")
    # 7) the rest (steps 5, 6) in a helper, under the deadline
    reply, failure = _pool().run({"op": "grade", "text": text, "gold": gold}, timeout_s)
    if failure:
        return Verdict(False, None, failure)
    return Verdict(**reply)


def check(completion: Any, gold: Any, timeout_s: float | None = None) -> Verdict:
    """Grade one completion (string or conversational) against a gold answer, within a bound.

    Never hangs: past `timeout_s` (default GRADE_TIMEOUT_S) the check is killed and is wrong.

    >>> check(r"so $x = \\boxed{\\dfrac{4}{3}}$.", r"\\frac43")
    Verdict(correct=True, answer='\\\\dfrac{4}{3}', status='correct')
    >>> check(r"\\boxed{1, 2, 3, 4, 5}", "3").status
    'wrong'
    >>> check("I don't know", "3")
    Verdict(correct=False, answer=None, status='no_answer')
    """
    # 4) cheap checks in the calling thread
    timeout_s = GRADE_TIMEOUT_S if timeout_s is None else timeout_s
    gold = str(gold)
    return _check(completion_text(completion), gold, timeout_s, _gold_status(gold, timeout_s))


def grade(completion: Any, gold: Any, timeout_s: float | None = None) -> bool | None:
    """True if the completion's final answer equals the gold answer; None if the gold is unusable.

    >>> grade(r"... so the area is \\boxed{864 \\mbox{ inches}^2}", "864")
    True
    >>> grade(r"\\boxed{11\\sqrt2}", r"\\sqrt{242}"), grade(r"\\boxed{10,\\!080}", "10080")
    (True, True)
    """
    return check(completion, gold, timeout_s).correct


def check_many(completions: Iterable[Any], golds: Iterable[Any], timeout_s: float | None = None) -> list[Verdict]:
    """check() for many pairs, on up to GRADER_PROCESSES helpers at once (order kept): the batch
    grader that accuracy_reward uses, and evaluation can use.

    Each distinct gold is checked once, before the completions (a GRPO group shares one gold):
    if that check fails, the group's verdicts say gold_timeout / gold_crashed rather than every
    completion paying the deadline again; the next call retries it.

    >>> [v.status for v in check_many([r"\\boxed{2}", r"\\boxed{3}", "none"], ["2", "2", "2"])]
    ['correct', 'wrong', 'no_answer']
    """
    timeout_s = GRADE_TIMEOUT_S if timeout_s is None else timeout_s
    pairs = [(completion_text(c), str(g)) for c, g in zip(completions, golds, strict=True)]
    distinct = list(dict.fromkeys(g for _, g in pairs))
    status = dict(zip(distinct, _parallel(lambda g: _gold_status(g, timeout_s), distinct)))
    return _parallel(lambda tg: _check(tg[0], tg[1], timeout_s, status[tg[1]]), pairs)


def _parallel(fn: Callable, items: list) -> list:
    """fn over items, on up to GRADER_PROCESSES helpers at once (each call holds one); order kept."""
    if len(items) <= 1 or GRADER_PROCESSES <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(GRADER_PROCESSES, len(items))) as ex:
        return list(ex.map(fn, items))


# ---------------------------------------------------------------------------
# 5) Reading a completion: its text and its final answer (the last box, or the run it ends)
# ---------------------------------------------------------------------------

def completion_text(completion: Any) -> str:
    """The text of one completion: a plain string, or TRL's conversational form.

    A conversational completion is a list of messages; their contents are joined in order
    (content may also be a list of {"type": "text", "text": ...} parts).

    >>> completion_text("so \\\\boxed{4}")
    'so \\\\boxed{4}'
    >>> completion_text([{"role": "assistant", "content": "so \\\\boxed{4}"}])
    'so \\\\boxed{4}'
    >>> completion_text([{"role": "assistant", "content": [{"type": "text", "text": "x"}]}])
    'x'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    parts = []
    for message in completion:
        content = message.get("content") if isinstance(message, dict) else message
        if isinstance(content, list):  # multimodal-style content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append("" if content is None else str(content))
    return "\n".join(parts)


# What may stand between two boxes of one run: space, punctuation, math delimiters, "and"/"or".
_RUN_GAP_RE = re.compile(
    r"(?:\s|[$,;.&]|\\[,;:! ]|\\q?quad\b|\\\\|\\[()\[\]]"
    r"|\\text\s*\{\s*(?:and|or|,)?\s*\}|\band\b|\bor\b)*"
)
_MAX_GAP = 40


def final_answers(text: str) -> list[str]:
    """The final answer as a list of box contents; [] when there is no (balanced) box.

    The last element is always protocol.last_boxed(text). Boxes just before it, separated only by
    commas, "and"/"or", spaces or math delimiters, form one run with it and come first.
    Boxes further back (e.g. an earlier attempt) are not part of the answer.

    >>> final_answers(r"First \\boxed{1}. Later we see it is \\boxed{\\frac{4}{3}}.")
    ['\\\\frac{4}{3}']
    >>> final_answers(r"The roots are $\\boxed{2}$ and $\\boxed{-3}$.")
    ['2', '-3']
    >>> final_answers("```output\\n\\\\boxed{7}\\n```\\nno answer yet")
    []
    """
    # last_boxed(text) is last_box() of this text; boxes further back are looked for in it too
    text = strip_output_blocks(text)
    run: list[str] = []
    next_start = None  # where the box found in the previous round starts
    while len(run) < MAX_RUN:
        box = last_box(text if next_start is None else text[:next_start])
        if box is None:
            break
        start, end, content = box
        if next_start is not None:  # is this box adjacent to the one after it?
            gap = text[end: next_start]
            if len(gap) > _MAX_GAP or not _RUN_GAP_RE.fullmatch(gap):
                break
        run.insert(0, content)
        next_start = start
    return run


# ---------------------------------------------------------------------------
# 6) Grading inside a helper (math-verify, imported only there)
# ---------------------------------------------------------------------------

def _bracket_depth(s: str) -> int:
    depth = deepest = 0
    for c in s:
        if c in "({[":
            depth += 1
            deepest = max(deepest, depth)
        elif c in ")}]":
            depth -= 1
    return deepest


def _too_big(answer: str) -> bool:
    """Step 6: answers that would make the parser or sympy crawl are refused unread."""
    return len(answer) > MAX_ANSWER_CHARS or _bracket_depth(answer) > MAX_ANSWER_DEPTH


_UNICODE = {"\u2212": "-", "\u2013": "-", "\u00d7": "\\times ", "\u00b7": "\\cdot ",
            "\u03c0": "\\pi ", "\u221e": "\\infty ", "\u221a": "\\sqrt"}
# "137 \frac{1}{2}", "-1\frac12": a whole number followed by a plain numeric fraction.
_MIXED_RE = re.compile(r"(-?)\s*(\d+)\s*\\[dt]?frac\s*(?:\{(\d+)\}\s*\{(\d+)\}|(\d)(\d))")
_DOLLARS_RE = re.compile(r"^\$+|(?<!\\)\$+$")


def _normalize(answer: str) -> str:
    """Step 6: the fixes math-verify's own normalisation lacks (it does the rest).

    >>> _normalize(r"137 \\frac{1}{2}")      # a mixed number, as MATH writes them
    '(137+\\\\frac{1}{2})'
    >>> _normalize("\u22123.")               # unicode minus, sentence period
    '-3'
    """
    s = "".join(_UNICODE.get(c, c) for c in answer).strip()
    s = _DOLLARS_RE.sub("", s).strip()
    while s.endswith((".", ",", ";")) and not s.endswith(("\\.", "\\,", "\\;")):  # keep \, spacing
        s = s[:-1].rstrip()
    # MATH's mixed numbers: math-verify reads "1\frac{4}{5}" as 1*4/5. Only a whole answer of
    # that exact shape is rewritten; "2\frac{\pi}{3}" stays a product.
    m = _MIXED_RE.fullmatch(s)
    if m:
        sign, whole, num, den = m.group(1), m.group(2), m.group(3) or m.group(5), m.group(4) or m.group(6)
        s = f"{sign}({whole}+\\frac{{{num}}}{{{den}}})"
    return s


@functools.lru_cache(maxsize=1)
def _math_verify():
    """math-verify's parse/verify, set up once per helper process."""
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig, parse, verify

    # we bound time ourselves; stop it warning that its signal timeout is off
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    config = [LatexExtractionConfig(
        boxed_match_priority=0,
        try_extract_without_anchor=False,
        normalization_config=NormalizationConfig(
            basic_latex=True, units=True, malformed_operators=True, nits=True, boxed="all"),
    )]
    return parse, verify, config


@functools.lru_cache(maxsize=4096)
def _parse(answer: str) -> tuple:
    """Step 6: an answer string as math-verify's parse list (sympy object, then the string).

    Cached: the gold of a problem is parsed once per helper for its whole group."""
    parse, _, config = _math_verify()
    return tuple(parse("\\boxed{" + _normalize(answer) + "}", extraction_config=config,
                       parsing_timeout=None))


def _matches(gold: tuple, answer: str) -> bool:
    _, verify, _ = _math_verify()
    return bool(verify(list(gold), list(_parse(answer)), timeout_seconds=None))


def _gold_kind_local(gold: str) -> str | None:
    """"sympy" (parsed), "string" (only exact text can match it) or None (unusable)."""
    if not gold.strip() or _too_big(gold):
        return None
    parsed = _parse(gold)
    if not parsed:
        return None
    return "string" if all(isinstance(p, str) for p in parsed) else "sympy"


def _grade_local(text: str, gold: str) -> dict:
    """Steps 5-6 for one completion, in this process, with no time bound (helpers only)."""
    if _gold_kind_local(gold) is None:
        return {"correct": None, "answer": None, "status": "bad_gold"}
    run = final_answers(text)
    if not run:
        return {"correct": False, "answer": None, "status": "no_answer"}
    answer = ", ".join(run)
    if any(_too_big(a) for a in run) or _too_big(answer):
        return {"correct": False, "answer": answer[:200], "status": "too_big"}
    g = _parse(gold)
    ok = _matches(g, answer) or (len(run) > 1 and all(_matches(g, a) for a in run))
    return {"correct": ok, "answer": answer, "status": "correct" if ok else "wrong"}


def _calls_local(text: str) -> dict:
    """Step 2 from text (count_calls): snippets holding code, trivial ones, output blocks, and
    blocks showing an error in executor.py's formats (protocol.shows_error)."""
    blocks = output_blocks(text)
    errors = sum(shows_error(b) for b in blocks)
    calls = find_snippets(text)
    trivial = sum(is_trivial_snippet(c) for c in calls)
    return {"snippets": len(calls) - trivial, "trivial": trivial, "outputs": len(blocks), "errors": errors}


# ---------------------------------------------------------------------------
# 7) The helper processes: the hard bound on every check
# ---------------------------------------------------------------------------

_THIS_FILE = os.path.abspath(__file__)
_HELPER_SETTINGS = ("MAX_ANSWER_CHARS", "MAX_ANSWER_DEPTH", "MAX_RUN", "GRADER_MEMORY_BYTES")


class _HelperDied(Exception):
    pass


class _Helper:
    """One `python rewards.py --serve` child. Used by one thread at a time (the pool's job)."""

    def __init__(self) -> None:
        # fork+exec of a clean interpreter: safe from a process that holds torch/vLLM threads
        settings = {k: globals()[k] for k in _HELPER_SETTINGS}
        self.proc = subprocess.Popen(
            [sys.executable, _THIS_FILE, "--serve", json.dumps(settings)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, close_fds=True,
        )
        self._buf = b""
        self._ready = False

    def _readline(self, deadline: float) -> bytes | None:
        """One reply line, or None at the deadline. Raises _HelperDied on EOF."""
        import select

        fd = self.proc.stdout.fileno()
        poller = select.poll()  # not select(): fds above 1024 are normal in a trainer
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not poller.poll(math.ceil(left * 1000)):
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise _HelperDied
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def request(self, req: dict, timeout_s: float) -> dict | None:
        """Send one request; the reply, or None when the deadline passed."""
        if not self._ready:
            # a helper that cannot start is a broken install, not a wrong answer: say so loudly
            try:
                ok = self._readline(time.monotonic() + STARTUP_TIMEOUT_S) is not None
            except _HelperDied:
                ok = False
            if not ok:
                raise RuntimeError("the grader helper (`python rewards.py --serve`) did not start "
                                   f"within {STARTUP_TIMEOUT_S:g} s; its error is on stderr above")
            self._ready = True
        req = {**req, "timeout_s": timeout_s}
        try:
            self.proc.stdin.write(json.dumps(req).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise _HelperDied from e
        line = self._readline(time.monotonic() + timeout_s)
        return None if line is None else json.loads(line)

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: the one stop that always works
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass

    def close(self) -> None:
        try:
            self.proc.stdin.close()  # the helper exits at EOF
            self.proc.wait(timeout=1)
        except Exception:
            pass
        if self.proc.poll() is None:
            self.kill()


class _HelperPool:
    """Up to `size` helpers; a check borrows one, and a hung or dead one is replaced."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.pid = os.getpid()
        self._idle: list[_Helper] = []
        self._count = 0
        self._cond = threading.Condition()

    def run(self, req: dict, timeout_s: float) -> tuple[dict | None, str | None]:
        """(reply, None), or (None, "timeout" | "crashed")."""
        helper = self._acquire()
        try:
            reply = helper.request(req, timeout_s)
            failure = None if reply is not None else "timeout"
        except _HelperDied:  # e.g. a C-level crash deep in sympy
            reply, failure = None, "crashed"
        except BaseException:
            helper.kill()
            self._release(None)
            raise
        if reply is None:  # hung or dead: kill it, and start the replacement now to warm up
            if failure == "timeout":
                log.warning("grader check passed its %.1f s deadline; helper killed and replaced", timeout_s)
            helper.kill()
            try:
                helper = _Helper()
            except BaseException:
                self._release(None)
                raise
        elif "crash" in reply:  # an exception escaped the grader; the helper itself is fine
            log.warning("grader helper error: %s", reply["crash"])
            reply, failure = None, "crashed"
        self._release(helper)
        return reply, failure

    def _acquire(self) -> _Helper:
        with self._cond:
            while True:
                if self._idle:
                    return self._idle.pop()
                if self._count < self.size:
                    self._count += 1
                    break
                self._cond.wait()
        try:
            return _Helper()
        except BaseException:
            self._release(None)
            raise

    def _release(self, helper: _Helper | None) -> None:
        with self._cond:
            if helper is None:
                self._count -= 1
            else:
                self._idle.append(helper)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for h in idle:
            h.close()


_POOL: _HelperPool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> _HelperPool:
    global _POOL
    with _POOL_LOCK:
        # a forked child must not share its parent's helpers (their pipes would interleave)
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = _HelperPool(GRADER_PROCESSES)
        return _POOL


def close_grader() -> None:
    """Stop the idle helper processes (they also stop when this process exits)."""
    with _POOL_LOCK:
        if _POOL is not None and _POOL.pid == os.getpid():
            _POOL.close()


atexit.register(close_grader)


def _serve(settings: dict) -> None:
    """The helper's main loop: one JSON request per stdin line, one JSON reply per line."""
    import resource

    globals().update({k: v for k, v in settings.items() if k in _HELPER_SETTINGS})
    out = os.dup(1)
    os.dup2(2, 1)  # a stray print() in a library must not corrupt the replies
    # memory: 10^{10^{10}} must raise MemoryError here, not swap the machine
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    limit = GRADER_MEMORY_BYTES if hard == resource.RLIM_INFINITY else min(GRADER_MEMORY_BYTES, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]

    def send(obj: dict) -> None:
        data = json.dumps(obj).encode() + b"\n"
        while data:
            data = data[os.write(out, data):]

    _parse("\\frac{1}{2}")  # warm up: imports, the LaTeX parser's tables
    send({"ready": True})
    for line in sys.stdin.buffer:
        req = json.loads(line)
        # CPU backstop for this check, should the parent be gone and not kill us (SIGXCPU)
        used = resource.getrusage(resource.RUSAGE_SELF)
        soft = int(used.ru_utime + used.ru_stime) + 2 * math.ceil(req.get("timeout_s", 10)) + 5
        if cpu_hard == resource.RLIM_INFINITY or soft < cpu_hard:
            resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_hard))
        try:
            op = req["op"]
            if op == "grade":
                reply = _grade_local(req["text"], req["gold"])
            elif op == "gold":
                reply = {"kind": _gold_kind_local(req["gold"])}
            elif op == "calls":
                reply = _calls_local(req["text"])
            elif op == "trivial":
                reply = {"trivial": [is_trivial_snippet(c) for c in req["snippets"]]}
            else:
                reply = {"crash": f"unknown op {op!r}"}
        except Exception as e:  # noqa: BLE001 -- report, keep serving
            reply = {"crash": f"{type(e).__name__}: {str(e)[:200]}"}
        send(reply)


# ---------------------------------------------------------------------------
# Command line: `python rewards.py COMPLETION GOLD` grades one answer; --serve is the helper
# ---------------------------------------------------------------------------

if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        _serve(json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
    elif len(sys.argv) == 3:
        print(json.dumps(asdict(check(sys.argv[1], sys.argv[2])), ensure_ascii=False))
    else:
        print("usage: python rewards.py COMPLETION GOLD   (prints the verdict as JSON)", file=sys.stderr)
        sys.exit(2)
