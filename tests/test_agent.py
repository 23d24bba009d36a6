"""
Tests for agent.py and the interface it runs: the protocol (protocol.py), same-turn
continuation (models.continuation_chat_template), MathAgent, the backends and the CLI.

  .venv/bin/python -m pytest tests/test_agent.py -q                          # all: ~3.5 min idle
  .venv/bin/python -m pytest tests/test_agent.py -q -k "not real and not cli"  # tier 1: ~10 s

(Timings on the 2-core development machine; they grow several-fold while other jobs load it.)

  tier 1  literal inputs: the protocol functions, the continuation template, MathAgent driven
          by a scripted smolagents Model (the real executor.Sandbox runs the snippets)
  tier 2  the real SmolLM2-135M: TransformersModel, VLLMAgentModel on the session's vLLM
          engine, OpenAIServerModel against a real vLLM OpenAI server in a subprocess
  tier 3  `python agent.py ...` in a subprocess
"""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import agent  # noqa: E402
import data  # noqa: E402
import models  # noqa: E402
import protocol  # noqa: E402
import rewards  # noqa: E402
from protocol import (  # noqa: E402
    CALL_CLOSE, FINISH_EOS, FINISH_LENGTH, FINISH_STOP, Budget, close_chunk, end_reason,
    find_snippets, format_output, last_box, last_boxed, output_blocks, shows_error,
    strip_output_blocks, trailing_snippet,
)

PY = sys.executable


# ===========================================================================================
# tier 1: the protocol, with literal inputs
# ===========================================================================================

def test_doctests():
    assert doctest.testmod(agent, optionflags=doctest.ELLIPSIS).failed == 0
    assert doctest.testmod(protocol, optionflags=doctest.ELLIPSIS).failed == 0  # the interface, the prompts
    assert doctest.testmod(data, optionflags=doctest.ELLIPSIS).failed == 0  # the arithmetic workload moved there


def test_find_snippets_takes_calls_and_fences_in_order_and_skips_output_blocks():
    trace = (
        "First.\n<tool_call>\nx = 3\n</tool_call>\n```output\n(no output)\n```\n"
        "Then a fence.\n```python\nprint(x)\n```\n```output\n3\n```\n"
        "A fence inside a call:\n<tool_call>\n```python\ny = x + 1\n```\n</tool_call>\n"
        "Not python:\n```latex\nx^2\n```\n"
    )
    assert find_snippets(trace) == ["x = 3", "print(x)", "y = x + 1"]
    assert find_snippets("```output\nprint(1)\n```\n") == []
    assert find_snippets("<tool_call>\n\n</tool_call>") == []  # an empty call is no snippet


def test_trailing_snippet_only_when_the_chunk_ends_with_a_closed_call():
    assert trailing_snippet("Compute.\n<tool_call>\nprint(17*23)\n</tool_call>") == "print(17*23)"
    # vLLM stop strings need not fall on a token boundary: the token "</tool_call>\n" may end it
    assert trailing_snippet("<tool_call>\nprint(1)\n</tool_call>\n") == "print(1)"
    assert trailing_snippet("<tool_call>\nprint(1)\n</tool_call>\n\n") == "print(1)"
    assert trailing_snippet("```python\nprint(2)\n```\n") == "print(2)"
    assert trailing_snippet("```py\nprint(2)\n```") == "print(2)"
    assert trailing_snippet("<tool_call>\n```python\nprint(3)\n```\n</tool_call>") == "print(3)"
    assert trailing_snippet("the last call was <tool_call>\nx\n</tool_call> and then text") is None
    assert trailing_snippet("</tool_call>") is None  # a closing tag without an opening one
    assert trailing_snippet("```output\n391\n```\n") is None
    assert trailing_snippet("```python\nx = 1\n```\nthen ```latex\nx^2\n```\n") is None
    assert trailing_snippet("<tool_call>\n   \n</tool_call>") is None


def test_format_output_renders_the_block_the_model_sees():
    assert format_output("391\n") == "\n```output\n391\n```\n"
    assert format_output("a\nb\n\n") == "\n```output\na\nb\n```\n"
    assert format_output("") == "\n```output\n(no output)\n```\n"
    assert format_output("", "ZeroDivisionError: division by zero (line 1: 1/0)") == (
        "\n```output\nZeroDivisionError: division by zero (line 1: 1/0)\n```\n")
    assert format_output("partial\n", "ValueError: bad") == "\n```output\npartial\nValueError: bad\n```\n"


def test_last_boxed_is_the_final_balanced_box_outside_output_blocks():
    assert last_boxed(r"\boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{\sqrt{2}+\left(3\right)}") == r"\sqrt{2}+\left(3\right)"
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_boxed(r"so \boxed 5.") == "5."
    assert last_boxed("\\boxed{2}\n```output\n\\boxed{3}\n```\n") == "2"
    assert last_boxed(r"\boxed{unclosed") is None
    assert last_boxed("no answer") is None


