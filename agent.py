"""
agent.py -- the DeepMath agent: its protocol, its prompts, and the agent built on smolagents.

Paper ("How it works", "Agent Interface", "In-context Learning"): while it reasons, the model
may write ordinary text or an *agent call*, a short Python snippet between delimiters. A
sandbox runs the snippet and its output is written back into the same trace, so the tokens
that follow can use the result. Four solved examples in the prompt teach the call syntax and
the call/output pattern. The paper builds this agent with smolagents and serves the model
with vLLM.

Data flow for one problem (the numbers match the comments in MathAgent._step_stream):

  1. build_messages(problem, mode, layout) -> chat messages: the instruction and the 4 solved
     examples from prompts/ (inside the system prompt, or as earlier chat turns), then the
     problem; the assistant message written so far (empty at first) is appended to them.
  2. The model continues that assistant message until it closes an agent call (STOP_STRINGS)
     or ends. Backends drop the stop string they stopped on; close_chunk() puts it back.
  3. end_reason() decides whether the trajectory ends after this chunk: a final answer, no
     snippet, the step limit or the token budget.
  4. Otherwise trailing_snippet() is the snippet, and the trajectory's executor.Sandbox
     session runs it (names persist from one snippet to the next).
  5. format_result() renders the output block, which is appended to the SAME assistant
     message; generation continues from there (back to 2).
  6. The answer is last_boxed() of the trace.
The text format and its scanners (STOP_STRINGS, trailing_snippet, format_result, last_boxed,
find_snippets) are protocol.py's, re-exported here; they read hostile model text in linear time.
arithmetic_messages() / arithmetic_problems() are not the paper's prompt: a warm-up workload on
which the untrained 135M model used here calls the tool, for tests, benchmarks and examples.

Same-turn continuation, and how it differs from smolagents' ReAct turns
-----------------------------------------------------------------------
smolagents' CodeAgent runs ReAct turns: the model writes a message with a code block, the
message is closed, the result comes back as a new user message ("Observation: ..."), a new
assistant turn starts, and the run ends only when the code calls final_answer(). DeepMath
keeps ONE assistant message: the output block is inserted into it and the model continues
the same message -- for a thinking model such as Qwen3-4B-Thinking, inside its <think> block.
The paper says the output "is inserted into the trace and used for context" (Figure 2) and
that its agent generates the GRPO completions (Figure 1); one message is our reading. Why:
  - the model writes one uninterrupted trace per problem, and that trace is what is trained;
  - TRL's GRPO scores and trains exactly one completion per prompt (executor output masked
    inside it), so rollout.py produces that shape, and inference must use the same format the
    model was trained on;
  - Qwen3 templates drop the <think> part of assistant turns that come before the latest user
    message, and a ReAct observation is a user message: the reasoning behind a call would be
    lost at every step.
The run ends when a chunk ends without an agent call; its last \\boxed{} is the answer (no
final_answer() tool).

How each smolagents model continues the final assistant message (section 5):
  - TransformersModel (and VLLMModel) render prompts with add_generation_prompt=True, hard
    coded, and transformers refuses continue_final_message together with it. MathAgent gives
    them, through their public `apply_chat_template_kwargs`, a chat template that wraps the
    model's own: when the last message is the assistant's, it renders the messages before it
    with the generation prompt and then the assistant text verbatim, with no end of turn.
    That is the same string rollout.py continues from, and it stays inside <think> for
    thinking templates.
  - OpenAIServerModel against a vLLM server: vLLM's chat endpoint accepts
    continue_final_message=true with add_generation_prompt=false, which MathAgent adds to the
    model's extra_body. That is exact for templates that render an assistant message verbatim
    (ChatML: SmolLM2, Qwen non-thinking). A thinking template (Qwen3-Thinking) would render the
    final assistant message after a closed, empty <think></think>; for such a model start the
    server with `--chat-template FILE`, FILE written by continuation_chat_template_of(MODEL).
  - VLLMModel: smolagents 1.26's class does not start with vLLM 0.32 (it imports
    vllm.transformers_utils.tokenizer, which vLLM removed) and forwards sampling kwargs to
    LLM.generate, which rejects them. VLLMAgentModel is a small subclass that fixes both and
    can share an existing engine (one vLLM engine per process is the rule here).
  - Any other smolagents Model receives messages ending with an assistant message and must
    continue that message (tests/test_agent.py's scripted model does).
Nothing is monkey-patched: constructor arguments, public attributes and subclasses only.

MathAgent: a small CodeAgent subclass, not a configured CodeAgent
-----------------------------------------------------------------
A CodeAgent configured with code_block_tags=(CALL_OPEN, CALL_CLOSE) and our executor would
still run ReAct turns, stop on "Observation:", need final_answer() and send smolagents' long
system prompt. So MathAgent subclasses CodeAgent and overrides _step_stream, the method
smolagents leaves to child classes (one step = one generated chunk and, if the chunk closed an
agent call, one snippet run), plus write_memory_to_messages (the messages of step 1) and
provide_final_answer (at the step limit: no extra model call, just the trace's last box).
The rest is smolagents': run() and streaming, memory (one ActionStep per chunk: the chunk in
model_output, the snippet in code_action, the output block in observations), callbacks,
logging, max_steps, and the executor slot, filled with executor.SandboxExecutor (a new one,
hence a fresh session, for every problem). Snippets run through its Sandbox directly, because
the output block shows printed text and error together, while PythonExecutor.__call__
returns the one or raises the other. smolagents counts model turns; MathAgent's max_steps
counts agent calls, as Budget and rollout.py do, so it hands max_steps + 1 to CodeAgent.

Departures from the paper
-------------------------
  - Layout of the examples: the paper says only that the prompt includes 4 solved examples.
    layout="system" (the default) writes them into the system prompt, after the instruction;
    layout="turns" gives them as earlier user/assistant turns instead, which is what makes the
    135M model this project runs offline call the tool correctly: bench/tool_use.py counts both
    (docs/agent.md, the tool-use table). Every reported result names its layout.
  - Our own instruction and examples (prompts/), not the paper's.
  - MathAgent checks the token budget between chunks, so a chunk may run past it by at most
    max_new_tokens (rollout.py enforces it token by token). Output blocks are cut by the same
    rule as in rollout.py (protocol.output_block, in the model's tokens), but smolagents models
    take text, so each request re-tokenises the whole trace: where a block meets the model's
    text, the tokens may merge differently from the rollout's, which tokenises each piece alone.
  - smolagents is needed only by MathAgent and the CLI: sections 1-5 are plain Python, so
    rollout.py uses the protocol without any ML stack. Sections 1-2 (the protocol as text:
    delimiters, output blocks, the snippet and answer scanners) live in protocol.py and are
    re-exported here: `import agent` still imports smolagents when it is installed, and
    rewards.py, which must not load it, imports protocol.py alone.

Run:
  python agent.py "What is 237*682?" --model smollm2-135m --layout turns
  python agent.py "What is 237*682?" --backend vllm --layout turns
  python -m vllm.entrypoints.openai.api_server --model DIR --gpu-memory-utilization 0.1 \\
      --kv-cache-memory-bytes 1073741824 --enforce-eager --max-model-len 2048 --port 8011 \\
      --no-enable-chunked-prefill --max-num-batched-tokens 2048 &
  python agent.py "What is 237*682?" --backend openai --model DIR --api-base http://127.0.0.1:8011/v1
  python agent.py --help
Tests: python -m pytest tests/test_agent.py tests/test_prompts.py
"""

