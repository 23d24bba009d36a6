"""
Tests for rewards.py: the grader, accuracy_reward, code_use_reward and the weights.

Run:   .venv/bin/python -m pytest tests/test_rewards.py -q        (about 80 s on 2 busy cores)
       (pytest.ini's --doctest-modules only scans tests/; test_doctests runs rewards.py's.)
       add -s to see the oracle's report (failures, HLE parse shares).

What is covered:
  - rewards.py's doctests (test_doctests runs them, so a plain `pytest tests/` executes them);
  - literal inputs: answer forms from MATH-500 (\\frac43, 11\\sqrt2, 10,\\!080, \\text{(C)}, units,
    ^\\circ, \\$, \\%, x=, intervals, tuples, mixed numbers), anti-gaming cases, the run-of-boxes
    rule, the bare-box rule, conversational completions, code_use_reward on text and on rollout
    kwargs (per-snippet record first, then counts), trivial snippets (protocol.is_trivial_snippet);
  - grading timeouts: a gold check that passes its deadline is retried, not cached (at most
    GOLD_MAX_FAILURES times), and a batch asks each distinct gold once;
  - error lines: protocol.shows_error on the executor's formats and on printed look-alikes, and
    against ExecResult.ok of real executor.Sandbox failures (StopIteration, CoercionFailed,
    user-defined exceptions, static-check rejections);
  - bench/grader.py's smoke run (5 problems);
  - the oracle on ../shared/data/math500.jsonl: every gold solution, fed as the completion,
    must score >= 99.5%, and the same solution with its last box changed to a wrong value
    must score 0 on every row; the other benchmark golds must match themselves;
  - adversarial LaTeX (power towers, deep nesting, unbalanced braces, megabyte texts): each
    call returns within the deadline, from the main thread and from another thread.
The benchmark files are read where they live (never copied); their tests skip without them
(conftest's data_dir fixture, whose reason says where the data comes from).
"""

from __future__ import annotations

import doctest
import json
import pickle
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import rewards  # noqa: E402
from protocol import format_result, is_trivial_snippet, last_boxed, output_blocks, shows_error  # noqa: E402

def _rows(data_dir: Path, name: str) -> list[dict]:
    """A benchmark file's rows, read where it lives (conftest's data_dir fixture skips, naming
    where the data comes from, when shared/data is not beside the checkout)."""
    with (data_dir / name).open() as f:
        return [json.loads(line) for line in f]


def boxed(answer: str) -> str:
    return f"Therefore the answer is $\\boxed{{{answer}}}$."


# ---------------------------------------------------------------------------
# Doctests
# ---------------------------------------------------------------------------