def test_end_reason_for_each_way_a_trajectory_ends():
    b = Budget(max_tokens=100, max_steps=2)
    call = "<tool_call>\nprint(1)\n</tool_call>"
    assert end_reason(call, FINISH_STOP, 0, 10, b) is None
    assert end_reason(call, FINISH_STOP, 1, 10, b) is None
    assert end_reason(call, FINISH_STOP, 2, 10, b) == "max_steps"
    assert end_reason(r"it is \boxed{4}", FINISH_EOS, 1, 10, b) == "answer"
    assert end_reason("I am not sure.", FINISH_EOS, 1, 10, b) == "no_snippet"
    assert end_reason("<tool_call>\nprint(", FINISH_LENGTH, 0, 100, b) == "max_tokens"
    assert end_reason(call, FINISH_STOP, 0, 100, b) == "max_tokens"  # budget spent, even mid-call
    assert end_reason("```latex\nx\n```\n", FINISH_STOP, 0, 10, b) is None  # go on, nothing to run


def test_a_chunk_that_ended_with_eos_is_not_cut_by_the_budget():
    # the model ended on its own with the budget's last token (or, in MathAgent, past it):
    # nothing was cut, so the trajectory ends for the model's reason, not "max_tokens"
    b = Budget(max_tokens=100, max_steps=2)
    assert end_reason(r"so \boxed{4}", FINISH_EOS, 1, 100, b) == "answer"
    assert end_reason(r"so \boxed{4}", FINISH_EOS, 0, 130, b) == "answer"
    assert end_reason("I am not sure.", FINISH_EOS, 1, 100, b) == "no_snippet"
    # the budget still ends what would go on: more text, or a snippet run
    assert end_reason(r"so \boxed{4} and", FINISH_LENGTH, 1, 100, b) == "max_tokens"
    assert end_reason("<tool_call>\nprint(1)\n</tool_call>", FINISH_STOP, 0, 100, b) == "max_tokens"


# Tricky but ordinary inputs. The expected values are what the lazy regexes the scanners
# replaced (<tool_call>(.*?)</tool_call>, ```python\n(.*?)\n```(?=\n|$), ```output\n.*?\n```\n?)
# returned, so these pin "exactly the same results".
SNIPPET_CASES = [
    ("<tool_call>a</tool_call><tool_call>b</tool_call>", ["a", "b"]),
    ("<tool_call>a<tool_call>b</tool_call>", ["a<tool_call>b"]),  # nearest closer; nested opener is text
    ("<tool_call>\nx\n</tool_call> then <tool_call>\ny", ["x"]),  # the unclosed one is no call
    ("</tool_call><tool_call>x</tool_call></tool_call>", ["x"]),
    ("<tool_call>\n```python\ny = 1\n```\n</tool_call>", ["y = 1"]),  # the fence is taken with the call
    ("<tool_call>\n```python\nx\n```\nprint(x)\n</tool_call>", ["```python\nx\n```\nprint(x)"]),
    ("<tool_call>```py\nz```</tool_call>", ["z"]),
    ("```python\nx <tool_call>y</tool_call>\n```\n", ["x <tool_call>y</tool_call>", "y"]),  # fence before the call
    ("```python\nx\n```", ["x"]),  # a fence may close at the end of the text
    ("```py \t\nx\n```\n```pyt\ny\n```\n", ["x"]),
    ("```python\nx\n```latex\ny\n```\n", ["x\n```latex\ny"]),  # a closer ends its line
    ("```python\n```python\nx\n```\n", ["```python\nx"]),
    ("```python\n```\n", []),
    ("<tool_call> \n </tool_call>", []),
    ("```output\n<tool_call>x</tool_call>\n```\n", []),  # output blocks are skipped
    ("```output\n<tool_call>x</tool_call>", ["x"]),  # an unclosed block is not a block
    ("```output\n1\n```python\nx\n```\n", []),  # the block ends at the first \n```
    ("a\n```output\nx\n```\n<tool_call>b</tool_call>\n```output\n```python\nc\n```\n", ["b"]),
    ("<tool_call>x</tool_call>" + "```python\ny\n```\n" + "<tool_call>z</tool_call>", ["x", "y", "z"]),
]


@pytest.mark.parametrize("text, expected", SNIPPET_CASES)
def test_find_snippets_on_tricky_inputs(text, expected):
    assert find_snippets(text) == expected
    assert calls_local(text)["snippets"] == len(expected)


