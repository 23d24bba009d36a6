"""
judge.py -- an LLM judge for `evaluate.py --judge`: how HLE's leaderboard grades, from any
OpenAI-compatible server.

Paper ("Evaluation"): DeepMath reports HLE beside MATH500, AIME and HMMT. HLE's leaderboard and
the common harnesses grade it with an LLM judge: the judge reads the problem, the reference
answer and the response, extracts the final answer, says whether it is equivalent to the
reference (yes/no) and how sure it is (0-100). Many HLE answers are words, choice labels or
expressions math-verify does not parse, which evaluate.py's default grader (rewards.py's)
scores as wrong. This module is that judge's mechanism; evaluate.py calls it from its grading
thread when --judge names a model, and keeps math-verify's verdict beside the judge's.

Data flow, numbered as in the code below:

  1. render(question, gold, response): prompts/judge.txt, written here, with the three filled in
     (PROMPT_SHA256, the sha256 of the file's text, is pinned in the run's settings.json).
  2. Judge.ask(...): one POST to API_BASE/chat/completions (stdlib urllib, as backends.py's
     OpenAIBackend), one user message, temperature 0 (TEMPERATURE), at most --judge-max-tokens;
     the reply's text, kept whole in the sample's record.
  3. parse_reply(text): the three lines the prompt asks for -> extracted answer, correct,
     confidence; None when there is no `correct: yes|no` line (the verdict is unparsed).
  4. Judge.judge_many(...): the samples of one problem, --judge-concurrency requests at a time;
     each gets a dict (FIELDS) with one status of STATUSES. Nothing here raises for a judge that
     is slow, down, failing or talking nonsense: the status says which, and evaluate.py scores
     such a sample as not correct and asks the judge again when the run is resumed.

Departures, and why:
  - The prompt is this project's own wording of the task HLE's judge is given (extract, compare,
    be sure), not HLE's text, and asks for three plain lines rather than a JSON schema: every
    OpenAI-compatible server can be asked for plain text, structured output is not universal.
  - Only `correct` is required; a missing or out-of-range confidence is kept as None (the score
    does not depend on it), and a missing answer line as None.
  - The whole response goes to the judge, reasoning and agent calls included (HLE's judge also
    reads the whole response). A response longer than the judge's context gets the server's
    HTTP 400, so the status judge_error with the server's message: serve the judge with a
    context of at least the policy's --max-tokens plus about 1k.

Run:   vllm serve JUDGE_MODEL --port 8001
       python evaluate.py --bench hle --judge JUDGE_MODEL --judge-api-base http://HOST:8001/v1
       ($OPENAI_API_KEY, when set, goes with every request as a bearer token.)
Tests: python -m pytest tests/test_judge.py -q
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

PROMPT_PATH = Path(__file__).resolve().parent / "prompts" / "judge.txt"
PROMPT = PROMPT_PATH.read_text()
PROMPT_SHA256 = hashlib.sha256(PROMPT.encode()).hexdigest()
"""Pinned in settings.json: a rerun after the prompt is edited is another run, not a resume."""

TEMPERATURE = 0.0
"""Greedy: a judge's verdict should not be a sample (pinned in settings.json all the same)."""

STATUSES = ("judged", "judge_timeout", "judge_error", "judge_unparsed")
"""judged: the reply holds a verdict. judge_timeout: no reply within --judge-timeout seconds.
judge_error: no usable reply (connection refused, an HTTP error, a body that is not a chat
completion). judge_unparsed: a reply without a `correct: yes|no` line. Every status but judged
counts as not correct, and is judged again on resume."""

FIELDS = ("status", "correct", "extracted_answer", "confidence", "raw", "error")
"""A sample's `judge` dict in generations.jsonl: the status, the verdict (True/False, None unless
judged), the answer the judge extracted (None: it found none), its confidence (0-100 or None),
its raw reply (None if there was none) and the error (None unless judge_timeout/judge_error)."""


# ---------------------------------------------------------------------------
# 1) The prompt
# ---------------------------------------------------------------------------

_SLOT = re.compile(r"\{(question|gold|response)\}")


def render(question: str, gold: str, response: str) -> str:
    """prompts/judge.txt with the problem, the reference answer and the response filled in, in
    one pass (a response that itself contains "{gold}" is left as written).

    >>> text = render("What is 1+1?", "2", "It is {gold}: \\\\boxed{2}")
    >>> "[Reference answer]\\n2\\n" in text, "It is {gold}: \\\\boxed{2}" in text
    (True, True)
    """
    values = {"question": question, "gold": gold, "response": response}
    return _SLOT.sub(lambda m: values[m.group(1)], PROMPT)


# ---------------------------------------------------------------------------
# 3) The reply parser (2, the request, is Judge.ask below)
# ---------------------------------------------------------------------------

_LINE = re.compile(r"^[\s*_`>#-]*(extracted[ _]final[ _]answer|correct|confidence)[\s*_`]*:[\s*_`]*(.*?)[\s*_`]*$",
                   re.IGNORECASE)