from __future__ import annotations

import functools
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cli import dataclass_parser, fail, first_line

# sections 1-3, the protocol as text and the loop's rules; names re-exported (agent.Budget etc.)
from protocol import (  # noqa: F401
    CALL_CLOSE, CALL_OPEN, EMPTY_OUTPUT, ERROR_LINE_RE, FENCE_CLOSE, FENCE_OPEN_RE, FINISH_EOS,
    FINISH_LENGTH, FINISH_STOP, OUTPUT_CLOSE, OUTPUT_OPEN, STOP_STRINGS, TRUNCATION_MARKER, Budget,
    end_reason, find_snippets, find_stop, format_output, format_result, last_box, last_boxed,
    output_block, output_blocks, shows_error, strip_output_blocks, trailing_snippet,
)

# smolagents is optional at import time: sections 1-5 (the protocol and the prompts) are plain
# Python, and rollout.py uses them on machines without any ML stack. Only MathAgent
# (section 6), the model backends (section 7) and the CLI need it. When it is installed it is
# imported here, so rewards.py imports protocol.py instead of this module.
try:
    from smolagents import CodeAgent, OpenAIModel, VLLMModel
    from smolagents.agents import EMPTY_PROMPT_TEMPLATES, ActionOutput, ToolOutput
    from smolagents.memory import ActionStep, ToolCall
    from smolagents.models import ChatMessage, MessageRole, Model, TokenUsage
    from smolagents.monitoring import LogLevel
    from smolagents.utils import AgentGenerationError

    HAVE_SMOLAGENTS = True
except ImportError:  # the protocol still works; MathAgent says what to install
    CodeAgent = VLLMModel = object  # placeholders so the classes below can be defined
    HAVE_SMOLAGENTS = False

SMOLAGENTS_MISSING = "smolagents is not installed: run `pip install smolagents==1.26.0` (or `make install`)"

# ---------------------------------------------------------------------------
# 1) The protocol: delimiters, stop strings, output blocks, and 2) the final answer
# ---------------------------------------------------------------------------
# Both live in protocol.py (imported at the top, and re-exported: agent.find_snippets etc.),
# because this module imports smolagents and rewards.py must read traces without it.

# ---------------------------------------------------------------------------
# 3) When a trajectory ends
# ---------------------------------------------------------------------------

# Budget, the FINISH_* reasons and end_reason() live in protocol.py (imported at the top and
# re-exported), because rollout.py applies the same rules without smolagents.


# ---------------------------------------------------------------------------
# 4) The prompts: instruction, solved examples, baseline template (prompts/*.txt)
# ---------------------------------------------------------------------------

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
"""Plain text files: agent_instruction.txt, examples.txt, baseline.txt."""