def test_output_block_scanners_on_tricky_inputs():
    text = "a```output\n1\n```\nb```output\n2\n```c```output\n3"
    assert output_blocks(text) == ["1", "2"]  # the third has no closing fence
    assert strip_output_blocks(text) == "abc```output\n3"
    assert output_blocks("```output\n\n```\n") == [""] and strip_output_blocks("```output\n\n```\n") == ""
    assert output_blocks("```output\n```\n") == []  # the opener's newline cannot close it too
    assert output_blocks("```output\n1\n````") == ["1"] and strip_output_blocks("```output\n1\n````") == "`"
    # removing a block may join text into a new opener; one pass does not remove that one
    assert strip_output_blocks("```out```output\nx\n```\nput\ny\n```\n") == "```output\ny\n```\n"
    blocks = output_blocks("x\n```output\n7\nNameError: y\n```\n```output\ntimed out after 5 s\n```\n"
                           "```output\nthe sandbox process died\n```\n```output\nErrors: 0\n```\n")
    assert [shows_error(b) for b in blocks] == [True, True, True, False]


def test_last_boxed_on_tricky_inputs():
    assert last_boxed("\\boxed{2}\n```output\n\\boxed{3}\n```\n") == "2"
    assert last_boxed("\\boxed{2}```output\n\\boxed{3}") == "3"  # unclosed: not an output block
    assert last_boxed("\\boxed{2}```output\n\\boxed{3}\n```") == "2"
    assert last_boxed(r"\boxed{\boxed{1}}") == "1"  # the last \boxed is the inner one
    assert last_boxed(r"\boxed{1}\boxed{") is None  # the last box is unbalanced: no answer
    assert last_boxed(r"\fbox{a} \boxed  7$.") == "7"
    assert last_box(r"x \boxed{1} \boxed 22 y") == (12, 21, "22")
    assert last_box("\\boxed{2}\n```output\n\\boxed{3}\n```\n") == (20, 29, "3")  # blocks not skipped


def test_trailing_snippet_on_tricky_inputs():
    assert trailing_snippet("<tool_call>a<tool_call>b</tool_call>") == "b"  # the call it ended with
    assert trailing_snippet("<tool_call>\n```python\nx\n```\n</tool_call>\n") == "x"
    assert trailing_snippet("```py\nx\n```python\ny\n```") == "y"
    assert trailing_snippet("```python\nx\n```output\n```") is None


# Degenerate model output: thousands of unclosed openers. The scanners used to be lazy regexes
# that rescanned the rest of the text from every opener (21 s for the first one below); now each
# is one pass. These check the results; tests never assert wall-clock time.
def calls_local(text: str) -> dict:
    """rewards._calls_local's three counts (it may add others, e.g. trivial snippets)."""
    return {k: rewards._calls_local(text)[k] for k in ("snippets", "outputs", "errors")}


OPENERS = "<tool_call>" * 10_000
OUTPUTS = "```output\nx" * 20_000
BOXES = "\\boxed{" * 20_000
FENCES = "```python\n" * 10_000


def test_degenerate_unclosed_calls():
    assert find_snippets(OPENERS) == [] and trailing_snippet(OPENERS) is None
    assert last_boxed(OPENERS) is None and strip_output_blocks(OPENERS) == OPENERS and output_blocks(OPENERS) == []
    # the last opener's call is empty: not a call, so the text rule reads the chunk as ended
    assert close_chunk(OPENERS) == (OPENERS, FINISH_EOS)
    closed = OPENERS + CALL_CLOSE
    assert trailing_snippet(closed) is None
    assert find_snippets(closed) == ["<tool_call>" * 9_999]  # the first opener's call holds the rest
    assert end_reason(OPENERS, FINISH_EOS, 0, 10, Budget()) == "no_snippet"
    assert end_reason(closed, FINISH_STOP, 0, 10, Budget()) is None
    assert calls_local(OPENERS + r"\boxed{3}") == {"snippets": 0, "outputs": 0, "errors": 0}
    assert rewards.final_answers(OPENERS + r"\boxed{3}") == ["3"]


def test_degenerate_unclosed_output_blocks():
    assert last_boxed(OUTPUTS) is None and last_boxed(OUTPUTS + r"\boxed{3}") == "3"
    assert strip_output_blocks(OUTPUTS) == OUTPUTS and output_blocks(OUTPUTS) == []
    assert find_snippets(OUTPUTS) == [] and trailing_snippet(OUTPUTS) is None
    # it ends inside an open fence: read as stopped on its close, with nothing to run
    assert close_chunk(OUTPUTS) == (OUTPUTS + "\n```\n", FINISH_STOP)
    assert trailing_snippet(OUTPUTS + "\n```\n") is None
    assert end_reason(OUTPUTS + r"\boxed{3}", FINISH_EOS, 0, 10, Budget()) == "answer"
    closed = OUTPUTS + "\n```\n" + r"\boxed{3}"  # one closing fence: the first opener's block holds it all
    assert output_blocks(closed) == [OUTPUTS[len("```output\n"):]] and strip_output_blocks(closed) == r"\boxed{3}"
    assert rewards.final_answers(OUTPUTS + r"\boxed{3}") == ["3"]
    assert calls_local(OUTPUTS) == {"snippets": 0, "outputs": 0, "errors": 0}
    assert calls_local(closed) == {"snippets": 0, "outputs": 1, "errors": 0}


