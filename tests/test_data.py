"""
Tests for data.py: local JSONL validation, benchmark lookup ($DEEPMATH_DATA, --data, the hub's
offline error), the shared data files, the procedural generator (determinism, split and template
partitions, exact answers graded by rewards.py), training sets and decontamination.

Tier 1 (literal inputs; no model). The shared-data tests read ../shared/data and skip, naming it,
where it is absent. The offline hub test runs `datasets` in a subprocess with HF_HUB_OFFLINE=1.

Run:  .venv/bin/python -m pytest tests/test_data.py -q
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import data  # noqa: E402
import rewards  # noqa: E402
from data import DataError, Problem  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SHARED = {  # file -> rows (SOURCES.md in that folder says where each comes from)
    "math500.jsonl": 500, "aime2024.jsonl": 30, "aime2024_matharena.jsonl": 30, "aime2025.jsonl": 30,
    "hmmt_feb2025.jsonl": 30, "hle_math.jsonl": 334, "train_sample.jsonl": 2993,
}


def _shared(name: str) -> Path:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not found: the benchmark files live in the checkout's sibling shared/data "
                    f"(built from public repositories, see shared/data/SOURCES.md)")
    return path


def _write(tmp_path: Path, name: str, rows: list) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


# ---------------------------------------------------------------------------
# JSONL files
# ---------------------------------------------------------------------------

def test_read_jsonl_rows_and_defaults(tmp_path):
    path = _write(tmp_path, "mine.jsonl", [
        {"id": "a", "problem": "1+1?", "answer": "2", "level": 1},
        "",
        {"problem": "2+2?", "answer": 4},  # no id; a numeric answer is taken as its text
    ])
    got = data.read_jsonl(path)
    assert got == [Problem("a", "1+1?", "2", str(path), {"level": 1}),
                   Problem("mine-3", "2+2?", "4", str(path), {})]


@pytest.mark.parametrize("bad, message", [
    ({"id": "x", "problem": "1+1?"}, "mine.jsonl:2: field 'answer' is missing"),
    ({"id": "x", "problem": "  ", "answer": "2"}, "mine.jsonl:2: field 'problem' is empty"),
    ({"id": "x", "problem": "1+1?", "answer": ["2"]}, "mine.jsonl:2: field 'answer' is not a string (list)"),
    ('{"id": "x", "problem": ', "mine.jsonl:2: not valid JSON"),
    ('["1+1?", "2"]', "mine.jsonl:2: expected a JSON object"),
    ({"id": "ok", "problem": "3+3?", "answer": "6"}, "mine.jsonl:2: duplicate id 'ok' (first on line 1)"),
])
def test_read_jsonl_bad_row_names_file_line_and_field(tmp_path, bad, message):
    path = _write(tmp_path, "mine.jsonl", [{"id": "ok", "problem": "1+1?", "answer": "2"}, bad])
    with pytest.raises(DataError) as e:
        data.read_jsonl(path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_read_jsonl_missing_and_empty_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        data.read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no problems"):
        data.read_jsonl(_write(tmp_path, "empty.jsonl", [""]))


# ---------------------------------------------------------------------------
# Benchmarks: names, --data, $DEEPMATH_DATA, the hub offline
# ---------------------------------------------------------------------------

def test_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(DataError) as e:
        data.load_benchmark("math5000")
    for name in data.BENCHMARKS:
        assert name in str(e.value)
    assert "--data" in str(e.value)


def test_data_file_serves_any_name_and_limit(tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    path = _write(tmp_path, "x.jsonl", [{"id": str(i), "problem": f"{i}+1?", "answer": str(i + 1)} for i in range(5)])
    got = data.load_benchmark("hle", data=path, limit=3)
    assert [p.id for p in got] == ["0", "1", "2"] and got[0].source == "hle"
    assert len(data.load_benchmark("procedural", data=path)) == 5  # a file wins over the generator
    # a name of the user's own (a private set): the file serves it, the name labels it
    assert {p.source for p in data.load_benchmark("my-private-set", data=path)} == {"my-private-set"}


def test_data_folder_accepts_bench_and_shared_file_names(tmp_path, monkeypatch):
    _write(tmp_path, "aime2024.jsonl", [{"id": "a", "problem": "p", "answer": "1"}])
    _write(tmp_path, "math500.jsonl", [{"id": "m", "problem": "q", "answer": "2"}])
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data.load_benchmark("aime24")[0].id == "a"
    assert data.load_benchmark("math500")[0].answer == "2"
    with pytest.raises(DataError, match=r"has none of hmmt_feb25.jsonl, hmmt_feb2025.jsonl"):
        data.load_benchmark("hmmt_feb25")
    # procedural is still generated when the folder has no procedural.jsonl
    assert data.load_benchmark("procedural", limit=2)[0].source == "procedural"


OFFLINE_SCRIPT = """
import sys; sys.path.insert(0, {root!r})
import data
for name in ("math500", "hle"):
    try:
        data.load_benchmark(name, limit=1)
        print(name, "LOADED")
    except data.DataError as e:
        print(name, "ERR", e)
