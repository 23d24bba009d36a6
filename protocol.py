"""
protocol.py -- the agent interface as text: the prompts, delimiters, stop strings, output
blocks, the final answer, and the scanners that read them back out of a trace.

Paper ("Agent Interface", "In-context Learning"): while it reasons, the model may write an agent
call, a short Python snippet between delimiters; the sandbox's output is written back into the
same trace as an output block, and the answer is the trace's last \\boxed{}. An instruction and
four solved examples in the prompt teach the call syntax and the call/output pattern. This
module is that interface and nothing else: rollout.py and agent.py (MathAgent) generate with it,
rewards.py reads completions with it, evaluate.py and train.py build their prompts with it.

Why a module of its own: agent.py imports smolagents at import time when it is installed
(MathAgent subclasses its CodeAgent), and rewards.py must read traces in processes that load
no ML stack: the trainer's parent side and the grader helpers, which start often. This module
imports only the standard library (re, bisect, dataclasses, functools, pathlib; ast and
warnings inside is_trivial_snippet).

Data flow (who calls what):

  1. Generation stops on STOP_STRINGS; trailing_snippet() is the snippet a chunk ended with.
     close_chunk() puts back the stop string a text backend dropped and says how the chunk
     finished (MathAgent's smolagents models; rollout.py's backends report it on token ids).
  2. format_output() / format_result() render the output block inserted after it.
  3. find_snippets() lists every agent call of a whole trace (output blocks skipped);
     is_trivial_snippet() tells a call that holds no code (only comments, pass, constants),
     which rewards.code_use_reward does not pay for.
  4. last_boxed() is the answer: the last box outside output blocks. last_box() gives the
     same box with its position, for rewards.py's runs of boxes.
  5. output_blocks() and shows_error() count executed and failed calls from text alone
     (rewards.code_use_reward without rollout counts); strip_output_blocks() is the text the
     model wrote, with every output block removed.
  6. The knobs every entry point takes its defaults from (section "Knobs", just before the
     loop's rules): BACKENDS, MODES, LAYOUTS, Sampling, Budget, EVAL_SAMPLING, EVAL_BUDGET and
     derive_seed(), the one seed rule. Then the loop's rules, shared by rollout.py and
     agent.MathAgent: find_stop() (the one search for stop strings; stop_token() runs it
     over token ids for backends.py and rollout.py, cut_after_stop() cuts text at it),
     stop_strings() (which of them a budget generates with: none when max_steps is 0, the
     agent off), end_reason() (when a trajectory ends under its Budget; TRUNCATED names the
     ends the budget cut), and output_block() (the one truncation rule for executor output,
     in the model's tokens).
  7. The prompts every trajectory starts from (section "The prompts", last): build_messages(
     problem, mode, layout, examples, examples_file) -> chat messages: the instruction (prompts/
     agent_instruction.txt) and the solved examples (load_examples/shown_examples of
     prompts/examples.txt, or the file of prompts/ a recipe names) in the system prompt
     (system_prompt) or as earlier chat turns, then the problem; mode "baseline" is
     prompts/baseline.txt alone. read_prompt() reads a prompts/ file.

Scanning hostile text in linear time
------------------------------------
Model output is hostile input: RL can push a policy to write anything, e.g. ten thousand
unclosed "<tool_call>". The scanners find delimiters with str.find and never rescan the text
from each opener, as the lazy regexes they replace did (`<tool_call>(.*?)</tool_call>` took
21 s on "<tool_call>" * 10000; "```output\\n.*?\\n```" 21 s on "```output\\nx" * 20000). What
makes one pass enough: an opener with no closer after it means no later opener has one either,
so a scan stops at the first unclosed opener. The results are exactly those regexes' (leftmost
opener, nearest closer, non-overlapping, left to right); tests/test_agent.py checks both on
tricky and degenerate inputs. The regexes left here are anchored or have no lazy span, so each
is one pass too.

Departures from the paper:
  - ```python fences are accepted as agent calls too (alone, or inside a <tool_call>), because
    small models write them.
  - Our own instruction and examples (prompts/), not the paper's.
  - Layout of the examples: the paper says only that the prompt includes 4 solved examples.
    layout="system" (the default) writes them into the system prompt, after the instruction;
    layout="turns" gives them as earlier user/assistant turns instead, which is what makes the
    135M model this project runs offline call the tool correctly: bench/tool_use.py counts both
    (docs/agent.md, the tool-use table). Every reported result names its layout.

Tests: python -m pytest tests/test_agent.py -q -k "doctests or tricky or degenerate or snippet or boxed"
       python -m pytest tests/test_prompts.py -q
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

CALL_OPEN = "<tool_call>"
"""Opens an agent call. Qwen3's tokenizer has it as one special token (id 151657)."""
CALL_CLOSE = "</tool_call>"
"""Closes an agent call; generation stops here and the snippet is run."""

FENCE_OPEN_RE = re.compile(r"```(?:python|py)[ \t]*\n")
"""Markdown fences are accepted as well: ```python ... ``` (smolagents' "markdown" tags)."""
FENCE_CLOSE = "\n```\n"
"""A fence closes on its own line. The opening "```python" can never match this."""

STOP_STRINGS: tuple[str, ...] = (CALL_CLOSE, FENCE_CLOSE)
"""What every backend passes as stop strings (vLLM `SamplingParams.stop`, HF stop_strings)."""

OUTPUT_OPEN = "```output\n"
OUTPUT_CLOSE = "\n```\n"
EMPTY_OUTPUT = "(no output)"
"""Shown when a snippet printed nothing and displayed nothing, so the model sees that it ran."""