def test_degenerate_unclosed_boxes():
    assert last_boxed(BOXES) is None and last_box(BOXES) is None and rewards.final_answers(BOXES) == []
    nested = BOXES + "}" * 20_000
    assert last_boxed(nested) == "" and rewards.final_answers(nested) == [""]
    assert find_snippets(BOXES) == [] and trailing_snippet(BOXES) is None and strip_output_blocks(BOXES) == BOXES
    assert end_reason(BOXES, FINISH_EOS, 0, 10, Budget()) == "no_snippet"


def test_degenerate_fences_and_many_calls():
    assert find_snippets(FENCES) == [] and trailing_snippet(FENCES) is None and last_boxed(FENCES) is None
    assert trailing_snippet(FENCES + "```") is None  # the last fence is empty
    assert find_snippets(FENCES + "x\n```\n") == ["```python\n" * 9_999 + "x"]
    assert close_chunk(FENCES) == (FENCES + "\n```\n", FINISH_STOP)  # the first fence is still open
    many = "<tool_call>\nx\n</tool_call>" * 5_000 + "```python\ny\n```\n" * 5_000
    assert find_snippets(many) == ["x"] * 5_000 + ["y"] * 5_000
    assert calls_local(many) == {"snippets": 10_000, "outputs": 0, "errors": 0}


def test_close_chunk_text_rule_reads_only_our_delimiters():
    # prose with a stray fence, or a closed call then prose mentioning <tool_call>, ended by itself
    assert close_chunk("Use ``` to open a block. So \\boxed{2}.") == ("Use ``` to open a block. So \\boxed{2}.", FINISH_EOS)
    # an open ```latex fence did stop on FENCE_CLOSE; it just holds nothing to run
    assert close_chunk("```latex\nx^2") == ("```latex\nx^2\n```\n", FINISH_STOP)
    assert trailing_snippet("```latex\nx^2\n```\n") is None
    text = "<tool_call>\nx = 1\n</tool_call>\n```output\n(no output)\n```\nI used <tool_call> tags."
    assert close_chunk(text)[1] == FINISH_STOP  # a bare mention after the last call: text cannot tell
    assert close_chunk(text, stop_reason=None) == (text, FINISH_EOS)  # the backend said EOS: exact
    assert close_chunk("Done, \\boxed{1}. ``` ```python") == ("Done, \\boxed{1}. ``` ```python", FINISH_EOS)


def test_close_chunk_takes_the_backends_stop_reason():
    assert close_chunk("<tool_call>\nprint(1)\n", stop_reason=CALL_CLOSE) == ("<tool_call>\nprint(1)\n" + CALL_CLOSE, FINISH_STOP)
    assert close_chunk("```python\nprint(1)", stop_reason="\n```\n") == ("```python\nprint(1)\n```\n", FINISH_STOP)
    assert close_chunk("```python\nprint(1)", stop_reason=None) == ("```python\nprint(1)", FINISH_EOS)
    assert close_chunk("x", stop_reason=2) == ("x", FINISH_EOS)  # a stop token id: the model ended
    assert close_chunk("x", length=True, stop_reason=None) == ("x", FINISH_LENGTH)


def test_close_chunk_restores_the_stop_string_the_backend_dropped():
    assert close_chunk("<tool_call>\nprint(1)\n") == ("<tool_call>\nprint(1)\n</tool_call>", FINISH_STOP)
    assert close_chunk("```python\nprint(1)") == ("```python\nprint(1)\n```\n", FINISH_STOP)
    # a fence inside a call: generation stopped on the fence's close, the call is still open
    assert close_chunk("<tool_call>\n```python\nprint(1)") == ("<tool_call>\n```python\nprint(1)\n```\n", FINISH_STOP)
    assert close_chunk("<tool_call>\nx\n</tool_call>\n```output\n1\n```\nSo \\boxed{1}.")[1] == FINISH_EOS
    assert close_chunk("words", length=True) == ("words", FINISH_LENGTH)
    for text in ["<tool_call>\nprint(1)\n</tool_call>", "```python\nprint(1)\n```\n"]:  # round trip
        stopped = text[: text.rfind("\n```\n") if text.endswith("```\n") else text.rfind(CALL_CLOSE)]
        chunk, finish = close_chunk(stopped)
        assert (chunk, finish) == (text, FINISH_STOP) and trailing_snippet(chunk) == "print(1)"


# ===========================================================================================
# tier 1: the continuation chat template (rendered like transformers does: sandboxed Jinja)
# ===========================================================================================

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# A small template that treats reasoning the way Qwen3-Thinking's does: the final assistant turn
# is rendered as "<think>\n{reasoning}\n</think>\n\n{answer}", and the generation prompt opens <think>.
THINKING = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' and loop.last %}"
    "{% set parts = message['content'].split('</think>') %}"
    "{{ '<|im_start|>assistant\n<think>\n' + (parts[0] if parts | length > 1 else '') + '\n</think>\n\n' + parts[-1] + '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n' }}{% endif %}"
)


