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
     template (encode_prompt). One `Trajectory` per prompt; its Sandbox session is opened on
     its first snippet.
  2. Every active trajectory asks the backend for its next chunk, continuing from its own ids
     (prompt_ids + completion_ids), stopping at protocol.stop_strings(budget) (STOP_STRINGS; none
     when max_steps is 0, the agent off: evaluate.py's baseline mode generates straight
     through), EOS, its remaining token budget, or an optional per-call cap (`step_tokens`).
     A seeded run gives every request its own seed (request_seed: protocol.derive_seed of the
     run's seed, trajectory i and call c), the same in both schedules.
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
     With `max_active`, at most that many are in flight: the next prompt is admitted the
     moment one ends (continuous admission), so a long-tailed batch never runs nearly empty
     while prompts wait; evaluate.py admits every sample of a benchmark this way.
  8. Sandboxes are closed; for GRPO the trajectories are packed into the dict TRL expects
     (make_rollout_func).

Two schedules run steps 2-7 (the per-trajectory rules are the same functions in both):
  - continuous (vLLM and OpenAI servers, the default there): the whole batch runs in the engine
    at once. When a sequence stops at a tool call, its snippet starts immediately (a thread
    pool) while the engine keeps decoding the others, and its continuation joins the running
    batch as a new request. No trajectory waits for another's chunk or snippet.
  - lockstep (transformers, TRL server, or on request): ONE batched generate call per agent
    step for all active trajectories, then all that step's snippets at once
    (executor.run_batch). Simple, but each step lasts as long as its longest chunk and the
    batch thins out at its tail. bench/rollout.py measures both.

Token-exact bookkeeping. The ids are the truth; text is derived from them:
  - generation always continues from token ids, never from decoded and re-encoded text, so the
    policy is trained on exactly the sequence it was conditioned on;
  - a stop string need not end on a token boundary: the token that completes "</tool_call>"
    may carry more characters. We keep the whole token (it is what was sampled and what the
    next call is conditioned on) and cut only the text we hand to the protocol parser;
  - backends see only the new text of a call, so a stop string split across two calls (possible
    with `step_tokens`) is found by the loop itself (_stop_across_calls, protocol.stop_token);
  - `Trajectory.text` is built piece by piece: each model segment decoded from its own ids, each
    output block as the string that was tokenised. The invariant, checked by the tests:
    decode(completion_ids, skip_special_tokens=True) == text, and every 0-masked span is exactly
    one inserted block.

Layout: the records and the loop (rollout() and its two schedules) first, then the rules both
schedules share, then the TRL glue (make_rollout_func) and the CLI. What samples the chunks --
vLLM offline, transformers, an OpenAI server, TRL's server client, backend_for_trainer -- is
backends.py, below this module (one interface, `Backend.generate`, plus submit/poll for the
continuous schedule). The temperature schedule is train.py's, beside TemperatureSync, which
moves the loss's T with it: one concept, and only training moves T; make_rollout_func takes any
callable(trainer) -> T, so this module needs neither (train.py imports rollout, not the reverse).

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

Run:   python rollout.py "What is 347 * 829?" --model smollm2-135m --backend vllm
       (defaults: the paper's inference settings, protocol.EVAL_SAMPLING and EVAL_BUDGET; --backend
       is one of protocol.BACKENDS, openai with --api-base URL)
Tests: python -m pytest tests/test_rollout.py -q -k "not real and not cli_runs"   (unit, seconds;
       without -k the real engines too, a few minutes)
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import backends
import executor
import models
import protocol
from backends import Backend, Chunk, ContinuousBackend
from cli import fail, first_line
from protocol import (
    BACKENDS, EVAL_BUDGET, EVAL_SAMPLING, FINISH_EOS, FINISH_LENGTH, FINISH_STOP, LAYOUTS, Budget, Sampling,
    derive_seed, end_reason, find_stop, output_block, stop_token, trailing_snippet,
)

log = logging.getLogger("deepmath.rollout")


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------


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
# The loop: steps 1-8 (the rules for one trajectory are below both schedules)
# ---------------------------------------------------------------------------

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
    max_active: int | None = None,
    keep_finished: bool = True,
) -> list[Trajectory | None]:
    """Run one agent trajectory per prompt (token ids), all in one batch. Returns them in prompt
    order. sandbox_factory/run_batch default to executor.Sandbox/executor.run_batch.

    schedule: "lockstep" -- one batched generate call per step, then all of that step's snippets
        at once; "continuous" -- each sequence's snippet runs the moment its call ends and its
        continuation rejoins the running batch (needs a backend with submit/poll: VLLMBackend,
        OpenAIBackend);
        "auto" -- continuous where the backend can, else lockstep. Both produce the same kind of
        trajectories; bench/rollout.py measures what continuous buys.
    stop: the stop strings; None (the default) is protocol.stop_strings(budget): STOP_STRINGS,
        or none when budget.max_steps is 0, so a rollout without an agent generates each
        trajectory straight to EOS or its token budget (a code block it writes is just text).
    step_tokens caps the tokens one sequence samples per call (None: up to its budget).
    Seeds: with sampling.seed, trajectory i's c-th request gets request_seed(seed, i, c); with
    `seeds` (one per prompt), protocol.derive_seed(seeds[i], c) instead, so a trajectory's samples
    do not depend on its place in the batch (vLLM; transformers samples a batch from one stream).
    on_finish(i, trajectory) is called once per trajectory, from the loop's thread, soon after
    it ends (end of its step, or of the engine iteration that ended it); its sandbox session is
    closed right after (unless close_sandboxes is False), so sessions live only as long as their
    trajectory.
    max_active: at most this many trajectories in flight (None: all at once). The next prompt,
        in order, is admitted the moment one ends (continuous schedule), or at the next step
        (lockstep). A trajectory's seeds depend on its index, not on when it was admitted.
    keep_finished=False drops each trajectory once on_finish has had it (its place in the
        returned list is None): a caller that consumes results in on_finish (evaluate.py) then
        holds only the trajectories in flight, not every finished trace of the run.
    Pass `stats` to accumulate timings and counts. Lockstep logs one line per step; continuous
    one line every few seconds and one at the end."""
    if schedule not in ("auto", "lockstep", "continuous"):
        raise ValueError(f"schedule={schedule!r}: use 'auto', 'lockstep' or 'continuous'")
    can_stream = isinstance(backend, ContinuousBackend)
    if schedule == "continuous" and not can_stream:
        raise ValueError(f"backend {backend.name!r} has no submit/poll: use schedule='lockstep'")
    sandbox_factory = sandbox_factory or executor.Sandbox
    run_batch = run_batch or executor.run_batch
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"seeds: {len(seeds)} given for {len(prompts)} prompts (one per prompt)")
    if max_active is not None and max_active < 1:
        raise ValueError(f"max_active={max_active}: at least 1 trajectory must be in flight")
    if not keep_finished and on_finish is None:
        raise ValueError("keep_finished=False without on_finish would drop every trajectory unseen")
    stats = stats if stats is not None else RolloutStats()
    stop = protocol.stop_strings(budget) if stop is None else tuple(stop)
    t_start = time.perf_counter()

    def seed_of(i: int, call: int) -> int | None:
        if seeds is not None:
            return derive_seed(seeds[i], call)
        return request_seed(sampling.seed, i, call)

    # 1) one trajectory per prompt, made when it is admitted (7: at most max_active in flight)
    trajs: list[Trajectory | None] = [None] * len(prompts)
    cap = len(prompts) if max_active is None else max_active
    admission = _Admission(prompts, trajs, cap)

    def notify() -> None:
        # 7) each trajectory that ended: to the caller, its session closed, its slot freed
        for i in admission.ended():
            t = trajs[i]
            if on_finish is not None:
                on_finish(i, t)
            if close_sandboxes and t.sandbox is not None:
                t.sandbox.close()
            if not keep_finished:
                trajs[i] = None

    try:
        loop = _continuous if (schedule == "continuous" or (schedule == "auto" and can_stream)) else _lockstep
        loop(backend, trajs, admission, budget, sampling, sandbox_factory, run_batch, stop, stats, step_tokens,
             seed_of, notify)
    finally:
        # 8) sessions end with the rollout (unless the caller wants to inspect them)
        if close_sandboxes:
            for t in trajs:
                if t is not None and t.sandbox is not None:
                    t.sandbox.close()
    stats.wall_s += time.perf_counter() - t_start
    return trajs