try:
    data.load_train("openmathreasoning", limit=2)
    print("omr LOADED")
except data.DataError as e:
    print("omr ERR", e)
"""


def test_hub_offline_is_one_line_naming_the_fix(monkeypatch):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": "/nonexistent-deepmath-test-cache", "HF_HOME": "/nonexistent-deepmath-hf-home"}
    env.pop(data.DATA_ENV, None)
    out = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT.format(root=str(ROOT))], env=env,
                         capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3, out.stdout + out.stderr
    math500, hle, omr = lines
    assert math500.startswith("math500 ERR cannot load math500 from the hub (HuggingFaceH4/MATH-500")
    assert "--data FILE.jsonl" in math500 and "DEEPMATH_DATA" in math500
    assert hle.startswith("hle ERR") and "gated" in hle and "huggingface-cli login" in hle
    assert omr.startswith("omr ERR cannot load openmathreasoning from the hub (nvidia/OpenMathReasoning")
    assert "--dataset FILE.jsonl" in omr and "--dataset procedural" in omr  # train.py's flag (issue 17)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket closes


def test_hub_unreachable_says_why(monkeypatch):
    """The probe asked before `datasets` (issue 19): the user's switch, a refused connection, a
    reachable endpoint (a local listening socket stands in for the hub)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert data.hub_unreachable() == "HF_DATASETS_OFFLINE is set"
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    port = _closed_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert data.hub_unreachable().startswith(f"cannot connect to 127.0.0.1:{port}")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert data.hub_unreachable() is None


def test_hub_probe_gives_up_at_its_timeout(monkeypatch):
    """When the probe's timeout fires: a lookup that never answers (socket.create_connection
    replaced by one that sleeps, as a name lookup with no timeout of its own can) ends the wait at
    timeout_s, not when the lookup ends."""
    import threading
    import time

    released = threading.Event()

    def never_answers(*args, **kwargs):
        released.wait(30)  # until the test is over; then fail as a lookup would, not return None
        raise OSError("the stub lookup ends")

    monkeypatch.setattr(socket, "create_connection", never_answers)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    t0 = time.monotonic()
    try:
        why = data.hub_unreachable(timeout_s=0.3)
        waited = time.monotonic() - t0
    finally:
        released.set()  # the probe thread ends cleanly (it once died later on None.close(): a warning in every run)
    assert why.startswith("no answer from ") and why.endswith("within 0.3 s")
    assert 0.3 <= waited < 0.3 + 0.5


