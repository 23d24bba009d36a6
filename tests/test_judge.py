"""
Tests of judge.py and of evaluate.py --judge: the reply parser, the request against real local
HTTP servers that misbehave in each way a judge can, the bookkeeping of a judged run (statuses,
scores, resume, the settings pin, summary.json), and one run against a real vLLM server.

Run:  .venv/bin/python -m pytest tests/test_judge.py -q                 (starts the session's vLLM server)
      .venv/bin/python -m pytest tests/test_judge.py -q -k "not real"   (no vLLM; seconds)

Tier 1 (literal inputs): parse_reply on well-formed, messy and nonsense replies; the prompt.
Tier 1 (real local servers, stdlib http.server, written here): a judge that answers a verdict,
one that never answers within the timeout, one that answers nonsense, one that returns HTTP
500, one that answers HTML, and a port nobody listens on. Each gives its per-sample status,
never an exception; evaluate.run over kept samples (no engine needed) scores failures as not
correct and judges them again on resume, against another server URL (the URL is not pinned).
Tier 2 (named test_real_*): evaluate.py with the embedded SmolLM2-135M as both the policy and
the judge, served by the session's real vLLM OpenAI server (tests/conftest.py `vllm_server`):
the protocol and the bookkeeping, not the judge's quality.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest

import evaluate as E
import judge

GOOD_REPLY = "extracted_final_answer: 1\ncorrect: yes\nconfidence: 95"


def test_doctests():
    import doctest

    assert doctest.testmod(judge).failed == 0


# ---------------------------------------------------------------------------
# Tier 1: the parser and the prompt, on literal text
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("reply, verdict", [
    (GOOD_REPLY, {"extracted_answer": "1", "correct": True, "confidence": 95}),
    ("extracted_final_answer: \\frac{1}{2}\ncorrect: no\nconfidence: 70\n",
     {"extracted_answer": "\\frac{1}{2}", "correct": False, "confidence": 70}),
    # messy: markdown, spaces instead of underscores, case, punctuation, a percent sign, chatter around
    ("Here is my grading.\n\n- **Extracted final answer:** `x = 3`\n- **Correct:** YES.\n- **Confidence:** 80%\nDone.",
     {"extracted_answer": "x = 3", "correct": True, "confidence": 80}),
    # the format echoed before the answer: the last well-formed line of each field counts
    ("extracted_final_answer: the final answer, or None\ncorrect: yes or no\nconfidence: a whole number\n"
     "extracted_final_answer: 7\ncorrect: no\nconfidence: 60", {"extracted_answer": "7", "correct": False, "confidence": 60}),
    # a verdict without the other lines, or with a confidence out of range: kept, the rest None
    ("correct: no", {"extracted_answer": None, "correct": False, "confidence": None}),
    ("extracted_final_answer: None\ncorrect: no\nconfidence: 101", {"extracted_answer": None, "correct": False,
                                                                   "confidence": None}),
    # a thinking judge's reasoning is not read
    ("<think>correct: no</think>\ncorrect: yes\nconfidence: 99", {"extracted_answer": None, "correct": True,
                                                                 "confidence": 99}),
    # nonsense: no verdict
    ("The answer 42 seems plausible.", None),
    ("correct: probably", None),
    ("incorrect", None),
    ("", None),
    ("<think>correct: yes</think>", None),
])
def test_parse_reply_on_literal_replies(reply, verdict):
    assert judge.parse_reply(reply) == verdict


def test_the_prompt_holds_the_three_parts_and_its_hash_is_pinned():
    text = judge.render("Find x if 2x = {gold}.", "1", "So x is \\boxed{1}.")
    assert "Find x if 2x = {gold}." in text and "[Reference answer]\n1\n" in text and "So x is \\boxed{1}." in text
    assert "correct: yes or no" in text and "{" + "question}" not in text
    assert judge.PROMPT_SHA256 == hashlib.sha256(judge.PROMPT_PATH.read_text().encode()).hexdigest()
    assert judge.pinned("m", 256) == {"judge": "m", "judge_prompt_sha256": judge.PROMPT_SHA256,
                                      "judge_temperature": 0.0, "judge_max_tokens": 256}


# ---------------------------------------------------------------------------
# Tier 1: real local HTTP servers playing judges
# ---------------------------------------------------------------------------

class FakeJudge:
    """A real HTTP server on 127.0.0.1 that answers /v1/chat/completions. `behave(prompt)` picks
    the answer for each request: ("reply", text), ("hang", None) (no answer until the server
    closes, past any client timeout), ("http", code) or ("body", raw bytes). Requests are kept."""

    def __init__(self, behave):
        self.requests: list[dict] = []
        self.released = threading.Event()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                fake.requests.append({"path": self.path, **body})
                kind, arg = behave(body["messages"][0]["content"])
                if kind == "hang":
                    fake.released.wait(60)
                    return
                if kind == "http":
                    self.send_error(arg, "judge failure for the test")
                    return
                data = arg if kind == "body" else json.dumps(
                    {"id": "x", "object": "chat.completion", "model": body["model"],
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": arg},
                                  "finish_reason": "stop"}]}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_judge():
    servers = []

    def make(behave):
        servers.append(FakeJudge(behave))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _dead_url() -> str:
    """A local port nobody listens on: the connection is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


