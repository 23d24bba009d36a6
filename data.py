"""
data.py -- where problems come from: the evaluation benchmarks, the GRPO training set, and a
seeded procedural generator with exact answers.

Paper, "Training with GRPO: Dataset": GRPO uses the Tool-Integrated Reasoning (TIR) subset of
nvidia/OpenMathReasoning, and "only uses the problem, not the solution"; the released config
holds out 150 problems as a dev split. Paper, "Evaluation": MATH500, AIME, HMMT and HLE. This
module turns each of those into one typed record, `Problem(id, problem, answer)`, that
evaluate.py and train.py consume; the answer is a string that rewards.py's grader parses.

Data flow (the numbers match the step comments in the code):

  1. An explicit `data` JSONL file serves any name, a benchmark's or the user's own (the name
     labels the run). Otherwise the name is looked up in BENCHMARKS (hub id, revision, split,
     field mapping, accepted local file names); unknown names fail with the list of known ones.
  2. load_benchmark() then takes the rows from, in this order: a file in the folder $DEEPMATH_DATA (`<bench>.jsonl` or one of the names the
     shared data folder uses, e.g. aime2024.jsonl); the hub through `datasets` (cached as
     usual; offline this fails with one line that names the caller's way to a local file --
     evaluate.py's `--data FILE.jsonl`, train.py's `--decontaminate_against` -- and DEEPMATH_DATA,
     and for hle the gated-access step). "procedural" needs none of these: it is generated.
  3. read_jsonl() validates every row (a JSON object with non-empty `problem` and `answer`;
     `id` optional, unique) and names file:line and the field when one is bad.
  4. procedural() generates problems from families (bare arithmetic, remainders, counting,
     gcd/lcm, word problems, linear systems, ...), each with an exact answer computed with
     integers and fractions.Fraction, never floats. The generator is seeded per split, and
     every problem instance (family + numbers) belongs to exactly one split by a digest of its
     parameters, so train and test never share a problem, whatever the seeds. Each family has
     several phrasings, partitioned into "train" and "heldout" templates (issue 12's
     generalisation rows evaluate on phrasings GRPO never saw).
     Curriculum draws GRPO's procedural problems stage by stage (easy -> hard), favouring the
     families whose running success rate still leaves reward variance; train.py's dynamic
     sampling (recipes/cpu-curriculum.yaml) asks it for each step's problems.
  5. load_train() gives (train, dev). It loads the decontamination sets (step 6) FIRST, so a
     missing or gated one is named before the training source is read; then the pool:
     OpenMathReasoning `tir` from the hub (problem + expected_answer, duplicates folded,
     filtered to answers rewards.gold_kind parses as math; the split is a 1.7M-row, ~36 GB
     stream, so the filtered pool is built once and cached in $DEEPMATH_CACHE/train-pools,
     keyed by hub id, split, revision, TRAIN_POOL_VERSION and limit, written atomically), a
     local JSONL, or procedural problems of the train split; a seeded shuffle, then the last
     `dev_size` problems are the dev split. Its errors name train.py's flags.
  6. decontaminate() drops training problems whose normalized text (normalize_text) equals
     an evaluation problem's, and returns the count so the caller can log it.
  7. arithmetic_problems() / arithmetic_messages(): not the paper's data, a warm-up workload
     for tests, benchmarks and examples: seeded pairs of 3-digit factors, posed after three
     solved products as earlier chat turns, a prompt on which the untrained 135M model used
     here calls the tool (protocol.build_messages is the paper's prompt).

Procedural difficulty levels (`difficulty=`): "easy" bare multi-digit arithmetic, where a tool
call gives the answer directly; "medium" one-step problems (remainders, modular powers, binomial
counts, gcd/lcm, one-step word problems); "hard" multi-step word problems, linear systems with
rational answers, work rates, restricted counting, congruences; "mixed" MIXED_WEIGHTS of the
three; or explicit weights such as "easy:1,medium:2,hard:1".

Measured starting point (bench/procedural.py, docs/benchmarks.md "Procedural starting point"): the untrained
SmolLM2-135M, agent with the examples as chat turns, top_p 0.8 / top_k 50, 16 problems x 4
samples per level, accuracy easy / medium / hard = 12.5 / 1.6 / 0.0% at T=1.0 and 20.3 / 3.1 /
0.0% at T=0.7; groups with reward variance under the paper's weights (1.0 code use + 0.1
accuracy): 62-81% easy, 62-69% medium, 25-38% hard. With the paper's layout (examples in the
system prompt) or no agent: 0% right, tool calls in 0.5-2% of trajectories. Hence the training
mix suggested for the CPU miniature run: "procedural:easy:2,medium:1", layout "turns"; the hard
level (no accuracy signal at the start) is for evaluation. On the held-out phrasings the
untrained start is the same (20.3 / 3.1 / 0.0% at T=0.7).

Departures from the paper, and why:
  - The procedural benchmark is ours. This machine cannot reach the hub, and the 135M model
    that runs offline solves no competition problem; a benchmark it can partly solve, with
    exact answers and unlimited fresh problems, makes the pipeline measurable end to end.
  - Hub revisions: math500 and aime24 are pinned to the commits that public evaluation code
    pins them to (not checked from here: this machine cannot reach the hub); aime25,
    hmmt_feb25, hle and OpenMathReasoning follow their main branch (revision None), since no
    commit of theirs could be read. Pass a frozen copy with --data to fix them.
  - OpenMathReasoning rows are filtered to answers the grader parses as math (gold_kind
    "sympy"); the paper does not say how it handled unparsable answers.

Run:
  python data.py procedural --n 5 --difficulty hard
  python data.py procedural --n 3 --templates heldout --split train
  python data.py math500 --data ../shared/data/math500.jsonl --n 3
  DEEPMATH_DATA=../shared/data python data.py aime24 --n 2
Tests: python -m pytest tests/test_data.py -q
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable

import rewards
from cli import fail, first_line
from models import cache_root  # the cache models.py keeps: $DEEPMATH_CACHE, default ~/.cache/deepmath
from protocol import CALL_CLOSE, CALL_OPEN, format_output

log = logging.getLogger("deepmath.data")


@dataclass(frozen=True)
class Problem:
    """One problem with its exact gold answer: the record every stage passes on."""

    id: str
    problem: str
    answer: str
    """Exact gold, a string rewards.py's grader parses ("12", "\\\\frac{3}{4}", "(2, -1)")."""
    source: str = ""
    """Benchmark name, hub id or file path."""
    meta: dict = field(default_factory=dict)
    """Anything else: procedural template/family/difficulty, a source row's other fields."""


