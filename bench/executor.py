"""
bench/executor.py -- what the sandbox costs, beside what the alternatives cost.

It runs the same snippets, in one process and one run, through:
  1) bare exec()            compile + exec in this process: the floor, with no isolation at all;
  2) Sandbox, warm session  executor.Sandbox after a first run (worker forked, libraries preloaded);
  3) smolagents             LocalPythonExecutor, the AST interpreter the paper's agent uses;
  4) fork per snippet       os.fork() of this (preloaded) process for each snippet, output via a pipe;
  5) fresh python -c        a new interpreter per snippet, which imports the libraries every time.
For each snippet it prints the median latency (ms) of each executor side by side. It also prints
the cost of a cold session (Sandbox() plus its first run), and the throughput of run_batch
over N concurrent sessions beside one session that runs the same snippets one after another.
The last line is `RESULT key=value ...`:
  warm_overhead_ms_median   median over snippets of (Sandbox - bare exec)   target <= 1 ms
  warm_overhead_ms_max      the worst snippet
  loop_ratio_vs_bare        Sandbox / bare exec on the 10k-iteration loop    target <= 1.5
  speedup_vs_smolagents_loop  smolagents / Sandbox on that loop              target >= 20
  stop_continue_us          what the caller adds per snippet to keep an idle worker stopped

Run:  python bench/executor.py            (about a minute)
      python bench/executor.py --quick    (fewer repetitions, about 20 s)
      python bench/executor.py --against OLD.py   (adds a column: the Sandbox of another
          version of executor.py, e.g. `git show REV:executor.py > /tmp/old_executor.py`,
          interleaved with the others so that machine load hits both alike)
Timings depend on the machine and on its load: compare figures from one run only.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import executor  # noqa: E402
from executor import Sandbox, run_batch  # noqa: E402

SNIPPETS = {
    "sympy solve": "import sympy as sp\nx = sp.symbols('x')\nsp.solve(x**2 - 5*x + 6, x)",
    "numpy det": "import numpy as np\nnp.linalg.det(np.arange(9.0).reshape(3, 3) + np.eye(3))",
    "10k-iteration loop": "s = 0\nfor i in range(10000):\n    s += i * i\ns",
    "print": "print('the answer is', 6 * 7)",
    "math.comb sum": "import math\nsum(math.comb(30, k) for k in range(31))",
    "sympy factorint": "import sympy\nsympy.factorint(2**32 + 1)",
}
LOOP = "10k-iteration loop"


def median_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


# -- 1) bare exec ----------------------------------------------------------------------

def bare_exec(code: str, ns: dict) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, "<bench>", "exec"), ns)


# -- 3) smolagents -------------------------------------------------------------------------

def make_smolagents():
    try:
        from smolagents.local_python_executor import LocalPythonExecutor
    except ImportError:
        return None
    ex = LocalPythonExecutor(additional_authorized_imports=["numpy", "numpy.*", "sympy", "sympy.*", "math"])
    ex.send_tools({})
    return ex


def load_other(path: str):
    """Another version of executor.py, imported under its own name (its own zygote and pool)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("executor_against", os.path.abspath(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules["executor_against"] = module
    spec.loader.exec_module(module)
    return module


# -- 4) fork per snippet ----------------------------------------------------------------------

def fork_exec(code: str) -> str:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                exec(compile(code, "<bench>", "exec"), {})
        except BaseException as e:
            buf.write(repr(e))
        os.write(w, buf.getvalue().encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out.decode()


# -- 5) fresh interpreter ---------------------------------------------------------------------

def fresh_python(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--sessions", type=int, default=32, help="concurrent sessions for the throughput test")
    ap.add_argument("--against", metavar="OLD.py", help="another executor.py to time beside this one")
    args = ap.parse_args()
    reps = 15 if args.quick else 60
    fresh_reps = 2 if args.quick else 5
    rounds = 2 if args.quick else 5

    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, {sys.platform}")
    t0 = time.perf_counter()
    report = executor.isolation_report()
    print(f"zygote start (imports numpy/scipy/sympy, warm-up, probe): {time.perf_counter() - t0:.2f} s")
    print(f"isolation: seccomp={report['seccomp']} landlock_abi={report['landlock_abi']} "
          f"drop_to_nobody={report['drop_to_nobody']}")

    import numpy  # noqa: F401  (bare exec and fork-per-snippet get the same preloaded libraries)
    import sympy  # noqa: F401
    smol = make_smolagents()
    sandbox = Sandbox(timeout_s=60)
    other = load_other(args.against).Sandbox(timeout_s=60) if args.against else None
    for code in SNIPPETS.values():          # warm every path once (imports, sympy caches)
        assert sandbox.run(code).ok
        assert other is None or other.run(code).ok
        bare_exec(code, {})
        if smol is not None:
            smol(code)

    # The worker's preloaded objects are frozen (gc.freeze in the zygote), so its garbage
    # collections skip them. Do the same here, or bare exec would pay for scanning this
    # process's larger heap (smolagents, rich...) and the floor would be too high.
    gc.collect()
    gc.freeze()

    cold = median_ms(lambda: Sandbox().run("1").ok, 5 if args.quick else 15)
    # what the caller adds to every snippet since the worker became untrusted after replying:
    # prlimit (its CPU limit) + SIGCONT before sending, SIGSTOP when the reply arrives
    w = sandbox._worker
    stop_continue = median_ms(lambda: (w.resume(60.0), w.pause()), 10 * reps)

    rows = []
    for name, code in SNIPPETS.items():
        ns: dict = {}
        runners = {"bare": lambda: bare_exec(code, ns), "sandbox": lambda: sandbox.run(code)}
        if smol is not None:
            runners["smolagents"] = lambda: smol(code)
        if other is not None:
            runners["against"] = lambda: other.run(code)
        times: dict[str, list[float]] = {k: [] for k in runners}
        order = list(runners.items())
        for rep in range(reps):   # interleaved, so that load changes hit every column alike, and
            k = rep % len(order)  # rotated, so that none always follows smolagents' long CPU burst
            for key, fn in order[k:] + order[:k]:
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
        row = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        row.setdefault("smolagents", float("nan"))
        row["fork"] = median_ms(lambda: fork_exec(code), max(5, reps // 3))
        row["fresh"] = median_ms(lambda: fresh_python(code), fresh_reps)
        rows.append((name, row))

    header = f"{'snippet (median ms)':<20} {'bare exec':>10} {'Sandbox':>10} {'+overhead':>10} {'smolagents':>11} {'fork/snippet':>13} {'python -c':>10}"
    print("\n" + header)
    print("-" * len(header))
    for name, r in rows:
        print(f"{name:<20} {r['bare']:>10.3f} {r['sandbox']:>10.3f} {r['sandbox'] - r['bare']:>+10.3f} "
              f"{r['smolagents']:>11.3f} {r['fork']:>13.2f} {r['fresh']:>10.1f}")
    if other is not None:
        print(f"\n--against {args.against}: its Sandbox, interleaved with the columns above (median ms)")
        for name, r in rows:
            print(f"{name:<20} {r['against']:>10.3f}  +overhead {r['against'] - r['bare']:>+8.3f}  "
                  f"(this version {r['sandbox'] - r['bare']:>+8.3f})")
    print(f"\ncold session (Sandbox() + first run of '1'): {cold:.2f} ms median "
          f"(fork from the zygote + isolation setup), beside fork per snippet above")
    print(f"per snippet, CPU limit + SIGCONT + SIGSTOP of the worker: {stop_continue * 1e3:.0f} us median "
          f"(part of the Sandbox column)")

    # throughput: N sessions, one snippet each per round, through run_batch
    mix = [SNIPPETS["sympy solve"], SNIPPETS[LOOP], SNIPPETS["numpy det"], SNIPPETS["math.comb sum"]]
    n = args.sessions
    boxes = [Sandbox(timeout_s=60) for _ in range(n)]
    codes = [mix[i % len(mix)] for i in range(n)]
    run_batch(boxes, codes)                        # spawn and warm
    t0 = time.perf_counter()
    for _ in range(rounds):
        results = run_batch(boxes, codes)
    batch_s = time.perf_counter() - t0
    assert all(r.ok for r in results)
    t0 = time.perf_counter()
    for _ in range(rounds):
        for code in codes:
            sandbox.run(code)
    seq_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(rounds):
        for code in codes:
            bare_exec(code, {})
    bare_s = time.perf_counter() - t0
    total = n * rounds
    stats = executor.pool_stats()
    print(f"\nthroughput, {n} sessions x {rounds} rounds of a mixed snippet (sympy/loop/numpy/comb):")
    print(f"  run_batch, {stats['max_running']} running at once: {total / batch_s:8.0f} snippets/s")
    print(f"  one session, sequential:          {total / seq_s:8.0f} snippets/s")
    print(f"  bare exec, sequential (no isolation): {total / bare_s:5.0f} snippets/s")
    for b in boxes:
        b.close()
    sandbox.close()
    if other is not None:
        other.close()

    overheads = [r["sandbox"] - r["bare"] for _, r in rows]
    loop = dict(rows)[LOOP]
    print(f"\nRESULT warm_overhead_ms_median={statistics.median(overheads):.3f} "
          f"warm_overhead_ms_max={max(overheads):.3f} "
          f"loop_ratio_vs_bare={loop['sandbox'] / loop['bare']:.2f} "
          f"speedup_vs_smolagents_loop={loop['smolagents'] / loop['sandbox']:.1f} "
          f"cold_session_ms={cold:.1f} stop_continue_us={stop_continue * 1e3:.1f} "
          f"batch_snippets_per_s={total / batch_s:.0f} sequential_snippets_per_s={total / seq_s:.0f} "
          f"sessions={n} cores={os.cpu_count()}"
          + (f" against_overhead_ms_median={statistics.median(r['against'] - r['bare'] for _, r in rows):.3f}"
             f" against_loop_ratio_vs_bare={loop['against'] / loop['bare']:.2f}" if other is not None else ""))


if __name__ == "__main__":
    main()