def parse_reply(text: str | None) -> dict | None:
    """The verdict in a judge's reply: {"extracted_answer", "correct", "confidence"}, or None when
    no line says `correct: yes` or `correct: no`. Lenient about what models add around the lines
    (markdown bold, a trailing period, "85%", any case, text before or after); strict about the
    verdict itself: only yes or no. When a field appears more than once (a model that repeats the
    format before answering), its last well-formed line counts. Text up to a `</think>` is the
    judge's own reasoning and is not read.

    >>> parse_reply("extracted_final_answer: 3/4\\ncorrect: yes\\nconfidence: 90")
    {'extracted_answer': '3/4', 'correct': True, 'confidence': 90}
    >>> parse_reply("Sure.\\n**Extracted final answer:** None\\n**Correct:** No.\\n**Confidence:** 85%")
    {'extracted_answer': None, 'correct': False, 'confidence': 85}
    >>> parse_reply("correct: yes or no\\nconfidence: 0 to 100\\n<answer>\\ncorrect: no\\nconfidence: 250")
    {'extracted_answer': None, 'correct': False, 'confidence': None}
    >>> parse_reply("<think>correct: yes</think>\\ncorrect: no")["correct"]
    False
    >>> parse_reply("The response looks right to me."), parse_reply("correct: maybe"), parse_reply(None)
    (None, None, None)
    """
    if not text:
        return None
    text = text.rsplit("</think>", 1)[-1]
    found: dict = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        key, value = m.group(1).lower(), m.group(2).strip()
        if key == "correct":
            word = value.rstrip(".!").strip().lower()
            if word in ("yes", "no"):
                found["correct"] = word == "yes"
        elif key == "confidence":
            n = re.fullmatch(r"(\d{1,3})(?:\.\d+)?\s*%?\.?", value)
            if n and 0 <= int(n.group(1)) <= 100:
                found["confidence"] = int(n.group(1))
        else:
            found["extracted_answer"] = None if value.lower() in ("", "none") else value
    if "correct" not in found:
        return None
    return {"extracted_answer": found.get("extracted_answer"), "correct": found["correct"],
            "confidence": found.get("confidence")}


# ---------------------------------------------------------------------------
# 2) + 4) The requests
# ---------------------------------------------------------------------------

def pinned(model: str | None, max_tokens: int) -> dict:
    """What settings.json pins of the judge: the model, the prompt's sha256, the temperature and
    the reply budget; all None with the judge off. Not the server's URL (a server can move and
    serve the same model) nor the timeout or concurrency (they change when, not what, it answers).

    >>> pinned(None, 1024)["judge_max_tokens"], pinned("m", 1024)["judge_temperature"]
    (None, 0.0)
    """
    if model is None:
        return dict.fromkeys(("judge", "judge_prompt_sha256", "judge_temperature", "judge_max_tokens"))
    return {"judge": model, "judge_prompt_sha256": PROMPT_SHA256, "judge_temperature": TEMPERATURE,
            "judge_max_tokens": max_tokens}


def outcome(status: str, *, raw: str | None = None, error: str | None = None, verdict: dict | None = None) -> dict:
    """A sample's judge dict (FIELDS, in that order)."""
    verdict = verdict or {}
    return {"status": status, "correct": verdict.get("correct"), "extracted_answer": verdict.get("extracted_answer"),
            "confidence": verdict.get("confidence"), "raw": raw, "error": error}


@dataclass(frozen=True)
class Judge:
    """A judge model behind an OpenAI-compatible server (evaluate.py's --judge flags)."""

    model: str
    """The served model's name (what the server's /v1/models lists)."""
    api_base: str
    """The server's base URL, e.g. http://127.0.0.1:8001/v1 (/v1 is added when missing)."""
    timeout_s: float = 120.0
    """Seconds one request may take before its sample is judge_timeout."""
    max_tokens: int = 1024
    """The judge's reply budget in tokens (pinned)."""
    concurrency: int = 16
    """Requests in flight at once, for the samples of one problem."""

    @property
    def url(self) -> str:
        base = self.api_base.rstrip("/")
        return (base if base.endswith("/v1") else base + "/v1") + "/chat/completions"

    def ask(self, question: str, gold: str, response: str) -> dict:
        """Step 2: one request, one sample's judge dict (outcome). Never raises for what a server
        or the network can do: timeouts, refused connections, HTTP errors, bodies that are not a
        chat completion, replies without a verdict each get their status."""
        body = {"model": self.model, "messages": [{"role": "user", "content": render(question, gold, response)}],
                "temperature": TEMPERATURE, "max_tokens": int(self.max_tokens)}
        headers = {"Content-Type": "application/json"}
        if os.environ.get("OPENAI_API_KEY"):
            headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                reply = json.load(r)
        except urllib.error.HTTPError as e:  # before URLError, its base class: the server answered
            return outcome("judge_error", error=f"{self.url}: HTTP {e.code}: {e.read()[:300].decode(errors='replace')}")
        except TimeoutError:  # the reply did not come in time (socket.timeout is TimeoutError)
            return outcome("judge_timeout", error=f"{self.url}: no reply within {self.timeout_s:g} s")
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):  # the connection itself timed out
                return outcome("judge_timeout", error=f"{self.url}: no connection within {self.timeout_s:g} s")
            return outcome("judge_error", error=f"{self.url}: cannot reach the judge ({e.reason})")
        except (OSError, http.client.HTTPException, ValueError) as e:  # a dropped connection, a body that is not JSON
            return outcome("judge_error", error=f"{self.url}: {type(e).__name__}: {str(e)[:300]}")
        try:
            raw = reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            return outcome("judge_error", error=f"{self.url}: not a chat completion: {json.dumps(reply)[:300]}")
        verdict = parse_reply(raw)
        if verdict is None:
            return outcome("judge_unparsed", raw=raw)
        return outcome("judged", raw=raw, verdict=verdict)

    def judge_many(self, question: str, gold: str, responses: list[str]) -> list[dict]:
        """Step 4: a judge dict for each response (in order), --judge-concurrency at a time."""
        if not responses:
            return []
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(responses))),
                                thread_name_prefix="judge") as pool:
            return list(pool.map(lambda text: self.ask(question, gold, text), responses))