class DataError(ValueError):
    """Bad or unreachable data. Its message is one readable line: what is wrong, and the fix."""


# ---------------------------------------------------------------------------
# 1) The benchmarks
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Benchmark:
    """Where one benchmark lives on the hub, and how its rows map to Problem."""

    hub_id: str | None
    split: str | None = None
    revision: str | None = None
    """A commit of the hub dataset; None = its main branch (not pinned, see the contract)."""
    config: str | None = None
    fields: dict = field(default_factory=dict)
    """Problem field -> column name ("id", "problem", "answer")."""
    files: tuple[str, ...] = ()
    """File names accepted in $DEEPMATH_DATA, first match wins."""
    keep: Callable[[dict], bool] | None = None
    """A row filter applied to hub rows (hle: text-only math questions)."""
    access: str = ""
    """Extra step needed before the hub serves it (gated datasets)."""


def _hle_math_text_only(row: dict) -> bool:
    return row.get("category") == "Math" and not row.get("image")


BENCHMARKS: dict[str, Benchmark] = {
    "math500": Benchmark("HuggingFaceH4/MATH-500", "test", revision="6e4ed1a2a79af7d8630a6b768ec859cb5af4d3be",
                         fields={"id": "unique_id"}, files=("math500.jsonl",)),
    "aime24": Benchmark("HuggingFaceH4/aime_2024", "train", revision="2fe88a2f1091d5048c0f36abc874fb997b3dd99a",
                        files=("aime24.jsonl", "aime2024.jsonl")),
    "aime25": Benchmark("MathArena/aime_2025", "train", fields={"id": "problem_idx"},
                        files=("aime25.jsonl", "aime2025.jsonl")),
    "hmmt_feb25": Benchmark("MathArena/hmmt_feb_2025", "train", fields={"id": "problem_idx"},
                            files=("hmmt_feb25.jsonl", "hmmt_feb2025.jsonl")),
    "hle": Benchmark("cais/hle", "test", fields={"problem": "question"},
                     files=("hle.jsonl", "hle_math.jsonl"), keep=_hle_math_text_only,
                     access="cais/hle is gated: accept its terms at https://huggingface.co/datasets/cais/hle "
                            "and log in (`huggingface-cli login` or HF_TOKEN)"),
    "procedural": Benchmark(None, files=("procedural.jsonl",)),
}
"""The benchmarks evaluate.py knows. hle is the text-only Math category of HLE, as in the paper."""

TRAIN_SOURCES = ("openmathreasoning", "procedural", "procedural:<difficulty>", "FILE.jsonl")
OPENMATHREASONING = Benchmark("nvidia/OpenMathReasoning", "tir",
                              fields={"problem": "problem", "answer": "expected_answer"})
"""The paper's training data: the TIR split, problem and expected answer (the solution is unused)."""

PROCEDURAL_DEFAULT_N = 200
"""Problems in `--bench procedural` when no limit is given."""

DATA_ENV = "DEEPMATH_DATA"
"""Environment variable: a folder of <bench>.jsonl files that serves benchmarks offline."""


def load_benchmark(name: str, data: str | os.PathLike | None = None, limit: int | None = None, seed: int = 0,
                   difficulty: str = "mixed", templates: str = "train", instead: str | None = None) -> list[Problem]:
    """The problems of one evaluation benchmark, in the source's order (the first `limit`).

    `data` (a JSONL file) serves any name; else $DEEPMATH_DATA; else the hub. "procedural"
    is generated (split "test") unless a file is given; seed/difficulty/templates apply to it.
    `instead`: how the caller's user gives a local file, in the errors' advice (default
    evaluate.py's "pass --data FILE.jsonl (fields id, problem, answer)"; train.py names its own flag).
    """
    instead = instead or "pass --data FILE.jsonl (fields id, problem, answer)"
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of problems, not {limit}")
    # 1) an explicit file serves any name, a benchmark's or the user's own (it labels the run)
    if data is not None:
        return read_jsonl(data, source=name)[:limit]
    # 2) else the name must be one we know: the data folder, a generator, or the hub
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)} "
                        f"(or any name with --data FILE.jsonl)")
    spec = BENCHMARKS[name]
    folder = os.environ.get(DATA_ENV)
    if folder:
        for fname in spec.files:
            path = Path(folder) / fname
            if path.is_file():
                return read_jsonl(path, source=name)[:limit]
        if name != "procedural":
            raise DataError(f"{DATA_ENV}={folder} has none of {', '.join(spec.files)}: add one, "
                            f"{instead}, or unset {DATA_ENV} to use the hub")
    if name == "procedural":
        return procedural(limit or PROCEDURAL_DEFAULT_N, seed=seed, difficulty=difficulty,
                          templates=templates, split="test")
    return _from_hub(name, spec, limit, offline=f"{instead} or set {DATA_ENV} to a folder holding {spec.files[0]}")


# ---------------------------------------------------------------------------
# 2) The hub: load_benchmark's last source (datasets is imported only here)
# ---------------------------------------------------------------------------

HUB_PROBE_TIMEOUT_S = 3.0
"""How long hub_unreachable() waits for one TCP connection to the hub before calling it offline."""