ERROR_LINE_RE = re.compile(
    # "NameError: ...", "StopIteration", "CoercionFailed: ...", "SandboxError: ...": an exception
    # name of the usual shapes (a bare "Error:" or "Warning:" is left to _ERROR_WHERE_RE)
    r"(?:[A-Za-z_]\w*?(?:Error|Exception|Exit|Interrupt|Iteration|Warning|Failed)(?=: | \(|\Z)"
    # the executor's own messages: a timeout, a dead worker, a failed variable load
    r"|timed out after \d|the sandbox process |could not load variables: )"
)
"""The start of an error line in executor.py's formats (ExecResult.error), matched at the start
of an output block's last line. format_output() puts the error after the printed text, so an
error always ends the block."""
_ERROR_WHERE_RE = re.compile(r" \((?:snippet \d+, )?line \d+: [^\n]*\)\Z")
"""Where executor.describe() says the exception happened: " (line N: <source line>)", or
" (snippet K, line N: ...)" in an earlier snippet's function. It ends every exception raised
while the snippet ran, whatever the exception's name (user-defined ones too)."""
_ERROR_WHERE_MAX = 300
"""The location is at most about 240 characters (a source line is cut to 200): only this tail
of the last line is searched, so the check is linear however long the line."""

# A closing fence is "\n```" followed by a newline or the end of the text; an output block also
# ends at a bare "\n```" (whatever follows it), as the model sees it closed there.
_FENCE_END = "\n```"
# A fence that wraps a call's whole body: ``` with an optional language, blanks, a newline.
_INNER_OPEN_RE = re.compile(r"```(?:python|py)?[ \t]*\n")
# "\boxed 7": a box without braces counts only when what follows is a plausible answer: a
# number (up to the next space or $) or one capital letter (a choice). Matched at one position.
_BARE_BOX_RE = re.compile(r"[-+]?\d[^\s$]*|[A-Z](?![\w\\{])")
_DIGITS = tuple("0123456789")


# ---------------------------------------------------------------------------
# The scanners: (start, body start, body end, end) of each block, left to right
# ---------------------------------------------------------------------------

def _spans(text: str, opener: str, closer: str, eat_newline: bool = False):
    """Each opener ... nearest closer, left to right, non-overlapping: what the lazy regex
    `opener(.*?)closer` matched, in one pass (a nested opener is part of the body)."""
    pos = 0
    while (start := text.find(opener, pos)) != -1:
        body = start + len(opener)
        close = text.find(closer, body)
        if close == -1:  # unclosed: no later opener has a closer either
            return
        end = close + len(closer)
        if eat_newline:
            end += text.startswith("\n", end)
        yield start, body, close, end
        pos = end


def _output_spans(text: str):
    """Output blocks: OUTPUT_OPEN, the body, then "\\n```" and one optional newline."""
    return _spans(text, OUTPUT_OPEN, _FENCE_END, eat_newline=True)


def _call_spans(text: str):
    """<tool_call> ... </tool_call>."""
    return _spans(text, CALL_OPEN, CALL_CLOSE)


def _fence_close(text: str, pos: int) -> int:
    """The first "\\n```" at or after pos that ends its line (newline or end of text), or -1."""
    close = text.find(_FENCE_END, pos)
    while close != -1:
        after = close + len(_FENCE_END)
        if after == len(text) or text[after] == "\n":
            return close
        close = text.find(_FENCE_END, close + 1)
    return -1


def _fence_spans(text: str):
    """```python / ```py fences. The end excludes the newline after the closing ```, which the
    old pattern only looked ahead at: the next block may start on that newline."""
    pos = 0
    # FENCE_OPEN_RE has no lazy span: a search costs one pass over the text it skips
    while (m := FENCE_OPEN_RE.search(text, pos)) is not None:
        close = _fence_close(text, m.end())
        if close == -1:  # unclosed: no later opener has a closer either
            return
        end = close + len(_FENCE_END)
        yield m.start(), m.end(), close, end
        pos = end


# ---------------------------------------------------------------------------
# Agent calls
# ---------------------------------------------------------------------------

def _clean(code: str) -> str:
    """A call's body without the ```python fence small models wrap it in (when the fence
    wraps all of it), and without blank lines around it."""
    head = len(code) - len(code.lstrip())
    tail = code.rstrip()
    m = _INNER_OPEN_RE.match(code, head)
    close = len(tail) - 3  # the closing ``` must end the body, only whitespace after it
    if m and tail.endswith("```") and close >= m.end():
        # one newline before the closing ``` belongs to the fence, not to the code
        end = close - 1 if close > m.end() and code[close - 1] == "\n" else close
        code = code[m.end(): end]
    return code.strip("\n")


def find_snippets(text: str) -> list[str]:
    """Every agent call in a trace, in order (executor output blocks are skipped).

    A ```python fence that starts inside a <tool_call> was taken with that call. Blank calls
    are not snippets.

    >>> find_snippets("a <tool_call>\\nx = 2\\n</tool_call> b ```python\\nprint(x)\\n```\\n")
    ['x = 2', 'print(x)']
    >>> find_snippets("no calls, just \\\\boxed{4}")
    []
    """
    text = strip_output_blocks(text)
    calls = list(_call_spans(text))
    found = [(start, _clean(text[body:close])) for start, body, close, _ in calls]
    starts = [c[0] for c in calls]
    for start, body, close, _ in _fence_spans(text):
        # calls are sorted and disjoint: only the last one opened before this fence can hold it
        k = bisect_right(starts, start) - 1
        if k < 0 or start >= calls[k][3]:
            found.append((start, _clean(text[body:close])))
    found.sort(key=lambda f: f[0])  # a call and a fence never start at the same place
    return [code for _, code in found if code.strip()]