TIMEOUT_S = 3.0
"""The client timeout in these tests: a hanging server never answers, the others answer at once."""


def test_each_way_a_judge_can_fail_gets_its_status_never_an_exception(fake_judge):
    cases = {
        "good": (("reply", GOOD_REPLY), "judged"),
        "hang": (("hang", None), "judge_timeout"),
        "nonsense": (("reply", "What a lovely problem! I would rather talk about the weather."), "judge_unparsed"),
        "http500": (("http", 500), "judge_error"),
        "html": (("body", b"<html>not json</html>"), "judge_error"),
        "no choices": (("body", b'{"error": "overloaded"}'), "judge_error"),
    }
    for name, (answer, status) in cases.items():
        server = fake_judge(lambda prompt, answer=answer: answer)
        got = judge.Judge("m", server.url, timeout_s=TIMEOUT_S, max_tokens=64).ask("What is 1?", "1", "\\boxed{1}")
        assert list(got) == list(judge.FIELDS) and got["status"] == status, (name, got)
        if status == "judged":
            assert (got["correct"], got["extracted_answer"], got["confidence"], got["raw"]) == (True, "1", 95, GOOD_REPLY)
            assert got["error"] is None
        else:
            assert got["correct"] is None
        if status == "judge_unparsed":
            assert got["raw"].startswith("What a lovely problem")  # the nonsense is kept, to read
        if status in ("judge_timeout", "judge_error"):
            assert got["error"] and got["raw"] is None
    refused = judge.Judge("m", _dead_url(), timeout_s=TIMEOUT_S).ask("q", "1", "r")
    assert refused["status"] == "judge_error" and "cannot reach the judge" in refused["error"]


def test_the_request_is_an_openai_chat_completion_at_temperature_0(fake_judge):
    server = fake_judge(lambda prompt: ("reply", GOOD_REPLY))
    j = judge.Judge("judge-model", server.url.removesuffix("/v1"), timeout_s=TIMEOUT_S, max_tokens=77, concurrency=2)
    texts = ["first \\boxed{1}", "second \\boxed{2}", "third"]
    got = j.judge_many("What is 1?", "1", texts)
    assert [g["status"] for g in got] == ["judged"] * 3
    assert {r["path"] for r in server.requests} == {"/v1/chat/completions"}  # /v1 added to the base
    assert {(r["model"], r["temperature"], r["max_tokens"], len(r["messages"]), r["messages"][0]["role"])
            for r in server.requests} == {("judge-model", 0.0, 77, 1, "user")}
    assert {r["messages"][0]["content"] for r in server.requests} == {judge.render("What is 1?", "1", t) for t in texts}


# ---------------------------------------------------------------------------
# Tier 1: evaluate.py's bookkeeping with a judge (kept samples: no engine is started)
# ---------------------------------------------------------------------------

def _no_engine(cfg):
    raise AssertionError("every sample is kept: no engine should be asked for")