def hub_unreachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be reached now, or None. Asked before `datasets` is: offline, datasets
    retries for about 25 s before it gives up (measured here), so an offline run's one-line error
    came late. Offline means HF_HUB_OFFLINE or HF_DATASETS_OFFLINE set to 1, or one TCP
    connection to the hub (HF_ENDPOINT's host, or the HTTPS proxy's when one is set) failing
    within timeout_s. The name lookup has no timeout of its own, so the probe runs on a daemon
    thread the caller stops waiting for."""
    import socket
    import threading
    import urllib.parse

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "on", "yes", "true"):
            return f"{var} is set"
    proxy = next((os.environ[v] for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
                  if os.environ.get(v)), None)
    url = urllib.parse.urlsplit(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    outcome: list[str | None] = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(f"cannot connect to {host}:{port} ({first_line(e, 100)})")

    thread = threading.Thread(target=probe, daemon=True, name="hub-probe")
    thread.start()
    thread.join(timeout_s)
    return outcome[0] if outcome else f"no answer from {host}:{port} within {timeout_s:g} s"


def _hub_rows(spec: Benchmark, what: str, streaming: bool = False, offline: str | None = None):
    """Open a hub dataset, turning any failure into one DataError line with the fix (`offline`:
    what to do without the hub; default: --data or DEEPMATH_DATA). When the hub cannot be
    reached and `datasets` is not imported yet, HF_HUB_OFFLINE=1 is set first (the libraries'
    documented switch, read when they are imported; this process could not reach the hub
    anyway): datasets then serves a copy it has cached at once, or fails at once. Where
    `datasets` was imported already (train.py, through TRL), it keeps its own retries and its
    fallback to the cache."""
    offline = offline or (f"pass --data FILE.jsonl (fields id, problem, answer) or set {DATA_ENV} to a "
                          f"folder holding {spec.files[0] if spec.files else what + '.jsonl'}")
    local = spec.hub_id is not None and Path(spec.hub_id).exists()  # a dataset folder: no hub to ask
    why = None if local or "datasets" in sys.modules else hub_unreachable()
    if why:
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import datasets
    except ImportError:
        raise DataError(f"{what} needs the `datasets` package: pip install datasets (or, without it, "
                        f"{offline})") from None
    logging.getLogger("datasets").setLevel(logging.ERROR)
    try:
        return datasets.load_dataset(spec.hub_id, spec.config, split=spec.split, revision=spec.revision,
                                     streaming=streaming)
    except Exception as e:  # offline, gated, renamed: every path ends in the same advice
        first = why or first_line(e, 200)  # offline: the probe's reason says more than datasets' message
        extra = f"; {spec.access}" if spec.access else ""
        raise DataError(f"cannot load {what} from the hub ({spec.hub_id}: {first}){extra}; offline, {offline}") from None


def _from_hub(name: str, spec: Benchmark, limit: int | None, offline: str | None = None) -> list[Problem]:
    rows = _hub_rows(spec, name, offline=offline)
    problems = []
    for i, row in enumerate(rows):
        if spec.keep is not None and not spec.keep(row):
            continue
        where = f"{spec.hub_id} row {i}"
        problems.append(_problem_from_row(row, where, default_id=f"{name}-{i}", source=spec.hub_id,
                                          fields=spec.fields))
        if limit is not None and len(problems) >= limit:
            break
    return problems


# ---------------------------------------------------------------------------
# 3) Local JSONL files, validated row by row
# ---------------------------------------------------------------------------

def read_jsonl(path: str | os.PathLike, source: str | None = None) -> list[Problem]:
    """Read a JSONL file of problems: one object per line with non-empty `problem` and `answer`
    (a number is taken as its text) and an optional unique `id` (default: file stem and line
    number). Other keys go to Problem.meta. Blank lines are skipped.

    Any bad row raises DataError naming file:line and what is wrong.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (give a JSONL file with fields id, problem, answer)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read it as UTF-8 text ({e})") from None
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object with fields id, problem, answer")
        problems.append(_problem_from_row(row, where, default_id=f"{path.stem}-{lineno}",
                                          source=source or str(path)))
        pid = problems[-1].id
        if pid in seen:
            raise DataError(f"{where}: duplicate id {pid!r} (first on line {seen[pid]})")
        seen[pid] = lineno
    if not problems:
        raise DataError(f"{path}: no problems in it (expected JSONL rows with id, problem, answer)")
    return problems


def _problem_from_row(row: dict, where: str, default_id: str, source: str,
                      fields: dict | None = None) -> Problem:
    """Map one source row to a Problem; `fields` renames columns (Problem field -> column)."""
    cols = {"id": "id", "problem": "problem", "answer": "answer", **(fields or {})}
    values = {}
    for key in ("problem", "answer"):
        v = row.get(cols[key])
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)
        if not isinstance(v, str) or not v.strip():
            what = "missing" if v is None else "empty" if isinstance(v, str) else f"not a string ({type(v).__name__})"
            raise DataError(f"{where}: field {cols[key]!r} is {what}; every row needs a non-empty "
                            f"{cols[key]!r}")
        values[key] = v.strip() if key == "answer" else v
    rid = row.get(cols["id"])
    rid = default_id if rid is None or rid == "" else str(rid)
    meta = {k: v for k, v in row.items() if k not in cols.values()}
    return Problem(rid, values["problem"], values["answer"], source, meta)


# ---------------------------------------------------------------------------
# 4) The procedural generator
# ---------------------------------------------------------------------------
# A family is one kind of problem: a sampler that draws its numbers from a seeded Random and
# returns (params, answer), and phrasings that pose it. Phrasings are format strings over the
# params; the first `n_train` of them are the "train" templates and the rest "heldout".
# Answers are computed exactly (int / Fraction) and written by fmt() in a form the grader
# parses: "123", "-\\frac{7}{3}", "(\\frac{1}{2}, -3)".

LEVELS = ("easy", "medium", "hard")
MIXED_WEIGHTS = {"easy": 1, "medium": 1, "hard": 1}
"""The "mixed" difficulty: relative shares of the levels (problem i's level is deterministic)."""
SPLITS = ("train", "test")
TEMPLATE_SETS = ("train", "heldout")


def fmt(x: int | Fraction | tuple) -> str:
    """An exact value as the gold string the grader parses.

    >>> fmt(12), fmt(Fraction(-7, 3)), fmt(Fraction(8, 4)), fmt((Fraction(1, 2), -3))
    ('12', '-\\\\frac{7}{3}', '2', '(\\\\frac{1}{2}, -3)')
    """
    if isinstance(x, tuple):
        return "(" + ", ".join(fmt(v) for v in x) + ")"
    x = Fraction(x)
    if x.denominator == 1:
        return str(x.numerator)
    sign = "-" if x < 0 else ""
    return f"{sign}\\frac{{{abs(x.numerator)}}}{{{x.denominator}}}"


@dataclass(frozen=True)
class Family:
    name: str
    level: str
    sample: Callable[[random.Random], tuple[dict, Any]]
    """rng -> (params for the phrasings, exact answer as int / Fraction / tuple)."""
    phrasings: tuple[str, ...]
    n_train: int
    """phrasings[:n_train] are the "train" templates, the rest "heldout"."""

    def templates(self, which: str) -> tuple[str, ...]:
        return self.phrasings[:self.n_train] if which == "train" else self.phrasings[self.n_train:]


def _term(coef: int, var: str, first: bool) -> str:
    """'3x', '- 4y', 'x', '+ y' for writing a linear equation."""
    mag = "" if abs(coef) == 1 else str(abs(coef))
    if first:
        return f"{'-' if coef < 0 else ''}{mag}{var}"
    return f"{'-' if coef < 0 else '+'} {mag}{var}"


# -- easy: bare arithmetic; one tool call gives the answer -------------------------------------