class _Admission:
    """Which trajectories are in flight (step 7's bound). admit() makes the next trajectories,
    in prompt order, while fewer than `cap` are live; ended() hands each live one that has a
    finish_reason back once, in index order, and frees its slot. O(live) per call, so a run of
    thousands of prompts costs nothing per engine iteration for the ones not yet admitted."""

    def __init__(self, prompts, trajs: list, cap: int):
        self.prompts, self.trajs, self.cap = prompts, trajs, cap
        self.next = 0
        self.live: list[int] = []

    def admit(self) -> list[int]:
        new = []
        while self.next < len(self.prompts) and len(self.live) < self.cap:
            i = self.next
            self.next += 1
            self.trajs[i] = Trajectory(prompt_ids=list(self.prompts[i]))
            self.live.append(i)
            new.append(i)
        return new

    def ended(self) -> list[int]:
        done = [i for i in self.live if self.trajs[i].finish_reason is not None]
        if done:
            self.live = [i for i in self.live if self.trajs[i].finish_reason is None]
        return done


def request_seed(seed: int | None, i: int, call: int) -> int | None:
    """The seed of trajectory i's call-th generate request in a seeded rollout: protocol.derive_seed
    of the run's seed, i and call -- one random stream per request, in both schedules, so no two
    chunks share one. None stays None (an unseeded run).

    >>> seeds = [request_seed(1, i, c) for i in range(3) for c in range(3)]
    >>> len(set(seeds)), seeds == [request_seed(1, i, c) for i in range(3) for c in range(3)]
    (9, True)
    >>> request_seed(1, 2, 1) != request_seed(2, 2, 1), request_seed(None, 2, 1)
    (True, None)
    """
    return derive_seed(seed, i, call)