def trailing_snippet(chunk: str) -> str | None:
    """The snippet a generation chunk *ended with*, or None.

    A chunk is what the model produced since the last executor output. The backend stopped
    it on one of STOP_STRINGS; vLLM stop strings need not fall on token boundaries, so up to
    one token of text may follow the delimiter (usually whitespace), which is tolerated.

    >>> trailing_snippet("Let me compute.\\n<tool_call>\\nprint(17*23)\\n</tool_call>")
    'print(17*23)'
    >>> trailing_snippet("```python\\nprint(1)\\n```\\n")
    'print(1)'
    >>> trailing_snippet("So the answer is \\\\boxed{391}.") is None
    True
    >>> trailing_snippet("```output\\n391\\n```\\n") is None   # not a python fence
    True
    """
    tail = chunk.rstrip()
    if tail.endswith(CALL_CLOSE):
        start = tail.rfind(CALL_OPEN)
        if start == -1:
            return None
        code = _clean(tail[start + len(CALL_OPEN): -len(CALL_CLOSE)])
        return code if code.strip() else None  # as in find_snippets: a blank call is no snippet
    if tail.endswith("```"):
        body = tail[:-3]
        opens = list(FENCE_OPEN_RE.finditer(body))
        if not opens:
            return None
        last_open = opens[-1]
        code = body[last_open.end():]
        # another fence (```output, ```latex, a bare ```) opened after it: not a python block
        if "```" in code:
            return None
        code = code.strip("\n")
        return code if code.strip() else None
    return None


def is_trivial_snippet(code: str, max_chars: int = 20_000) -> bool:
    """Is this agent call no code at all? Only whitespace, comments, `pass`, `...`, or bare
    constants: a number, a string or docstring, None/True/False, signed numbers, and tuples,
    lists, sets and dicts of them.

    The paper rewards generating code snippets; a call like these computes nothing, so
    rewards.code_use_reward does not pay for it. A snippet that does not parse is NOT trivial:
    it is an attempt that failed (the executor reports a SyntaxError), and counts as an error.
    Nor is a snippet over max_chars: the default is executor.MAX_CODE_CHARS (20,000; a test
    keeps the two equal, protocol.py imports no sibling), over which the executor rejects the
    snippet as an error without parsing it, so it is not parsed here either.

    Safe on hostile text: one ast.parse (linear in the snippet, at most max_chars), then a walk
    with an explicit stack; deep nesting raises SyntaxError, RecursionError or MemoryError in
    the parser, each of which means "not trivial". Warnings the parser emits (e.g. for "\\d" in
    a string) are silenced with warnings.catch_warnings(), which touches process-wide state:
    rewards.py calls this only in its single-threaded grader helpers.

    >>> [is_trivial_snippet(s) for s in ["# just a comment", "pass", "...", "'plan: add'", " \\n", "-1, 'a'"]]
    [True, True, True, True, True, True]
    >>> [is_trivial_snippet(s) for s in ["print(1)", "x = 1", "1 + 1", "x", "f(", "import math"]]
    [False, False, False, False, False, False]
    """
    import ast  # stdlib, imported here: only the grader helpers need it
    import warnings

    if len(code) > max_chars:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(code)
    except Exception:  # SyntaxError, ValueError (a null byte), RecursionError, MemoryError
        return False
    stack: list = []
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr):
            stack.append(stmt.value)
        elif not isinstance(stmt, ast.Pass):
            return False
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Constant):
            continue
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            stack.append(node.operand)
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            stack.extend(node.elts)
        elif isinstance(node, ast.Dict) and None not in node.keys:  # None: a ** unpacking
            stack.extend(node.keys)
            stack.extend(node.values)
        else:
            return False
    return True


# ---------------------------------------------------------------------------
# Output blocks
# ---------------------------------------------------------------------------

def format_output(stdout: str, error: str | None = None) -> str:
    """The block inserted into the trace after an agent call: exactly what the model sees.

    >>> format_output("391\\n")
    '\\n```output\\n391\\n```\\n'
    >>> format_output("", "NameError: name 'y' is not defined (line 1: print(y))")
    "\\n```output\\nNameError: name 'y' is not defined (line 1: print(y))\\n```\\n"
    >>> format_output("")
    '\\n```output\\n(no output)\\n```\\n'
    """
    body = stdout.rstrip("\n")
    if error:
        body = f"{body}\n{error}" if body else error
    return "\n" + OUTPUT_OPEN + (body or EMPTY_OUTPUT) + OUTPUT_CLOSE


def format_result(result) -> str:
    """format_output for an executor.ExecResult (anything with .stdout and .error)."""
    return format_output(result.stdout, result.error)


def output_blocks(text: str) -> list[str]:
    """The body of every output block in text, in order. A block whose closing fence is
    missing is not a block.

    >>> output_blocks("<tool_call>\\nprint(1)\\n</tool_call>\\n```output\\n1\\n```\\nand ```output\\nx")
    ['1']
    """
    return [text[body:close] for _, body, close, _ in _output_spans(text)]


def strip_output_blocks(text: str) -> str:
    """text without its output blocks: what the model itself wrote (and a few newlines).

    >>> strip_output_blocks("a\\n```output\\n\\\\boxed{7}\\n```\\nb")
    'a\\nb'
    """
    parts, pos = [], 0
    for start, _, _, end in _output_spans(text):
        parts.append(text[pos:start])
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