def render(template: str, messages: list[dict], add_generation_prompt: bool = True) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt)


PROMPT = [{"role": "system", "content": "S"}, {"role": "user", "content": "What is 17*23?"}]
SO_FAR = "I compute it.\n<tool_call>\nprint(17*23)\n</tool_call>\n```output\n391\n```\n"


@pytest.mark.parametrize("template", [CHATML, THINKING], ids=["chatml", "thinking"])
def test_continuation_template_continues_the_final_assistant_message(template):
    wrapped = models.continuation_chat_template(template)
    expected = render(template, PROMPT) + SO_FAR  # the text the model saw while writing, plus the output
    assert render(wrapped, PROMPT + [{"role": "assistant", "content": SO_FAR}]) == expected
    # content given as text parts (smolagents' format) works the same
    parts = [{"type": "text", "text": SO_FAR[:10]}, {"type": "text", "text": SO_FAR[10:]}]
    assert render(wrapped, PROMPT + [{"role": "assistant", "content": parts}]) == expected
    # an empty assistant message is just the generation prompt
    assert render(wrapped, PROMPT + [{"role": "assistant", "content": ""}]) == render(template, PROMPT)
    # conversations that do not end with the assistant render exactly as before
    assert render(wrapped, PROMPT) == render(template, PROMPT)
    assert render(wrapped, PROMPT, add_generation_prompt=False) == render(template, PROMPT, False)
    assert models.continuation_chat_template(wrapped) == wrapped  # idempotent


def test_the_thinking_template_alone_would_close_the_think_block():
    """Why the wrapper exists: rendering a final assistant message through a Qwen3-Thinking style
    template puts it after a closed, empty think block, outside the reasoning."""
    plain = render(THINKING, PROMPT + [{"role": "assistant", "content": SO_FAR}], add_generation_prompt=False)
    assert "<think>\n\n</think>\n\nI compute it." in plain
    wrapped = render(models.continuation_chat_template(THINKING), PROMPT + [{"role": "assistant", "content": SO_FAR}])
    assert wrapped.endswith("<|im_start|>assistant\n<think>\n" + SO_FAR)


# ===========================================================================================
# tier 1: MathAgent's loop, driven by a scripted smolagents Model (real sandbox)
# ===========================================================================================

needs_smolagents = pytest.mark.skipif(not agent.HAVE_SMOLAGENTS, reason="smolagents is not installed")
if agent.HAVE_SMOLAGENTS:  # the protocol tests above run without it
    import smolagents
    from smolagents.models import ChatMessage, MessageRole, Model, TokenUsage
    from smolagents.models import remove_content_after_stop_sequences
    from smolagents.monitoring import LogLevel
else:
    Model = object


class ScriptedModel(Model):
    """Replays fixed chunks like a backend would: cut at the first stop string, which is dropped.
    Token usage is reported the way real backends do (input = prompt + trace so far)."""

    def __init__(self, chunks: list[str]):
        super().__init__(model_id="scripted")
        self.chunks = list(chunks)
        self.requests: list[list] = []

    def generate(self, messages, stop_sequences=None, **kwargs):
        self.requests.append(messages)
        text = remove_content_after_stop_sequences(self.chunks.pop(0), stop_sequences)
        so_far = messages[-1].content[0]["text"]
        return ChatMessage(role=MessageRole.ASSISTANT, content=text,
                           token_usage=TokenUsage(input_tokens=100 + len(so_far.split()), output_tokens=len(text.split())))


class WordTokenizer:
    """One token per whitespace-separated word or run of spaces (enough for output_block's cut)."""

    def encode(self, text, add_special_tokens=False):
        import re

        return [w for w in re.split(r"(\s+)", text) if w]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(ids)


def make_agent(chunks, **kwargs):
    model = ScriptedModel(chunks)
    kwargs.setdefault("tokenizer", WordTokenizer())
    kwargs.setdefault("verbosity_level", LogLevel.OFF)
    kwargs.setdefault("sandbox_kwargs", dict(timeout_s=5))
    return agent.MathAgent(model, **kwargs), model


def text_of(message) -> str:
    return message.content[0]["text"]


@needs_smolagents
def test_long_output_is_cut_by_the_rule_the_rollout_uses():
    """MathAgent shows the model the block protocol.output_block makes, in the model's tokens,
    as rollout.py does: head of the output, the marker, the closing fence."""
    from types import SimpleNamespace

    chunks = ["<tool_call>\nprint('ab ' * 300)\n</tool_call>", "So \\boxed{1}."]
    math_agent, _ = make_agent(chunks, max_output_tokens=20)
    solution = math_agent.solve("Print a lot.")
    block = solution.trace[solution.trace.index("\n```output"): solution.trace.rindex("So ")]
    expected, ids = protocol.output_block(SimpleNamespace(stdout="ab " * 300 + "\n", error=None), WordTokenizer(), 20)
    assert block == expected and len(ids) <= 20
    assert block.endswith(protocol.TRUNCATION_MARKER + protocol.OUTPUT_CLOSE) and block.startswith("\n```output\nab ab")