def _lockstep(backend, trajs, admission, budget, sampling, sandbox_factory, run_batch, stop, stats, step_tokens,
              seed_of, notify) -> None:
    """Steps 2-7 in lock-step: every active sequence in one generate call, then every snippet.
    Admission happens between steps: a trajectory that ended frees its slot for the next step."""
    tok = backend.tokenizer
    admission.admit()
    active = [trajs[i] for i in admission.live]
    index = {id(t): i for i, t in zip(admission.live, active)}
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

        # 7) finished trajectories leave the batch, and the next prompts take their places
        before = len(active)
        notify()
        for i in admission.admit():
            index[id(trajs[i])] = i
        active = [trajs[i] for i in admission.live]
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


def _continuous(backend, trajs, admission, budget, sampling, sandbox_factory, run_batch, stop, stats, step_tokens,
                seed_of, notify) -> None:
    """Steps 2-7 without a barrier: the engine keeps decoding the other sequences while a
    sequence's snippet runs, and its continuation joins the running batch (vLLM schedules its
    prefill beside the others' decode steps). The per-trajectory rules are the lockstep ones
    (_take_chunk, _take_result); only the order of events differs. Admission is continuous too:
    the iteration that ends a trajectory submits the next prompt's first request."""
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

    def admit() -> None:
        # 7) fill the free slots; a prompt with no room at all ends at once and frees its slot
        while True:
            new = admission.admit()
            if not new:
                return
            for i in new:
                submit(i)
            notify()

    pool = ThreadPoolExecutor(max_workers=max(1, min(len(trajs), 16)), thread_name_prefix="rollout-snippet")
    try:
        admit()
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
            admit()
            now = time.perf_counter()
            if now - last_log >= LOG_EVERY_S or not (backend.pending() or running):
                last_log = now
                log.info(
                    "rollout %.1fs: %d/%d active (%d in a snippet), generated %d tok (%.0f tok/s), "
                    "ran %d snippets (%d errors, %d timeouts), inserted %d tok, %d requests",
                    now - t_start, len(admission.live), len(trajs), len(running),
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
# The rules both schedules apply to one trajectory: room (2), a chunk (3, 4), a result (6)
# ---------------------------------------------------------------------------

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
    k = stop_token(tokenizer, chunk.token_ids, stop, before=before)
    if k is None or (k == len(chunk.token_ids) - 1 and chunk.finish == FINISH_STOP):
        return chunk
    return Chunk(chunk.token_ids[: k + 1], chunk.logprobs[: k + 1], FINISH_STOP)


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


# ---------------------------------------------------------------------------
# 1) Prompts: chat messages -> token ids
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
# 8) GRPO: TRL 1.16's GRPOTrainer(rollout_func=...)
# ---------------------------------------------------------------------------

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
    temperature: a number, a callable(trainer) such as train.TemperatureSchedule() or
        train.TemperatureSync (which moves the loss's T too), or None for the trainer's current
        `trainer.temperature`.
    backend: a Backend, a callable(trainer) -> Backend, or None for backends.backend_for_trainer.
    sandbox_factory / run_batch: default executor.Sandbox() / executor.run_batch.
    seed, step_tokens, schedule: passed to rollout() (the seed derived per global step:
        protocol.derive_seed(seed, step)).
    Sampling uses the trainer's top_p and top_k; min_p and repetition_penalty are not applied.

    The dataset's "prompt" column should hold chat messages, e.g. protocol.build_messages(problem).
    """

    def rollout_func(prompts: list, trainer) -> dict:
        # TRL contract: `prompts` is this process's slice, each prompt ALREADY repeated
        # num_generations times by the sampler; we return exactly one completion per entry.
        tok = backends.trainer_tokenizer(trainer)
        cap = trainer.max_completion_length
        b = budget or Budget(max_tokens=cap)
        if b.max_tokens > cap:
            b = dataclasses.replace(b, max_tokens=cap)
        if callable(temperature):
            t = float(temperature(trainer))
        else:
            t = float(trainer.temperature if temperature is None else temperature)
        sampling = Sampling(temperature=t, top_p=trainer.top_p, top_k=trainer.top_k or 0,
                            seed=derive_seed(seed, trainer.state.global_step))
        if backend is None:
            be = backends.backend_for_trainer(trainer)
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
    """Run a few problems through rollout() and print each trace. The defaults are protocol's:
    the paper's inference settings (EVAL_SAMPLING, EVAL_BUDGET; the model's context caps the
    tokens), the backend names (BACKENDS) and prompt layouts (LAYOUTS)."""

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("problems", nargs="+")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--backend", choices=BACKENDS, default=BACKENDS[0],
                   help="an in-process vLLM engine, transformers, or a running vLLM server (openai, --api-base)")
    p.add_argument("--api-base", default=None, help="--backend openai: the server, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--layout", choices=LAYOUTS, default="turns",
                   help="turns: the solved examples as earlier chat turns (the small default model calls the "
                        "tool then)")
    p.add_argument("--temperature", type=float, default=EVAL_SAMPLING.temperature, help="0 is greedy")
    p.add_argument("--top-p", type=float, default=EVAL_SAMPLING.top_p)
    p.add_argument("--top-k", type=int, default=EVAL_SAMPLING.top_k, help="0 disables top-k")
    p.add_argument("--seed", type=int, default=EVAL_SAMPLING.seed)
    p.add_argument("--max-tokens", type=int, default=EVAL_BUDGET.max_tokens)
    p.add_argument("--max-steps", type=int, default=EVAL_BUDGET.max_steps)
    p.add_argument("--max-output-tokens", type=int, default=EVAL_BUDGET.max_output_tokens)
    p.add_argument("--schedule", choices=["auto", "continuous", "lockstep"], default="auto",
                   help="continuous batching (vLLM, a server) or one generate call per agent step")
    a = p.parse_args(argv)
    for name in ("max_tokens", "max_steps", "max_output_tokens"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if a.temperature < 0:
        p.error("--temperature must be >= 0 (0 is greedy)")
    if a.backend == "openai" and not a.api_base:
        p.error("--backend openai needs --api-base URL (e.g. http://127.0.0.1:8000/v1)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if a.backend == "openai":
            tokenizer = models.resolve_model(a.model)  # the served model's: token ids go both ways
            try:
                be = backends.OpenAIBackend.from_server(a.api_base, tokenizer=tokenizer)
            except OSError as e:
                return fail(f"--api-base {a.api_base}: cannot reach the server ({first_line(e)})")
        elif a.backend == "transformers":
            be = backends.HFBackend.from_model(a.model)
        else:
            be = backends.VLLMBackend.from_model(a.model)
    except (models.ModelNotFoundError, ValueError) as e:
        return fail(first_line(e))
    try:
        prompts = [encode_prompt(be.tokenizer, protocol.build_messages(q, layout=a.layout)) for q in a.problems]
        budget = Budget(max_tokens=a.max_tokens, max_steps=a.max_steps, max_output_tokens=a.max_output_tokens)
        sampling = Sampling(temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, seed=a.seed)
        trajs = rollout(be, prompts, budget=budget, sampling=sampling, schedule=a.schedule)
    except ValueError as e:  # e.g. a prompt longer than the model's context
        return fail(first_line(e))
    finally:
        if isinstance(be, backends.VLLMBackend):
            models.shutdown_vllm(be.llm)  # the engine core is a child process: stop it before exiting
        elif isinstance(be, backends.OpenAIBackend):
            be.close()
    for q, t in zip(a.problems, trajs):
        print(f"=== {q}  [{t.finish_reason}, {t.num_snippets} snippets, answer {protocol.last_boxed(t.text)}]")
        print(t.text)
    return 0


if __name__ == "__main__":  # the guard vLLM's engine start-up needs
    raise SystemExit(main())