def test_offline_error_comes_without_the_hub_retries():
    """`python data.py math500` with the hub out of reach and no switch set: the probe finds it
    out before `datasets` is asked, so datasets makes no retries (about 25 s of them here before
    issue 19) and the one line names the reason and the fix. HF_ENDPOINT points at a closed
    local port, so this holds on a machine with internet too."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", data.DATA_ENV)}
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{_closed_port()}"
    out = subprocess.run([sys.executable, str(ROOT / "data.py"), "math500"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "Retry" not in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith(
        "error: cannot load math500 from the hub (HuggingFaceH4/MATH-500: cannot connect to 127.0.0.1:"), out.stderr
    assert "--data FILE.jsonl" in out.stderr


@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_data_files_load(name):
    problems = data.read_jsonl(_shared(name))
    assert len(problems) == SHARED[name]
    assert all(p.problem.strip() and p.answer.strip() for p in problems)


@pytest.mark.parametrize("bench", ["math500", "aime24", "aime25", "hmmt_feb25", "hle"])
def test_every_benchmark_loads_from_the_shared_folder(bench, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(_shared("math500.jsonl").parent))
    got = data.load_benchmark(bench, limit=4)
    assert len(got) == 4 and got[0].source == bench


# ---------------------------------------------------------------------------
# The procedural generator
# ---------------------------------------------------------------------------

def test_procedural_is_deterministic_prefix_stable_and_seeded():
    a = data.procedural(60, seed=3)
    assert a == data.procedural(60, seed=3)
    assert data.procedural(20, seed=3) == a[:20]
    assert [p.problem for p in data.procedural(60, seed=4)] != [p.problem for p in a]
    assert len({p.id for p in a}) == 60


def test_procedural_is_the_same_in_another_interpreter():
    """No hash() of str anywhere: a fresh interpreter with another hash seed gives the same problems."""
    code = ("import sys, json; sys.path.insert(0, %r); import data; "
            "print(json.dumps([[p.id, p.problem, p.answer] for p in data.procedural(30, seed=1)]))" % str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": "12345"},
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert json.loads(out) == [[p.id, p.problem, p.answer] for p in data.procedural(30, seed=1)]


def test_train_and_test_splits_never_share_a_problem():
    for difficulty in ("easy", "medium", "hard"):
        for templates in ("train", "heldout"):
            train = data.procedural(1500, seed=0, difficulty=difficulty, templates=templates, split="train")
            test = data.procedural(1500, seed=0, difficulty=difficulty, templates=templates, split="test")
            assert not {p.problem for p in train} & {p.problem for p in test}
            assert not {data.normalize_text(p.problem) for p in train} & {data.normalize_text(p.problem) for p in test}
            assert len({p.problem for p in test}) == len(test)  # no repeats within a split either


def test_same_seed_in_both_splits_gives_different_streams():
    tr, te = data.procedural(10, split="train"), data.procedural(10, split="test")
    assert [p.problem for p in tr] != [p.problem for p in te]


def test_template_sets_partition_every_family():
    for fam in data.FAMILIES:
        train, held = fam.templates("train"), fam.templates("heldout")
        assert train and held, fam.name
        assert not set(train) & set(held)
        assert set(train) | set(held) == set(fam.phrasings)
    for templates in ("train", "heldout"):
        for p in data.procedural(300, seed=2, templates=templates):
            fam = next(f for f in data.FAMILIES if f.name == p.meta["family"])
            index = int(p.meta["template"].split("/")[1])
            assert (index < fam.n_train) == (templates == "train")
            shape = re.escape(fam.phrasings[index])  # the text is that phrasing with numbers filled in
            shape = re.sub(r"\\\{\\\{\\\{\w+\\\}\\\}\\\}", r"\\{.+\\}", shape)
            shape = re.sub(r"\\\{\w+\\\}", ".+", shape)
            assert re.fullmatch(shape, p.problem), (p.problem, fam.phrasings[index])


def test_difficulty_levels_and_mixes():
    for level in data.LEVELS:
        got = data.procedural(30, difficulty=level)
        assert {p.meta["difficulty"] for p in got} == {level}
        assert {p.meta["family"] for p in got} <= {f.name for f in data.FAMILIES if f.level == level}
    mixed = data.procedural(30)
    counts = {lv: sum(p.meta["difficulty"] == lv for p in mixed) for lv in data.LEVELS}
    total = sum(data.MIXED_WEIGHTS.values())
    assert all(abs(counts[lv] - 30 * data.MIXED_WEIGHTS[lv] / total) <= 1 for lv in data.LEVELS)
    weighted = data.procedural(20, difficulty="easy:1,hard:3")
    assert [p.meta["difficulty"] for p in weighted].count("hard") == 15
    for bad in ("extreme", "easy:x", "easy:0,hard:0", "easy:-1"):
        with pytest.raises(DataError, match="difficulty"):
            data.procedural(5, difficulty=bad)
    with pytest.raises(DataError, match="split"):
        data.procedural(5, split="dev")
    with pytest.raises(DataError, match="templates"):
        data.procedural(5, templates="all")


def _wrong(answer: str) -> str:
    """A different value of the same shape: the first component plus one."""
    if answer.startswith("("):
        first, rest = answer[1:-1].split(", ", 1)
        return f"({first} + 1, {rest})"
    return f"{answer} + 1"


def test_every_family_answer_is_graded_right_and_a_wrong_one_is_not():
    problems = []
    for templates in ("train", "heldout"):
        for level in data.LEVELS:
            problems += data.procedural(16, seed=5, difficulty=level, templates=templates)
    assert {p.meta["family"] for p in problems} == {f.name for f in data.FAMILIES}
    golds = [p.answer for p in problems]
    right = [v.correct for v in rewards.check_many([f"so \\boxed{{{g}}}" for g in golds], golds)]
    wrong = [v.correct for v in rewards.check_many([f"so \\boxed{{{_wrong(g)}}}" for g in golds], golds)]
    assert all(r is True for r in right), [p for p, r in zip(problems, right) if r is not True][:3]
    assert all(w is False for w in wrong), [p for p, w in zip(problems, wrong) if w is not False][:3]


def _solve_text(p: Problem):
    """Recompute some families' answers from the problem text alone, independently of data.py."""
    nums = [int(x) for x in re.findall(r"-?\d+", p.problem)]
    fam = p.meta["family"]
    if fam == "product":
        return nums[0] * nums[1]
    if fam == "sum3":
        return sum(nums)
    if fam == "linear_system":
        coefs = []
        for lhs, rhs in re.findall(r"([-\dxy +]+?) = (-?\d+)", p.problem):
            lhs = lhs.replace(" ", "")
            a = re.match(r"(-?\d*)x", lhs).group(1)
            b = re.search(r"([+-]\d*)y", lhs).group(1)
            coefs.append([int(a + "1" if a in ("", "-") else a), int(b + "1" if b in ("+", "-") else b), int(rhs)])
        (a1, b1, c1), (a2, b2, c2) = coefs
        det = a1 * b2 - a2 * b1
        return (Fraction(c1 * b2 - c2 * b1, det), Fraction(a1 * c2 - a2 * c1, det))
    return None