MODES = ("agent", "baseline")
"""agent: instruction and solved examples, agent calls run. baseline: no agent at all (the
paper's Baseline and +GRPO ablations)."""
LAYOUTS = ("system", "turns")
"""Where the solved examples go: inside the system prompt (the default; the paper only says 4 are included)
or as earlier user/assistant chat turns (what a 135M model needs to call the tool correctly)."""

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


@functools.cache
def load_examples() -> tuple[Example, ...]:
    """The solved examples shown to the agent, in order."""
    return tuple(parse_examples((PROMPTS_DIR / "examples.txt").read_text(encoding="utf-8")))


@functools.cache
def read_prompt(name: str) -> str:
    """A file of prompts/ as the model sees it (the file's final newline is not part of it)."""
    return (PROMPTS_DIR / name).read_text(encoding="utf-8").removesuffix("\n")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def shown_examples(examples: int | None = None) -> tuple[Example, ...]:
    """The solved examples a prompt shows: all of them (None, the paper's 4), or the LAST
    `examples` of prompts/examples.txt -- the file puts last the short ones that open with the
    agent call, which a small model imitates (its note says why). Fewer examples make a shorter
    prompt: the CPU miniature (recipes/cpu-mini.yaml) shows 2, which halves the prompt and with
    it most of a CPU training step.

    >>> [len(shown_examples()), len(shown_examples(2))]
    [4, 2]
    >>> shown_examples(1) == shown_examples()[-1:]
    True
    """
    every = load_examples()
    if examples is None:
        return every
    if not 1 <= examples <= len(every):
        raise ValueError(f"examples must be between 1 and {len(every)} (prompts/examples.txt), not {examples}")
    return every[len(every) - examples:]


def system_prompt(mode: str = "agent", layout: str = "system", examples: int | None = None) -> str | None:
    """The system message of build_messages (None in baseline mode, which has none)."""
    _check_choice("mode", mode, MODES)
    _check_choice("layout", layout, LAYOUTS)
    if mode == "baseline":
        return None
    text = read_prompt("agent_instruction.txt")
    if layout == "system":
        shown = [
            SYSTEM_LAYOUT_EXAMPLE.format(n=n, problem=ex.problem, solution=ex.solution)
            for n, ex in enumerate(shown_examples(examples), 1)
        ]
        text = "\n\n".join([text, SYSTEM_LAYOUT_INTRO, *shown])
    return text


def build_messages(problem: str, mode: str = "agent", layout: str = "system",
                   examples: int | None = None) -> list[dict]:
    """The chat messages that pose one problem, before the model answers. Pure: no tokenizer.

    mode "agent": a system message with the instruction (prompts/agent_instruction.txt), the
    solved examples (prompts/examples.txt), then the problem as the user message. Layout
    "system" writes the examples into the system message (the default); layout "turns"
    gives each one as a user turn (its problem) and an assistant turn (its solution).
    mode "baseline": one user message, prompts/baseline.txt with the problem filled in. There
    are no examples, so the layout changes nothing. examples: how many solved examples to show
    (None: all 4, the paper; see shown_examples).

    rollout.py renders these with `apply_chat_template(..., add_generation_prompt=True)` and
    continues token by token; MathAgent appends the assistant message written so far.

    >>> [m["role"] for m in build_messages("1+1?")]
    ['system', 'user']
    >>> [m["role"] for m in build_messages("1+1?", layout="turns")][:4]
    ['system', 'user', 'assistant', 'user']
    >>> build_messages("1+1?", mode="baseline")[0]["content"].splitlines()[0]
    '1+1?'
    """
    system = system_prompt(mode, layout, examples)
    if system is None:
        return [{"role": "user", "content": read_prompt("baseline.txt").replace("{problem}", problem)}]
    messages = [{"role": "system", "content": system}]
    if layout == "turns":
        for ex in shown_examples(examples):
            messages += [{"role": "user", "content": ex.problem}, {"role": "assistant", "content": ex.solution}]
    messages.append({"role": "user", "content": problem})
    return messages



# A warm-up workload for small, untrained models. The paper's prompt (above) assumes a model that
# already reasons; the untrained 135M model used on CPU here called the tool on 0 of 20 products
# with layout "system" and 16 of 20 with "turns" (greedy). With these three solved products as
# earlier chat turns it calls the tool on most 3-digit products even when sampling at T=1, so
# tests, benchmarks and `make demo` have a real agent loop to exercise.

ARITHMETIC_SYSTEM = ("You solve math problems. Write Python between <tool_call> and </tool_call>; its output "
                     "appears in an ```output block. Then give the answer as \\boxed{answer}.")
ARITHMETIC_EXAMPLES = ((123, 456), (215, 307), (999, 101))


def arithmetic_messages(a: int, b: int) -> list[dict]:
    """Chat messages asking for a * b, after three solved products as earlier turns.

    >>> m = arithmetic_messages(12, 34)
    >>> [x["role"] for x in m][:3], m[-1]["content"]
    (['system', 'user', 'assistant'], 'What is 12 * 34?')
    """
    msgs = [{"role": "system", "content": ARITHMETIC_SYSTEM}]
    for x, y in ARITHMETIC_EXAMPLES:
        msgs += [{"role": "user", "content": f"What is {x} * {y}?"},
                 {"role": "assistant", "content": f"{CALL_OPEN}\nprint({x} * {y})\n{CALL_CLOSE}"
                  + format_output(f"{x * y}\n") + f"The answer is \\boxed{{{x * y}}}."}]
    return msgs + [{"role": "user", "content": f"What is {a} * {b}?"}]