def shows_error(block: str) -> bool:
    """Does an output block's body show an error? Read from text, in executor.py's formats.

    format_output() appends the executor's error (ExecResult.error) after the printed text, so
    the block's LAST line shows it: its start matches ERROR_LINE_RE ("NameError: ...",
    "StopIteration", "timed out after 5 s; ..."), or it ends with the executor's location
    " (line N: <source>)" (any exception raised while the snippet ran, user-defined names and
    messages over several lines included). Printed text before the last line is not read, so a
    snippet printing "KeyError: 3" and then more output does not count as failed.

    What text alone cannot tell (so callers that have the executor's structured result, e.g.
    rollout.py's per-snippet ExecResult.ok, should count from it instead): a snippet whose own
    LAST printed line looks like an error (printing a caught exception, "ValueError: ...") reads
    as failed; an error too long to fit the output budget by itself (output_block() then cuts
    it), or one with a multi-line message and no location (raised outside the snippet's
    lines), reads as success; and a block the model wrote itself is read like a real one.

    >>> shows_error("NameError: name 'y' is not defined (line 1: print(y))"), shows_error("42")
    (True, False)
    >>> shows_error("StopIteration (line 2: next(it))"), shows_error("CoercionFailed: cannot convert")
    (True, True)
    >>> shows_error("7\\nOops: bad input (line 3: raise Oops('bad input'))")   # user-defined
    True
    >>> shows_error("Error: 0.001\\nWarning: slow"), shows_error("ValueError: x\\nbut it was caught")
    (False, False)
    """
    body = block.rstrip()
    last = body[body.rfind("\n") + 1:]
    return (ERROR_LINE_RE.match(last) is not None
            or _ERROR_WHERE_RE.search(last, max(0, len(last) - _ERROR_WHERE_MAX)) is not None)


# ---------------------------------------------------------------------------
# The final answer
# ---------------------------------------------------------------------------