def _mixed(prompt: str):
    """A judge whose answer depends on the response it is shown (the marker in the sample's text)."""
    for marker, answer in (("HANG", ("hang", None)), ("NONSENSE", ("reply", "Lovely weather today.")),
                           ("FAIL", ("http", 500))):
        if marker in prompt:
            return answer
    return "reply", GOOD_REPLY


def _kept_run(tmp_path) -> E.Config:
    """Two problems x 2 samples, every sample already in samples.jsonl (a run killed while
    grading): evaluate.run grades them without an engine. Gold 1 and 2; the texts carry markers
    for the _mixed judge, and boxed answers that math-verify grades right, wrong, right, none."""
    data = tmp_path / "two.jsonl"
    data.write_text('{"id": "a", "problem": "1+0?", "answer": "1"}\n{"id": "b", "problem": "1+1?", "answer": "2"}\n')
    out = _mk(tmp_path / "run")
    texts = {("a", 0): "so \\boxed{1}", ("a", 1): "HANG \\boxed{0}", ("b", 0): "NONSENSE \\boxed{2}",
             ("b", 1): "FAIL, no box"}
    for (pid, j), text in texts.items():
        E.append_record(out / E.SAMPLES_FILE,
                        {"id": pid, "problem": "1+0?" if pid == "a" else "1+1?", "gold": "1" if pid == "a" else "2",
                         "sample": j, "finish_reason": "answer", "prompt_tokens": 10, "output_tokens": 5,
                         "total_tokens": 5, "executor_tokens": 0, "snippets": 0, "errors": 0, "timeouts": 0,
                         "sandbox_seed": None, "calls": [], "text": text})
    return E.Config(bench="my-set", data=str(data), model="m", samples=2, out=str(out), judge="judge-m",
                    judge_timeout=TIMEOUT_S, judge_max_tokens=64)


def _mk(d: Path) -> Path:
    d.mkdir(parents=True)
    return d


def _samples(out: str) -> dict:
    recs = {r["id"]: r for r in E.read_generations(Path(out) / "generations.jsonl")}  # the last line of an id counts
    return {(pid, s["sample"]): s for pid, r in recs.items() for s in r["samples"]}