def arithmetic_problems(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """n seeded pairs of 3-digit factors; the exact answer of each is a * b.

    >>> arithmetic_problems(2, seed=0)
    [(964, 494), (876, 530)]
    """
    import random

    rng = random.Random(seed)
    return [(rng.randint(100, 999), rng.randint(100, 999)) for _ in range(n)]

# ---------------------------------------------------------------------------
# 5) Same-turn continuation: chat templates, and chunks that stopped on a stop string
# ---------------------------------------------------------------------------

_CONTINUE_HEAD = (
    "{#- deepmath (agent.py, section 5): continue a final assistant message -#}"
    "{%- if messages and messages[-1]['role'] == 'assistant' -%}"
    "{%- if messages[-1]['content'] is string -%}"
    "{%- set deepmath_open_text = messages[-1]['content'] -%}"
    "{%- else -%}"
    "{%- set deepmath_open_text = messages[-1]['content'] | map(attribute='text') | join -%}"
    "{%- endif -%}"
    "{%- set messages = messages[:-1] -%}"
    "{%- set add_generation_prompt = true -%}"
    "{%- else -%}"
    "{%- set deepmath_open_text = '' -%}"
    "{%- endif -%}"
)
_CONTINUE_TAIL = "{{- deepmath_open_text -}}"


def continuation_chat_template(chat_template: str) -> str:
    """Wrap a Jinja chat template so that a final assistant message is continued, not closed.

    With the wrapper, messages that end with an assistant message render as: the messages
    before it, the model's own generation prompt (e.g. "<|im_start|>assistant\\n", or
    "...assistant\\n<think>\\n" for a thinking model), then the assistant text verbatim. That
    is exactly the text the model saw while writing it, with the executor output appended,
    so generation goes on inside the same message. Other conversations render unchanged.
    Idempotent.
    """
    if chat_template.startswith(_CONTINUE_HEAD):
        return chat_template
    return _CONTINUE_HEAD + chat_template + _CONTINUE_TAIL


def continuation_chat_template_of(model: str) -> str:
    """continuation_chat_template of a model's own template (for `vllm ... --chat-template`)."""
    from transformers import AutoTokenizer  # heavy: only when asked

    from models import resolve_model

    template = AutoTokenizer.from_pretrained(resolve_model(model)).chat_template
    if not isinstance(template, str):
        raise ValueError(f"model {model!r} has no single chat template to wrap")
    return continuation_chat_template(template)


def enable_continuation(model) -> None:
    """Make a smolagents model continue the final assistant message it is given. Idempotent.

    Uses only public configuration (see the module contract): OpenAIServerModel gets vLLM's
    continue_final_message in its extra_body; models that render their own prompt
    (TransformersModel, VLLMModel) get the wrapped chat template through
    apply_chat_template_kwargs. Other models are left alone: they must continue by themselves.
    """
    if HAVE_SMOLAGENTS and isinstance(model, OpenAIModel):
        extra = dict(model.kwargs.get("extra_body") or {})
        extra.update(continue_final_message=True, add_generation_prompt=False)
        model.kwargs["extra_body"] = extra
        return
    template_kwargs = getattr(model, "apply_chat_template_kwargs", None)
    if template_kwargs is None:
        return
    tokenizer = getattr(model, "tokenizer", None) or getattr(getattr(model, "processor", None), "tokenizer", None)
    template = template_kwargs.get("chat_template") or getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        raise ValueError(f"{type(model).__name__}: the tokenizer has no chat template to continue messages with")
    template_kwargs["chat_template"] = continuation_chat_template(template)


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
    MathAgent._finish_of.

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
# 6) MathAgent: the DeepMath agent on smolagents
# ---------------------------------------------------------------------------

class MissingDependencyError(ImportError):
    """A package the agent needs is not installed; the message names the fix."""


@dataclass
class Solution:
    """What MathAgent.solve returns: the answer, the whole trace, and how the run went."""

    problem: str
    answer: str | None
    """Content of the trace's last \\boxed{} (None when there is none)."""
    trace: str
    """The one assistant message: model text, agent calls and inserted output blocks."""
    end_reason: str
    """answer | no_snippet | max_steps | max_tokens (see end_reason)."""
    calls: int
    """Agent calls run."""
    errors: int
    """Agent calls whose output was an error (including timeouts)."""
    tokens: int
    """Completion tokens: model text and inserted executor output."""
    seconds: float
    layout: str


def _tokenizer_of(model):
    """The tokenizer of a smolagents model, for protocol.output_block."""
    tok = getattr(model, "tokenizer", None) or getattr(getattr(model, "processor", None), "tokenizer", None)
    if tok is not None:
        return tok
    try:
        from transformers import AutoTokenizer

        from models import resolve_model

        return AutoTokenizer.from_pretrained(resolve_model(model.model_id))
    except Exception as e:
        raise ValueError(f"MathAgent needs the model's tokenizer to cut executor output like rollout.py does, and "
                         f"could not load one for {model.model_id!r} ({first_line(e)}): pass tokenizer=") from e


class MathAgent(CodeAgent):
    """The DeepMath agent: a smolagents CodeAgent whose steps continue one assistant message.

    model: a smolagents model (TransformersModel, VLLMModel/VLLMAgentModel, OpenAIServerModel
    against vLLM, or any Model that continues a final assistant message). The agent
    configures it for same-turn continuation (enable_continuation).
    layout: where the solved examples go ("system", the default, or "turns").
    max_steps: agent calls per problem (Budget.max_steps); smolagents gets max_steps + 1 turns.
    max_tokens: completion token budget per problem (Budget.max_tokens).
    max_output_tokens: executor output tokens shown per call (Budget.max_output_tokens), cut by
    protocol.output_block as in rollout.py.
    tokenizer: the model's tokenizer, for that cut; None takes the model's own (TransformersModel,
    VLLMModel) or loads one from its model_id (OpenAIServerModel serving a local directory).
    sandbox_kwargs: for executor.SandboxExecutor (timeout_s, memory_mb, max_output_chars).
    Each run() gets a new SandboxExecutor, so each problem starts with a fresh session.
    Other keyword arguments go to CodeAgent (e.g. verbosity_level, step_callbacks).

    The snippet runs through the executor's Sandbox (`python_executor.sandbox.run`), not
    through PythonExecutor.__call__: the output block shows printed text and the error
    together, and __call__ returns the one or raises the other.
    """

    def __init__(
        self,
        model,
        *,
        layout: str = "system",
        max_steps: int = Budget.max_steps,
        max_tokens: int = Budget.max_tokens,
        max_output_tokens: int = Budget.max_output_tokens,
        tokenizer=None,
        sandbox_kwargs: dict | None = None,
        **kwargs,
    ):
        if not HAVE_SMOLAGENTS:
            raise MissingDependencyError(SMOLAGENTS_MISSING)
        _check_choice("layout", layout, LAYOUTS)
        enable_continuation(model)
        self.sandbox_kwargs = dict(sandbox_kwargs or {})
        self.layout = layout
        self.budget = Budget(max_tokens=max_tokens, max_steps=max_steps, max_output_tokens=max_output_tokens)
        self.max_output_tokens = max_output_tokens
        self._tokenizer = tokenizer  # found on the model at the first output block if None
        self._reset_counters()
        super().__init__(
            tools=[],
            model=model,
            # smolagents' own ReAct system prompt is never sent; ours comes from prompts/
            prompt_templates={**EMPTY_PROMPT_TEMPLATES, "system_prompt": system_prompt("agent", layout)},
            executor=self._new_executor(),
            code_block_tags=(CALL_OPEN, CALL_CLOSE),
            max_steps=max_steps + 1,  # smolagents counts model turns: one more than agent calls
            **kwargs,
        )

    # -- what the agent has written so far ------------------------------------------------

    def _reset_counters(self) -> None:
        self.calls = self.errors = self.tokens = 0
        self.end_reason: str | None = None
        self._prompt_tokens: int | None = None

    @property
    def trace(self) -> str:
        """The one assistant message so far: every chunk, each followed by its output block."""
        return "".join(
            step.model_output + (step.observations or "")
            for step in self.memory.steps
            if isinstance(step, ActionStep) and step.model_output
        )

    def initialize_system_prompt(self) -> str:
        # used by smolagents' memory and logs; taken verbatim (no Jinja: examples have braces)
        return system_prompt("agent", self.layout)

    def write_memory_to_messages(self, summary_mode: bool = False) -> list:
        """Step 1: the prompt messages and the assistant message written so far (even if empty)."""
        messages = build_messages(self.task, "agent", self.layout)
        messages.append({"role": "assistant", "content": self.trace})
        # smolagents' message cleaner expects content as a list of text parts
        return [ChatMessage(role=MessageRole(m["role"]), content=[{"type": "text", "text": m["content"]}]) for m in messages]

    # -- one step: generate a chunk, maybe run its snippet ----------------------------------

    def _step_stream(self, memory_step: ActionStep):
        before = self.trace
        # 1) the prompt, then the assistant message so far
        messages = self.write_memory_to_messages()
        memory_step.model_input_messages = messages
        # 2) continue that message until an agent call closes or the model ends
        try:
            reply = self.model.generate(messages, stop_sequences=list(STOP_STRINGS))
        except Exception as e:  # a backend failure is not the model's fault: stop the run
            raise AgentGenerationError(f"Error in generating model output:\n{e}", self.logger) from e
        length, stop_reason = self._finish_of(reply)
        chunk, finish = close_chunk(reply.content or "", length=length, stop_reason=stop_reason)
        memory_step.model_output_message = reply
        memory_step.model_output = chunk
        memory_step.token_usage = reply.token_usage
        self._count_tokens(reply, chunk)
        # 3) does the trajectory end here?
        reason = end_reason(chunk, finish, self.calls, self.tokens, self.budget)
        snippet = trailing_snippet(chunk) if reason is None else None
        self._log_text(chunk, snippet)
        if reason is not None:
            # 6) it does: the answer is the trace's last box (None if there is none)
            self.end_reason = reason
            answer = last_boxed(before + chunk)
            memory_step.action_output = answer
            yield ActionOutput(output=answer, is_final_answer=True)
            return
        if snippet is None:
            # the chunk closed some other fenced block (```latex ...): nothing to run, go on
            yield ActionOutput(output=None, is_final_answer=False)
            return
        # 4) run the snippet in this trajectory's sandbox session
        call = ToolCall(name="python_interpreter", arguments=snippet, id=f"call_{self.calls + 1}")
        memory_step.tool_calls = [call]
        memory_step.code_action = snippet
        yield call
        result = self.python_executor.sandbox.run(snippet)
        self.calls += 1
        self.errors += bool(result.error)
        # 5) its output block joins the same assistant message; the next step continues it
        block = self._output_block(result)
        memory_step.observations = block
        memory_step.action_output = result.stdout
        self._log_output(result)
        yield ToolOutput(id=call.id, output=result.stdout, is_final_answer=False, observation=block, tool_call=call)
        yield ActionOutput(output=None, is_final_answer=False)

    def _output_block(self, result) -> str:
        """The output block, cut by protocol.output_block: the rule rollout.py applies, in the
        model's own tokens, so inference shows the model what training showed it."""
        if self._tokenizer is None:
            self._tokenizer = _tokenizer_of(self.model)
        made = output_block(result, self._tokenizer, self.max_output_tokens)
        # a block too small for even the marker (max_output_tokens of a few tokens): the marker alone
        return made[0] if made is not None else format_output(TRUNCATION_MARKER.strip())

    def provide_final_answer(self, task: str) -> ChatMessage:
        """smolagents calls this when max_steps turns are used up: answer from the trace as is."""
        self.end_reason = "max_steps"
        return ChatMessage(role=MessageRole.ASSISTANT, content=last_boxed(self.trace))

    def _finish_of(self, reply: ChatMessage) -> tuple[bool, object]:
        """How the backend says this chunk ended: (ran out of tokens, stop reason). The stop
        reason is vLLM's: the stop string it matched, or None for EOS; VLLMAgentModel puts it
        in `raw`, a vLLM OpenAI server in each choice (`stop_reason`, vLLM's extension of the
        API). UNKNOWN where the backend does not say (TransformersModel, other servers): then
        close_chunk's text rule decides. Running out of tokens comes from the finish reason
        where there is one, else from the token count."""
        raw = reply.raw
        choices = getattr(raw, "choices", None)
        if isinstance(raw, dict):
            finish, stop_reason = raw.get("finish_reason"), raw.get("stop_reason", UNKNOWN)
        elif choices:
            finish, stop_reason = choices[0].finish_reason, getattr(choices[0], "stop_reason", UNKNOWN)
        else:
            finish, stop_reason = None, UNKNOWN
        if finish is not None:
            return finish == "length", stop_reason if finish == "stop" else UNKNOWN
        kwargs = getattr(self.model, "kwargs", {})
        limit = kwargs.get("max_new_tokens") or kwargs.get("max_tokens")
        return bool(limit and reply.token_usage and reply.token_usage.output_tokens >= limit), UNKNOWN

    def _count_tokens(self, reply: ChatMessage, chunk: str) -> None:
        """Completion tokens so far, executor output included. Each request re-sends the prompt
        and the whole trace, so its input tokens minus the first request's are the trace."""
        usage = reply.token_usage
        if usage is None:  # a backend that reports nothing: about 4 characters per token
            self.tokens += len(chunk) // 4 + 1
            return
        if self._prompt_tokens is None:
            self._prompt_tokens = usage.input_tokens
        self.tokens = usage.input_tokens - self._prompt_tokens + usage.output_tokens

    # -- runs ------------------------------------------------------------------------------

    def _new_executor(self):
        from executor import SandboxExecutor  # its worker process starts on the first snippet

        return SandboxExecutor(**self.sandbox_kwargs)

    def run(self, task: str, *args, reset: bool = True, **kwargs):
        """smolagents' run(); a reset run (the default) gets a fresh sandbox session."""
        if reset:
            self._reset_counters()
            self.python_executor.cleanup()
            self.python_executor = self._new_executor()
        return super().run(task, *args, reset=reset, **kwargs)

    def solve(self, problem: str) -> Solution:
        """Run the agent on one problem and return the answer with its whole trace."""
        start = time.perf_counter()
        self.run(problem)
        return Solution(
            problem=problem,
            answer=last_boxed(self.trace),
            trace=self.trace,
            end_reason=self.end_reason or "max_steps",
            calls=self.calls,
            errors=self.errors,
            tokens=self.tokens,
            seconds=time.perf_counter() - start,
            layout=self.layout,
        )

    # -- the console view (smolagents' logger: rich, and silent at LogLevel.OFF) -------------

    def _log_text(self, chunk: str, snippet: str | None) -> None:
        from rich.text import Text

        text = chunk
        if snippet is not None:  # the snippet is shown on its own, highlighted
            if chunk.rstrip().endswith(CALL_CLOSE):
                text = chunk[: chunk.rfind(CALL_OPEN)]
            else:
                text = chunk[: list(FENCE_OPEN_RE.finditer(chunk))[-1].start()]
        if text.strip():
            self.logger.log(Text(text.strip()), level=LogLevel.INFO)
        if snippet is not None:
            self.logger.log_code(title=f"Agent call {self.calls + 1}", content=snippet, level=LogLevel.INFO)

    def _log_output(self, result) -> None:
        from rich.panel import Panel
        from rich.text import Text

        body = format_result(result)[len("\n" + OUTPUT_OPEN): -len(OUTPUT_CLOSE)]
        title, style = ("error", "red") if result.error else ("output", "green")
        self.logger.log(Panel(Text(body), title=title, title_align="left", border_style=style), level=LogLevel.INFO)


# ---------------------------------------------------------------------------
# 7) Model backends: the smolagents model for --backend
# ---------------------------------------------------------------------------

class VLLMAgentModel(VLLMModel):
    """smolagents' VLLMModel, made to work with vLLM 0.32 and to take sampling settings.

    smolagents 1.26's VLLMModel.__init__ imports vllm.transformers_utils.tokenizer, which vLLM
    0.32 no longer has, and its generate() passes sampling kwargs on to LLM.generate, which
    rejects them (so it can only decode greedily, up to 2048 tokens). This subclass builds the
    engine itself (or reuses `llm`: one vLLM engine per process is plenty), and generate()
    puts temperature, max_tokens and seed into SamplingParams (a seed advanced per request). The prompt is rendered like
    VLLMModel does, through apply_chat_template_kwargs, so enable_continuation works.
    """

    def __init__(
        self,
        model_id: str,
        model_kwargs: dict | None = None,
        apply_chat_template_kwargs: dict | None = None,
        llm=None,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        seed: int | None = None,
        **kwargs,
    ):
        # VLLMModel.__init__ is skipped on purpose: its import fails on vLLM 0.32 (see above)
        Model.__init__(self, model_id=model_id, **kwargs)
        if llm is None:
            from vllm import LLM

            llm = LLM(model=model_id, **(model_kwargs or {}))
        self.model_kwargs = model_kwargs or {}
        self.apply_chat_template_kwargs = dict(apply_chat_template_kwargs or {})
        self.model = llm
        self.tokenizer = llm.get_tokenizer()
        self._is_vlm = False
        self.sampling = dict(temperature=temperature, max_tokens=max_tokens, seed=seed)
        self._requests = 0  # a seeded model gives each request its own seed, as rollout.py does

    def generate(self, messages, stop_sequences=None, response_format=None, tools_to_call_from=None, **kwargs) -> ChatMessage:
        from vllm import SamplingParams, TokensPrompt

        if response_format is not None or tools_to_call_from:
            raise ValueError("VLLMAgentModel supports plain text generation only")
        chat = self._prepare_completion_kwargs(messages=messages, flatten_messages_as_text=True)["messages"]
        prompt_ids = self.tokenizer.apply_chat_template(
            chat, add_generation_prompt=True, tokenize=True, return_dict=False, **self.apply_chat_template_kwargs
        )
        sampling = {**self.sampling, **kwargs}
        if sampling.get("seed") is not None:  # not one random stream reused by every chunk
            sampling["seed"] += 104_729 * self._requests
        self._requests += 1
        params = SamplingParams(stop=list(stop_sequences or []), **sampling)
        out = self.model.generate([TokensPrompt(prompt_token_ids=prompt_ids)], params, use_tqdm=False)[0].outputs[0]
        return ChatMessage(
            role=MessageRole.ASSISTANT,
            content=out.text,
            raw={"finish_reason": out.finish_reason, "stop_reason": out.stop_reason},
            token_usage=TokenUsage(input_tokens=len(prompt_ids), output_tokens=len(out.token_ids)),
        )

    def cleanup(self) -> None:
        """Stop the engine (its core runs in a child process)."""
        from models import shutdown_vllm

        shutdown_vllm(self.model)
        self.model = None


BACKENDS = ("transformers", "vllm", "openai")


def make_model(cfg: "Config"):
    """The smolagents model for cfg.backend (heavy imports happen here, not at import time)."""
    if not HAVE_SMOLAGENTS:
        raise MissingDependencyError(SMOLAGENTS_MISSING)
    _check_choice("backend", cfg.backend, BACKENDS)
    from models import resolve_model

    model_id = resolve_model(cfg.model)
    if cfg.backend == "openai":
        from smolagents import OpenAIServerModel

        model = OpenAIServerModel(
            model_id=model_id, api_base=cfg.api_base, api_key=cfg.api_key,
            temperature=cfg.temperature, max_tokens=cfg.max_new_tokens, seed=cfg.seed,
        )
        _check_server(model, cfg.api_base)
        return model
    if cfg.backend == "vllm":
        from models import vllm_engine_kwargs

        return VLLMAgentModel(
            model_id,
            # the project's engine settings (models.py; on CPU they fix the KV cache size, which
            # then takes precedence over gpu_memory_utilization), with this CLI's own choices
            model_kwargs=vllm_engine_kwargs(max_model_len=cfg.max_model_len, seed=cfg.seed,
                                            gpu_memory_utilization=cfg.gpu_memory_utilization),
            temperature=cfg.temperature, max_tokens=cfg.max_new_tokens, seed=cfg.seed,
        )
    import torch
    from smolagents import TransformersModel

    sampling = dict(do_sample=True, temperature=cfg.temperature) if cfg.temperature > 0 else dict(do_sample=False)
    torch.manual_seed(cfg.seed)
    # the checkpoint's dtype on GPU; on CPU float32, because bfloat16 matmuls are emulated
    # (several times slower) on CPUs without AVX512-BF16, such as the development machine's
    dtype = "auto" if torch.cuda.is_available() else torch.float32
    return TransformersModel(
        model_id=model_id, model_kwargs={"dtype": dtype}, max_new_tokens=cfg.max_new_tokens, **sampling
    )


def _check_server(model, api_base: str) -> None:
    """Fail early, in one line, when the server is down or serves another model."""
    try:
        served = [m.id for m in model.client.with_options(max_retries=0, timeout=10).models.list()]
    except Exception as e:
        raise ConnectionError(
            f"no OpenAI-compatible server answers at {api_base} ({first_line(e)}): start one with "
            f"`python -m vllm.entrypoints.openai.api_server --model DIR --port PORT` or pass --api-base"
        ) from e
    if model.model_id not in served:
        raise ValueError(f"the server at {api_base} serves {', '.join(served)}, not {model.model_id}: pass --model with one of those")


# ---------------------------------------------------------------------------
# 8) The command line: python agent.py "problem" --model ...
# ---------------------------------------------------------------------------

@dataclass
class Config:
    """Solve one math problem with the DeepMath agent and print its trace."""

    problem: str
    """The problem to solve (positional)."""
    model: str = "smollm2-135m"
    """smollm2-135m (embedded, works offline), a local Hugging Face checkpoint directory, or a
    hub id. With --backend openai: the model name the server serves (its --model)."""
    backend: str = "transformers"
    """transformers (in process, runs anywhere), vllm (in-process vLLM engine) or openai (a
    running vLLM OpenAI-compatible server at --api-base)."""
    layout: str = "system"
    """Where the solved examples go: system (inside the system prompt, the default) or
    turns (earlier chat turns; what makes SmolLM2-135M call the tool correctly)."""
    max_steps: int = 8
    """Agent calls per problem; a chunk that would make one more call ends the run."""
    max_tokens: int = 5000
    """Completion token budget for the whole solution: model text plus executor output."""
    max_new_tokens: int = 1024
    """Tokens the model may write between two agent calls."""
    temperature: float = 0.0
    """Sampling temperature; 0 decodes greedily."""
    seed: int = 0
    """Sampling seed."""
    snippet_timeout_s: float = 10.0
    """Wall-clock limit per snippet, in seconds."""
    api_base: str = "http://127.0.0.1:8000/v1"
    """--backend openai: the server's OpenAI-compatible base URL."""
    api_key: str = "EMPTY"
    """--backend openai: the API key (a local vLLM server accepts anything)."""
    gpu_memory_utilization: float = 0.3
    """--backend vllm: share of (GPU, or on CPU: system) memory vLLM may reserve."""
    max_model_len: int = 4096
    """--backend vllm: context length of the engine."""
    quiet: bool = False
    """Print only the final summary line, not the trace."""


CHOICES = {"backend": BACKENDS, "layout": LAYOUTS}


def parse_args(argv: list[str] | None = None) -> Config:
    """Config from the command line: one flag per field, its docstring as the help text."""
    parser = dataclass_parser(Config, "agent.py", choices=CHOICES, special={"problem": {"flag": "problem"}})
    return Config(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    from models import ModelNotFoundError

    try:
        model = make_model(cfg)
    except (MissingDependencyError, ModelNotFoundError, ValueError, ConnectionError) as e:
        return fail(str(e))
    except Exception as e:  # e.g. a hub id that is not in the offline cache
        return fail(f"could not load model {cfg.model!r} with --backend {cfg.backend}: {first_line(e)}")
    agent = MathAgent(
        model,
        layout=cfg.layout,
        max_steps=cfg.max_steps,
        max_tokens=cfg.max_tokens,
        sandbox_kwargs=dict(timeout_s=cfg.snippet_timeout_s),
        verbosity_level=LogLevel.OFF if cfg.quiet else LogLevel.INFO,
    )
    try:
        solution = agent.solve(cfg.problem)
    except AgentGenerationError as e:
        hint = f"; is a vLLM server running at {cfg.api_base}?" if cfg.backend == "openai" else ""
        return fail(f"the model failed: {first_line(e.__cause__ or e)}{hint}")
    finally:
        agent.cleanup()
        if hasattr(model, "cleanup") and cfg.backend == "vllm":
            model.cleanup()
    print(
        f"answer: {solution.answer}  |  end: {solution.end_reason}  |  agent calls: {solution.calls}"
        f" ({solution.errors} errors)  |  tokens: {solution.tokens}  |  {solution.seconds:.1f} s"
        f"  |  model: {cfg.model}  backend: {cfg.backend}  layout: {cfg.layout}"
    )
    return 0


if __name__ == "__main__":  # the guard vLLM's engine start-up needs
    sys.exit(main())