@needs_smolagents
def test_output_is_inserted_into_the_same_assistant_message_and_a_box_ends_the_run():
    chunks = [
        "I multiply.\n<tool_call>\nprint(17*23)\n</tool_call>\n```output\n999\n```\nhallucinated",
        "So the product is \\boxed{391}.",
    ]
    math_agent, model = make_agent(chunks, layout="turns")
    solution = math_agent.solve("What is 17*23?")
    assert solution.answer == "391" and solution.end_reason == "answer"
    assert (solution.calls, solution.errors, solution.layout) == (1, 0, "turns")
    expected_trace = ("I multiply.\n<tool_call>\nprint(17*23)\n</tool_call>\n```output\n391\n```\n"
                      "So the product is \\boxed{391}.")
    assert solution.trace == expected_trace  # the model's own "output" was cut at the stop string
    # request 1: the prompt and an empty assistant message; request 2: the same prompt, and the
    # same single assistant message grown by the chunk and the executor output. No ReAct
    # "Observation:" user turn, no second assistant turn.
    first, second = model.requests
    prompt = protocol.build_messages("What is 17*23?", layout="turns")
    for request in (first, second):
        assert [(m.role, text_of(m)) for m in request[:-1]] == [(m["role"], m["content"]) for m in prompt]
        assert request[-1].role == MessageRole.ASSISTANT
    assert text_of(first[-1]) == ""
    assert text_of(second[-1]) == expected_trace[: expected_trace.index("So the")]
    # tokens = growth of the request's input since the first request + the last chunk's output
    so_far, last = expected_trace.split("So the")
    assert solution.tokens == len(so_far.split()) + len(("So the" + last).split())


@needs_smolagents
def test_names_persist_across_snippets_and_each_run_gets_a_fresh_session():
    chunks = ["<tool_call>\nx = 6\n</tool_call>", "<tool_call>\nx * 7\n</tool_call>", "\\boxed{42}",
              "<tool_call>\nprint(x)\n</tool_call>", "gone: \\boxed{0}"]
    math_agent, _ = make_agent(chunks)
    first = math_agent.solve("p1")
    assert first.trace.count("```output\n") == 2 and "```output\n42\n```" in first.trace
    second = math_agent.solve("p2")  # a new problem: x is gone
    assert "NameError" in second.trace and second.errors == 1 and second.calls == 1


@needs_smolagents
def test_a_failing_snippet_shows_its_error_and_the_run_goes_on():
    math_agent, model = make_agent(["<tool_call>\nprint('a')\n1/0\n</tool_call>", "\\boxed{1}"])
    solution = math_agent.solve("p")
    assert (solution.calls, solution.errors, solution.answer) == (1, 1, "1")
    block = solution.trace[solution.trace.index("```output"):]
    assert block.startswith("```output\na\nZeroDivisionError: division by zero")
    assert "line 2" in block  # the failing line, for the model to fix
    assert len(model.requests) == 2


@needs_smolagents
def test_forbidden_import_comes_back_as_an_error_block():
    math_agent, _ = make_agent(["<tool_call>\nimport os\n</tool_call>", "\\boxed{0}"])
    solution = math_agent.solve("p")
    assert solution.errors == 1 and "os" in solution.trace.split("```output\n")[1]


@needs_smolagents
def test_max_steps_counts_agent_calls():
    math_agent, model = make_agent([f"<tool_call>\nprint({i})\n</tool_call>" for i in range(5)], max_steps=2)
    solution = math_agent.solve("p")
    assert (solution.calls, solution.end_reason, solution.answer) == (2, "max_steps", None)
    assert len(model.requests) == 3  # 2 calls run; the chunk asking for a third ends the run


@needs_smolagents
def test_smolagents_step_limit_answers_from_the_trace_without_another_model_call():
    # chunks that close a non-python fence run nothing but use up smolagents' turns (max_steps + 1)
    math_agent, model = make_agent(["I get \\boxed{7}\n```latex\nx\n```\n"] * 3, max_steps=1)
    solution = math_agent.solve("p")
    assert (solution.end_reason, solution.answer, solution.calls) == ("max_steps", "7", 0)
    assert len(model.requests) == 2


@needs_smolagents
def test_a_chunk_cut_by_the_backends_token_limit_ends_the_run():
    class CutModel(ScriptedModel):
        def generate(self, messages, stop_sequences=None, **kwargs):
            reply = super().generate(messages, stop_sequences, **kwargs)
            reply.raw = {"finish_reason": "length"}  # what the OpenAI API and VLLMAgentModel report
            return reply

    math_agent = agent.MathAgent(CutModel(["<tool_call>\nprint(1 +"]), verbosity_level=LogLevel.OFF)
    solution = math_agent.solve("p")
    assert (solution.end_reason, solution.calls) == ("max_tokens", 0)