def last_box(text: str) -> tuple[int, int, str] | None:
    """The last box of text as (start, end, content), or None when there is none or the last
    braced one is unbalanced. Output blocks are NOT skipped here (last_boxed() does that):
    positions are those of the text given.

    A box is ``\\boxed{...}`` or ``\\fbox{...}`` (braces balanced; spaces may precede the
    brace). A bare ``\\boxed 7`` (or ``\\boxed7``) holds no braces, so it is read only when what
    follows is a plausible answer: a number (up to the next space or $; the grader drops a
    trailing period) or one capital letter (a multiple-choice answer). Anything else after a
    bare \\boxed (a word, a period, another command) is prose about the macro, not an answer,
    and the box before it is read instead. Not gameable: it is still one answer, the last one written; a mention of the
    macro cannot turn a boxed answer into "no answer" or into the word that follows it.

    >>> text = r"so \\boxed{\\frac{4}{3}}."
    >>> last_box(text), text[3:22]
    ((3, 22, '\\\\frac{4}{3}'), '\\\\boxed{\\\\frac{4}{3}}')
    >>> last_box(r"\\boxed{4}. (I used \\boxed for it, not \\boxed.)")
    (0, 9, '4')
    >>> [last_box(t)[2] for t in (r"\\boxed 7.", r"\\boxed{1} then \\boxed -2/3$", r"\\boxed C", r"\\boxed {5}", r"\\boxed12")]
    ['7.', '-2/3', 'C', '5', '12']
    >>> last_box(r"we write \\boxed a lot") is None
    True
    """
    # the nearest \boxed and \fbox at or before the current one, each searched for once per
    # mention skipped: one pass back over the text in all
    boxed, fbox = text.rfind("\\boxed"), text.rfind("\\fbox")
    while True:
        start = max(boxed, fbox)
        if start == -1:
            return None
        name_end = start + (6 if text.startswith("\\boxed", start) else 5)
        i = name_end
        while i < len(text) and text[i] == " ":  # the spaces of one mention: each read once
            i += 1
        if i < len(text) and text[i] == "{":  # braced: the last one decides, balanced or not
            depth = 0
            for j in range(i, len(text)):
                c = text[j]
                if c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                    if depth == 0:
                        return start, j + 1, text[i + 1: j]
            return None
        # "\boxed 7", or "\boxed7" (TeX ends the command name at the digit); never "\boxedA"
        if (i > name_end or text.startswith(_DIGITS, i)) and (m := _BARE_BOX_RE.match(text, i)):
            return start, m.end(), m.group()
        # a mention of the macro, not a box: look further back
        if start == boxed:
            boxed = text.rfind("\\boxed", 0, start)
        else:
            fbox = text.rfind("\\fbox", 0, start)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in text, braces balanced.

    Output blocks are ignored: a number printed by the executor is not an answer.

    >>> last_boxed(r"first \\boxed{1}, then \\boxed{\\frac{4}{3}}.")
    '\\\\frac{4}{3}'
    >>> last_boxed(r"\\boxed 7")
    '7'
    >>> last_boxed("no box") is None
    True
    >>> last_boxed(r"\\boxed{unbalanced") is None
    True
    """
    box = last_box(strip_output_blocks(text))
    return None if box is None else box[2]


# ---------------------------------------------------------------------------
# Knobs: every sampling setting, agent budget, name set and seed rule, defined once here
# ---------------------------------------------------------------------------
# Each entry point (agent.py, rollout.py, evaluate.py, train.py where TRL does not own the flag,
# replicate.py) takes its defaults from these, so a default changes in one place.

BACKENDS = ("vllm", "transformers", "openai")
"""--backend everywhere: an in-process vLLM engine, transformers `generate` (runs anywhere), or a
running vLLM OpenAI-compatible server."""
MODES = ("agent", "baseline")
"""agent: snippets run and their output is folded in; baseline: the same model, no agent."""
LAYOUTS = ("system", "turns")
"""Where the solved examples go: the system prompt (the paper's layout) or earlier chat turns."""


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one rollout. The defaults are plain sampling from the model's
    distribution (vLLM's SamplingParams defaults; TRL's GRPOConfig samples at temperature 1.0
    too); EVAL_SAMPLING holds the paper's inference settings. temperature 0 means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k (vLLM and transformers alike; transformers would default to 50)."""
    seed: int | None = None
    """Makes a rollout reproducible; each sequence and step derives its own seed (derive_seed)."""


@dataclass(frozen=True)
class Budget:
    """Limits on one trajectory. The defaults are training's: the paper caps GRPO completions
    at 5k tokens; max_steps and max_output_tokens are ours (the paper gives neither). EVAL_BUDGET
    holds the evaluation's."""

    max_tokens: int = 5000
    """Total completion tokens: model tokens plus inserted executor output."""
    max_steps: int = 50
    """Agent calls per trajectory; the chunk that would start call max_steps+1 ends it (ours:
    training's default, recipes/deepmath.yaml; short problems make a handful of calls).
    0 turns the agent off (the paper's non-agent rows, Baseline and +GRPO): stop_strings() is
    then empty, so the model generates straight through, a code block it writes included, to
    EOS or max_tokens, and nothing is run."""
    max_output_tokens: int = 256
    """Executor output tokens inserted per call (longer blocks are cut, with a marker: output_block)."""


EVAL_SAMPLING = Sampling(temperature=0.6, top_p=0.95, top_k=20)
"""The paper evaluates Qwen3-4B-Thinking-2507 and its fine-tune: its model card's Best Practices
for thinking mode (temperature 0.6, top_p 0.95, top_k 20)."""

EVAL_BUDGET = Budget(max_tokens=32768, max_steps=20, max_output_tokens=256)
"""Evaluation limits: 32,768 output tokens (the model card's length for most queries), 20 agent
calls (smolagents' MultiStepAgent default; the paper's inference runs on smolagents), and
executor output per call as in training (Budget's default)."""


def derive_seed(seed: int | None, *keys) -> int | None:
    """The one seed rule: the seed of whatever `keys` name (a problem id and sample index, a
    trajectory and call, a rank) under a run's seed. A hash of both, so two keys never share a
    random stream and a seed depends on its own keys only, never on a batch or its order; 31
    bits, which every sampler accepts. None stays None (an unseeded run).

    >>> derive_seed(0, "a", 1) == derive_seed(0, "a", 1) != derive_seed(0, "a", 2), derive_seed(None, 1)
    (True, None)
    >>> 0 <= derive_seed(7, 3) < 2**31
    True
    """
    if seed is None:
        return None
    import hashlib  # stdlib, imported here: the scanners above need none of it
    import json

    digest = hashlib.sha256(json.dumps([seed, *keys]).encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1


# ---------------------------------------------------------------------------
# The loop's rules: where a chunk stops, when a trajectory ends, how output is cut
# ---------------------------------------------------------------------------
# Used alike by rollout.py (training and batched evaluation, on token ids) and agent.py's
# MathAgent (smolagents), so that both show the model the same thing.

FINISH_EOS, FINISH_STOP, FINISH_LENGTH = "eos", "stop_string", "length"
"""How a backend's generation chunk finished: end-of-sequence token, one of STOP_STRINGS, or max tokens."""


def find_stop(text: str, stop=STOP_STRINGS, start: int = 0) -> int | None:
    """Where the first stop string of text ends, counting only those that end after `start`
    (text[:start] was already searched), or None. The one stop-string search of the project:
    backends without a stop reason and the rollout's checks across calls both call it.

    >>> find_stop("a</tool_call>\\n b"), find_stop("```python\\nx\\n```\\n more")
    (13, 16)
    >>> find_stop("x</tool_call> y </tool_call>", start=13), find_stop("no stop") is None
    (28, True)
    >>> find_stop("x</tool_" + "call>.", start=8)   # begun before start, completed after it
    13
    """
    ends = [i + len(s) for s in stop if (i := text.find(s, max(0, start - len(s) + 1))) != -1]
    return min(ends) if ends else None


def cut_after_stop(text: str, stop=STOP_STRINGS) -> str | None:
    """text up to and including the first stop string in it, or None if there is none.

    >>> cut_after_stop("a</tool_call>\\n b", ["</tool_call>"])
    'a</tool_call>'
    >>> cut_after_stop("no stop", ["</tool_call>"]) is None
    True
    """
    end = find_stop(text, stop)
    return None if end is None else text[:end]


def stop_window(stop=STOP_STRINGS) -> int:
    """Tokens enough to hold any stop string: each token of an ASCII stop string carries at
    least one of its characters (a few more for tokens that decode to nothing)."""
    return max((len(s) for s in stop), default=0) + 4


def stop_token(tokenizer, ids, stop=STOP_STRINGS, before: str = "") -> int | None:
    """The index of the token of `ids` that completes the first stop string ending in their
    text, or None: find_stop over token ids, for backends that do not report where they stopped
    (backends._finish_from_ids) and for a stop string split across two calls (rollout.py).
    `before` is the model text just before these ids (a stop string may begin there: "</tool_"
    + "call>."); one wholly inside it does not count. `tokenizer` is the model's (anything with
    decode(ids, skip_special_tokens=True)); this module stays stdlib-only. Linear: one decode of
    the whole, then, where a stop string is there, a window of stop_window tokens per token
    (find_stop on each).

    >>> from types import SimpleNamespace as NS
    >>> chars = NS(decode=lambda ids, skip_special_tokens=True: "".join(map(chr, ids)))
    >>> ids = [ord(c) for c in "call>. more"]
    >>> stop_token(chars, ids, ["</tool_call>"], before="x</tool_"), stop_token(chars, ids, ["</tool_call>"])
    (4, None)
    """
    if not stop:  # no stop strings (the agent off): nothing can complete one
        return None
    width = max(len(s) for s in stop)
    tail = before[max(0, len(before) - (width - 1)):] if width > 1 else ""
    if find_stop(tail + tokenizer.decode(list(ids), skip_special_tokens=True), stop, start=len(tail)) is None:
        return None
    window = stop_window(stop)
    for j in range(len(ids)):
        lo = max(0, j + 1 - window)
        head = tail if lo == 0 else ""
        if find_stop(head + tokenizer.decode(list(ids[lo: j + 1]), skip_special_tokens=True), stop,
                     start=len(head)) is not None:
            return j
    return None


def stop_strings(budget: Budget) -> tuple[str, ...]:
    """The stop strings a trajectory under this budget generates with: STOP_STRINGS while it may
    make agent calls, none when max_steps is 0. Without an agent, a closing fence or
    </tool_call> is just text: stopping there would end the trace at its first code block,
    unanswered (what baseline mode did before issue 17), where the paper's non-agent inference
    generates straight through. The one place this is decided; rollout() asks it by default.

    >>> stop_strings(Budget()) == STOP_STRINGS, stop_strings(Budget(max_steps=0))
    (True, ())
    """
    return STOP_STRINGS if budget.max_steps > 0 else ()


# ---------------------------------------------------------------------------
# How a chunk finished: the stop string a backend dropped, put back
# ---------------------------------------------------------------------------
# Text-level, for backends that return text (MathAgent's smolagents models); rollout.py's
# backends report the finish on token ids.

_FENCE_OPENER_RE = re.compile(r"```[\w+.-]*[ \t]*\n")
"""A ``` that opens a fenced block (```python, ```latex, a bare ```), up to its newline."""


def _ends_in_open_fence(text: str) -> bool:
    """Does text end inside a fenced block? One pass over its ```: closed, an opener
    (_FENCE_OPENER_RE) opens; open, a ``` on its own line (newline before, newline or the end
    after) closes; any other ``` is prose.

    >>> _ends_in_open_fence("a\\n```python\\nx"), _ends_in_open_fence("```output\\n1\\n```\\nok ```")
    (True, False)
    """
    is_open, pos = False, text.find("```")
    while pos != -1:
        if not is_open:
            is_open = _FENCE_OPENER_RE.match(text, pos) is not None
        elif text[pos - 1: pos] == "\n" and text[pos + 3: pos + 4] in ("\n", ""):
            is_open = False
        pos = text.find("```", pos + 3)
    return is_open


UNKNOWN = object()
"""close_chunk's stop_reason when the backend did not say how the chunk ended."""


def close_chunk(text: str, length: bool = False, stop_reason=UNKNOWN) -> tuple[str, str]:
    """Put back the stop string a backend left out, and say how the chunk finished.

    transformers, vLLM and the OpenAI API all stop on STOP_STRINGS and return the text
    *without* the stop string. `length` says the backend ran out of tokens, which wins.
    Otherwise the backend's own stop reason decides where it says one (vLLM's `stop_reason`:
    the stop string it matched, or None when the model ended with EOS): see
    agent.MathAgent._finish_of.

    smolagents' TransformersModel and VLLMModel report no reason. Then a text rule, exact for
    our own delimiters: the chunk stopped on FENCE_CLOSE if it ends inside a fenced block
    (```python, ```latex, ...; whether it runs is trailing_snippet's call), on
    CALL_CLOSE if it ends inside a <tool_call> (the last one, with no </tool_call> after it)
    holding a non-blank snippet; otherwise the model ended (EOS). A stray ``` in prose, or an
    odd number of them, is no fence. What text cannot tell: a chunk that ENDS with EOS
    inside an open fence or right after "<tool_call>\\ncode" reads as stopped; with a stop
    reason it does not.

    >>> close_chunk("Compute.\\n<tool_call>\\nprint(17*23)\\n")
    ('Compute.\\n<tool_call>\\nprint(17*23)\\n</tool_call>', 'stop_string')
    >>> close_chunk("```python\\nprint(1)")
    ('```python\\nprint(1)\\n```\\n', 'stop_string')
    >>> close_chunk("So the answer is \\\\boxed{391}.")
    ('So the answer is \\\\boxed{391}.', 'eos')
    >>> close_chunk("<tool_call>\\nprint(", length=True)
    ('<tool_call>\\nprint(', 'length')
    >>> close_chunk("Use ``` to open a block; the answer is \\\\boxed{2}.")   # a stray fence
    ('Use ``` to open a block; the answer is \\\\boxed{2}.', 'eos')
    >>> close_chunk("I would use <tool_call>\\nprint(1)\\n", stop_reason=None)   # the backend says EOS
    ('I would use <tool_call>\\nprint(1)\\n', 'eos')
    >>> close_chunk("<tool_call>\\nprint(1)\\n", stop_reason=CALL_CLOSE)
    ('<tool_call>\\nprint(1)\\n</tool_call>', 'stop_string')
    """
    if length:
        return text, FINISH_LENGTH
    if stop_reason is not UNKNOWN:
        if isinstance(stop_reason, str) and stop_reason in STOP_STRINGS:
            return (text if text.endswith(stop_reason) else text + stop_reason), FINISH_STOP
        return text, FINISH_EOS  # None (EOS) or a stop token id
    if _ends_in_open_fence(text):
        return text + FENCE_CLOSE, FINISH_STOP  # a fence is open: FENCE_CLOSE closed it
    start = text.rfind(CALL_OPEN)
    if start != -1 and text.find(CALL_CLOSE, start) == -1:
        if trailing_snippet(text + CALL_CLOSE) is not None:
            return text + CALL_CLOSE, FINISH_STOP
    return text, FINISH_EOS


# ---------------------------------------------------------------------------
# When a trajectory ends, how executor output is cut
# ---------------------------------------------------------------------------

TRUNCATED: tuple[str, ...] = ("max_steps", "max_tokens")
"""The end reasons of a trajectory the budget cut (the step budget or the token budget), as
opposed to "answer" and "no_snippet", which ended with the model's own EOS. Every budget cut is a
truncation: evaluate.py's truncation_rate counts these."""


def end_reason(chunk: str, finish: str, steps: int, n_tokens: int, budget: Budget) -> str | None:
    """Why the trajectory ends after this chunk, or None to go on generating.

    finish is FINISH_EOS, FINISH_STOP or FINISH_LENGTH; steps counts the agent calls already
    executed; n_tokens the completion tokens so far (model and executor tokens).
    When this returns None, `trailing_snippet(chunk)` is the snippet to run; it is None when
    the chunk stopped on a closing fence of some other block (```latex ... ```), and then
    generation simply continues with nothing inserted.
    A chunk that ended with EOS is "answer" or "no_snippet" even when it used up the budget:
    the model finished on its own, nothing was cut. The budget ends a trajectory only when
    something else would follow: more text (FINISH_LENGTH) or a snippet run (FINISH_STOP).

    >>> b = Budget(max_tokens=100, max_steps=2)
    >>> call = "<tool_call>\\nprint(1)\\n</tool_call>"
    >>> end_reason(call, FINISH_STOP, 0, 10, b) is None
    True
    >>> end_reason(r"so \\boxed{1}", FINISH_EOS, 1, 10, b)
    'answer'
    >>> end_reason("I give up.", FINISH_EOS, 1, 10, b)
    'no_snippet'
    >>> end_reason(call, FINISH_STOP, 2, 10, b)
    'max_steps'
    >>> end_reason(call, FINISH_LENGTH, 0, 100, b)
    'max_tokens'
    >>> end_reason(r"so \\boxed{1}", FINISH_EOS, 1, 100, b)   # EOS on the budget's last token
    'answer'
    >>> end_reason("```latex\\nx^2\\n```\\n", FINISH_STOP, 0, 10, b) is None
    True
    """
    if finish == FINISH_EOS:  # before the budget: the model ended by itself, nothing was cut
        return "answer" if last_boxed(chunk) is not None else "no_snippet"
    if finish == FINISH_LENGTH or n_tokens >= budget.max_tokens:
        return "max_tokens"
    if trailing_snippet(chunk) is not None and steps >= budget.max_steps:
        return "max_steps"
    return None


TRUNCATION_MARKER = "\n... (output truncated)"
"""Ends an output block cut to Budget.max_output_tokens, so the model knows."""


def output_block(result, tokenizer, max_tokens: int) -> tuple[str, list[int]] | None:
    """The block inserted after a snippet, cut to max_tokens tokens of the model's tokenizer:
    the ONE truncation rule, used by rollout.py (which inserts the ids) and MathAgent (which
    inserts the text), so training and inference show the model the same block.

    The block is format_result(result) tokenised alone. When it is over max_tokens, the printed
    text is cut: its head, then TRUNCATION_MARKER, then the error whole (format_output puts it
    last, where the model and shows_error look for it), then the closing fence, so the model
    still sees a well-formed block and its error. Only an error that does not fit by itself is
    cut too (its head, then the marker). Returns None when not even an empty truncated block
    fits (the caller then ends the trajectory rather than insert half a block). `tokenizer`
    needs encode(text, add_special_tokens=False) and decode(ids, skip_special_tokens=True).

    >>> from types import SimpleNamespace as NS
    >>> chars = NS(encode=lambda t, add_special_tokens=False: [ord(c) for c in t],
    ...            decode=lambda ids, skip_special_tokens=True: "".join(map(chr, ids)))
    >>> output_block(NS(stdout="391\\n", error=None), chars, 64)[0]
    '\\n```output\\n391\\n```\\n'
    >>> block, ids = output_block(NS(stdout="x" * 100, error=None), chars, 48)
    >>> block, len(ids)
    ('\\n```output\\nxxxxxxxxx\\n... (output truncated)\\n```\\n', 48)
    >>> output_block(NS(stdout="x" * 100, error="ZeroDivisionError: division by zero (line 9: 1/0)"), chars, 100)[0]
    '\\n```output\\nxxxxxxxxxxx\\n... (output truncated)\\nZeroDivisionError: division by zero (line 9: 1/0)\\n```\\n'
    """
    block = format_result(result)
    ids = tokenizer.encode(block, add_special_tokens=False)
    if len(ids) <= max_tokens:
        return block, ids
    error = result.error
    made = _fit(lambda head: format_output(head + TRUNCATION_MARKER, error), result.stdout.rstrip("\n"),
                tokenizer, max_tokens)
    if made is None and error:  # the error alone is too long: its head
        made = _fit(lambda head: format_output(head + TRUNCATION_MARKER), error, tokenizer, max_tokens)
    return made


def _fit(render, text: str, tokenizer, max_tokens: int) -> tuple[str, list[int]] | None:
    """render(head) for the longest head of text (in tokens) whose block fits max_tokens."""
    text_ids = tokenizer.encode(text, add_special_tokens=False)
    keep = min(len(text_ids), max_tokens - len(tokenizer.encode(render(""), add_special_tokens=False)))
    while keep >= 0:
        head = tokenizer.decode(text_ids[:keep], skip_special_tokens=True) if keep else ""
        block = render(head)
        ids = tokenizer.encode(block, add_special_tokens=False)
        if len(ids) <= max_tokens:
            return block, ids
        keep -= max(1, len(ids) - max_tokens)  # token merges at the cut can differ: shrink and retry
    return None


# ---------------------------------------------------------------------------
# The prompts: instruction, solved examples, baseline template (prompts/*.txt)
# ---------------------------------------------------------------------------
# The paper's "Agent Interface" and "In-context Learning": the instruction teaches the call
# syntax, four solved examples show the call/output pattern. Every trajectory starts from
# build_messages: rollout.py (training, batched evaluation) and agent.MathAgent alike.

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
"""Plain text files: agent_instruction.txt, examples.txt, baseline.txt."""

SYSTEM_LAYOUT_INTRO = "Solved examples, in the exact format to follow:"
SYSTEM_LAYOUT_EXAMPLE = "Example {n}\n\nProblem:\n{problem}\n\nSolution:\n{solution}"
"""How layout "system" writes an example into the system prompt, after the instruction."""


@dataclass(frozen=True)
class Example:
    """One solved example of prompts/examples.txt."""

    problem: str
    solution: str
    """The assistant text: reasoning, agent calls, their output blocks and the final box."""
    answer: str
    """The content of the solution's final \\boxed{}."""


_EXAMPLE_LINE = re.compile(r"=== example \d+ ===")
_SECTION_LINE = re.compile(r"--- (problem|solution|answer) ---")


def parse_examples(text: str) -> list[Example]:
    """Parse the examples.txt format (described at the top of that file).

    >>> parse_examples("note\\n=== example 1 ===\\n--- problem ---\\n1+1?\\n--- solution ---\\n"
    ...                "It is \\\\boxed{2}.\\n\\n--- answer ---\\n2\\n")
    [Example(problem='1+1?', solution='It is \\\\boxed{2}.', answer='2')]
    """
    examples: list[dict[str, list[str]]] = []
    section = None
    for line in text.split("\n"):
        if _EXAMPLE_LINE.fullmatch(line):
            examples.append({"problem": [], "solution": [], "answer": []})
            section = None
        elif examples and (m := _SECTION_LINE.fullmatch(line)):
            section = m.group(1)
        elif section is not None:
            examples[-1][section].append(line)
        elif examples and line.strip():
            raise ValueError(f"examples.txt: text outside a section: {line!r}")
    parsed = []
    for n, parts in enumerate(examples, 1):
        ex = {k: "\n".join(lines).strip("\n") for k, lines in parts.items()}
        missing = [k for k, v in ex.items() if not v]
        if missing:
            raise ValueError(f"examples.txt: example {n} has no {', '.join(missing)}")
        parsed.append(Example(**ex))
    return parsed


EXAMPLES_FILE = "examples.txt"
"""The paper's four solved examples. A recipe may name another file of prompts/ in the same
format (examples_file): the CPU curriculum shows examples-multistep.txt's two word problems."""


@functools.cache
def load_examples(examples_file: str = EXAMPLES_FILE) -> tuple[Example, ...]:
    """The solved examples of prompts/<examples_file>, in order."""
    path = PROMPTS_DIR / examples_file
    if Path(examples_file).name != examples_file or not path.is_file():
        names = ", ".join(sorted(f.name for f in PROMPTS_DIR.glob("examples*.txt")))
        raise ValueError(f"examples_file must name a file of prompts/ ({names}), not {examples_file!r}")
    return tuple(parse_examples(path.read_text(encoding="utf-8")))


@functools.cache
def read_prompt(name: str) -> str:
    """A file of prompts/ as the model sees it (the file's final newline is not part of it)."""
    return (PROMPTS_DIR / name).read_text(encoding="utf-8").removesuffix("\n")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Refuse a value outside its name set (MODES, LAYOUTS, BACKENDS) in one line that lists them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def shown_examples(examples: int | None = None, examples_file: str = EXAMPLES_FILE) -> tuple[Example, ...]:
    """The solved examples a prompt shows: all of prompts/<examples_file> (None; examples.txt
    holds the paper's 4), or its LAST `examples` -- examples.txt puts last the short ones that
    open with the agent call, which a small model imitates (its note says why). Fewer examples
    make a shorter prompt: the CPU miniature (recipes/cpu-mini.yaml) shows 1, which cuts the
    prompt from ~950 tokens to ~330 and with it most of a CPU training step.

    >>> [len(shown_examples()), len(shown_examples(2))]
    [4, 2]
    >>> shown_examples(1) == shown_examples()[-1:]
    True
    """
    every = load_examples(examples_file)
    if examples is None:
        return every
    if not 1 <= examples <= len(every):
        raise ValueError(f"examples must be between 1 and {len(every)} (prompts/{examples_file}), not {examples}")
    return every[len(every) - examples:]


def system_prompt(mode: str = "agent", layout: str = "system", examples: int | None = None,
                  examples_file: str = EXAMPLES_FILE) -> str | None:
    """The system message of build_messages (None in baseline mode, which has none)."""
    check_choice("mode", mode, MODES)
    check_choice("layout", layout, LAYOUTS)
    if mode == "baseline":
        return None
    text = read_prompt("agent_instruction.txt")
    if layout == "system":
        shown = [
            SYSTEM_LAYOUT_EXAMPLE.format(n=n, problem=ex.problem, solution=ex.solution)
            for n, ex in enumerate(shown_examples(examples, examples_file), 1)
        ]
        text = "\n\n".join([text, SYSTEM_LAYOUT_INTRO, *shown])
    return text


def build_messages(problem: str, mode: str = "agent", layout: str = "system",
                   examples: int | None = None, examples_file: str = EXAMPLES_FILE) -> list[dict]:
    """The chat messages that pose one problem, before the model answers. Pure: no tokenizer.

    mode "agent": a system message with the instruction (prompts/agent_instruction.txt), the
    solved examples (prompts/examples.txt), then the problem as the user message. Layout
    "system" writes the examples into the system message (the default); layout "turns"
    gives each one as a user turn (its problem) and an assistant turn (its solution).
    mode "baseline": one user message, prompts/baseline.txt with the problem filled in. There
    are no examples, so the layout changes nothing. examples: how many solved examples to show
    (None: all 4, the paper; see shown_examples), from prompts/<examples_file>.

    rollout.py renders these with `apply_chat_template(..., add_generation_prompt=True)` and
    continues token by token; MathAgent appends the assistant message written so far.

    >>> [m["role"] for m in build_messages("1+1?")]
    ['system', 'user']
    >>> [m["role"] for m in build_messages("1+1?", layout="turns")][:4]
    ['system', 'user', 'assistant', 'user']
    >>> build_messages("1+1?", mode="baseline")[0]["content"].splitlines()[0]
    '1+1?'
    """
    system = system_prompt(mode, layout, examples, examples_file)
    if system is None:
        return [{"role": "user", "content": read_prompt("baseline.txt").replace("{problem}", problem)}]
    messages = [{"role": "system", "content": system}]
    if layout == "turns":
        for ex in shown_examples(examples, examples_file):
            messages += [{"role": "user", "content": ex.problem}, {"role": "assistant", "content": ex.solution}]
    messages.append({"role": "user", "content": problem})
    return messages
