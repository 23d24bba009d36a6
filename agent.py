"""
agent.py -- the DeepMath agent: MathAgent, a smolagents CodeAgent whose steps continue one
assistant message.

Paper ("How it works", "Agent Interface", "In-context Learning"): while it reasons, the model
may write ordinary text or an *agent call*, a short Python snippet between delimiters. A
sandbox runs the snippet and its output is written back into the same trace, so the tokens
that follow can use the result. The paper builds this agent with smolagents and serves the
model with vLLM. The interface itself (the prompts, the delimiters, the output blocks, the
scanners, the budget) is protocol.py's; this module is the loop that runs it on smolagents.

Data flow for one problem (the numbers match the comments in MathAgent._step_stream):

  1. protocol.build_messages(problem, "agent", layout) -> chat messages (the instruction and
     the 4 solved examples, then the problem); the assistant message written so far (empty at
     first) is appended to them.
  2. The model continues that assistant message until it closes an agent call
     (protocol.STOP_STRINGS) or ends; protocol.close_chunk() puts back the stop string the
     backend dropped.
  3. protocol.end_reason() decides whether the trajectory ends after this chunk: a final
     answer, no snippet, the step limit or the token budget.
  4. Otherwise protocol.trailing_snippet() is the snippet, and the trajectory's
     executor.Sandbox session runs it (names persist from one snippet to the next).
  5. protocol.output_block() renders its output block, cut in the model's tokens as rollout.py
     cuts it; it is appended to the SAME assistant message and generation continues (back to 2).
  6. The answer is protocol.last_boxed() of the trace.
Beneath MathAgent: enable_continuation (how each smolagents model is made to continue a final
assistant message), the model for --backend (VLLMAgentModel, make_model), the command line.

One assistant message, not smolagents' ReAct turns
--------------------------------------------------
smolagents' CodeAgent closes the model's message after each code block, returns the result as
a new user message ("Observation: ..."), and ends only when the code calls final_answer().
DeepMath keeps ONE assistant message: the output block is inserted into it and the model
continues it -- for a thinking model such as Qwen3-4B-Thinking, inside its <think> block. The
paper says the output "is inserted into the trace and used for context" (Figure 2) and that
its agent generates the GRPO completions (Figure 1); one message is our reading. Why: the model
writes one trace per problem, and that trace is what is trained; TRL's GRPO trains exactly one
completion per prompt (rollout.py produces that shape), and inference must use the format the
model was trained on; Qwen3 templates drop the <think> part of assistant turns before the latest
user message, so a ReAct observation would lose the reasoning behind every call. The run ends
when a chunk ends without an agent call; its last \\boxed{} is the answer (no final_answer()).

MathAgent subclasses CodeAgent (a configured CodeAgent would still run ReAct turns, stop on
"Observation:", need final_answer() and send smolagents' long system prompt). It overrides
_step_stream, the method smolagents leaves to child classes (one step = one chunk and, if the
chunk closed an agent call, one snippet run), write_memory_to_messages (step 1) and
provide_final_answer (at the step limit: the trace's last box, no extra model call). The rest
is smolagents': run() and streaming, memory (one ActionStep per chunk), callbacks, logging,
max_steps, and the executor slot, filled with executor.SandboxExecutor (a new one, hence a
fresh session, per problem). smolagents counts model turns; MathAgent's max_steps counts agent
calls, as protocol.Budget and rollout.py do, so it hands max_steps + 1 to CodeAgent. Nothing is
monkey-patched: constructor arguments, public attributes and subclasses only.

Departures from the paper
-------------------------
  - The prompts (our own instruction and examples, and their layout): protocol.py's contract.
  - MathAgent checks the token budget between chunks, so a chunk may run past it by at most
    max_new_tokens (rollout.py enforces it token by token). Output blocks are cut by the same
    rule as in rollout.py (protocol.output_block, in the model's tokens), but smolagents models
    take text, so each request re-tokenises the whole trace: where a block meets the model's
    text, the tokens may merge differently from the rollout's, which tokenises each piece alone.
  - smolagents is needed only by MathAgent, its models and the CLI: `import agent` works
    without it (MathAgent then says what to install). Nothing else imports this module.

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

import sys
import time
from dataclasses import dataclass

import executor
from cli import dataclass_parser, fail, first_line
from models import ModelNotFoundError, continuation_chat_template, resolve_model, shutdown_vllm, vllm_engine_kwargs
from protocol import (
    BACKENDS, CALL_CLOSE, CALL_OPEN, FENCE_OPEN_RE, LAYOUTS, OUTPUT_CLOSE, OUTPUT_OPEN, STOP_STRINGS,
    TRUNCATION_MARKER, UNKNOWN, Budget, build_messages, check_choice, close_chunk, derive_seed, end_reason,
    format_output, format_result, last_boxed, output_block, system_prompt, trailing_snippet,
)

# smolagents is optional at import time: only MathAgent, the model backends and the CLI need it,
# and each says what to install when it is missing.
try:
    from smolagents import CodeAgent, OpenAIModel, VLLMModel
    from smolagents.agents import EMPTY_PROMPT_TEMPLATES, ActionOutput, ToolOutput
    from smolagents.memory import ActionStep, ToolCall
    from smolagents.models import ChatMessage, MessageRole, Model, TokenUsage
    from smolagents.monitoring import LogLevel
    from smolagents.utils import AgentGenerationError

    HAVE_SMOLAGENTS = True
except ImportError:  # MathAgent says what to install
    CodeAgent = VLLMModel = object  # placeholders so the classes below can be defined
    HAVE_SMOLAGENTS = False

SMOLAGENTS_MISSING = "smolagents is not installed: run `pip install smolagents==1.26.0` (or `make install`)"


# ---------------------------------------------------------------------------
# MathAgent: the DeepMath agent on smolagents
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
        check_choice("layout", layout, LAYOUTS)
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
        # its worker process starts on the first snippet
        return executor.SandboxExecutor(**self.sandbox_kwargs)

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
# Same-turn continuation: each smolagents model continues the final assistant message
# ---------------------------------------------------------------------------

def enable_continuation(model) -> None:
    """Make a smolagents model continue the final assistant message it is given. Idempotent.

    Uses only public configuration, per model class:
      - TransformersModel (and VLLMModel) render prompts with add_generation_prompt=True, hard
        coded, and transformers refuses continue_final_message together with it. They get,
        through their public `apply_chat_template_kwargs`, models.continuation_chat_template of
        the model's own template: when the last message is the assistant's, it renders the
        messages before it with the generation prompt and then the assistant text verbatim,
        with no end of turn. That is the string rollout.py continues from, and it stays inside
        <think> for thinking templates.
      - OpenAIServerModel against a vLLM server: vLLM's chat endpoint accepts
        continue_final_message=true with add_generation_prompt=false, added to the model's
        extra_body. Exact for templates that render an assistant message verbatim (ChatML:
        SmolLM2, Qwen non-thinking). A thinking template (Qwen3-Thinking) would render the final
        assistant message after a closed, empty <think></think>; for such a model start the
        server with `--chat-template FILE`, FILE written by models.continuation_chat_template_of(MODEL).
      - VLLMModel: smolagents 1.26's class does not start with vLLM 0.32; VLLMAgentModel (below)
        renders like it does, through apply_chat_template_kwargs, so the first case applies.
      - Any other smolagents Model is left alone: it receives messages ending with an assistant
        message and must continue that message (tests/test_agent.py's scripted model does).
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


def _tokenizer_of(model):
    """The tokenizer of a smolagents model, for protocol.output_block."""
    tok = getattr(model, "tokenizer", None) or getattr(getattr(model, "processor", None), "tokenizer", None)
    if tok is not None:
        return tok
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(resolve_model(model.model_id))
    except Exception as e:
        raise ValueError(f"MathAgent needs the model's tokenizer to cut executor output like rollout.py does, and "
                         f"could not load one for {model.model_id!r} ({first_line(e)}): pass tokenizer=") from e


# ---------------------------------------------------------------------------
# Model backends: the smolagents model for --backend
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
        if sampling.get("seed") is not None:  # not one random stream reused by every chunk: rollout's
            sampling["seed"] = derive_seed(sampling["seed"], self._requests)  # rule for a prompt's c-th call
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
        shutdown_vllm(self.model)
        self.model = None


def make_model(cfg: "Config"):
    """The smolagents model for cfg.backend (heavy imports happen here, not at import time)."""
    if not HAVE_SMOLAGENTS:
        raise MissingDependencyError(SMOLAGENTS_MISSING)
    check_choice("backend", cfg.backend, BACKENDS)
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
# The command line: python agent.py "problem" --model ...
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
    """transformers (in process, runs anywhere; the default here, so one problem needs no engine),
    vllm (in-process vLLM engine) or openai (a running vLLM OpenAI-compatible server at
    --api-base). The names are protocol.BACKENDS, as on every command line."""
    layout: str = "system"
    """Where the solved examples go: system (inside the system prompt, the default) or
    turns (earlier chat turns; what makes SmolLM2-135M call the tool correctly)."""
    max_steps: int = Budget.max_steps
    """Agent calls per problem; a chunk that would make one more call ends the run
    (protocol.Budget's default, as in training)."""
    max_tokens: int = Budget.max_tokens
    """Completion token budget for the whole solution: model text plus executor output
    (protocol.Budget's default, as in training)."""
    max_new_tokens: int = 1024
    """Tokens the model may write between two agent calls."""
    temperature: float = 0.0
    """Sampling temperature; 0 decodes greedily (this CLI's choice: one reproducible trace;
    protocol.EVAL_SAMPLING holds the paper's evaluation settings)."""
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