@needs_smolagents
def test_streaming_yields_the_call_and_its_output():
    math_agent, _ = make_agent(["<tool_call>\nprint(6 * 7)\n</tool_call>", "\\boxed{42}"])
    events = list(math_agent.run("p", stream=True))
    outputs = [e for e in events if isinstance(e, smolagents.agents.ToolOutput)]
    assert [(o.tool_call.arguments, o.observation) for o in outputs] == [("print(6 * 7)", "\n```output\n42\n```\n")]
    assert isinstance(events[-1], smolagents.memory.FinalAnswerStep) and events[-1].output == "42"


@needs_smolagents
def test_no_snippet_and_no_box_ends_the_run():
    math_agent, _ = make_agent(["I think it is 5."])
    solution = math_agent.solve("p")
    assert (solution.end_reason, solution.answer, solution.calls) == ("no_snippet", None, 0)


@needs_smolagents
def test_token_budget_ends_the_run():
    math_agent, _ = make_agent(["<tool_call>\nprint(" + "1 + " * 50 + "1)\n</tool_call>", "\\boxed{51}"], max_tokens=20)
    solution = math_agent.solve("p")
    assert solution.end_reason == "max_tokens" and solution.calls == 0


@needs_smolagents
def test_an_answer_that_ends_past_the_budget_is_still_an_answer():
    # MathAgent checks the budget between chunks: this chunk ran past it, but the model ended it
    math_agent, _ = make_agent(["So " + "one " * 30 + "is \\boxed{30}."], max_tokens=20)
    solution = math_agent.solve("p")
    assert (solution.end_reason, solution.answer) == ("answer", "30") and solution.tokens > 20


@needs_smolagents
def test_markdown_fence_calls_are_run_too():
    math_agent, _ = make_agent(["```python\nprint(2**10)\n```\n", "\\boxed{1024}"])
    solution = math_agent.solve("p")
    assert solution.calls == 1 and "```output\n1024\n```" in solution.trace and solution.answer == "1024"


@needs_smolagents
def test_smolagents_run_api_and_memory():
    math_agent, _ = make_agent(["<tool_call>\nprint(3)\n</tool_call>", "\\boxed{3}"])
    assert math_agent.run("p") == "3"  # plain smolagents API: run() returns the final answer
    steps = [s for s in math_agent.memory.steps if isinstance(s, smolagents.memory.ActionStep)]
    assert steps[0].code_action == "print(3)" and steps[0].observations == "\n```output\n3\n```\n"
    assert steps[-1].is_final_answer


@needs_smolagents
def test_missing_smolagents_gives_one_clear_line(monkeypatch):
    monkeypatch.setattr(agent, "HAVE_SMOLAGENTS", False)
    with pytest.raises(agent.MissingDependencyError, match=r"pip install smolagents"):
        agent.MathAgent(ScriptedModel([]))


def test_import_is_light():
    """`import agent` (MathAgent's tests, the CLI's --help) loads no ML framework."""
    code = "import sys, agent; print([m for m in ('torch', 'vllm', 'transformers') if m in sys.modules])"
    run = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "[]", run.stderr