def _product(rng):
    a, b = rng.randint(100, 999), rng.randint(100, 999)
    return {"a": a, "b": b}, a * b


def _sum3(rng):
    a, b, c = (rng.randint(1000, 9999) for _ in range(3))
    return {"a": a, "b": b, "c": c}, a + b + c


def _expr(rng):
    a, b, c = rng.randint(12, 99), rng.randint(102, 999), rng.randint(1000, 9999)
    return {"a": a, "b": b, "c": c}, a * b - c


# -- medium: one step -------------------------------------------------------------------------

def _remainder(rng):
    n, m = rng.randint(10_000, 999_999), rng.randint(7, 97)
    return {"n": n, "m": m}, n % m


def _modpow(rng):
    b, e, m = rng.randint(2, 19), rng.randint(20, 200), rng.randint(7, 50)
    return {"b": b, "e": e, "m": m}, pow(b, e, m)


def _comb(rng):
    n = rng.randint(10, 30)
    k = rng.randint(3, 6)
    return {"n": n, "k": k}, math.comb(n, k)


def _gcd(rng):
    g = rng.randint(6, 60)
    x, y = rng.randint(11, 99), rng.randint(11, 99)
    while math.gcd(x, y) != 1 or x == y:
        x, y = rng.randint(11, 99), rng.randint(11, 99)
    return {"a": g * x, "b": g * y}, g


def _lcm(rng):
    g = rng.randint(2, 30)
    x, y = rng.randint(6, 60), rng.randint(6, 60)
    while x == y:
        y = rng.randint(6, 60)
    a, b = g * x, g * y
    return {"a": a, "b": b}, a * b // math.gcd(a, b)


def _per_box(rng):
    a, b = rng.randint(12, 96), rng.randint(101, 999)
    return {"a": a, "b": b}, a * b


# -- hard: several steps, or exact rational answers ----------------------------------------