def test_answers_match_an_independent_solution_of_the_text():
    checked = 0
    for p in data.procedural(200, seed=7, difficulty="easy:1,hard:1"):
        want = _solve_text(p)
        if want is not None:
            assert p.answer == data.fmt(want), p
            checked += 1
    assert checked > 30


# ---------------------------------------------------------------------------
# Training data and decontamination
# ---------------------------------------------------------------------------

def test_normalize_and_decontaminate_count():
    evals = [Problem("e1", "What is $\\frac{1}{2} + 3$?", "7/2"), Problem("e2", "Find  x.", "1")]
    train = [
        Problem("t1", "what is 1/2+3", "7/2"),          # same after normalisation: dropped
        Problem("t2", "FIND x", "1"),                   # dropped
        Problem("t3", "What is 1/2 + 4?", "9/2"),       # a different number: kept
        Problem("t4", "Find y.", "2"),                  # kept
    ]
    kept, dropped = data.decontaminate(iter(train), evals)
    assert dropped == 2 and [p.id for p in kept] == ["t3", "t4"]


def test_load_train_procedural_dev_split_and_decontamination(tmp_path):
    train, dev = data.load_train("procedural:hard", limit=100, dev_size=20, seed=1)
    assert len(train) == 80 and len(dev) == 20
    assert not {p.id for p in train} & {p.id for p in dev}
    assert all(p.meta["split"] == "train" and p.meta["difficulty"] == "hard" for p in train + dev)
    rows = [{"id": p.id, "problem": p.problem, "answer": p.answer} for p in train[:7]]
    evals = _write(tmp_path, "evals.jsonl", rows)
    train2, dev2 = data.load_train("procedural:hard", limit=100, dev_size=20, seed=1,
                                   decontaminate_against=[str(evals)])
    assert len(train2) + len(dev2) == 93
    assert not {p.problem for p in train2 + dev2} & {r["problem"] for r in rows}