def test_protocol_imports_without_smolagents():
    """rewards.py imports the protocol on machines without the ML stack."""
    code = ("import sys; sys.modules['smolagents'] = None; import agent, protocol; "
            "assert protocol.find_snippets('<tool_call>\\nx\\n</tool_call>') == ['x']; "
            "assert not any(m in sys.modules for m in ('torch', 'vllm', 'transformers')); "
            "agent.MathAgent(None)")
    run = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "MissingDependencyError: smolagents is not installed" in run.stderr
    cli = subprocess.run([PY, "-c", "import sys; sys.modules['smolagents'] = None; import agent; sys.exit(agent.main(['q']))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 1 and cli.stderr.strip().splitlines() == [
        "error: smolagents is not installed: run `pip install smolagents==1.26.0` (or `make install`)"]


# ===========================================================================================
# tier 2: the real SmolLM2-135M, through each smolagents model class
# ===========================================================================================

# Greedy SmolLM2-135M, layout "turns", prompts/ as they are, on this 2-core CPU: it called the tool
# and was right on 16 of 20 random 3-digit products through VLLMAgentModel (bfloat16) and on 5 of 6
# through TransformersModel (float32), these three included in both; it answers "What is 17*23?"
# from memory, wrongly. The assertions leave one miss of margin where they test more than one.
PRODUCTS = [(237, 682), (967, 921), (882, 164)]


def solve_products(model, products=PRODUCTS, layout="turns"):
    math_agent = agent.MathAgent(model, layout=layout, max_steps=2, verbosity_level=LogLevel.OFF)
    try:
        return [math_agent.solve(f"What is {x}*{y}?") for x, y in products]
    finally:
        math_agent.cleanup()


def check_products(solutions, products=PRODUCTS, min_right=2):
    for s in solutions:
        assert s.trace and s.layout == "turns" and s.end_reason in ("answer", "no_snippet", "max_steps", "max_tokens")
    ran = [s for s, (x, y) in zip(solutions, products) if f"```output\n{x * y}\n```" in s.trace]
    right = [s for s, (x, y) in zip(solutions, products) if s.answer == str(x * y)]
    summary = [(s.problem, s.answer, s.end_reason, s.calls) for s in solutions]
    assert len(ran) >= min_right, summary  # the product came back from the sandbox
    assert len(right) >= min_right, summary


def test_real_tokenizer_continues_the_assistant_message(smollm2_dir):
    """The continuation, rendered by transformers itself (what TransformersModel and vLLM call)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    prompt = protocol.build_messages("What is 17*23?", layout="turns")
    prefix = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    messages = prompt + [{"role": "assistant", "content": SO_FAR}]
    wrapped = models.continuation_chat_template_of(smollm2_dir)
    assert tokenizer.apply_chat_template(messages, chat_template=wrapped, add_generation_prompt=True,
                                         tokenize=False) == prefix + SO_FAR
    # what a vLLM server does with continue_final_message and the model's own (ChatML) template:
    # exact as well, which is why OpenAIServerModel needs no custom template for this model
    assert tokenizer.apply_chat_template(messages, continue_final_message=True, tokenize=False) == prefix + SO_FAR


@needs_smolagents
def test_plain_smolagents_vllm_model_cannot_start_on_this_vllm():
    """Why VLLMAgentModel exists. When this fails, smolagents or vLLM fixed it: drop the subclass."""
    pytest.importorskip("vllm")
    from smolagents import VLLMModel

    with pytest.raises(ModuleNotFoundError, match="vllm.transformers_utils.tokenizer"):
        VLLMModel(model_id="unused")


@pytest.fixture(scope="module")
def transformers_model(smollm2_dir):
    import torch
    from smolagents import TransformersModel

    # the plain smolagents class; MathAgent only sets its chat template (enable_continuation)
    return TransformersModel(model_id=smollm2_dir, model_kwargs={"dtype": torch.float32},
                             max_new_tokens=48, do_sample=False)


@needs_smolagents
def test_real_transformers_model_solves_products(transformers_model):
    solutions = solve_products(transformers_model)
    check_products(solutions)
    s = next(s for s in solutions if s.calls)
    # one assistant message: the call, the executor's block, and the answer written after it
    assert s.trace.index(CALL_CLOSE) < s.trace.index("```output") < s.trace.index("\\boxed")


@needs_smolagents
def test_real_vllm_model_solves_products(vllm_llm, smollm2_dir):
    model = agent.VLLMAgentModel(smollm2_dir, llm=vllm_llm, max_tokens=48)  # the session's engine
    products = PRODUCTS[:2]
    check_products(solve_products(model, products), products, min_right=1)


@needs_smolagents
def test_real_openai_server_model_against_vllm(vllm_server, smollm2_dir):
    from smolagents import OpenAIServerModel

    # the plain smolagents class; MathAgent adds continue_final_message to its extra_body
    model = OpenAIServerModel(model_id=smollm2_dir, api_base=f"{vllm_server}/v1", api_key="EMPTY", max_tokens=48, temperature=0.0)
    products = PRODUCTS[1:2]  # one problem: the server's start-up already costs ~30-70 s here
    check_products(solve_products(model, products), products, min_right=1)
    assert model.kwargs["extra_body"] == {"continue_final_message": True, "add_generation_prompt": False}


# ===========================================================================================
# tier 3: the command line
# ===========================================================================================

def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "agent.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, COLUMNS="100"))


@needs_smolagents
def test_cli_solves_a_problem_and_prints_the_trace():
    run = run_cli("What is 17*23?", "--model", "smollm2-135m", "--layout", "turns", "--max-new-tokens", "48")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "What is 17*23?" in run.stdout and "Step 1" in run.stdout  # the task and the trace
    summary = run.stdout.strip().splitlines()[-1]
    assert summary.startswith("answer: ") and "layout: turns" in summary and "backend: transformers" in summary


@pytest.mark.parametrize("args, message", [
    (["q", "--model", "/nonexistent"], "error: model '/nonexistent' not found"),
    (["q", "--layout", "sideways"], "error: argument --layout: invalid choice: 'sideways'"),
    (["q", "--max-steps", "many"], "error: argument --max-steps: invalid int value: 'many'"),
    ([], "error: the following arguments are required: problem"),
    (["q", "--backend", "openai", "--api-base", "http://127.0.0.1:9/v1"], "error: no OpenAI-compatible server answers"),
])
def test_cli_bad_input_gives_one_error_line(args, message):
    run = run_cli(*args, timeout=120)
    assert run.returncode != 0 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), run.stderr


def test_cli_help_comes_from_the_config_docstrings():
    run = run_cli("--help", timeout=120)
    assert run.returncode == 0
    assert "Where the solved examples go" in run.stdout and "{vllm,transformers,openai}" in run.stdout  # protocol.BACKENDS, the one name set