def _change(rng):
    p1, p2 = rng.randint(3, 19), rng.randint(21, 89)
    n1, n2 = rng.randint(5, 40), rng.randint(3, 25)
    total = n1 * p1 + n2 * p2
    m = (total // 100 + 1 + rng.randint(0, 3)) * 100
    return {"p1": p1, "p2": p2, "n1": n1, "n2": n2, "m": m}, m - total


def _distance(rng):
    s1, s2 = rng.randint(41, 119), rng.randint(41, 119)
    t1, t2 = rng.randint(2, 9), rng.randint(2, 9)
    return {"s1": s1, "s2": s2, "t1": t1, "t2": t2}, s1 * t1 + s2 * t2


def _crates(rng):
    a, h, c = rng.randint(35, 250), rng.randint(3, 12), rng.randint(12, 48)
    return {"a": a, "h": h, "c": c}, (a * h) // c


def _linear_system(rng):
    while True:
        a1, b1, a2, b2 = (rng.choice([v for v in range(-9, 10) if v]) for _ in range(4))
        det = a1 * b2 - a2 * b1
        if det:
            break
    c1, c2 = rng.randint(-30, 30), rng.randint(-30, 30)
    x, y = Fraction(c1 * b2 - c2 * b1, det), Fraction(a1 * c2 - a2 * c1, det)
    eq1 = f"{_term(a1, 'x', True)} {_term(b1, 'y', False)} = {c1}"
    eq2 = f"{_term(a2, 'x', True)} {_term(b2, 'y', False)} = {c2}"
    return {"eq1": eq1, "eq2": eq2}, (x, y)


def _work_rate(rng):
    a, b = rng.randint(2, 15), rng.randint(2, 15)
    while a == b:
        b = rng.randint(2, 15)
    return {"a": a, "b": b}, Fraction(a * b, a + b)


def _committee(rng):
    m, w = rng.randint(5, 14), rng.randint(4, 12)
    s = rng.randint(3, 6)
    k = rng.randint(2, min(w, s - 1))
    return {"m": m, "w": w, "s": s, "k": k}, math.comb(w, k) * math.comb(m, s - k)


def _divisible_or(rng):
    n = rng.randint(1000, 9999)
    a, b = rng.sample(range(3, 16), 2)
    return {"n": n, "a": a, "b": b}, n // a + n // b - n // (a * b // math.gcd(a, b))


_PRIMES = [p for p in range(11, 98) if all(p % d for d in range(2, 10) if d < p)]


def _congruence(rng):
    m = rng.choice(_PRIMES)
    a, b = rng.randint(2, m - 1), rng.randint(1, m - 1)
    return {"a": a, "b": b, "m": m}, b * pow(a, -1, m) % m


FAMILIES: tuple[Family, ...] = (
    Family("product", "easy", _product, (
        "What is {a} * {b}?",
        "Compute {a} \\times {b}.",
        "Calculate {a} * {b}.",
        "Find the product of {a} and {b}.",
        "Multiply {a} by {b}. What number do you get?",
    ), n_train=3),
    Family("sum3", "easy", _sum3, (
        "What is {a} + {b} + {c}?",
        "Compute {a} + {b} + {c}.",
        "Find the sum of {a}, {b} and {c}.",
        "Add {a}, {b} and {c} together. What is the total?",
    ), n_train=2),
    Family("expr", "easy", _expr, (
        "What is {a} * {b} - {c}?",
        "Compute {a} \\times {b} - {c}.",
        "Subtract {c} from the product of {a} and {b}.",
    ), n_train=2),
    Family("remainder", "medium", _remainder, (
        "What is the remainder when {n} is divided by {m}?",
        "Compute {n} mod {m}.",
        "Find {n} modulo {m}.",
        "When {n} is divided by {m}, what is left over?",
    ), n_train=2),
    Family("modpow", "medium", _modpow, (
        "What is the remainder when {b}^{{{e}}} is divided by {m}?",
        "Compute {b}^{{{e}}} mod {m}.",
        "Find {b}^{{{e}}} modulo {m}.",
    ), n_train=2),
    Family("comb", "medium", _comb, (
        "In how many ways can a committee of {k} people be chosen from a group of {n} people?",
        "How many ways are there to choose {k} books from a shelf of {n} different books?",
        "A club has {n} members. How many different {k}-member teams can it form?",
        "Compute the binomial coefficient \\binom{{{n}}}{{{k}}}.",
    ), n_train=2),
    Family("gcd", "medium", _gcd, (
        "What is the greatest common divisor of {a} and {b}?",
        "Find gcd({a}, {b}).",
        "What is the largest integer that divides both {a} and {b}?",
    ), n_train=2),
    Family("lcm", "medium", _lcm, (
        "What is the least common multiple of {a} and {b}?",
        "Find lcm({a}, {b}).",
        "What is the smallest positive integer that is a multiple of both {a} and {b}?",
    ), n_train=2),
    Family("per_box", "medium", _per_box, (
        "A box holds {a} pencils. How many pencils are in {b} boxes?",
        "Each of {b} students brings {a} stickers. How many stickers do they bring in total?",
        "A farmer plants {b} rows of trees with {a} trees in each row. How many trees does he plant?",
    ), n_train=2),
    Family("change", "hard", _change, (
        "Pens cost {p1} dollars each and notebooks cost {p2} dollars each. Maya buys {n1} pens and "
        "{n2} notebooks and pays with {m} dollars. How much change does she get, in dollars?",
        "A school has {m} dollars. It buys {n1} chairs at {p1} dollars each and {n2} desks at {p2} "
        "dollars each. How many dollars are left?",
        "Leo had {m} dollars. He spent {p1} dollars on each of {n1} tickets and {p2} dollars on each "
        "of {n2} meals. How much money does he have left?",
    ), n_train=2),
    Family("distance", "hard", _distance, (
        "A train travels at {s1} km/h for {t1} hours, then at {s2} km/h for {t2} hours. How many "
        "kilometers does it travel in total?",
        "A truck drives {t1} hours at {s1} km/h and then {t2} hours at {s2} km/h. What is the total "
        "distance it covers, in km?",
        "A cyclist rides for {t1} hours at {s1} kilometers per hour, rests, and then rides for {t2} "
        "hours at {s2} kilometers per hour. How far does the cyclist ride altogether, in kilometers?",
    ), n_train=2),
    Family("crates", "hard", _crates, (
        "A factory makes {a} bottles per hour for {h} hours. The bottles are packed in crates of {c}. "
        "How many crates can be filled completely?",
        "A bakery bakes {a} rolls every hour for {h} hours and packs them in bags of {c}. How many "
        "full bags does it get?",
        "A printer prints {a} pages per minute for {h} minutes. The pages are bound into booklets of "
        "{c} pages each. How many complete booklets can be made?",
    ), n_train=2),
    Family("linear_system", "hard", _linear_system, (
        "Solve the system of equations {eq1} and {eq2}. Give the answer as an ordered pair (x, y).",
        "Find x and y if {eq1} and {eq2}. Answer with the pair (x, y).",
        "Which ordered pair (x, y) satisfies both {eq1} and {eq2}?",
    ), n_train=2),
    Family("work_rate", "hard", _work_rate, (
        "Pipe A fills a tank in {a} hours and pipe B fills it in {b} hours. How many hours do the two "
        "pipes take to fill the tank together?",
        "Alice can paint a fence in {a} hours and Bob can paint it in {b} hours. Working together, "
        "how many hours do they need?",
        "One machine finishes a job in {a} days and another in {b} days. How many days does the job "
        "take if both machines work on it at the same time?",
    ), n_train=2),
    Family("committee", "hard", _committee, (
        "A committee of {s} people is chosen from {m} men and {w} women. In how many ways can this be "
        "done if the committee must contain exactly {k} women?",
        "A team of {s} is picked from {m} boys and {w} girls. How many teams have exactly {k} girls?",
        "From {w} women and {m} men, a group of {s} people with exactly {k} women is to be formed. How "
        "many different groups are possible?",
    ), n_train=2),
    Family("divisible_or", "hard", _divisible_or, (
        "How many integers from 1 to {n} are divisible by {a} or {b}?",
        "How many positive integers up to {n} are multiples of {a} or of {b}?",
        "Among the numbers 1, 2, ..., {n}, how many can be divided by {a} or by {b} (or both)?",
    ), n_train=2),
    Family("congruence", "hard", _congruence, (
        "Find the smallest positive integer x such that {a}x \\equiv {b} \\pmod{{{m}}}.",
        "What is the least positive x with {a}x leaving remainder {b} when divided by {m}?",
        "Solve {a}x \\equiv {b} (mod {m}) for the smallest positive integer x.",
    ), n_train=2),
)
"""Every procedural family. Changing a sampler or a phrasing changes the benchmark: keep
the order and append new ones, so existing seeds keep producing the same problems."""


def parse_difficulty(difficulty: str) -> dict[str, float]:
    """"easy" / "medium" / "hard" / "mixed" or weights "easy:1,hard:2" -> {level: weight}.

    >>> parse_difficulty("hard"), parse_difficulty("easy:1, hard:3")
    ({'hard': 1.0}, {'easy': 1.0, 'hard': 3.0})
    """
    if difficulty == "mixed":
        return {k: float(v) for k, v in MIXED_WEIGHTS.items() if v}
    if difficulty in LEVELS:
        return {difficulty: 1.0}
    weights: dict[str, float] = {}
    for part in difficulty.split(","):
        level, _, w = part.strip().partition(":")
        try:
            value = float(w)
        except ValueError:
            value = -1.0
        if level not in LEVELS or value < 0:
            raise DataError(f"difficulty {difficulty!r}: use one of {', '.join(LEVELS)}, mixed, "
                            f"or weights like 'easy:1,medium:2,hard:1'")
        weights[level] = value
    if not any(weights.values()):
        raise DataError(f"difficulty {difficulty!r}: at least one weight must be positive")
    return {k: v for k, v in weights.items() if v}


def _levels(weights: dict[str, float]):
    """Level of problem 0, 1, 2, ...: deterministic, and the shares track the weights from the
    start (the level whose count lags its share most goes next), so any prefix is balanced."""
    total = sum(weights.values())
    counts = dict.fromkeys(weights, 0)
    i = 0
    while True:
        i += 1
        level = max(weights, key=lambda k: (weights[k] * i / total - counts[k], -LEVELS.index(k)))
        counts[level] += 1
        yield level


def _split_of(family: str, params: dict) -> str:
    """The split a problem instance belongs to: a digest of its family and numbers (not of the
    wording), so a train problem is never a test problem, nor a rephrasing of one."""
    key = json.dumps([family, sorted(params.items())], separators=(",", ":"))
    return SPLITS[hashlib.sha256(key.encode()).digest()[0] & 1]


def procedural(n: int, seed: int = 0, difficulty: str = "mixed", templates: str = "train",
               split: str = "test") -> list[Problem]:
    """n generated problems with exact answers. Deterministic in (seed, difficulty, templates,
    split) across Python runs and machines; the first k problems do not depend on n.

    split: "train" (GRPO) or "test" (evaluation): separate random streams, and disjoint problem
    instances by construction. templates: "train" or "heldout" phrasings of each family.
    """
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if templates not in TEMPLATE_SETS:
        raise DataError(f"templates must be one of {', '.join(TEMPLATE_SETS)}, not {templates!r}")
    if n < 0:
        raise DataError(f"n must be >= 0, not {n}")
    weights = parse_difficulty(difficulty)
    # 4) a stream per (split, seed): str seeds are hashed with SHA-512 by random, not hash()
    rng = random.Random(f"deepmath-procedural/{split}/{seed}")
    by_level = {lv: [f for f in FAMILIES if f.level == lv] for lv in LEVELS}
    seen: set[str] = set()
    out: list[Problem] = []
    levels = _levels(weights)
    for i in range(n):
        level = next(levels)
        for _ in range(10_000):  # rejection: the other split's instances, and repeats
            fam = rng.choice(by_level[level])
            params, answer = fam.sample(rng)
            phrasings = fam.templates(templates)
            t = rng.randrange(len(phrasings))
            key = json.dumps([fam.name, sorted(params.items())])
            if _split_of(fam.name, params) == split and key not in seen:
                break
        else:  # pragma: no cover - the families' spaces are far larger than any n used
            raise DataError(f"procedural: ran out of distinct {level} problems after {i}")
        seen.add(key)
        t_index = t if templates == "train" else fam.n_train + t
        out.append(Problem(
            id=f"procedural-{split}-{templates}-{difficulty.replace(' ', '')}-s{seed}-{i}",
            problem=phrasings[t].format(**params), answer=fmt(answer), source="procedural",
            meta={"family": fam.name, "difficulty": level, "template": f"{fam.name}/{t_index}",
                  "templates": templates, "split": split, "seed": seed},
        ))
    return out


class Curriculum:
    """The CPU miniature's curriculum (issue 20): which procedural problems GRPO trains on next.

    Why: with a fixed easy/medium mix the 135M model saturates the easy families within a few
    steps, and from then on most groups earn one reward and teach nothing; the hard level's
    multi-step problems were never trained. The curriculum moves through `stages` (difficulty
    mixes, parse_difficulty's syntax), and inside a stage it favours the families that still
    give a learning signal.

    1. Running success rate per family: the mean accuracy of its last `window` groups (update()).
    2. Inside a stage, a level is drawn by the stage's weights and a family of that level with
       weight p(1 - p) + `floor`, p its running rate (0.5 before it is seen): the variance of
       a Bernoulli reward, i.e. how likely a group of it has reward variance. A solved family
       (p 1) or a hopeless one (p 0) is drawn at the floor only.
    3. Advance: to the next stage when every family of the current stage's levels that has been
       seen at least `window // 2` times runs at >= `advance_at` on average over the stage's
       levels (the mean of the per-family rates), or when the stage has lasted `stage_steps`
       optimizer steps (the deadline: a stage whose hardest family stays at 0 must not hold the
       run forever). Both are logged; the last stage has no deadline.
    Problems come from the procedural generator's TRAIN split (disjoint from every evaluation
    problem by construction), built once per level as a pool of `pool_size` problems.

    The state (stage, when it began, the per-family history) is a plain dict: state() /
    load_state() carry it through a checkpoint (train.py writes curriculum.json there).

    >>> c = Curriculum(["easy", "medium"], advance_at=0.75, window=4, stage_steps=10, pool_size=20)
    >>> [p.meta["difficulty"] for p in c.draw(3, random.Random(0))]
    ['easy', 'easy', 'easy']
    >>> for fam in ("product", "sum3", "expr"):
    ...     c.update({fam: [1.0, 1.0, 1.0, 0.0]})
    >>> c.maybe_advance(step=3)
    'rate'
    >>> c.stage, [p.meta["difficulty"] for p in c.draw(2, random.Random(0))]
    (1, ['medium', 'medium'])
    >>> c.maybe_advance(step=13), c.stage   # the last stage: no deadline
    (None, 1)
    """

    def __init__(self, stages: list[str], advance_at: float = 0.8, window: int = 8, stage_steps: int | None = 10,
                 floor: float = 0.05, pool_size: int = 400, seed: int = 0):
        if not stages:
            raise DataError("curriculum: give at least one stage (a difficulty mix such as 'easy:2,medium:1')")
        if not 0 < advance_at <= 1:
            raise DataError(f"curriculum: advance_at must be in (0, 1], not {advance_at}")
        if window < 1 or (stage_steps is not None and stage_steps < 1):
            raise DataError("curriculum: window and stage_steps must be at least 1")
        if not 0 < floor <= 1:
            raise DataError(f"curriculum: floor must be in (0, 1] (a family's least draw weight), not {floor}")
        self.stages = [parse_difficulty(s) for s in stages]
        self.names = list(stages)
        self.advance_at, self.window, self.stage_steps, self.floor = advance_at, window, stage_steps, floor
        levels = sorted({lv for s in self.stages for lv in s}, key=LEVELS.index)
        self.pool = {lv: procedural(pool_size, seed=seed, difficulty=lv, split="train") for lv in levels}
        self.stage, self.stage_began = 0, 0
        self.history: dict[str, list[float]] = {}
        self.advances: list[dict] = []

    # 1) running success rate per family
    def update(self, accuracy_by_family: dict[str, list[float]]) -> None:
        """Record each group's mean accuracy under its family ({family: [group means]})."""
        for fam, values in accuracy_by_family.items():
            self.history[fam] = (self.history.get(fam, []) + [float(v) for v in values])[-self.window:]

    def rate(self, family: str) -> float | None:
        h = self.history.get(family)
        return sum(h) / len(h) if h else None

    # 2) what to train on next
    def draw(self, n: int, rng: random.Random) -> list[Problem]:
        """n training problems of the current stage (see the class docstring, step 2)."""
        weights = self.stages[self.stage]
        out = []
        for _ in range(n):
            level = rng.choices(list(weights), weights=list(weights.values()))[0]
            fams = sorted({p.meta["family"] for p in self.pool[level]})
            p_hat = [0.5 if self.rate(f) is None else self.rate(f) for f in fams]
            fam = rng.choices(fams, weights=[p * (1 - p) + self.floor for p in p_hat])[0]
            out.append(rng.choice([p for p in self.pool[level] if p.meta["family"] == fam]))
        return out

    # 3) moving on
    def families(self) -> list[str]:
        """The families of the current stage's levels."""
        return sorted({f.name for f in FAMILIES if f.level in self.stages[self.stage]})

    def maybe_advance(self, step: int) -> str | None:
        """Advance one stage if its trigger fired at optimizer step `step`; returns "rate",
        "deadline" or None (no advance)."""
        if self.stage == len(self.stages) - 1:
            return None
        seen = [f for f in self.families() if len(self.history.get(f, [])) >= max(1, self.window // 2)]
        by_rate = bool(seen) and len(seen) == len(self.families()) and \
            sum(self.rate(f) for f in seen) / len(seen) >= self.advance_at
        by_deadline = self.stage_steps is not None and step - self.stage_began >= self.stage_steps
        if not (by_rate or by_deadline):
            return None
        why = "rate" if by_rate else "deadline"
        self.advances.append({"step": step, "from": self.names[self.stage], "to": self.names[self.stage + 1],
                              "why": why, "rates": {f: self.rate(f) for f in self.families()}})
        self.stage, self.stage_began = self.stage + 1, step
        return why

    def state(self) -> dict:
        return {"stages": self.names, "stage": self.stage, "stage_began": self.stage_began,
                "history": self.history, "advances": self.advances}

    def load_state(self, state: dict) -> None:
        if state.get("stages") != self.names:
            raise DataError(f"curriculum state of other stages ({state.get('stages')}, this run: {self.names})")
        self.stage, self.stage_began = int(state["stage"]), int(state["stage_began"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.advances = list(state.get("advances", []))


# ---------------------------------------------------------------------------
# 5) Training data, and 6) decontamination
# ---------------------------------------------------------------------------

PROCEDURAL_TRAIN_DEFAULT_N = 2000
"""Problems generated for load_train("procedural") when no limit is given."""

TRAIN_POOL_VERSION = 1
"""The rules _stream_openmathreasoning applies (repeats folded by normalize_text, answers kept when
rewards.gold_kind parses them as "sympy"), as a number in the pool cache's key: bump it when they
change, so pools built under the old rules are not reused."""


def load_train(source: str, limit: int | None = None, dev_size: int = 150, seed: int = 0,
               decontaminate_against: list[str] | None = None) -> tuple[list[Problem], list[Problem]]:
    """(train, dev) for GRPO (train.py's loader: its errors name train.py's flags --dataset and
    --decontaminate_against). source: "openmathreasoning" (the paper's), a JSONL path,
    "procedural" or "procedural:<difficulty>" (split "train", train templates).

    decontaminate_against: benchmark names (or JSONL paths) whose problems are dropped from the
    pool; they are loaded FIRST, so a missing or gated one is named before the training source is
    read (the hub split is a 36 GB stream). The hub pool is built once and cached
    (_openmathreasoning). A seeded shuffle, then the last dev_size problems form the dev split
    (the released config holds out 150). The decontamination count is logged.
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of problems, not {limit}")
    if dev_size < 0:
        raise DataError(f"dev_size must be >= 0, not {dev_size}")
    procedural_source = source == "procedural" or source.startswith("procedural:")
    if not (source == "openmathreasoning" or procedural_source or source.endswith(".jsonl") or Path(source).is_file()):
        raise DataError(f"unknown training source {source!r}; use one of {', '.join(TRAIN_SOURCES)}")
    # 6) the evaluation sets first: a missing one fails now, not after the training stream
    against = _decontamination_sets(decontaminate_against or [])
    # 5) the pool
    if source == "openmathreasoning":
        pool = _openmathreasoning(limit)
    elif procedural_source:
        difficulty = source.partition(":")[2] or "mixed"
        pool = procedural(limit or PROCEDURAL_TRAIN_DEFAULT_N, seed=seed, difficulty=difficulty, split="train")
    else:
        pool = read_jsonl(source)
    if decontaminate_against:
        pool, dropped = decontaminate(pool, against)
        log.info("decontamination: dropped %d of %d training problems that appear in %s",
                 dropped, dropped + len(pool), ", ".join(decontaminate_against))
    pool = list(pool)
    random.Random(f"deepmath-train-shuffle/{seed}").shuffle(pool)
    if limit is not None:
        pool = pool[:limit]
    if dev_size >= len(pool):
        raise DataError(f"dev_size={dev_size} leaves no training problems out of {len(pool)}; lower it")
    cut = len(pool) - dev_size
    return pool[:cut], pool[cut:]


def _decontamination_sets(names: list[str]) -> list[Problem]:
    """Every problem of the named evaluation sets; the first that cannot be loaded raises one
    DataError naming it and the fix in train.py's terms (a JSONL file in --decontaminate_against,
    or $DEEPMATH_DATA)."""
    against: list[Problem] = []
    for name in names:
        try:
            if name.endswith(".jsonl"):
                against += read_jsonl(name)
            elif name not in BENCHMARKS:
                raise DataError(f"unknown benchmark; known: {', '.join(BENCHMARKS)}, or a JSONL file's path")
            else:
                against += load_benchmark(name, instead=f"list a JSONL file of it (fields problem, answer) in "
                                                        f"--decontaminate_against in place of {name} (or leave it out)")
        except DataError as e:
            raise DataError(f"decontamination set {name!r} (--decontaminate_against): {e}") from None
    return against


def _openmathreasoning(limit: int | None) -> list[Problem]:
    """The TIR split's problems (_stream_openmathreasoning), built once and cached.

    The cache file, under $DEEPMATH_CACHE/train-pools, is keyed by the source (hub id, config,
    split), its revision (None: the main branch as first streamed; delete the file to re-read it),
    TRAIN_POOL_VERSION and the limit. A limited pool is the first `limit` problems of the full one
    (the same stream, cut short), so the full pool's file serves any limit. Written to a temporary
    file and renamed, so a reader sees a whole file or none; a damaged file is rebuilt. Several
    processes: train.py lets the main one build it first (load_datasets). An answer whose parse
    check failed while the pool was built (rewards.gold_kind None: a timeout) stays out of the
    cached pool as it stayed out of that run's."""
    spec = OPENMATHREASONING
    key = {"source": spec.hub_id, "config": spec.config, "split": spec.split, "revision": spec.revision,
           "filters": TRAIN_POOL_VERSION, "limit": limit}
    path = _pool_path(key)
    candidates = [(path, key)] + ([(_pool_path({**key, "limit": None}), {**key, "limit": None})] if limit else [])
    for candidate, want in candidates:
        pool = _read_pool(candidate, want)
        if pool is not None:
            log.info("training pool: %d problems read from the cache %s (%s %s, revision %s); delete it to "
                     "stream the split again", len(pool), candidate, spec.hub_id, spec.split, spec.revision or "main")
            return pool[:limit] if limit else pool
    pool = _stream_openmathreasoning(spec, limit)
    _write_pool(path, key, pool)
    return pool


def _pool_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / "train-pools" / f"openmathreasoning-{digest}.jsonl"


def _read_pool(path: Path, key: dict) -> list[Problem] | None:
    """The cached pool, or None if there is none or it is damaged (then it is rebuilt).
    Line 1: {"deepmath_train_pool": key, "problems": n}; then one problem per line."""
    if not path.is_file():
        return None
    try:
        with path.open(encoding="utf-8") as f:
            head = json.loads(f.readline())
            pool = [Problem(**json.loads(line)) for line in f]
        if head.get("deepmath_train_pool") != key or head.get("problems") != len(pool):
            raise ValueError("its header does not match its key or its length")
        return pool
    except (OSError, ValueError, TypeError, AttributeError) as e:
        log.warning("training pool cache %s is damaged (%s): building it again", path, first_line(e, 200))
        return None


def _write_pool(path: Path, key: dict, pool: list[Problem]) -> None:
    """Write the pool atomically (a temporary file in the same folder, then os.replace). A cache
    that cannot be written is a warning, not an error: training goes on with the pool in memory."""
    import tempfile

    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.stem}.",
                                         suffix=".tmp", delete=False) as f:
            tmp = f.name
            f.write(json.dumps({"deepmath_train_pool": key, "problems": len(pool)}) + "\n")
            for p in pool:
                f.write(json.dumps({"id": p.id, "problem": p.problem, "answer": p.answer, "source": p.source,
                                    "meta": p.meta}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        log.info("training pool: %d problems cached in %s", len(pool), path)
    except OSError as e:
        log.warning("training pool: cannot write the cache %s (%s); the next start streams the split again",
                    path, first_line(e, 200))
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _stream_openmathreasoning(spec: Benchmark, limit: int | None) -> list[Problem]:
    """The TIR split, streamed: problems with an expected answer the grader parses as math,
    each problem once (the split holds several solutions per problem)."""
    rows = _hub_rows(spec, "openmathreasoning", streaming=True,
                     offline="pass --dataset FILE.jsonl (fields problem, answer; e.g. "
                             "../shared/data/train_sample.jsonl) or --dataset procedural")
    out: list[Problem] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        problem, answer = row.get("problem") or "", str(row.get("expected_answer") or "").strip()
        key = normalize_text(problem)
        if not problem.strip() or not answer or key in seen:
            continue
        seen.add(key)
        if rewards.gold_kind(answer) != "sympy":
            continue
        out.append(Problem(f"openmathreasoning-{i}", problem, answer, spec.hub_id,
                           {k: row[k] for k in ("problem_type", "problem_source") if k in row}))
        if limit is not None and len(out) >= limit:
            break
    return out


_LATEX_SPACING = re.compile(r"\\[,;:!> ]|\\(?:q?quad|displaystyle|left|right|[dt]frac)\b|~")
_NON_WORD = re.compile(r"[^\w]+")


def normalize_text(s: str) -> str:
    """The text a decontamination match compares: casefolded, unicode-normalised, LaTeX spacing
    commands, \\left/\\right, $ and punctuation removed, whitespace collapsed.

    >>> normalize_text("What is  $\\\\dfrac{1}{2}\\\\,+\\\\left(3\\\\right)$?")
    'what is 1 2 3'
    >>> normalize_text("WHAT is 1/2 + (3)") == normalize_text("What is $\\\\frac{1}{2} + \\\\left( 3 \\\\right)$")
    True
    """
    s = unicodedata.normalize("NFKC", s).casefold()
    s = _LATEX_SPACING.sub(" ", s)
    s = s.replace("\\frac", " ")
    return " ".join(_NON_WORD.sub(" ", s).split())


def decontaminate(train: Iterable[Problem], against: Iterable[Problem]) -> tuple[list[Problem], int]:
    """Drop training problems whose normalized text equals an evaluation problem's.
    Returns (kept, number dropped).

    >>> a = Problem("1", "What is 2+2?", "4")
    >>> decontaminate([a, Problem("2", "what is 2 + 2 ?", "4"), Problem("3", "What is 3+3?", "6")], [a])[1]
    2
    """
    train = list(train)
    banned = {normalize_text(p.problem) for p in against}
    kept = [p for p in train if normalize_text(p.problem) not in banned]
    return kept, len(train) - len(kept)


# ---------------------------------------------------------------------------
# 7) A warm-up workload: seeded 3-digit products, and their prompt
# ---------------------------------------------------------------------------
# The paper's prompt (protocol.build_messages) assumes a model that already reasons; the
# untrained 135M model used on CPU here called the tool on 0 of 20 products with layout
# "system" and 16 of 20 with "turns" (greedy). With these three solved products as
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
    rng = random.Random(seed)
    return [(rng.randint(100, 999), rng.randint(100, 999)) for _ in range(n)]


# ---------------------------------------------------------------------------
# Command line: print problems and their answers
# ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Print problems of a benchmark or of the procedural generator.")
    ap.add_argument("bench", help=f"one of {', '.join(BENCHMARKS)}")
    ap.add_argument("--n", type=int, default=5, help="how many problems to print")
    ap.add_argument("--data", default=None, help="a JSONL file (id, problem, answer) served under the name")
    ap.add_argument("--seed", type=int, default=0, help="procedural: the seed")
    ap.add_argument("--difficulty", default="mixed", help="procedural: easy, medium, hard, mixed, or 'easy:1,hard:2'")
    ap.add_argument("--templates", default="train", choices=TEMPLATE_SETS, help="procedural: phrasing set")
    ap.add_argument("--split", default="test", choices=SPLITS, help="procedural: train (GRPO) or test (evaluation)")
    ap.add_argument("--jsonl", action="store_true", help="print JSON lines (id, problem, answer, meta)")
    args = ap.parse_args(argv)
    try:
        if args.bench == "procedural" and args.data is None and not os.environ.get(DATA_ENV):
            problems = procedural(args.n, args.seed, args.difficulty, args.templates, args.split)
        else:
            problems = load_benchmark(args.bench, args.data, args.n, args.seed, args.difficulty, args.templates)
    except DataError as e:
        return fail(str(e), 2)
    for p in problems:
        if args.jsonl:
            print(json.dumps({"id": p.id, "problem": p.problem, "answer": p.answer, "meta": p.meta},
                             ensure_ascii=False))
        else:
            print(f"[{p.id}] {p.problem}\n    answer: {p.answer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