def test_a_judged_run_keeps_every_verdict_scores_failures_as_wrong_and_judges_them_again_on_resume(tmp_path, fake_judge):
    import dataclasses

    cfg = _kept_run(tmp_path)
    # 1) the judge is down (connection refused): every sample judge_error, no crash, nothing correct
    s1 = E.run(dataclasses.replace(cfg, judge_api_base=_dead_url()), backend_factory=_no_engine, progress=False)
    assert s1["grader"] == "judge:judge-m" and s1["judge"]["statuses"] == {"judge_error": 4}
    assert s1["mean_at_k"] == 0.0 and s1["judge"]["n_judged"] == 0
    got = _samples(cfg.out)
    assert all(s["status"] == "judge_error" and s["correct"] is False for s in got.values())
    assert [got[k]["grader_correct"] for k in sorted(got)] == [True, False, True, False]  # math-verify's, beside
    # 2) resumed against a judge that answers one sample well and fails the others each its own way
    #    (another URL: the server's address is not pinned)
    mixed = fake_judge(_mixed)
    s2 = E.run(dataclasses.replace(cfg, judge_api_base=mixed.url), backend_factory=_no_engine, progress=False)
    got = _samples(cfg.out)
    assert {k: s["status"] for k, s in got.items()} == {("a", 0): "correct", ("a", 1): "judge_timeout",
                                                       ("b", 0): "judge_unparsed", ("b", 1): "judge_error"}
    assert got[("a", 0)]["judge"] == {"status": "judged", "correct": True, "extracted_answer": "1", "confidence": 95,
                                      "raw": GOOD_REPLY, "error": None}
    assert got[("b", 0)]["judge"]["raw"] == "Lovely weather today." and "HTTP 500" in got[("b", 1)]["judge"]["error"]
    assert [got[k]["correct"] for k in sorted(got)] == [True, False, False, False]
    assert s2["judge"]["statuses"] == {"judge_error": 1, "judge_timeout": 1, "judge_unparsed": 1, "judged": 1}
    assert s2["mean_at_k"] == 0.25 and s2["judge"]["agreement_with_math_verify"] == 1.0
    # 3) resumed against a judge that always says yes: only the three failures are asked again
    good = fake_judge(lambda prompt: ("reply", GOOD_REPLY))
    s3 = E.run(dataclasses.replace(cfg, judge_api_base=good.url), backend_factory=_no_engine, progress=False)
    asked = sorted(r["messages"][0]["content"].split("[Response]\n")[1].split("\n")[0] for r in good.requests)
    assert asked == ["FAIL, no box", "HANG \\boxed{0}", "NONSENSE \\boxed{2}"]
    got = _samples(cfg.out)
    assert all(s["judge"]["status"] == "judged" and s["correct"] is True for s in got.values())
    # the judge's verdict is the score; math-verify's is kept and compared
    assert s3["mean_at_k"] == 1.0 and s3["judge"] == {
        "statuses": {"judged": 4}, "n_judged": 4, "agreement_with_math_verify": 0.5, "judge_only_correct": 2,
        "math_verify_only_correct": 0}
    # b's second sample has no boxed answer: judged correct, but it does not vote (no answer, no vote)
    assert s3["no_answer_rate"] == 0.25 and s3["maj_at_k"] == 1.0
    on_disk = json.loads((Path(cfg.out) / "summary.json").read_text())
    assert on_disk["judge"] == s3["judge"] and on_disk["grader"] == "judge:judge-m"
    # 4) nothing left to judge: no request, no new line
    lines = (Path(cfg.out) / "generations.jsonl").read_text().count("\n")
    n_asked = len(good.requests)
    E.run(dataclasses.replace(cfg, judge_api_base=good.url), backend_factory=_no_engine, progress=False)
    assert len(good.requests) == n_asked and (Path(cfg.out) / "generations.jsonl").read_text().count("\n") == lines


def test_a_still_failing_judge_adds_no_line_on_resume(tmp_path):
    import dataclasses

    cfg = dataclasses.replace(_kept_run(tmp_path), judge_api_base=_dead_url())
    E.run(cfg, backend_factory=_no_engine, progress=False)
    lines = (Path(cfg.out) / "generations.jsonl").read_text()
    E.run(cfg, backend_factory=_no_engine, progress=False)  # still down: asked again, the same verdicts
    assert (Path(cfg.out) / "generations.jsonl").read_text() == lines


def test_the_judge_is_pinned_and_its_url_is_not(tmp_path):
    import dataclasses

    cfg = dataclasses.replace(_kept_run(tmp_path), judge_api_base="http://a:1/v1")
    out = Path(cfg.out)
    E.pin_settings(out, E.settings_of(cfg))
    pinned = json.loads((out / "settings.json").read_text())
    assert {k: pinned[k] for k in E.JUDGE_KEYS} == judge.pinned("judge-m", 64)
    assert "judge_api_base" not in pinned and "judge_timeout" not in pinned
    E.pin_settings(out, E.settings_of(dataclasses.replace(cfg, judge_api_base="http://b:2/v1", judge_timeout=9.0,
                                                          judge_concurrency=3)))
    for other, message in ((dict(judge="another"), "judge 'judge-m' -> 'another'"),
                           (dict(judge=None, judge_api_base=None), "judge 'judge-m' -> None"),
                           (dict(judge_max_tokens=65), "judge_max_tokens 64 -> 65")):
        with pytest.raises(E.EvalError, match="other settings") as e:
            E.pin_settings(out, E.settings_of(dataclasses.replace(cfg, **other)))
        assert message in str(e.value)


def test_a_run_from_before_the_judge_resumes_without_one_and_refuses_one(tmp_path):
    cfg = E.Config(bench="math500", model="m", samples=2)
    old = {k: v for k, v in E.settings_of(cfg).items() if k not in E.JUDGE_KEYS}
    (tmp_path / "settings.json").write_text(json.dumps(old))
    E.pin_settings(tmp_path, E.settings_of(cfg))
    with pytest.raises(E.EvalError, match="judge None -> 'j'"):
        E.pin_settings(tmp_path, E.settings_of(E.Config(bench="math500", model="m", samples=2, judge="j",
                                                        judge_api_base="http://x/v1")))