def test_load_train_bad_sources():
    with pytest.raises(DataError, match="unknown training source 'bogus'"):
        data.load_train("bogus")
    with pytest.raises(DataError, match="dev_size=50 leaves no training problems"):
        data.load_train("procedural", limit=50, dev_size=50)


def test_shared_train_sample_is_clean_against_the_benchmarks():
    """SOURCES.md says train_sample.jsonl was filtered against every test set: our exact-match
    decontamination should find nothing to drop there."""
    path = _shared("train_sample.jsonl")
    against = [str(DATA / f) for f in ("math500.jsonl", "aime2024.jsonl", "aime2025.jsonl", "hmmt_feb2025.jsonl")]
    train, dev = data.load_train(str(path), dev_size=150, decontaminate_against=against)
    assert len(train) == 2993 - 150 and len(dev) == 150


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def test_cli_prints_problems_and_one_line_errors():
    out = subprocess.run([sys.executable, str(ROOT / "data.py"), "procedural", "--n", "3", "--difficulty", "hard"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.count("answer: ") == 3
    bad = subprocess.run([sys.executable, str(ROOT / "data.py"), "nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown benchmark 'nope'" in bad.stderr


# ---------------------------------------------------------------------------
# The hub training pool (issue 17): decontamination sets first, the filtered pool cached
# ---------------------------------------------------------------------------

OMR_CARD = """---
configs:
- config_name: default
  data_files:
  - split: tir
    path: tir.jsonl
---
"""
OMR_ROWS = [  # stream order; several solutions per problem, as in the real split
    {"problem": "What is 2+3?", "expected_answer": "5", "problem_type": "has_answer_extracted"},
    {"problem": "What is 2 + 3 ?", "expected_answer": "5"},              # the same problem normalised: folded
    {"problem": "Which choice is right?", "expected_answer": "B)"},       # graded as text only: filtered out
    {"problem": "Find x if 2x = 8.", "expected_answer": "4"},
    {"problem": "What is 7*6?", "expected_answer": "42"},                  # in the benchmark file below
    {"problem": "Compute 1/2 + 1/3.", "expected_answer": "\\frac{5}{6}"},
    {"problem": "What is 10-3?", "expected_answer": "7"},
    {"problem": "", "expected_answer": "1"},                               # no problem: skipped
]
OMR_POOL = ["What is 2+3?", "Find x if 2x = 8.", "What is 7*6?", "Compute 1/2 + 1/3.", "What is 10-3?"]


@pytest.fixture
def omr(tmp_path, monkeypatch):
    """nvidia/OpenMathReasoning's layout in a local folder (a dataset card whose YAML names the
    `tir` split, as the hub's does), put behind data.OPENMATHREASONING, the spec the training
    loader reads: the real datasets.load_dataset streams it as it would the hub's. The cache goes
    to a fresh $DEEPMATH_CACHE. `opened` lists every source data._hub_rows opened (it calls the
    real one), so a test counts how often the training split was streamed."""
    folder = tmp_path / "omr"
    folder.mkdir()
    (folder / "README.md").write_text(OMR_CARD)
    _write(folder, "tir.jsonl", OMR_ROWS)
    monkeypatch.setattr(data, "OPENMATHREASONING", data.Benchmark(
        str(folder), "tir", fields={"problem": "problem", "answer": "expected_answer"}))
    monkeypatch.setenv("DEEPMATH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    opened: list[str] = []
    real = data._hub_rows

    def counting(spec, what, *args, **kwargs):
        opened.append(what)
        return real(spec, what, *args, **kwargs)

    monkeypatch.setattr(data, "_hub_rows", counting)
    bench = _write(tmp_path, "bench.jsonl", [{"id": "b1", "problem": "what is 7 * 6", "answer": "42"}])
    return type("Omr", (), {"folder": folder, "opened": opened, "cache": tmp_path / "cache", "bench": bench})


def test_decontamination_sets_load_before_the_training_stream(omr, tmp_path, monkeypatch):
    """A missing evaluation set is named before the training split is streamed (on the hub that
    stream is 36 GB), and the fix names train.py's flags, not evaluate.py's --data."""
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    _write(folder, "math500.jsonl", [{"id": "m", "problem": "q", "answer": "2"}])
    monkeypatch.setenv(data.DATA_ENV, str(folder))
    with pytest.raises(DataError) as e:
        data.load_train("openmathreasoning", dev_size=1, decontaminate_against=["math500", "hle"])
    msg = str(e.value)
    assert omr.opened.count("openmathreasoning") == 0, "the training split was streamed before the missing set was found"
    assert "'hle'" in msg and "hle.jsonl" in msg and data.DATA_ENV in msg and "--decontaminate_against" in msg
    assert "--data " not in msg and "\n" not in msg
    with pytest.raises(DataError, match=r"decontamination set 'nope'.*--decontaminate_against"):
        data.load_train("openmathreasoning", dev_size=1, decontaminate_against=["nope"])
    assert omr.opened.count("openmathreasoning") == 0


def test_hub_pool_built_once_cached_and_reused(omr):
    train, dev = data.load_train("openmathreasoning", dev_size=1, decontaminate_against=[str(omr.bench)])
    assert omr.opened.count("openmathreasoning") == 1
    # folded, filtered and decontaminated as before: the pool is the problems, each once
    assert sorted(p.problem for p in train + dev) == sorted(set(OMR_POOL) - {"What is 7*6?"})
    assert all(p.source == str(omr.folder) for p in train + dev)
    # a second start (or a resume, or another process) reads the cache: no second stream
    again = data.load_train("openmathreasoning", dev_size=1, decontaminate_against=[str(omr.bench)])
    assert omr.opened.count("openmathreasoning") == 1, "the training split was streamed again"
    assert again == (train, dev)
    files = list((omr.cache / "train-pools").iterdir())
    assert len(files) == 1 and files[0].suffix == ".jsonl"
    # even with the source gone
    for f in omr.folder.iterdir():
        f.unlink()
    assert data.load_train("openmathreasoning", dev_size=1, decontaminate_against=[str(omr.bench)]) == (train, dev)
    # a limit is served from the full pool's cache: the first N of the stream, as a limited stream gives
    t2, d2 = data.load_train("openmathreasoning", limit=3, dev_size=1)
    assert sorted(p.problem for p in t2 + d2) == sorted(OMR_POOL[:3]) and omr.opened.count("openmathreasoning") == 1


def test_hub_pool_cache_is_keyed_and_a_damaged_one_rebuilt(omr, monkeypatch):
    first = data.load_train("openmathreasoning", dev_size=1)
    [cached] = (omr.cache / "train-pools").iterdir()
    # another revision (or filter version) is another pool: streamed again, into its own file
    monkeypatch.setattr(data, "OPENMATHREASONING", data.Benchmark(
        str(omr.folder), "tir", revision="0123abcd", fields={"problem": "problem", "answer": "expected_answer"}))
    assert data.load_train("openmathreasoning", dev_size=1) == first
    assert omr.opened.count("openmathreasoning") == 2 and len(list((omr.cache / "train-pools").iterdir())) == 2
    # a limited pool is cached under its own key, and a bigger one is not served from it
    monkeypatch.setattr(data, "TRAIN_POOL_VERSION", data.TRAIN_POOL_VERSION + 1)
    data.load_train("openmathreasoning", limit=2, dev_size=1)
    data.load_train("openmathreasoning", limit=4, dev_size=1)
    assert omr.opened.count("openmathreasoning") == 4
    # a damaged file (a copy cut short, an edit by hand) is not trusted: it is rebuilt
    text = cached.read_text()
    cached.write_text(text[: len(text) // 2])
    monkeypatch.setattr(data, "TRAIN_POOL_VERSION", data.TRAIN_POOL_VERSION - 1)
    monkeypatch.setattr(data, "OPENMATHREASONING", data.Benchmark(
        str(omr.folder), "tir", fields={"problem": "problem", "answer": "expected_answer"}))
    assert data.load_train("openmathreasoning", dev_size=1) == first
    assert omr.opened.count("openmathreasoning") == 5 and cached.read_text() == text
    assert not [f for f in (omr.cache / "train-pools").iterdir() if f.suffix != ".jsonl"]  # no temporary left