def test_doctests():
    result = doctest.testmod(rewards, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 20
    assert result.failed == 0


# ---------------------------------------------------------------------------
# Literal inputs: answer forms
# ---------------------------------------------------------------------------

EQUIVALENT = [  # (gold as in the data, an answer a model may write)
    (r"\frac43", "4/3"),
    (r"\frac43", r"\dfrac{4}{3}"),
    (r"11\sqrt2", r"11\sqrt{2}"),
    (r"11\sqrt2", r"\sqrt{242}"),
    (r"10,\!080", "10080"),
    (r"10,\!080", "10,080"),
    (r"\text{(C)}", "C"),
    (r"\text{(C)}", "(C)"),
    (r"30^\circ", "30"),
    (r"30^\circ", r"30^{\circ}"),
    (r"\$18.90", "18.90"),
    (r"\$18.90", r"\$18.9"),
    ("x=3", "3"),
    ("3", "x = 3"),
    (r"864 \mbox{ inches}^2", "864"),
    (r"\frac{270}7\text{ degrees}", r"\frac{270}{7}"),
    (r"\text{Evelyn}", "Evelyn"),
    (r"25\%", "25"),
    (r"\dfrac{1}{2}", "0.5"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \pi/2)"),
    (r"(-\infty, 0]", r"(-\infty,0]"),
    ("[2,5)", r"x \in [2,5)"),
    ("1, 2, 3", "3, 2, 1"),
    ("p - q", "-q + p"),
    (r"\cot x", r"\frac{\cos x}{\sin x}"),
    (r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}"),
    (r"1\frac{4}{5}", r"\frac{9}{5}"),  # MATH's mixed numbers
    (r"137 \frac{1}{2}", "137.5"),
    ("-3", "\u22123"),  # unicode minus
    ("3", "3."),
    ("5", r"5\,"),  # a trailing thin space is not a sentence comma
    (r"\frac{-1+\sqrt{17}}{2}, \frac{-1-\sqrt{17}}{2}", r"\frac{-1-\sqrt{17}}{2}, \frac{-1+\sqrt{17}}{2}"),
    (r"2^{25} \cdot 26!", r"26! \cdot 2^{25}"),
]

DIFFERENT = [
    (r"\text{(C)}", "(D)"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(\pi/2, 3)"),  # a tuple is ordered
    (r"(-\infty, 0]", r"(-\infty,0)"),  # so is an interval's closedness
    ("[2,5)", "[2,5]"),
    (r"1\frac{4}{5}", r"\frac{4}{5}"),  # the mixed number is not a product
    ("p - q", "q - p"),
    ("3", "-3"),
    (r"\pi", "3.14159"),
    ("2", "x"),
    (r"\text{east}", r"\text{west}"),
]

GAMES = [  # (completion, gold): hedges and tricks that must earn nothing
    (r"\boxed{1, 2, 3, 4, 5}", "3"),  # a box listing candidates
    (r"\boxed{\{1,2,3\}}", "3"),
    (r"$\boxed{1}, \boxed{2}, \boxed{3}$", "3"),  # several different boxes in a row
    (r"$\boxed{2}$ or $\boxed{3}$", "3"),
    (r"\boxed{3 \text{ or } 4}", "3"),
    (r"\boxed{\pm 3}", "3"),
    (r"First \boxed{3}. Hmm, no: the answer is \boxed{5}.", "3"),  # only the last box counts
    (r"\boxed{\frac{-1+\sqrt{17}}{2}}", r"\frac{-1+\sqrt{17}}{2}, \frac{-1-\sqrt{17}}{2}"),  # half an answer
    # a box that only the executor printed (the snippet's text holds none)
    ("<tool_call>\nprint(chr(92) + 'boxed{3}')\n</tool_call>\n```output\n\\boxed{3}\n```\nSo it is 3.", "3"),
    ("The answer is 3.", "3"),  # no box at all
]


@pytest.mark.parametrize("gold,answer", EQUIVALENT)
def test_equivalent_forms_are_correct(gold, answer):
    assert rewards.check(boxed(answer), gold).status == "correct"


@pytest.mark.parametrize("gold,answer", DIFFERENT)
def test_different_values_are_wrong(gold, answer):
    assert rewards.check(boxed(answer), gold).status == "wrong"


@pytest.mark.parametrize("completion,gold", GAMES)
def test_hedges_earn_nothing(completion, gold):
    assert rewards.grade(completion, gold) is False
    assert rewards.accuracy_reward([completion], answer=[gold]) == [0.0]


def test_final_answers_runs_of_boxes():
    assert rewards.final_answers(r"\boxed{1} text text text text. Then \boxed{2}") == ["2"]
    assert rewards.final_answers(r"$\boxed{2}$ and $\boxed{-3}$") == ["2", "-3"]
    assert rewards.final_answers(r"\boxed{1}, \boxed{2}, \boxed{3}") == ["1", "2", "3"]
    assert rewards.final_answers(r"\boxed 7") == ["7"]
    assert rewards.final_answers(r"\boxed{unbalanced") == []
    assert rewards.final_answers(r"\boxed{\boxed{3}}") == ["3"]
    # the last element is always protocol.last_boxed's answer
    for text in (r"a \boxed{1} b \fbox{2}", r"\boxed{x}, \boxed{y}", "```output\n\\boxed{9}\n```\n\\boxed{4}"):
        assert rewards.final_answers(text)[-1] == last_boxed(text)
    # even when removing an output block joins text into a new opener ("```out" + "put\n"):
    # output blocks are stripped once, as last_boxed does (stripping twice used to give ["1"])
    joined = "\\boxed{1}, ```out```output\nx\n```\nput\n\\boxed{2}\n```\n"
    assert rewards.final_answers(joined) == ["2"] == [last_boxed(joined)]
    # a box's end is where last_boxed stopped reading it, "\boxed 7" included
    assert rewards.final_answers(r"\boxed 1 , \boxed{2} and \fbox 3") == ["1", "2", "3"]


def test_run_of_boxes_multi_value_and_restatement():
    assert rewards.grade(r"The roots are $\boxed{2}$ and $\boxed{-3}$.", "2, -3") is True
    assert rewards.grade(r"The roots are $\boxed{2}$ and $\boxed{-3}$.", "-3") is False
    # the same value twice ("x, or equivalently y") is still that value
    assert rewards.grade(r"$\boxed{15\frac{39}{40}},$ or $\boxed{\frac{639}{40}}$ inches.", r"\frac{639}{40}") is True


def test_bad_gold_is_none():
    assert rewards.check(r"\boxed{3}", "").correct is None
    assert rewards.check(r"\boxed{3}", "   ").status == "bad_gold"
    assert rewards.accuracy_reward([r"\boxed{3}", r"\boxed{3}"], answer=["", "3"]) == [None, 1.0]
    assert rewards.gold_kind("(" * 20 + "1" + ")" * 20) is None  # too deep to parse safely


def test_gold_kinds():
    assert rewards.gold_kind(r"\frac{9 \sqrt{23}}{23}") == "sympy"
    assert rewards.gold_kind(3) == "sympy"  # non-string golds are str()-ed


# a gold that takes the LaTeX parser tens of ms: a 1 ms deadline always fires on it
SLOW_GOLD = " + ".join(r"\frac{%d}{%d}" % (i, i + 1) for i in range(1, 25))


def test_gold_check_timeout_is_retried_not_cached():
    # issue 8 §5: one slow gold check (a busy machine) used to cache the gold as unusable,
    # removing that problem's accuracy reward for the rest of the run
    gold = SLOW_GOLD + " + 1"  # new to this process, so nothing is cached yet
    v = rewards.check(boxed("1"), gold, timeout_s=0.001)
    assert v == rewards.Verdict(None, None, "gold_timeout")  # unknown this time: TRL leaves it out
    assert rewards.accuracy_reward([boxed("1")], answer=[gold]) == [0.0]  # retried: usable, and wrong
    assert rewards.gold_kind(gold) == "sympy"
    assert rewards.check(boxed(gold), gold).status == "correct"


def test_gold_check_failures_are_bounded(monkeypatch):
    monkeypatch.setattr(rewards, "GOLD_MAX_FAILURES", 2)
    gold = SLOW_GOLD + " + 2"
    assert rewards.check(boxed("1"), gold, timeout_s=0.001).status == "gold_timeout"  # 1st: retried
    assert rewards.check(boxed("1"), gold, timeout_s=0.001).status == "bad_gold"      # 2nd: given up
    assert rewards.check(boxed(gold), gold).status == "bad_gold"  # cached: not asked again


def test_check_many_asks_each_gold_once(monkeypatch):
    asked = []
    real = rewards._gold_status
    monkeypatch.setattr(rewards, "_gold_status", lambda g, t=None: asked.append(g) or real(g, t))
    verdicts = rewards.check_many([boxed("2"), boxed("3"), "none", boxed("5")], ["2", "2", "2", "5"])
    assert [v.status for v in verdicts] == ["correct", "wrong", "no_answer", "correct"]
    assert sorted(asked) == ["2", "5"]


def test_accuracy_reward_forms_and_logging():
    conv = [[{"role": "assistant", "content": r"so $\boxed{\frac{1}{3}}$"}],
            [{"role": "assistant", "content": r"so $\boxed{\frac{1}{2}}$"}]]
    logged = {}
    out = rewards.accuracy_reward(conv, answer=[r"\frac{1}{3}"] * 2, prompts=["p", "p"],
                                  log_extra=lambda k, v: logged.setdefault(k, v), trainer_state=None)
    assert out == [1.0, 0.0]
    assert logged == {"final_answer": [r"\frac{1}{3}", r"\frac{1}{2}"], "grade": ["correct", "wrong"]}
    assert rewards.accuracy_reward([], answer=[]) == []
    with pytest.raises(ValueError, match="answer"):
        rewards.accuracy_reward([r"\boxed{1}"])
    with pytest.raises(ValueError):
        rewards.accuracy_reward([r"\boxed{1}"], answer=["1", "2"])


def test_completion_text_joins_messages():
    conv = [{"role": "assistant", "content": "a"}, {"role": "tool", "content": "b"}, {"role": "assistant", "content": None}]
    assert rewards.completion_text(conv) == "a\nb\n"
    assert rewards.completion_text({"role": "assistant", "content": "x"}) == "x"


def test_parent_process_stays_light():
    """rewards.py itself imports no ML stack and no sympy: the helpers do the math."""
    code = ("import sys, rewards; rewards.grade(r'\\boxed{3}', '3'); "
            "print(sorted(m for m in ('torch', 'trl', 'vllm', 'transformers', 'sympy', 'math_verify', 'smolagents')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------
# code_use_reward
# ---------------------------------------------------------------------------

CALL_OK = "Let me compute.\n<tool_call>\nprint(17*23)\n</tool_call>\n```output\n391\n```\nSo \\boxed{391}."
FENCE_OK = "Compute:\n```python\nprint(2**10)\n```\n\n```output\n1024\n```\nSo \\boxed{1024}."
CALL_ERR = ("<tool_call>\nprint(y)\n</tool_call>\n"
            "```output\nNameError: name 'y' is not defined (line 1: print(y))\n```\nSo \\boxed{3}.")
CALL_TIMEOUT = ("<tool_call>\nwhile True: pass\n</tool_call>\n"
                "```output\ntimed out after 5 s; names defined before this snippet are lost\n```\n")
CALL_NO_OUTPUT = "<tool_call>\nprint(1)\n</tool_call>"  # trajectory ended before it ran
NO_CALL = r"I think it is \boxed{3}. ```output is not a call``` and neither is ```latex x```."
TWO_OK_ONE_ERR = CALL_OK + FENCE_OK + CALL_ERR


def test_code_use_paper_default():
    texts = [NO_CALL, CALL_OK, FENCE_OK, CALL_ERR, CALL_TIMEOUT, CALL_NO_OUTPUT]
    assert rewards.code_use_reward(texts) == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]


def test_code_use_only_successful():
    texts = [NO_CALL, CALL_OK, FENCE_OK, CALL_ERR, CALL_TIMEOUT, CALL_NO_OUTPUT, TWO_OK_ONE_ERR]
    assert rewards.code_use_reward(texts, only_successful=True) == [0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def test_code_use_cap():
    texts = [CALL_OK, CALL_OK + FENCE_OK, TWO_OK_ONE_ERR, TWO_OK_ONE_ERR + CALL_OK + CALL_OK]
    assert rewards.code_use_reward(texts, only_successful=True, cap=3) == [1 / 3, 2 / 3, 2 / 3, 1.0]
    assert rewards.code_use_reward(texts, cap=2) == [0.5, 1.0, 1.0, 1.0]  # every call, capped
    with pytest.raises(ValueError):
        rewards.code_use_reward(texts, cap=0)


def test_code_use_counts():
    assert rewards.count_calls(TWO_OK_ONE_ERR) == {"snippets": 3, "trivial": 0, "outputs": 3, "errors": 1}
    assert rewards.count_calls(NO_CALL) == {"snippets": 0, "trivial": 0, "outputs": 0, "errors": 0}
    assert rewards.count_calls(CALL_TIMEOUT)["errors"] == 1


def test_code_use_counts_use_the_protocol_scanners():
    # rewards counts with protocol.py's scanners: no second copy
    import protocol

    assert rewards.find_snippets is protocol.find_snippets is protocol.find_snippets
    assert rewards.output_blocks is protocol.output_blocks and rewards.shows_error is protocol.shows_error
    text = ("<tool_call>\nprint(1)\n</tool_call>\n```output\n1\n```\n"
            "```python\nprint(y)\n```\n```output\nNameError: name 'y' is not defined\n```\n"
            "<tool_call>\nprint(2)\n</tool_call>\n```output\nunclosed")
    assert rewards._calls_local(text) == {"snippets": 3, "trivial": 0, "outputs": 2, "errors": 1}
    assert rewards.count_calls(text) == {"snippets": 3, "trivial": 0, "outputs": 2, "errors": 1}


def test_code_use_rollout_kwargs_take_precedence():
    # the text says nothing; the rollout's counts decide (num_errors includes timeouts)
    out = rewards.code_use_reward(["", "", "", ""], num_snippets=[0, 1, 2, 2], num_errors=[0, 1, 1, 0],
                                  num_timeouts=[0, 1, 0, 0], finish_reason=["answer"] * 4)
    assert out == [0.0, 1.0, 1.0, 1.0]
    out = rewards.code_use_reward(["", "", "", ""], num_snippets=[0, 1, 2, 2], num_errors=[0, 1, 1, 0],
                                  only_successful=True, cap=2)
    assert out == [0.0, 0.0, 0.5, 1.0]
    with pytest.raises(ValueError):
        rewards.code_use_reward(["", ""], num_snippets=[1])


def test_code_use_conversational():
    conv = [[{"role": "assistant", "content": CALL_OK}], [{"role": "assistant", "content": NO_CALL}]]
    assert rewards.code_use_reward(conv) == [1.0, 0.0]


def test_make_code_use_reward_is_a_named_picklable_reward():
    f = rewards.make_code_use_reward(only_successful=True, cap=1)
    g = pickle.loads(pickle.dumps(f))
    assert g.func.__name__ == "code_use_reward"
    assert g([CALL_OK, CALL_ERR]) == [1.0, 0.0]


TRIVIAL = ["# just a comment", "pass", "...", '"""I will compute it next."""', "42", "-1.5", "None",
           "'a', (1, [2, {3: 'x'}])", "# a\npass\n# b", "\n\n   \n"]
NOT_TRIVIAL = ["print(1)", "x = 1", "1 + 1", "x", "f'{x}'", "import math", "{**d}", "pass\nprint(2)",
               "x = (", "def f(:", "print('\0')", "\0", "(" * 500 + ")" * 500, "-" * 100_000 + "1",
               "[" * 100 + "1" + "]" * 100 + "\nx", "'unterminated"]


@pytest.mark.parametrize("code", TRIVIAL)
def test_trivial_snippets(code):
    assert is_trivial_snippet(code)


@pytest.mark.parametrize("code", NOT_TRIVIAL)
def test_code_and_failed_attempts_are_not_trivial(code):
    # a snippet that does not parse is an attempt that failed (an error), never "trivial"
    assert not is_trivial_snippet(code)


def test_trivial_snippet_check_on_hostile_text():
    assert not is_trivial_snippet("1+" * 200_000 + "1", max_chars=10**6)  # RecursionError in the parser
    assert not is_trivial_snippet("'" + "a" * 20_000 + "'")  # over the executor's limit: not parsed
    assert is_trivial_snippet("'" + "a" * 19_000 + "'")


def test_trivial_snippet_cap_is_the_executors():
    import inspect
    import executor
    assert inspect.signature(is_trivial_snippet).parameters["max_chars"].default == executor.MAX_CODE_CHARS
    assert not is_trivial_snippet('"\\d"; x')  # an invalid escape warns; the warning is silenced


CALL_COMMENT = "<tool_call>\n# the sum is 7\n</tool_call>\n```output\n(no output)\n```\nSo \\boxed{7}."
CALL_PASS = "```python\npass\n```\n\n```output\n(no output)\n```\n"
CALL_DOCSTRING = '<tool_call>\n"""Let me think."""\n</tool_call>\n```output\n\'Let me think.\'\n```\n'
CALL_SYNTAX = ("<tool_call>\nx = (\n</tool_call>\n"
               "```output\nSyntaxError: '(' was never closed (line 1: x = ()\n```\n")


def test_code_use_pays_nothing_for_empty_snippets():
    texts = [CALL_COMMENT, CALL_PASS, CALL_DOCSTRING, CALL_COMMENT + CALL_OK, CALL_SYNTAX]
    assert rewards.code_use_reward(texts) == [0.0, 0.0, 0.0, 1.0, 1.0]  # a failed attempt is code
    assert rewards.code_use_reward(texts, only_successful=True) == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert rewards.count_calls(CALL_COMMENT + CALL_OK) == {"snippets": 1, "trivial": 1, "outputs": 2, "errors": 0}
    logged = {}
    rewards.code_use_reward(texts, log_metric=logged.__setitem__)
    assert logged == {"code_use/trivial_snippet_share": 4 / 6}
    logged.clear()
    rewards.code_use_reward(["", ""], num_snippets=[1, 0], log_metric=logged.__setitem__)
    assert logged == {}  # counts alone cannot tell
    # a trivial call's clean block cannot stand in for a failed real call
    assert rewards.code_use_reward([CALL_PASS + CALL_ERR], only_successful=True) == [0.0]


def test_code_use_structured_snippets_take_precedence():
    # per-snippet code and executor status (rollout_func's `snippets` / `snippet_ok`) win over the
    # counts and the text; trivial snippets are filtered there too
    texts = [CALL_OK, "", "", CALL_OK, ""]
    snippets = [[], ["pass", "# x"], ["print(1)"], ["1/0"], ["'plan'", "print(2)", "y"]]
    ok = [[], [True, True], [True], [False], [True, True, False]]
    counts = dict(num_snippets=[1, 2, 1, 1, 3], num_errors=[0, 0, 0, 1, 1], num_timeouts=[0] * 5)
    assert rewards.code_use_reward(texts, snippets=snippets, snippet_ok=ok, **counts) == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert rewards.code_use_reward(texts, snippets=snippets, snippet_ok=ok, only_successful=True, cap=2,
                                   **counts) == [0.0, 0.0, 0.5, 0.0, 0.5]
    logged = {}
    rewards.code_use_reward(texts, snippets=snippets, snippet_ok=ok, log_metric=logged.__setitem__)
    assert logged == {"code_use/trivial_snippet_share": 3 / 7}  # "pass", "# x", "'plan'" of 7 calls
    with pytest.raises(ValueError, match="snippet_ok"):
        rewards.code_use_reward(["", ""], snippets=[["print(1)"], []])
    with pytest.raises(ValueError, match="one entry per snippet"):
        rewards.code_use_reward([""], snippets=[["print(1)"]], snippet_ok=[[]])
    with pytest.raises(ValueError, match="one value per completion"):
        rewards.code_use_reward(["", ""], snippets=[["print(1)"]], snippet_ok=[[True]])


# ---------------------------------------------------------------------------
# Error lines: the text rule against the executor's own error text
# ---------------------------------------------------------------------------

ERROR_BLOCKS = [  # the executor's formats, including what the old rule missed
    "StopIteration (line 2: next(it))",
    "CoercionFailed: expected an integer, got 1/2 (line 2: ZZ.convert(QQ(1, 2)))",
    "7\nOops: bad input (line 3: raise Oops('bad input'))",  # user-defined
    "Error (line 2: raise Error)",  # user-defined, a name that printed text also uses
    "ValueError: line one\nline two (snippet 4, line 2: raise ValueError('line one\\nline two'))",
    "KeyboardInterrupt (line 1: raise KeyboardInterrupt)",
    "SystemExit",
    "timed out after 3 s; names defined before this snippet are lost",
    "x\nthe sandbox process was killed (SIGKILL: out of memory, or killed from outside); names defined before this snippet are lost",
    "SandboxError: the attribute '__name__' (dunder attributes) is not allowed in the sandbox (line 4: print(e.__name__))",
    "could not load variables: UnpicklingError: bad",
]
PRINTED_BLOCKS = [  # ordinary printed output
    "42", "Error: 0.001", "Warning: slow convergence", "KeyError: 3\nbut we handled it", "ValueError is raised when",
    "Errors: 0", "Timeout: none", "(no output)", "x: 5 (line 3)",
]


@pytest.mark.parametrize("block", ERROR_BLOCKS)
def test_error_blocks_in_the_executor_format(block):
    assert shows_error(block)


@pytest.mark.parametrize("block", PRINTED_BLOCKS)
def test_printed_output_is_not_an_error(block):
    assert not shows_error(block)


def test_error_rule_is_linear_on_hostile_lines():
    # only a bounded tail of the last line is searched for the location
    assert not shows_error(" (line 1: " * 200_000)
    assert shows_error("x" * 1_000_000 + "\nAError: " + "(" * 100_000)


def test_error_rule_matches_the_real_executor():
    """Every failure below comes from executor.Sandbox itself; shows_error must agree with
    ExecResult.ok on each block, as the rollout inserts it (protocol.format_result)."""
    executor = pytest.importorskip("executor")
    snippets = [
        "it = iter([])\nnext(it)",  # StopIteration, no message
        "from sympy import ZZ, QQ\nZZ.convert(QQ(1, 2))",  # sympy's CoercionFailed
        "class Oops(Exception): pass\nprint(7)\nraise Oops('bad input')",  # user-defined
        "class Error(Exception): pass\nraise Error",
        "def f():\n    raise ValueError('line one\\nline two')",
        "f()",  # raised in an earlier snippet's function, a two-line message
        "print('KeyError: 3'); print('ok')",  # printed, not raised
        "print('ZeroDivisionError: caught it')\nprint(1)",
        "import os",  # rejected by the static check
        "x = (",  # does not parse
        "assert 1 == 2",
        "print(6 * 7)",
    ]
    with executor.Sandbox(timeout_s=10) as sb:
        results = [sb.run(code) for code in snippets]
    for code, r in zip(snippets, results):
        (block,) = output_blocks(format_result(r))
        assert shows_error(block) == (not r.ok), (code, r.error, block)
    assert [r.ok for r in results] == [False] * 4 + [True, False, True, True] + [False] * 3 + [True]


# ---------------------------------------------------------------------------
# The bare box
# ---------------------------------------------------------------------------

def test_bare_box_mention_is_not_the_answer():
    text = r"\boxed{4}. (I used \boxed for it.)"
    assert last_boxed(text) == "4" and rewards.final_answers(text) == ["4"]
    assert rewards.grade(text, "4") is True
    assert last_boxed(r"The answer is \boxed{4}; see \boxed.") == "4"  # a mention does not erase the answer
    assert last_boxed(r"We use \boxed a lot.") is None
    # a bare box with a plausible answer still counts, and is the last answer written
    assert last_boxed(r"\boxed 7") == "7" and last_boxed(r"\boxed{4}, no: \boxed 5") == "5"
    assert last_boxed(r"so \boxed C.") == "C" and last_boxed(r"\boxed -3$") == "-3"
    assert last_boxed(r"\boxed {12}") == "12"  # TeX allows spaces before the brace
    assert last_boxed(r"\boxed12") == "12" and last_boxed(r"\boxedA") is None  # TeX: a digit ends the name
    assert rewards.grade(r"First \boxed{3}. Hmm, \boxed for emphasis: \boxed 5.", "3") is False  # the last answer is 5


def test_bare_box_scan_is_linear():
    # many mentions that are not boxes: each is skipped once (no rescans)
    text = r"\boxed{3}" + r" \boxed for" * 100_000
    assert last_boxed(text) == "3"
    assert last_boxed(r"\boxed   " * 100_000) is None


def test_bench_grader_smoke(data_dir):
    """bench/grader.py (docs/rewards.md's grading-time figures) runs and ends with its RESULT line."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "grader.py"), "--limit", "5"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT grade_ms_p50=") and " grade_ms_max=" in last and last.endswith("n=5 correct=5")


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------

def test_weights_default_to_the_released_config():
    assert rewards.REWARD_WEIGHTS == {"accuracy_reward": 0.1, "code_use_reward": 1.0}
    funcs, weights = rewards.reward_funcs_and_weights()
    assert funcs == [rewards.accuracy_reward, rewards.code_use_reward]
    assert weights == [0.1, 1.0]


def test_weights_configurable():
    funcs, weights = rewards.reward_funcs_and_weights({"code_use_reward": 0.5}, only_successful=True, cap=2)
    assert weights == [0.1, 0.5]
    assert funcs[1].keywords == {"only_successful": True, "cap": 2}
    with pytest.raises(ValueError, match="unknown"):
        rewards.reward_funcs_and_weights({"length_reward": 1.0})


# ---------------------------------------------------------------------------
# Oracle: benchmark golds
# ---------------------------------------------------------------------------

def _wrong_value(answer: str) -> str:
    """A different value of the same shape: the first integer + 1, the next choice letter,
    or "+ 1" for answers without digits."""
    m = re.search(r"\d+", answer)
    if m:
        return answer[: m.start()] + str(int(m.group()) + 1) + answer[m.end():]
    m = re.fullmatch(r"\\text\{\(([A-E])\)\}", answer)
    if m:
        return r"\text{(%s)}" % "BCDEA"["ABCDE".index(m.group(1))]
    return answer + " + 1"


def _replace_last_box(solution: str, new: str) -> str:
    old = last_boxed(solution)
    start = max(solution.rfind("\\boxed"), solution.rfind("\\fbox"))
    brace = solution.index("{", start)
    assert solution[brace + 1: brace + 1 + len(old)] == old
    return solution[: brace + 1] + new + solution[brace + 1 + len(old):]


def test_oracle_math500(data_dir):
    rows = _rows(data_dir, "math500.jsonl")
    golds = [r["answer"] for r in rows]
    t0 = time.perf_counter()
    right = rewards.check_many([r["solution"] for r in rows], golds)
    wrong_texts = [_replace_last_box(r["solution"], _wrong_value(r["answer"])) for r in rows]
    wrong = rewards.check_many(wrong_texts, golds)
    seconds = time.perf_counter() - t0

    score = sum(v.correct is True for v in right) / len(rows)
    print(f"\nMATH-500 oracle: gold solutions {score:.1%} correct; wrong answers scored "
          f"{sum(v.correct is True for v in wrong)}/{len(rows)}; {2 * len(rows)} checks in {seconds:.1f} s")
    for r, v in zip(rows, right):
        if v.correct is not True:
            print(f"  FAIL {r['id']}: gold {r['answer']!r} -> {v}")
    for r, v in zip(rows, wrong):
        if v.correct is not False or v.status != "wrong":
            print(f"  WRONG ANSWER NOT REJECTED {r['id']}: {_wrong_value(r['answer'])!r} vs {r['answer']!r} -> {v}")
    assert score >= 0.995
    assert all(v.correct is False for v in wrong)


@pytest.mark.parametrize("name", ["aime2024.jsonl", "aime2024_matharena.jsonl", "aime2025.jsonl", "hmmt_feb2025.jsonl"])
def test_benchmark_golds_match_themselves(name, data_dir):
    rows = _rows(data_dir, name)
    verdicts = rewards.check_many([boxed(r["answer"]) for r in rows], [r["answer"] for r in rows])
    failed = [(r["id"], r["answer"], v.status) for r, v in zip(rows, verdicts) if v.correct is not True]
    assert not failed, failed


def test_hmmt_two_value_answer_needs_both_values(data_dir):
    rows = {r["id"]: r for r in _rows(data_dir, "hmmt_feb2025.jsonl")}
    gold = rows["hmmt_feb2025-10"]["answer"]
    first, second = [s.strip() for s in gold.split(", ")]
    assert rewards.grade(boxed(f"{second}, {first}"), gold) is True
    assert rewards.grade(boxed(first), gold) is False
    assert rewards.grade(boxed(second), gold) is False


def test_hle_gold_parse_share(data_dir):
    rows = _rows(data_dir, "hle_math.jsonl")
    with ThreadPoolExecutor(rewards.GRADER_PROCESSES) as ex:  # one thread per helper
        kinds = list(ex.map(rewards.gold_kind, [r["answer"] for r in rows]))
    share = {k: kinds.count(k) / len(rows) for k in ("sympy", "string", None)}
    print(f"\nHLE math golds ({len(rows)}): parsed by sympy {share['sympy']:.1%}, "
          f"exact-text only {share['string']:.1%}, unusable {share[None]:.1%}")
    assert share["sympy"] + share["string"] >= 0.9  # not required to be 100%


# ---------------------------------------------------------------------------
# Adversarial inputs: every call returns within the deadline
# ---------------------------------------------------------------------------

ADVERSARIAL = {
    "power tower 10^10^10": r"\boxed{10^{10^{10}}}",
    "power tower 9^9^9^9": r"\boxed{9^{9^{9^{9}}}}",
    "huge power": r"\boxed{9^{999999999}}",
    "huge factorial": r"\boxed{10000000!}",
    "20 nested parentheses": r"\boxed{" + "(" * 20 + "3" + ")" * 20 + "}",
    "a million nested braces": r"\boxed" + "{" * 1_000_000 + "3" + "}" * 1_000_000,
    "a million unclosed braces": r"\boxed" + "{" * 1_000_000,
    "unbalanced": r"\boxed{\frac{1}{2}",
    "stray closing braces": r"\boxed{3}}}}}{{{",
    "megabyte of text": "word " * 200_000 + r"\boxed{3}",
    "100k boxes": r"\boxed{3}" * 100_000,
    "20k unclosed tool calls": "<tool_call>" * 20_000 + r"\boxed{3}",
    "20k unclosed output blocks": "```output\nx" * 20_000 + r"\boxed{3}",
    "long answer": r"\boxed{" + "1+" * 1000 + "1}",
}
SHORT_DEADLINE_S = 1.0
"""The adversarial tests run with this deadline to keep the suite fast; the mechanism is the
same at any deadline, and test_grader_recovers_after_a_kill uses the default one."""
BOUND_S = 5.0
"""Generous: the deadline, plus the start of a replacement helper after the previous kill."""


@pytest.fixture
def short_deadline(monkeypatch):
    rewards.grade(r"\boxed{3}", "3")  # a helper is up, so no test pays the first start
    monkeypatch.setattr(rewards, "GRADE_TIMEOUT_S", SHORT_DEADLINE_S)


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_check_is_bounded(name, short_deadline):
    t0 = time.perf_counter()
    verdict = rewards.check(ADVERSARIAL[name], "3")
    elapsed = time.perf_counter() - t0
    assert elapsed < BOUND_S, f"{name}: {elapsed:.1f} s ({verdict})"
    assert verdict.correct in (True, False)


@pytest.mark.parametrize("name", ["20k unclosed tool calls", "megabyte of text", "20k unclosed output blocks"])
def test_adversarial_code_use_is_bounded(name, short_deadline):
    t0 = time.perf_counter()
    out = rewards.code_use_reward([ADVERSARIAL[name]])
    assert time.perf_counter() - t0 < BOUND_S
    assert out in ([0.0], [1.0])


def test_adversarial_text_is_parsed_not_timed_out(short_deadline):
    # the text scanners are linear now: these are read to the end and graded, not killed
    assert rewards.check(ADVERSARIAL["20k unclosed tool calls"], "3").status == "correct"
    assert rewards.check(ADVERSARIAL["20k unclosed output blocks"], "3").status == "correct"
    assert rewards.check(r"\boxed{" * 20_000, "3").status == "no_answer"
    zeros = {"snippets": 0, "trivial": 0, "outputs": 0, "errors": 0}
    assert rewards.count_calls(ADVERSARIAL["20k unclosed tool calls"]) == zeros
    assert rewards.count_calls("```python\n" * 10_000 + "<tool_call>x</tool_call>") == {**zeros, "snippets": 1}


def test_grader_recovers_after_a_kill():
    rewards.grade(r"\boxed{3}", "3")
    t0 = time.perf_counter()
    assert rewards.check(ADVERSARIAL["power tower 9^9^9^9"], "3").status == "timeout"  # default deadline
    assert time.perf_counter() - t0 < rewards.GRADE_TIMEOUT_S + 3.0
    assert rewards.check(r"\boxed{3}", "3").status == "correct"


def test_reward_from_a_non_main_thread(short_deadline):
    results, errors = [], []

    def work():
        try:
            results.append(rewards.accuracy_reward([r"\boxed{\frac43}", ADVERSARIAL["power tower 10^10^10"]],
                                                   answer=[r"\frac{4}{3}", "3"]))
        except BaseException as e:  # noqa: BLE001 -- reported to the main thread
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(2)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert results == [[1.0, 0.0]] * 2
    assert time.perf_counter() - t0 < 2 * BOUND_S