@pytest.mark.parametrize("kw, message", [(dict(judge="m"), "--judge needs --judge-api-base URL"),
                                         (dict(judge_api_base="http://x/v1"), "--judge-api-base without --judge")])
def test_judge_flags_without_their_partner_give_one_line(tmp_path, kw, message):
    with pytest.raises(E.EvalError, match=message):
        E.run(E.Config(bench="procedural", model="m", samples=1, limit=1, out=str(tmp_path / "r"), **kw),
              backend_factory=_no_engine, progress=False)
    assert not (tmp_path / "r").exists()


def test_compare_refuses_runs_graded_by_different_graders(tmp_path):
    rec = {"id": "a", "problem": "p", "gold": "1", "source": "t", "maj_answer": "1", "maj_correct": True, "n_correct": 1,
           "samples": [{"sample": 0, "answer": "1", "correct": True, "status": "correct", "output_tokens": 1,
                        "total_tokens": 1, "executor_tokens": 0, "snippets": 0, "errors": 0, "timeouts": 0,
                        "finish_reason": "answer"}]}
    for name, grader in (("mv", None), ("judged", "judge:m")):
        d = _mk(tmp_path / name)
        E.append_record(d / "generations.jsonl", rec)
        s = {"bench": "hle", "mode": "agent", "model": "m", **E.summarize([rec], 1)}
        if grader:
            s["grader"] = grader  # a summary from before --judge has no grader: math-verify
        (d / "summary.json").write_text(json.dumps(s))
    with pytest.raises(E.EvalError, match="graded by judge:m vs math-verify"):
        E.compare([str(tmp_path / "mv"), str(tmp_path / "judged")])


# ---------------------------------------------------------------------------
# Tier 2: the embedded model judging itself through a real vLLM OpenAI server
# ---------------------------------------------------------------------------

def test_real_judge_served_by_vllm(vllm_server, smollm2_dir, data_dir, tmp_path):
    """Policy and judge are the same SmolLM2-135M behind the session's server. What a 135M judge
    says is not the point: every sample gets a status and its raw reply, the request protocol
    holds against a real server, and the judge is pinned."""
    import backends

    out = tmp_path / "judged"
    cfg = E.parse_args(["--bench", "math500", "--data", str(data_dir / "math500.jsonl"), "--limit", "2",
                        "--samples", "1", "--mode", "baseline", "--max-tokens", "24", "--model", smollm2_dir,
                        "--backend", "openai", "--api-base", vllm_server + "/v1", "--out", str(out),
                        "--judge", smollm2_dir, "--judge-api-base", vllm_server + "/v1", "--judge-max-tokens", "24"])
    E.quiet_engine(False)
    summary = E.run(cfg, backend=backends.OpenAIBackend.from_server(cfg.api_base, E.resolve(cfg)), progress=False)
    samples = [s for r in E.read_generations(out / "generations.jsonl") for s in r["samples"]]
    assert len(samples) == 2
    for s in samples:
        # the server is up and answers: a verdict or a reply without one, never a timeout or an error
        assert s["judge"]["status"] in ("judged", "judge_unparsed"), s["judge"]
        assert isinstance(s["judge"]["raw"], str) and s["judge"]["raw"].strip()
        assert s["correct"] == (s["judge"]["status"] == "judged" and s["judge"]["correct"])
        assert "grader_correct" in s and "grader_status" in s
    assert summary["grader"] == f"judge:{smollm2_dir}" and sum(summary["judge"]["statuses"].values()) == 2
    pinned = json.loads((out / "settings.json").read_text())
    assert {k: pinned[k] for k in E.JUDGE_KEYS} == judge.pinned(smollm2_dir, 24)
    assert E.summarize(E.read_generations(out / "generations.jsonl"), 1)["judge"] == summary["judge"]
