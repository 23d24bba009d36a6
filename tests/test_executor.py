"""
Tests for executor.py: the sandbox that runs the model's snippets.

Run:  .venv/bin/python -m pytest tests/test_executor.py        (about 2 minutes on 2 cores)
      As root, test_attacks_as_an_unprivileged_user reruns the attack tests as `nobody`
      (about 35 s more) once `python tests/test_executor.py --make-unprivileged-venv` has
      made a Python that `nobody` can run; without one it skips and says so.

They read as documentation; each group names the executor.py sections it covers (a
group's number is this file's banner, not the module's section):
  1) benign snippets of the kinds the paper shows give the right output, and state persists
     (sections 0 and 2: the allow-lists, a session);
  2) the static check rejects what it should, with a message the model can act on, and
     refuses a snippet over the size cap before parsing it (section 1);
  3) every OS limit (section 7, isolation), attacked the way a hostile snippet would:
     through sympify's eval, which hands the snippet the real `os` and `builtins` past the
     static check. Each test asserts that the harmful effect did not happen (no file, no
     connection, the target process alive), not only that an error came back. The seccomp
     filter's decisions are also checked as data, by a small BPF interpreter;
  4) failures: timeouts fire on time, crashes are reported, the caller never hangs or
     leaks a process, and the next run continues in a fresh session (section 2d, 5, 6);
  5) many sessions: run_batch, the worker bound, eviction and replay (section 3);
  5b) a determined attacker (sections 5-8), through `random._os` and ctypes to raw libc calls: the
     caller's environment, SysV IPC, inotify, shared memory, fcntl/ioctl signals and
     leases, limits, forged replies, CPU between snippets, replay time, the death signal;
     then a second round (issue 21): a replaced reply routine (every field the caller
     returns stays bounded), the pending-signal quota of the worker's uid, access times
     as a channel, page tables beyond the memory cap, the CPU limit during snippets (and
     where the caller may not set it); then the same tests as an unprivileged user;
  6) the smolagents adapter (section 4): a scripted model, one agent run that tries to
     decide the next, then the real embedded SmolLM2-135M.
No test asserts speed, except that a timeout fires within its limit + 0.5 s (after an
eviction too), and that an idle worker uses no CPU.
"""

from __future__ import annotations

import collections
import doctest
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import executor  # noqa: E402
from executor import ExecResult, Sandbox, run_batch  # noqa: E402

# A snippet prefix that gets past the static check the way an attacker would: sympify()
# calls eval() on its string, with real builtins. The strings are built at run time so
# that no literal contains a dunder. After it, `os`, `bi` (builtins) and `imp` (the real
# __import__) are the genuine objects.
ESCAPE = """import sympy
U = "_" * 2
os = sympy.sympify(U + "import" + U + "('os')")
bi = sympy.sympify(U + "import" + U + "('builtins')")
imp = bi.getattr(bi, U + "import" + U)
"""


def descendants(pid: int | None = None) -> set[int]:
    """All processes below `pid` (default: this test process), from /proc."""
    children = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(entry))
    found, stack = set(), [pid or os.getpid()]
    while stack:
        for child in children[stack.pop()]:
            found.add(child)
            stack.append(child)
    return found


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture(scope="module")
def report() -> dict:
    """Start the zygote once (imports numpy/scipy/sympy: a few seconds) and return its probe."""
    return executor.isolation_report()


@pytest.fixture
def no_leaks(report):
    """Whatever the test does, no process it created may survive it."""
    before = descendants()
    yield
    assert wait_until(lambda: not (descendants() - before)), f"leftover processes: {descendants() - before}"


@pytest.fixture
def sb(report, no_leaks):
    with Sandbox(timeout_s=5) as s:
        yield s


def run_ok(sb: Sandbox, code: str) -> str:
    r = sb.run(code)
    assert r.ok, r.error
    return r.stdout


needs_seccomp = pytest.mark.skipif(not (sys.platform.startswith("linux") and os.uname().machine in ("x86_64", "aarch64")),
                                   reason="seccomp layer needs Linux x86_64/aarch64")


# ---------------------------------------------------------------------------------------
# 1) Benign snippets
# ---------------------------------------------------------------------------------------

def test_doctests_in_the_module():
    assert doctest.testmod(executor, optionflags=doctest.ELLIPSIS).failed == 0


def test_sympy_solve_simplify_factor(sb):
    out = run_ok(sb, "import sympy as sp\nx = sp.symbols('x')\nsp.solve(x**2 - 5*x + 6, x)")
    assert out == "[2, 3]\n"
    assert run_ok(sb, "sp.simplify(sp.sin(x)**2 + sp.cos(x)**2)") == "1\n"
    assert run_ok(sb, "sp.factor(x**3 - x)") == "x*(x - 1)*(x + 1)\n"
    assert run_ok(sb, "print(sp.integrate(x**2, (x, 0, 3)))") == "9\n"


def test_numpy_linear_algebra(sb):
    out = run_ok(sb, "import numpy as np\nA = np.array([[2., 1.], [1., 3.]])\n"
                     "print(round(float(np.linalg.det(A)), 6))\nprint(np.linalg.solve(A, [3., 5.]).round(6))")
    assert out == "5.0\n[0.8 1.4]\n"
    assert run_ok(sb, "sorted(np.linalg.eigvalsh(A).round(4).tolist())") == "[1.382, 3.618]\n"


def test_scipy_is_available_and_lazy_imports_work(sb):
    assert run_ok(sb, "from scipy import special\nprint(special.comb(10, 3, exact=True))") == "120\n"
    # not preloaded by the zygote: imported inside the sandbox, through Landlock's read-only rules
    assert run_ok(sb, "from scipy import interpolate\nfloat(interpolate.interp1d([0, 1], [0, 10])(0.5))") == "5.0\n"
    assert run_ok(sb, "from sympy.ntheory import continued_fraction_periodic as cf\ncf(0, 1, 2)") == "[1, [2]]\n"


def test_big_integers_print_in_full(sb):
    out = run_ok(sb, "n = 3**20000\nlen(str(n)), n % 1000")
    assert out == "(9543, 1)\n"   # past Python's default 4300-digit conversion limit
    assert run_ok(sb, "import math\nmath.factorial(25)") == "15511210043330985984000000\n"


def test_interpreter_only_imports_cannot_be_named(sb):
    """str() of a huge int imports _pylong on Python 3.12+ through the import hook, which lets
    it pass (test above); a snippet naming it is still refused."""
    r = sb.run("import _pylong")
    assert not r.ok and "not allowed" in r.error


def test_combinatorics(sb):
    code = ("import math, itertools\n"
            "print(math.comb(10, 4))\n"
            "print(sum(1 for p in itertools.permutations(range(5)) if all(p[i] != i for i in range(5))))\n"
            "from fractions import Fraction\nFraction(1, 3) + Fraction(1, 6)")
    assert run_ok(sb, code) == "210\n44\nFraction(1, 2)\n"



def test_solver_modules_beyond_the_paper(sb):
    """mpmath, heapq, bisect, numbers, string and copy: what a solver reaches for next."""
    code = ("import heapq, bisect, mpmath, numbers, string, copy\n"
            "h = [5, 1, 4]\nheapq.heapify(h)\n"
            "mpmath.mp.dps = 30\n"
            "print(heapq.heappop(h), bisect.bisect_left([1, 3, 5], 4), isinstance(3, numbers.Integral))\n"
            "print(mpmath.nstr(mpmath.zeta(2), 20), string.ascii_lowercase[:3], copy.deepcopy([[1]]))")
    assert run_ok(sb, code) == "1 2 True\n1.6449340668482264365 abc [[1]]\n"
    assert "not allowed" in sb.run("import mpmath.tests").error

def test_multiline_functions_classes_and_state_persist(sb):
    run_ok(sb, "def collatz(n):\n    steps = 0\n    while n != 1:\n"
               "        n = n // 2 if n % 2 == 0 else 3 * n + 1\n        steps += 1\n    return steps\n")
    run_ok(sb, "class P:\n    def __init__(self, a):\n        self.a = a\n    def double(self):\n        return 2 * self.a\n")
    run_ok(sb, "import math as m\nmemo = {k: collatz(k) for k in range(1, 10)}")
    assert run_ok(sb, "memo[9], P(21).double(), m.gcd(12, 18)") == "(19, 42, 6)\n"


def test_display_rules_like_ipython(sb):
    assert run_ok(sb, "1 + 1") == "2\n"
    assert run_ok(sb, "x = 5") == ""
    assert run_ok(sb, "None") == ""
    assert run_ok(sb, "print('a')\n'b'") == "a\n'b'\n"
    assert run_ok(sb, "x + 1;") == ""                      # a trailing semicolon hides it
    r = sb.run("print('p')\n[1, 2]")
    assert (r.printed, r.value) == ("p\n", "[1, 2]")


def test_errors_are_short_and_name_the_line(sb):
    r = sb.run("a = 1\nprint('before')\nb = a / 0\n")
    assert r.error == "ZeroDivisionError: division by zero (line 3: b = a / 0)"
    assert r.error_type == "ZeroDivisionError"
    assert r.stdout == "before\n" and not r.ok and not r.session_reset
    run_ok(sb, "def f(v):\n    return v[3]\n")
    r = sb.run("f([1])")
    assert r.error == "IndexError: list index out of range (snippet 2, line 2: return v[3])"
    assert "Traceback" not in r.error and "executor" not in r.error
    assert sb.run("a").stdout == "1\n"                     # an exception does not reset the session
    assert [sb.run(c).error_type for c in ("raise KeyboardInterrupt", "next(iter([]))", "import os", "x.__class__")] \
        == ["KeyboardInterrupt", "StopIteration", "ImportError", "SandboxError"]


def test_large_snippets_and_variables_reach_a_stopped_worker(sb):
    """The worker is stopped between snippets; frames larger than a socket buffer must still
    get through (the caller continues the worker before sending those)."""
    big = "s = '" + "\U0001F600" * 19_000 + "'\nlen(s)"   # 76 KB of UTF-8 within MAX_CODE_CHARS
    assert run_ok(sb, big) == "19000\n"
    sb.set_variables({"v": list(range(300_000))})
    assert run_ok(sb, "sum(v)") == f"{sum(range(300_000))}\n"

def test_stderr_and_warnings_are_captured(sb):
    out = run_ok(sb, "import numpy as np\nnp.array([1.0]) / 0")
    assert "RuntimeWarning: divide by zero" in out and "array([inf])" in out


def test_random_is_seeded_per_session(report):
    code = "import random, numpy as np\nrandom.randint(0, 10**9), int(np.random.randint(0, 10**9))"
    with Sandbox(seed=7) as a, Sandbox(seed=7) as b, Sandbox(seed=8) as c:
        assert a.run(code).stdout == b.run(code).stdout != c.run(code).stdout


def test_output_truncation_has_a_marker(report):
    with Sandbox(max_output_chars=100) as s:
        r = s.run("print('x' * 10_000)")
        assert r.ok and r.stdout.startswith("x" * 100)
        assert "[output truncated: 9901 more characters]" in r.stdout and len(r.stdout) < 160
        r = s.run("list(range(10_000))")
        assert "[output truncated" in r.stdout and len(r.stdout) < 160


def test_non_utf8_and_c_level_output(sb):
    r = sb.run(ESCAPE + "os.write(1, b'ok \\xff\\xfe end\\n')")
    assert r.ok and "ok \ufffd\ufffd end" in r.stdout
    r = sb.run("print('\\udcff lone surrogate')")
    assert r.ok and "lone surrogate" in r.stdout


# ---------------------------------------------------------------------------------------
# 2) The static check
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("code, expected", [
    ("import os", "ImportError: import of 'os' is not allowed"),
    ("import subprocess", "ImportError: import of 'subprocess' is not allowed"),
    ("from ctypes import CDLL", "ImportError: import from 'ctypes' is not allowed"),
    ("import numpy.f2py", "ImportError: import of 'numpy.f2py' is not allowed"),
    ("from numpy import ctypeslib", "ImportError: import of 'numpy.ctypeslib' is not allowed"),
    ("from . import x", "a relative import"),
    ("().__class__.__bases__[0].__subclasses__()", "dunder attributes"),
    ("__builtins__", "the name '__builtins__'"),
    ("__import__('os')", "the name '__import__'"),
    ("'{0.__class__}'.format(1)", "a string containing a dunder name"),
    ("getattr(1, '__class__')", "a string containing a dunder name"),
    ("def g():\n    yield 1\ng().gi_frame.f_globals", "frames and code objects"),
    ("try:\n    1/0\nexcept Exception as e:\n    e.__traceback__.tb_frame", "is not allowed"),
    ("try:\n    1/0\nexcept Exception as e:\n    t = e.with_traceback(None)\n    t.tb_frame", "frames and code objects"),
    ("async def f():\n    pass", "'AsyncFunctionDef' syntax"),
    ("match 1:\n    case 1:\n        pass", "'Match' syntax"),
    ("x = (", "SyntaxError"),
    ("-" * 200_000 + "1", "characters, over the limit of 20000 (max_code_chars)"),
])
def test_static_check_rejects(code, expected):
    r = Sandbox().run(code)            # rejected before any worker exists
    assert r.error is not None and expected in r.error, r.error
    assert not r.timed_out and not r.session_reset


def test_static_check_never_raises():
    for code in [None, 42, b"print(1)", "\x00", "(" * 1000, "x" * 10, "\ufeffprint(1)"]:
        assert isinstance(Sandbox().run(code), ExecResult)


def test_huge_snippets_are_refused_before_parsing(sb, monkeypatch):
    """Parsing and checking hold the caller's GIL for ~4 us per character of hostile code, so a
    snippet over max_code_chars (MAX_CODE_CHARS by default) is refused before anything parses
    it, with one line naming the cap. Up to the cap, snippets run as before."""
    parsed = []
    real_parse = executor.ast.parse
    monkeypatch.setattr(executor.ast, "parse", lambda *a, **k: parsed.append(1) or real_parse(*a, **k))
    code = "x = [" + "1," * 25_000 + "]"        # 50,001 characters of valid Python
    r = Sandbox().run(code)
    assert r.error == (f"SandboxError: the snippet has {len(code)} characters, over the limit of "
                       f"{executor.MAX_CODE_CHARS} (max_code_chars); split the work into shorter snippets")
    assert parsed == [] and "\n" not in r.error
    assert executor.static_check(code) == r.error and parsed == []
    assert executor.static_check(code, max_code_chars=len(code)) is None and parsed == [1]
    code = "x = 0\n" + "x += 1\n" * ((executor.MAX_CODE_CHARS - 16) // 7) + "x"   # up to the cap, as before
    assert len(code) <= executor.MAX_CODE_CHARS
    assert run_ok(sb, code) == f"{(executor.MAX_CODE_CHARS - 16) // 7}\n"


def test_forbidden_builtins_and_dunder_getattr(sb):
    for call in ["open('/etc/passwd')", "eval('1')", "exec('1')", "compile('1', 'x', 'eval')",
                 "globals()", "locals()", "vars()", "input()", "breakpoint()", "help()"]:
        r = sb.run(call)
        assert r.error and r.error.startswith("PermissionError:") and "not available" in r.error, (call, r.error)
    r = sb.run("U = '_' * 2\ngetattr(1, U + 'class' + U)")
    assert r.error.startswith("PermissionError: attribute '__class__' is not accessible")
    assert run_ok(sb, "open = 3\nopen + 1") == "4\n"      # the names stay usable as variables


def test_dynamic_format_string_reads_only_text(sb):
    """str.format can walk dunder attributes (it is a C method: the AST never sees it), but
    it only produces text. The hard isolation is what keeps that text harmless."""
    r = sb.run("U = '_' * 2\n('{0.' + U + 'class' + U + '}').format(1)")
    assert r.ok and r.stdout == "\"<class 'int'>\"\n"


def test_module_attributes_can_reach_os_so_the_os_layers_matter(sb):
    """Why the AST check is not the boundary: an allowed module hands out `os` as a plain
    attribute. With it, a snippet still cannot write, read outside the libraries, or spawn."""
    r = sb.run("import sympy.utilities.misc as m\nm.os.getpid() > 0")
    assert r.ok and r.stdout == "True\n"
    assert "Operation not permitted" in sb.run("import sympy.utilities.misc as m\nm.os.fork()").error


# ---------------------------------------------------------------------------------------
# 3) Hard isolation, attacked through sympify's eval
# ---------------------------------------------------------------------------------------

def run_bpf(prog, nr: int, args=(0,) * 6, arch: int = 0xC000003E) -> str:
    """A classic-BPF interpreter for the few instructions the filter uses (LD abs, JEQ, JSET,
    RET), over a struct seccomp_data: the filter's decisions checked without a kernel."""
    data = [nr, arch, 0, 0]                      # nr, arch, instruction pointer (2 words)
    for a in args:
        data += [a & 0xFFFFFFFF, a >> 32]
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == 0x20:
            acc = data[k // 4]
        elif code == 0x15:
            pc += jt if acc == k else jf
        elif code == 0x45:
            pc += jt if acc & k else jf
        elif code == 0x06:
            return {0x7FFF0000: "allow", 0x80000000: "kill", 0x00050001: "EPERM", 0x00050026: "ENOSYS"}[k]
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")
        pc += 1


def test_seccomp_filter_decisions_x86_64():
    """The allow-list filter as data: what it returns for typical and hostile calls."""
    me = 4242
    prog = executor._seccomp_program("x86_64", me)
    assert max(max(jt, jf) for _, jt, jf, _ in prog) < 256
    cases = [
        (0, (), "allow"),                                  # read
        (1, (), "allow"),                                  # write
        (257, (0, 0, os.O_RDONLY | os.O_CLOEXEC), "allow"),  # openat read-only
        (257, (0, 0, os.O_WRONLY | os.O_CREAT), "EPERM"),
        (257, (0, 0, os.O_PATH), "EPERM"),
        (72, (1, 3), "allow"), (72, (1, 4, os.O_NONBLOCK), "allow"),      # fcntl F_GETFL, F_SETFL
        (72, (1, 4, os.O_ASYNC), "EPERM"), (72, (1, 8, 1), "EPERM"),      # O_ASYNC, F_SETOWN
        (72, (1, 10, 9), "EPERM"), (72, (3, 1024, 0), "EPERM"),          # F_SETSIG, F_SETLEASE
        (16, (0, 0x5401), "allow"), (16, (3, 0x40086602), "EPERM"),      # ioctl TCGETS, FS_IOC_SETFLAGS
        (9, (0, 4096, 3, 0x22, -1 & 0xFFFFFFFFFFFFFFFF, 0), "allow"),    # mmap private anonymous
        (9, (0, 4096, 3, 0x21, -1 & 0xFFFFFFFFFFFFFFFF, 0), "EPERM"),    # mmap shared anonymous
        (9, (0, 4096, 1, 0x01, 5, 0), "allow"),                          # mmap shared file
        (302, (0, 0, 0, 0x7FFE0000), "allow"),                           # prlimit64 read
        (302, (0, 0, 0x7FFE0000, 0), "EPERM"), (302, (0, 0, 1 << 40, 0), "EPERM"),  # a new limit
        (302, (1, 0, 0, 0x7FFE0000), "EPERM"),                           # another process's limits
        (62, (me, 9), "allow"), (62, (1, 9), "EPERM"), (62, (0, 9), "EPERM"),  # kill: self only
        (157, (1, 0), "EPERM"),                                          # prctl(PR_SET_PDEATHSIG, 0)
        (29, (0, 1 << 20, 0o1000), "EPERM"), (68, (0, 0o1000), "EPERM"),  # shmget, msgget
        (64, (0, 1, 0o1000), "EPERM"), (294, (0,), "EPERM"),             # semget, inotify_init1
        (41, (1, 1, 0), "EPERM"), (56, (0,), "EPERM"), (59, (0,), "EPERM"),  # socket, clone, execve
        (319, (0, 0), "EPERM"), (22, (0,), "EPERM"),                     # memfd_create, pipe
        (435, (0, 0), "ENOSYS"), (463, (), "EPERM"), (0x40000000, (), "EPERM"),  # clone3, newer, x32
    ]
    for nr, args, expected in cases:
        args = tuple(args) + (0,) * (6 - len(args))
        assert run_bpf(prog, nr, args) == expected, (nr, args, expected)
    assert run_bpf(prog, 0, arch=0x40000003) == "kill"                  # i386 (int 0x80)
    aarch64 = executor._seccomp_program("aarch64", me)
    assert run_bpf(aarch64, 63, arch=0xC00000B7) == "allow"             # read
    assert run_bpf(aarch64, 25, (1, 8, 1, 0, 0, 0), arch=0xC00000B7) == "EPERM"   # fcntl F_SETOWN
    assert run_bpf(aarch64, 220, arch=0xC00000B7) == "EPERM"            # clone


def test_escape_prefix_really_escapes(sb):
    """The premise of the tests below: the attacker holds the real os and builtins."""
    r = sb.run(ESCAPE + "os.getpid() > 0, bi.open is not None")
    assert r.ok and r.stdout == "(True, True)\n"


def test_isolation_layers_are_active(sb, report):
    iso = sb.isolation
    assert iso["no_new_privs"] and iso["rlimit_core"] == 0
    if report["seccomp"]:
        assert iso["seccomp"] is True
    if report["landlock_abi"]:
        assert iso["landlock_abi"] == report["landlock_abi"]
    if report["euid"] == 0:
        assert iso["uid"] != 0 or iso["capabilities"] == "dropped"
    # never a whole system tree, even for a venv on a system Python (sys.base_prefix = /usr)
    assert not set(report["read_roots"]) & {"/", "/usr", "/usr/local", "/opt", os.path.expanduser("~")}


@needs_seccomp
def test_no_file_writes(sb, tmp_path):
    target = tmp_path / "pwned"
    attempts = [
        f"os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)",
        f"bi.open({str(target)!r}, 'w').write('x')",
        f"import numpy as np\nnp.save({str(target)!r}, np.arange(3))",
        f"import numpy as np\nnp.arange(3).tofile({str(target)!r})",
        f"import numpy as np\nnp.savetxt({str(target)!r}, np.arange(3))",
        f"os.mkdir({str(target)!r})",
        f"os.symlink('/etc/passwd', {str(target)!r})",
    ]
    for attempt in attempts:
        r = sb.run(ESCAPE + attempt)
        assert r.error and ("PermissionError" in r.error or "not available" in r.error), (attempt, r.error)
        assert not os.path.lexists(target), attempt


@needs_seccomp
def test_existing_files_cannot_be_changed(sb, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    for attempt in [f"os.unlink({str(victim)!r})", f"os.rename({str(victim)!r}, {str(victim)!r} + '2')",
                    f"os.truncate({str(victim)!r}, 0)", f"os.chmod({str(victim)!r}, 0o777)",
                    f"bi.open({str(victim)!r}, 'a').write('more')"]:
        r = sb.run(ESCAPE + attempt)
        assert r.error and "PermissionError" in r.error, (attempt, r.error)
    assert victim.read_text() == "original" and oct(victim.stat().st_mode)[-3:] != "777"


def test_no_reads_outside_the_libraries(sb, tmp_path, report):
    if not report["landlock_abi"]:
        pytest.skip("no Landlock on this kernel: reads are not confined")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET 1 2 3")
    np_file = tmp_path / "data.npy"
    import numpy as np
    np.save(np_file, np.frombuffer(b"TOPSECRET", dtype="u1"))
    mat_file = tmp_path / "data.mat"
    import scipy.io
    scipy.io.savemat(mat_file, {"s": "TOPSECRET"})
    attempts = [
        "bi.open('/etc/passwd').read()",
        f"bi.open({str(secret)!r}).read()",
        f"import numpy as np\nnp.loadtxt({str(secret)!r}, dtype=str)",
        f"import numpy as np\nnp.genfromtxt({str(secret)!r}, dtype=str)",
        f"import numpy as np\nnp.fromfile({str(secret)!r}, dtype='u1')",
        f"import numpy as np\nnp.load({str(np_file)!r})",
        f"import numpy as np\nnp.memmap({str(secret)!r}, dtype='u1', mode='r')",
        f"imp('scipy.io').io.loadmat({str(mat_file)!r})",   # retries with '.mat' appended: FileNotFoundError
        "os.listdir('/work')",
        "bi.open('/proc/1/environ').read()",
    ]
    for attempt in attempts:
        r = sb.run(ESCAPE + attempt)
        assert r.error and any(e in r.error for e in ("Permission", "not available", "FileNotFound")), (attempt, r.error)
        assert "TOPSECRET" not in r.stdout + r.error and "root:" not in r.stdout


def test_sympy_parse_expr_and_lambdify_evals_are_contained(sb, tmp_path):
    """parse_expr eval()s its string and lambdify exec()s generated source, both with real
    builtins: the static check never sees that code. The OS layers stop what it tries."""
    target = tmp_path / "via_sympy"
    payload = f"\"import\" + U + \"('os').system('touch {target}')\""
    for code in [f"from sympy.parsing.sympy_parser import parse_expr\nU = '_' * 2\nparse_expr(U + {payload})",
                 f"import sympy\nU = '_' * 2\nsympy.lambdify([], sympy.Symbol(U + {payload}))()"]:
        r = sb.run(code)
        assert r.stdout.strip() != "0" and not os.path.exists(target), (code, r)


@needs_seccomp
def test_no_network(sb):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        for attempt in [f"imp('socket').create_connection(('127.0.0.1', {port}), timeout=1)",
                        "imp('socket').socket(imp('socket').AF_UNIX)",
                        "imp('socket').socketpair()",
                        f"imp('urllib.request').request.urlopen('http://127.0.0.1:{port}/', timeout=1)"]:
            r = sb.run(ESCAPE + attempt)
            assert r.error and ("Operation not permitted" in r.error or "PermissionError" in r.error
                                or "URLError" in r.error), (attempt, r.error)
        with pytest.raises(socket.timeout):
            listener.accept()                     # nobody ever connected
    finally:
        listener.close()


@needs_seccomp
def test_no_new_processes(sb, tmp_path):
    target = tmp_path / "spawned"
    run_ok(sb, "0")                               # the session's own worker exists before we count
    before = descendants()
    refused = "Operation not permitted"
    attempts = [
        ("os.fork()", refused),
        ("while True:\n    os.fork()", refused),          # a fork bomb stops at the first fork
        (f"imp('subprocess').run(['touch', {str(target)!r}])", refused),
        (f"os.execv('/usr/bin/touch', ['touch', {str(target)!r}])", refused),
        (f"os.posix_spawn('/usr/bin/touch', ['touch', {str(target)!r}], {{}})", refused),
        ("imp('multiprocessing').Process(target=print).start()", refused),
        ("imp('threading').Thread(target=print).start()", "can't start new thread"),
    ]
    for attempt, expected in attempts:
        r = sb.run(ESCAPE + attempt)
        assert r.error and expected in r.error and not r.session_reset, (attempt, r.error)
    assert sb.run(ESCAPE + "imp('ctypes').CDLL(None).fork()").stdout == "-1\n"   # libc, past Python
    r = sb.run(ESCAPE + f"os.system('touch {target}')")
    assert r.stdout != "0\n"                      # glibc reports 127 << 8: the spawn failed
    assert not os.path.exists(target)
    assert descendants() - before == set()


@needs_seccomp
def test_cannot_kill_or_trace_other_processes(sb, report):
    victim = subprocess.Popen(["sleep", "60"], start_new_session=True)
    zygote_pid = executor._POOL.zygote.proc.pid
    try:
        for attempt in [f"os.kill({victim.pid}, 9)", f"os.killpg({victim.pid}, 9)",
                        f"imp('signal').pidfd_send_signal(os.pidfd_open({victim.pid}), 9)",
                        f"imp('ctypes').CDLL(None).kill({victim.pid}, 9) == 0 or bi.exit(3)",
                        f"imp('ctypes').CDLL(None).syscall(234, {victim.pid}, {victim.pid}, 9) == 0 or bi.exit(3)",
                        "os.kill(os.getppid(), 9)",                         # the zygote
                        f"os.kill({os.getpid()}, 9)",                       # the caller (this test)
                        f"imp('ctypes').CDLL(None).ptrace(16, {victim.pid}, 0, 0) == 0 or bi.exit(3)"]:
            r = sb.run(ESCAPE + attempt)
            assert r.error and ("Operation not permitted" in r.error or r.error.startswith("SystemExit: 3")), (attempt, r.error)
        time.sleep(0.1)
        assert victim.poll() is None
        assert executor._POOL.zygote.proc.pid == zygote_pid and executor._POOL.zygote.proc.poll() is None
        assert run_ok(sb, "1 + 1") == "2\n"
    finally:
        victim.kill()
        victim.wait()


@needs_seccomp
def test_limits_cannot_be_raised(sb):
    r = sb.run(ESCAPE + "r = imp('resource')\nr.setrlimit(r.RLIMIT_AS, (r.RLIM_INFINITY, r.RLIM_INFINITY))")
    assert r.error and "not allowed to raise maximum limit" in r.error
    r = sb.run(ESCAPE + f"r = imp('resource')\nr.prlimit({os.getpid()}, r.RLIMIT_NOFILE, (1, 1))")
    assert r.error and "Operation not permitted" in r.error
    assert len(os.listdir("/proc/self/fd")) > 0   # our own limits are intact


# ---------------------------------------------------------------------------------------
# 4) Failures: memory, time, floods, crashes
# ---------------------------------------------------------------------------------------

def test_memory_bombs_fail_inside_the_snippet(report, no_leaks):
    with Sandbox(memory_mb=256) as s:
        run_ok(s, "kept = 41")
        for bomb in ["x = bytearray(1024**3)", "x = [0] * 10**9",
                     "import numpy as np\nx = np.ones((20000, 20000))", "x = 'a' * 2**40"]:
            r = s.run(bomb)
            assert r.error and r.error.startswith("MemoryError"), (bomb, r.error)
            assert not r.session_reset
        assert run_ok(s, "kept + 1") == "42\n"       # the session survived all of them


def test_timeout_fires_on_time_and_session_restarts(report, no_leaks):
    with Sandbox(timeout_s=1.0) as s:
        run_ok(s, "y = 1")
        for code in ["while True:\n    pass", "10**10**10", "import sympy\nsympy.factorint(2**400 + 1)"]:
            run_ok(s, "0")      # the worker is up, so the clock below measures only the snippet
            t0 = time.monotonic()
            r = s.run(code)
            elapsed = time.monotonic() - t0
            assert r.timed_out and r.session_reset and not r.ok, (code, r)
            assert r.error == "timed out after 1 s; names defined before this snippet are lost"
            assert r.error_type == "TimeoutError"
            assert 1.0 <= r.duration_s <= 1.5 and elapsed <= 1.5, (code, r.duration_s, elapsed)
        r = s.run("y")
        assert r.error.startswith("NameError") and not r.session_reset   # fresh, working session
        assert run_ok(s, "y = 2\ny") == "2\n"


def test_timeout_keeps_partial_output(report, no_leaks):
    with Sandbox(timeout_s=1.0, max_output_chars=200) as s:
        r = s.run("print('started', flush=True)\nwhile True:\n    print('x' * 100)")
        assert r.timed_out and r.stdout.startswith("started\nxxx") and "[output truncated" in r.stdout


def test_output_floods_are_bounded(report, no_leaks):
    with Sandbox(timeout_s=30, max_output_chars=1000) as s:
        r = s.run("for i in range(300_000):\n    print(i)")
        assert r.ok and r.stdout.startswith("0\n1\n2\n") and len(r.stdout) < 1100
        assert "[output truncated" in r.stdout
        r = s.run(ESCAPE + "os.write(1, b'y' * 50_000_000)")       # C-level, past the Python writer
        assert len(r.stdout) < 1100 and "[output truncated" in r.stdout and not r.session_reset


def test_crashes_are_reported_and_the_session_restarts(report, no_leaks):
    with Sandbox(timeout_s=5) as s:
        for code, reason in [("imp('ctypes').string_at(0)", "crashed (SIGSEGV)"),
                             ("os.kill(os.getpid(), 9)", "killed (SIGKILL"),
                             ("os._exit(3)", "exited (exit code 3)"),
                             ("os.abort()", "crashed (SIGABRT)")]:
            run_ok(s, "z = 1")
            r = s.run(ESCAPE + code)
            assert r.session_reset and reason in r.error, (code, r.error)
            assert r.error.endswith("names defined before this snippet are lost")
            assert s.run("z").error.startswith("NameError")


def test_a_worker_that_lies_on_its_socket_is_stopped(report, no_leaks):
    """The worker is untrusted: garbage on the socket must not hurt (or hang) the caller."""
    with Sandbox(timeout_s=3) as s:
        find_socket = ESCAPE + ("fd = None\nfor f in range(3, 64):\n    try:\n"
                                "        if imp('stat').S_ISSOCK(os.fstat(f).st_mode):\n            fd = f\n"
                                "    except OSError:\n        pass\n")
        for lie in ["os.write(fd, b'\\xff\\xff\\xff\\xff')",                       # a 4 GB frame
                    "os.write(fd, b'\\x00\\x00\\x00\\x05nope!')",                    # not JSON
                    "os.write(fd, b'\\x00\\x00\\x00\\x02{}')",                       # wrong shape
                    "m = b'{\"err\": null, \"val\": null, \"drop\": Infinity, \"seq\": 1}'\n"
                    "os.write(fd, len(m).to_bytes(4, 'big') + m)",                     # an absurd count
                    "os.close(fd)"]:                                                # hang up
            r = s.run(find_socket + lie)
            assert r.session_reset and "names defined before this snippet are lost" in r.error, (lie, r.error)
            assert ("malformed reply" in r.error) == (lie != "os.close(fd)"), (lie, r.error)
        assert run_ok(s, "3 * 3") == "9\n"


def test_closed_sandbox_and_close_from_another_thread(report, no_leaks):
    s = Sandbox(timeout_s=30)
    run_ok(s, "1")
    threading.Timer(0.5, s.close).start()
    t0 = time.monotonic()
    r = s.run("while True:\n    pass")
    assert time.monotonic() - t0 < 5 and r.session_reset and r.error
    assert s.run("1").error == "SandboxError: this sandbox is closed"
    s.close()


def test_zygote_killed_from_outside(report):
    """If the zygote dies, its workers die with it (PDEATHSIG); the affected run reports it
    and the next one starts a new zygote."""
    with Sandbox(timeout_s=5) as s:
        run_ok(s, "w = 1")
        old = executor._POOL.zygote.proc
        workers = descendants(old.pid)
        old.kill()
        old.wait()
        assert wait_until(lambda: not any(os.path.exists(f"/proc/{p}") for p in workers))
        r = s.run("w")
        assert r.session_reset and "names defined before this snippet are lost" in r.error
        assert run_ok(s, "w = 2\nw") == "2\n"
        assert executor._POOL.zygote.proc.pid != old.pid


def test_caller_death_takes_zygote_and_workers_along(tmp_path):
    """If the calling process dies without cleaning up (SIGKILL), nothing it started survives."""
    script = tmp_path / "caller.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {os.path.dirname(executor.__file__)!r})\n"
        "from executor import Sandbox\n"
        "boxes = [Sandbox() for _ in range(3)]\n"
        "for b in boxes:\n    assert b.run('1').ok\n"
        "print('ready', flush=True)\n"
        "boxes[0].run('while True:\\n    pass')\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        below = descendants(proc.pid)
        assert len(below) >= 4                   # the zygote and three workers
        proc.kill()
        proc.wait()
        assert wait_until(lambda: not any(os.path.exists(f"/proc/{p}") for p in below), timeout=5)
    finally:
        proc.kill()


# ---------------------------------------------------------------------------------------
# 5) Many sessions
# ---------------------------------------------------------------------------------------

def test_run_batch_in_order_with_separate_state(report, no_leaks):
    boxes = [Sandbox(timeout_s=5) for _ in range(6)]
    try:
        results = run_batch(boxes, [f"v = {i} * 11" for i in range(6)])
        assert all(r.ok for r in results)
        results = run_batch(boxes, ["v"] * 6)
        assert [r.stdout for r in results] == [f"{i * 11}\n" for i in range(6)]
        mixed = run_batch(boxes[:3], ["import os", "1/0", "v"])
        assert [r.error is None for r in mixed] == [False, False, True]
        with pytest.raises(ValueError):
            run_batch([boxes[0], boxes[0]], ["1", "2"])
    finally:
        for b in boxes:
            b.close()


def test_worker_bound_evicts_and_replays(report, no_leaks):
    old = executor.pool_stats()
    executor.set_limits(max_workers=2, max_running=2)
    boxes = [Sandbox(timeout_s=5, seed=i) for i in range(5)]
    try:
        run_batch(boxes, ["import random\nr = random.random()\ndef f(k):\n    return k + 100\n"] * 5)
        first = [r.stdout for r in run_batch(boxes, ["r, f(1)"] * 5)]
        assert executor.pool_stats()["live_workers"] <= 2
        again = [r.stdout for r in run_batch(boxes, ["r, f(1)"] * 5)]
        assert first == again and all(out.endswith(", 101)\n") for out in first)
        stats = executor.pool_stats()
        assert stats["evicted"] > old.get("evicted", 0) and stats["replayed"] > old.get("replayed", 0)
        assert not any(r.session_reset for r in run_batch(boxes, ["f(2)"] * 5))
    finally:
        for b in boxes:
            b.close()
        executor.set_limits(max_workers=old["max_workers"], max_running=old["max_running"])


# ---------------------------------------------------------------------------------------
# 5b) A determined attacker (issue 9): through private module attributes to ctypes
# ---------------------------------------------------------------------------------------
# No dunder is needed to reach libc: `random._os` is `os`, `os.sys.modules` holds every
# module the worker has loaded (ctypes among them), and ctypes.CDLL(None) calls any libc
# function, raw syscalls included. So these tests attack the OS layers directly, and each
# asserts that the effect did not happen. test_attacks_as_an_unprivileged_user runs them
# again as `nobody` (`python tests/test_executor.py --make-unprivileged-venv` prepares it).

VIA_CTYPES = """import random
os = random._os
ct = os.sys.modules['ctypes']
libc = ct.CDLL(None, use_errno=True)
def call(name, *args):
    r = getattr(libc, name)(*args)
    return r if r != -1 else -ct.get_errno()
"""

EPERM = 1


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def sysv_keys() -> set[str]:
    """The keys of every SysV IPC object on this machine (its IPC namespace)."""
    keys = set()
    for kind in ("shm", "msg", "sem"):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                keys.update(f"{kind}:{line.split()[0]}" for line in list(f)[1:])
        except OSError:
            pass
    return keys


def test_attack_caller_environment_is_invisible(tmp_path):
    """A token in the caller's environment must not reach the snippet by any route."""
    canary = "canary-" + os.urandom(8).hex()
    script = tmp_path / "caller.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {os.path.dirname(executor.__file__)!r})\n"
        "from executor import Sandbox\n"
        "code = sys.stdin.read()\n"
        "r = Sandbox(timeout_s=10).run(code)\n"
        "print(r.stdout, r.error)\n")
    probe = VIA_CTYPES + """
seen = []
seen += [k + '=' + v for k, v in os.environ.items()]
seen += [repr(k) + repr(v) for k, v in os.sys.modules['posix'].environ.items()]
libc.getenv.restype = ct.c_char_p
seen.append(repr(libc.getenv(b'DEEPMATH_CANARY')))
env = ct.POINTER(ct.c_char_p).in_dll(libc, 'environ')
i = 0
while env[i] is not None and i < 1000:
    seen.append(repr(env[i]))
    i += 1
try:
    seen.append(repr(os.sys.modules['builtins'].open('/proc/self/environ', 'rb').read()))
except OSError as e:
    seen.append('proc: ' + str(e.errno))
print(len(seen), '|'.join(seen))
print(sorted(os.environ))
"""
    out = subprocess.run([sys.executable, str(script)], input=probe, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "DEEPMATH_CANARY": canary})
    assert out.returncode == 0, out.stderr
    assert "OPENBLAS_NUM_THREADS=1" in out.stdout          # the probe really read the environment
    assert canary not in out.stdout and "DEEPMATH_CANARY" not in out.stdout.replace("b'DEEPMATH_CANARY'", "")
    names = eval(next(l for l in reversed(out.stdout.splitlines()) if l.startswith("[")))   # the probe's list
    assert set(names) <= set(executor.ZYGOTE_ENV) | {"LC_CTYPE"}, names   # LC_CTYPE: PEP 538 coercion


@needs_seccomp
def test_attack_sysv_ipc_inotify_and_shared_memory_are_closed(sb, tmp_path):
    """No cross-session channel (SysV IPC objects outlive processes), no view of files
    outside the sandbox (inotify), no memory outside RLIMIT_AS (SysV shm, shared maps)."""
    before = sysv_keys()
    key = 0x5EED0000 + os.getpid() % 0xFFFF
    r = sb.run(VIA_CTYPES + f"""
IPC_CREAT = 0o1000
out = [call('shmget', {key}, 1 << 26, IPC_CREAT | 0o666), call('msgget', {key}, IPC_CREAT | 0o666),
       call('semget', {key}, 1, IPC_CREAT | 0o666), call('shmget', 0, 1 << 26, IPC_CREAT | 0o600),
       call('inotify_init1', 0), call('fanotify_init', 0, 0)]
libc.mmap.restype = ct.c_long
libc.mmap.argtypes = [ct.c_void_p, ct.c_size_t, ct.c_int, ct.c_int, ct.c_int, ct.c_long]
out.append(call('mmap', None, 1 << 26, 3, 0x21, -1, 0))    # MAP_SHARED | MAP_ANONYMOUS
try:
    os.memfd_create('x')
    out.append('memfd')
except OSError as e:
    out.append(-e.errno)
print(out)
""")
    assert r.ok, r.error
    assert r.stdout == f"{[-EPERM] * 8}\n", r.stdout
    (tmp_path / "created-outside").write_text("x")
    assert sysv_keys() == before
    # an ordinary private allocation still works
    assert run_ok(sb, "import numpy as np\nint(np.ones(10**6).sum())") == "1000000\n"


@needs_seccomp
def test_attack_signals_leases_and_file_flags_through_fcntl_ioctl(sb, tmp_path):
    """F_SETOWN/F_SETSIG/O_ASYNC would deliver signals to any process of the same uid (with
    Landlock ABI < 6 nothing else stops it); F_SETLEASE would block the host's open(); ioctl
    FS_IOC_SETFLAGS would change a root-owned file's attributes. All are refused."""
    victim = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        r = sb.run(VIA_CTYPES + f"""
F_SETOWN, F_SETSIG, F_SETLEASE, F_NOTIFY, F_SETFL, F_SETLK, O_ASYNC = 8, 10, 1024, 1026, 4, 6, 0o20000
fd = os.open({os.path.dirname(os.__file__)!r} + '/os.py', os.O_RDONLY)
flags = ct.c_int(0)
print([call('fcntl', 1, F_SETOWN, {victim.pid}), call('fcntl', 1, F_SETSIG, 9),
       call('fcntl', 1, F_SETFL, O_ASYNC), call('fcntl', fd, F_SETLEASE, 0),
       call('fcntl', fd, F_NOTIFY, 1), call('fcntl', fd, F_SETLK, 0),
       call('ioctl', fd, 0x40086602, ct.byref(flags)), call('ioctl', 1, 0x5452, ct.byref(flags)),
       call('ioctl', 1, 0x8901, ct.byref(flags)), call('ioctl', 0, 0x5412, b'x')])
print(call('fcntl', 1, 3) >= 0, call('fcntl', fd, 1) >= 0)   # harmless queries still work
""")
        assert r.ok, r.error
        assert r.stdout == f"{[-EPERM] * 10}\nTrue True\n", r.stdout
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


@needs_seccomp
def test_attack_limits_are_hard_and_set_by_the_caller(sb):
    run_ok(sb, "0")
    pid = sb._worker.pid
    r = sb.run(VIA_CTYPES + """res = os.sys.modules['resource']
out = []
for name in ('RLIMIT_CPU', 'RLIMIT_AS', 'RLIMIT_NOFILE', 'RLIMIT_FSIZE'):
    try:
        res.setrlimit(getattr(res, name), (res.RLIM_INFINITY, res.RLIM_INFINITY))
        out.append('raised')
    except (ValueError, OSError) as e:
        out.append('ValueError' if isinstance(e, ValueError) else 'OSError')
print(out, call('prctl', 1, 0, 0, 0, 0))""")   # prctl(PR_SET_PDEATHSIG, 0)
    assert r.ok and r.stdout == f"{['ValueError'] * 4} {-EPERM}\n", (r.stdout, r.error)
    with open(f"/proc/{pid}/limits") as f:
        limits = {line[:26].strip(): line[26:].split() for line in f}
    for name in ("Max address space", "Max file size", "Max open files", "Max core file size"):
        assert limits[name][0] == limits[name][1], limits[name]          # hard = soft
    soft, hard = int(limits["Max cpu time"][0]), int(limits["Max cpu time"][1])
    ceiling = math.ceil(sb.session_cpu_s)     # set by the worker at its start
    mode = next(k for k, v in executor.CPU_LIMIT_MODES.items() if v == sb.isolation["cpu_limit"])
    if mode == "ceiling":
        assert soft == hard == ceiling
    else:
        assert soft <= sb.timeout_s + 60      # set by the caller for this snippet (not unlimited)
        assert hard == (soft + 1 if mode == "per-snippet" else ceiling)


def test_attack_forged_reply_cannot_hide_a_running_worker(report, no_leaks):
    """The snippet sends the reply the caller waits for (claiming a final answer, with
    final answers disabled), then computes. run() returns, but the worker is frozen: it uses
    no CPU while idle, and the next snippet times out on the caller's clock."""
    with Sandbox(timeout_s=1.5) as s:
        r = s.run(VIA_CTYPES + """json, stat = os.sys.modules['json'], os.sys.modules['stat']
fd = None
for f in range(3, 64):
    try:
        if stat.S_ISSOCK(os.fstat(f).st_mode):
            fd = f
    except OSError:
        pass
msg = json.dumps({'err': None, 'val': "'forged'", 'fa': True, 'fav': 42, 'drop': 0, 'seq': 1}).encode()
os.write(fd, len(msg).to_bytes(4, 'big') + msg)
while True:
    pass
""")
        assert not r.is_final_answer and r.final_answer is None, r
        assert r.ok and r.value == "'forged'"          # what it printed is its business; the answer is not
        pid = s._worker.pid
        time.sleep(0.2)
        ticks = cpu_ticks(pid)
        time.sleep(1.0)
        assert cpu_ticks(pid) - ticks <= 1, "the worker computed while the session was idle"
        t0 = time.monotonic()
        r = s.run("1 + 1")                              # the worker resumes its loop, not our snippet
        assert r.timed_out and r.session_reset and time.monotonic() - t0 <= 1.5 + 0.5
        assert run_ok(s, "2 + 2") == "4\n"
    with Sandbox(timeout_s=5) as s:   # replies queued in advance, for the snippets to come
        r = s.run(VIA_CTYPES + """json, stat = os.sys.modules['json'], os.sys.modules['stat']
fd = [f for f in range(3, 64) if call('fcntl', f, 1) >= 0 and stat.S_ISSOCK(os.fstat(f).st_mode)][0]
frames = b''
for seq in (1, 2, 3):
    msg = json.dumps({'err': None, 'val': 'forged', 'fa': False, 'drop': 0, 'seq': seq}).encode()
    frames += len(msg).to_bytes(4, 'big') + msg
os.write(fd, frames)   # one write: all three are queued before the caller reads the first
""")
        assert r.value == "forged"
        # The queued frames are seen before the next snippet is sent. (A reply the worker
        # writes after it is continued is its answer for its own session: no harm to others.)
        r = s.run("1 + 1")
        assert r.session_reset and "malformed reply" in r.error, r
        assert run_ok(s, "1 + 1") == "2\n"
    with Sandbox(timeout_s=5, enable_final_answer=True) as s:   # where enabled, final_answer() counts
        r = s.run("final_answer(6 * 7)")
        assert r.is_final_answer and r.final_answer == 42


def test_attack_idle_worker_uses_no_cpu(sb):
    run_ok(sb, "x = sum(range(10**5))")
    pid = sb._worker.pid
    time.sleep(0.2)                  # the stop is handled by the worker itself, when next scheduled
    ticks = cpu_ticks(pid)
    time.sleep(1.0)
    assert cpu_ticks(pid) - ticks <= 1    # clock ticks (10 ms); a computing worker would use ~100
    with open(f"/proc/{pid}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] == "T"    # stopped between snippets


def test_attack_replay_after_eviction_stays_within_the_timeout(report, no_leaks):
    """Replay rebuilds an evicted session, and shares the run's deadline: a long history
    cannot make run() overrun its timeout (it reports a timeout and a lost session)."""
    old = executor.pool_stats()
    executor.set_limits(max_workers=1, max_running=1)
    a, b = Sandbox(timeout_s=1.5), Sandbox(timeout_s=1.5)
    try:
        for i in range(3):   # 0.6 s each, within the timeout one by one; 1.8 s together
            run_ok(a, f"import random\nrandom._os.sys.modules['time'].sleep(0.6)\nv{i} = {i}")
        run_ok(b, "1")          # evicts a's worker
        t0 = time.monotonic()
        r = a.run("v2")
        elapsed = time.monotonic() - t0
        assert elapsed <= 1.5 + 0.5 and r.duration_s <= 1.5 + 0.5, (elapsed, r)
        assert r.timed_out and r.session_reset and "while rebuilding this session" in r.error
        assert run_ok(a, "v = 5\nv") == "5\n"             # the session works again, from scratch
        run_ok(a, "w = 7")
        run_ok(b, "2")          # evicts a again: a short history replays within the deadline
        r = a.run("v + w")
        assert r.ok and r.stdout == "12\n" and not r.session_reset
    finally:
        a.close()
        b.close()
        executor.set_limits(max_workers=old["max_workers"], max_running=old["max_running"])


def test_attack_no_worker_survives_sigkill_of_the_zygote(report):
    """Clearing the parent-death signal is refused (prctl is not on the allow-list), so a
    zygote killed hard (the OOM killer, say) takes its workers along, even stopped ones and
    ones that are computing."""
    with Sandbox(timeout_s=5) as idle, Sandbox(timeout_s=5) as busy:
        r = idle.run(VIA_CTYPES + "call('prctl', 1, 0, 0, 0, 0)")   # PR_SET_PDEATHSIG, 0
        assert r.stdout == f"{-EPERM}\n", (r.stdout, r.error)
        zygote = executor._POOL.zygote.proc
        workers = descendants(zygote.pid)
        result = []
        spin = VIA_CTYPES + "call('prctl', 1, 0, 0, 0, 0)\nwhile True:\n    pass"
        t = threading.Thread(target=lambda: result.append(busy.run(spin)))
        t.start()
        time.sleep(0.5)
        workers |= descendants(zygote.pid)
        assert len(workers) == 2
        os.kill(zygote.pid, signal.SIGKILL)
        zygote.wait()
        assert wait_until(lambda: not any(os.path.exists(f"/proc/{p}") for p in workers)), workers
        t.join(10)
        assert result and result[0].session_reset
        assert idle.run("0").session_reset            # reports the loss, once
        assert run_ok(idle, "1 + 1") == "2\n"        # a new zygote, for the tests that follow



@pytest.mark.skipif(not os.environ.get("DEEPMATH_STRESS"),
                    reason="a stress run of about 3 minutes: DEEPMATH_STRESS=1 to run it")
def test_workers_start_under_many_address_layouts(report):
    """Each zygote gets a fresh random layout (ASLR), and its workers inherit it. Sealing the
    address space once failed in about 1 zygote of 40 (5 of 200 on 2026-12-05): Python took a
    new arena while the reservation lists grew, the kernel put it in a small gap not yet
    reserved, and every later worker of that zygote failed to start. 150 fresh zygotes find
    such a layout with probability 1 - (39/40)^150 > 97% where sealing cannot retry."""
    failures = []
    for _ in range(150):
        with Sandbox(timeout_s=5) as s:
            r = s.run("1 + 1")
            if not r.ok:
                failures.append(r.error)
            zygote = executor._POOL.zygote.proc
            os.kill(zygote.pid, signal.SIGKILL)
            zygote.wait()
            s.run("0")                                 # reports the loss; the next run starts anew
    assert not failures, failures[:3]

# Issue 21: a second red-team round. No escape, but harm to the caller and the host.

# Replaces the worker's own reply code (reached through sys.modules, no forged frame needed):
# every later snippet of the session "returns" what the planted runner says.
PLANT_RUNNER = VIA_CTYPES + """U = '_' * 2
main = os.sys.modules[U + 'main' + U]
def planted(self, code):
    return {PLANTED}
main._Runner.run = planted
"""


def planted_result(reply: str, **sandbox_args) -> ExecResult:
    """What the caller returns for the snippet after one that planted `reply` (a dict literal)."""
    with Sandbox(**sandbox_args) as s:
        assert run_ok(s, PLANT_RUNNER.replace("{PLANTED}", reply)) == ""
        r = s.run("1 + 1")
        if r.session_reset:
            assert run_ok(s, "2 * 3") == "6\n"     # a fresh worker, with the real runner
        return r


@needs_seccomp
def test_attack_replaced_reply_code_cannot_hand_the_caller_more(report, no_leaks):
    """The caller bounds every field it takes from a worker by the worker's own rules:
    error <= MAX_ERROR_CHARS, value <= max_output_chars + the marker, and a final answer's
    JSON text <= max_output_chars + the marker; a frame longer than honest replies can be
    (_reply_frame_limit) is refused unread."""
    limit = 4000
    marker = 64
    frame_limit = executor._reply_frame_limit(limit)
    assert frame_limit < 200_000     # it was 16 * max_output_chars + 1 MiB
    args = dict(timeout_s=5, max_output_chars=limit, enable_final_answer=True)
    big = 35_000                     # three fields of this size fit one frame under the limit
    r = planted_result(f"{{'err': 'E' * {big}, 'val': 'V' * {big}, 'fa': True, 'drop': 0, 'vh': 0, "
                       f"'fav': ['F' * {big} + chr(0x1F600), {{'k': 'G' * 100}}]}}", **args)
    assert not r.session_reset, r.error
    assert r.error.startswith("EEEE") and len(r.error) <= executor.MAX_ERROR_CHARS
    assert r.value.startswith("VVVV") and len(r.value) <= limit + marker
    assert r.value.endswith(f"[output truncated: {big - limit} more characters]")
    assert len(r.stdout) <= limit + marker and len(r.printed) <= limit + marker
    assert r.is_final_answer and isinstance(r.final_answer, str)
    assert r.final_answer.startswith('["FFF') and len(r.final_answer) <= limit + marker
    assert "[output truncated:" in r.final_answer
    # a nested list is bounded the same way (its JSON text)
    r = planted_result("{'err': None, 'val': None, 'fa': True, 'drop': 0, 'fav': [[[7] * 3000] * 5]}", **args)
    assert r.is_final_answer and len(r.final_answer) <= limit + marker, len(str(r.final_answer))
    # fields of a million characters: the frame itself is refused, and the worker killed
    r = planted_result("{'err': 'E' * 10**6, 'val': 'V' * 10**6, 'fa': True, 'fav': 'F' * 10**6, 'drop': 0}", **args)
    assert r.session_reset and "malformed reply" in r.error and r.final_answer is None and r.value is None
    with Sandbox(timeout_s=5, max_output_chars=100, enable_final_answer=True) as s:   # honest workers
        r = s.run("final_answer({'a': 'x' * 1000})")
        assert r.final_answer == '{"a": "' + "x" * 93 + "\n... [output truncated: 909 more characters]"
        r = s.run("final_answer('z' * 5000)")
        assert r.final_answer == "z" * 100 + "\n... [output truncated: 4900 more characters]"
        r = s.run("final_answer([1, 2.5, None, 'ok', {'k': [True]}])")
        assert r.final_answer == [1, 2.5, None, "ok", {"k": [True]}]
        r = s.run("'y' * 500")
        assert r.value == "'" + "y" * 99 + "\n... [output truncated: 402 more characters]"


def _uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("Uid:")).split()[1])


def _as_uid(uid: int) -> list[str] | None:
    """A command prefix that runs a stdlib-only Python as `uid`, or None if we cannot."""
    if uid == os.geteuid():
        return [sys.executable]
    if os.geteuid() != 0:
        return None
    import pwd
    python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.path.exists(p)), None)
    runuser = next((p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.path.exists(p)), None)
    return None if python is None or runuser is None else [runuser, "-u", pwd.getpwuid(uid).pw_name, "--", python]


QUEUE_TO_SELF = """import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
signal.pthread_sigmask(signal.SIG_BLOCK, range(signal.SIGRTMIN, signal.SIGRTMAX + 1))
n = 0
while n < LIMIT and libc.sigqueue(os.getpid(), signal.SIGRTMIN + n % 8, ctypes.c_long(0)) == 0:
    n += 1
print(n, ctypes.get_errno())
"""


@needs_seccomp
def test_attack_pending_signal_quota_of_the_workers_uid(sb):
    """The kernel counts queued signals per uid, against the receiver's RLIMIT_SIGPENDING. A
    snippet that blocks the real-time signals and queues them to itself must not use up the
    quota: another process of the worker's uid, outside the sandbox, can still queue."""
    code = QUEUE_TO_SELF.replace("import ctypes, os, signal\n", VIA_CTYPES + "ctypes, signal = ct, os.sys.modules['signal']\n")
    r = sb.run(code.replace("LIMIT", "300_000"))
    assert r.ok, r.error
    pid = sb._worker.pid
    cmd = _as_uid(_uid_of(pid))
    if cmd is None:
        pytest.skip("no way to run a process as the worker's uid here")
    out = subprocess.run(cmd + ["-c", QUEUE_TO_SELF.replace("LIMIT", "50")], capture_output=True,
                         text=True, timeout=60, cwd="/")
    assert out.stdout.split()[:1] == ["50"], (out.stdout, out.stderr, r.stdout)   # while the worker idles, stopped
    queued, errno = map(int, r.stdout.split())
    assert queued == 0 and errno == 11, r.stdout      # EAGAIN at once: RLIMIT_SIGPENDING = 0
    with open(f"/proc/{pid}/limits") as f:
        line = next(l for l in f if l.startswith("Max pending signals"))
    assert line.split()[3:5] == ["0", "0"], line


@needs_seccomp
def test_attack_access_times_carry_nothing_across_sessions(sb, report):
    """Reading a file updates its access time on disk (relatime: when the old one is a day old
    or older than the file's mtime), a channel to any later reader of stat(). Where the zygote
    could make its private read-only, noatime view, a snippet's reads leave the access times as
    they were; elsewhere the report says the channel is not covered."""
    if not report["access_times"].startswith("closed"):
        assert report["access_times"].startswith("not covered") and "relatime" in report["access_times"]
        pytest.skip(f"documented caveat here: {report['access_times']}")
    target = os.path.join(os.path.dirname(os.__file__), "this.py")   # under a read root, read by nobody else
    folder = os.path.join(os.path.dirname(os.__file__), "xmlrpc")   # a directory no import lists
    with open(target, "rb") as f:
        head = f.read(5)                              # before arming: this read moves the atime
    saved = {p: os.stat(p) for p in (target, folder)}
    old_ns = (time.time_ns() - 3 * 86400 * 10**9) // 10**9 * 10**9
    try:
        for p, st in saved.items():
            os.utime(p, ns=(old_ns, st.st_mtime_ns))     # "armed": any read would update it
    except PermissionError:
        pytest.skip("cannot set the access time of a library file as this user")
    try:
        r = sb.run(VIA_CTYPES + f"""fd = os.open({target!r}, os.O_RDONLY)
print(os.read(fd, 5), len(os.listdir({folder!r})) > 2)""")
        assert r.ok and r.stdout == f"{head!r} True\n", (r.stdout, r.error)   # it did read both
        for p in (target, folder):
            assert os.stat(p).st_atime_ns == old_ns, p
    finally:
        for p, st in saved.items():
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_access_times_with_an_unprivileged_caller():
    """The same attack with the caller running as `nobody` (no CAP_SYS_ADMIN): its zygote makes
    the read-only view in a user namespace of its own. Root arms a library file and its
    directory from outside and finds their access times unchanged after the snippet read them."""
    cmd, why = _unprivileged_python()
    if cmd is None:
        pytest.skip(why)
    python = cmd[-1]
    target = subprocess.run(cmd + ["-c", "import os; print(os.path.join(os.path.dirname(os.__file__), 'this.py'))"],
                            capture_output=True, text=True, timeout=60, cwd="/").stdout.strip()
    folder = os.path.join(os.path.dirname(target), "xmlrpc")   # the caller's own imports list the stdlib
    with open(target, "rb") as f:
        head = f.read(5)
    saved = {p: os.stat(p) for p in (target, folder)}
    old_ns = (time.time_ns() - 3 * 86400 * 10**9) // 10**9 * 10**9
    snippet = VIA_CTYPES + f"fd = os.open({target!r}, os.O_RDONLY)\nprint(os.read(fd, 5), len(os.listdir({folder!r})) > 2)"
    caller = (f"import sys\nsys.path.insert(0, {os.path.dirname(executor.__file__)!r})\nimport executor\n"
              "print(executor.isolation_report()['access_times'])\n"
              f"r = executor.Sandbox(timeout_s=10).run({snippet!r})\nprint(r.stdout.strip(), r.error)\n")
    try:
        for p, st in saved.items():
            os.utime(p, ns=(old_ns, st.st_mtime_ns))
        out = subprocess.run(cmd + ["-c", caller], capture_output=True, text=True, timeout=300, cwd="/")
        assert out.returncode == 0, out.stderr[-2000:]
        report, result = out.stdout.splitlines()[0], out.stdout.splitlines()[1]
        assert result == f"{head!r} True None", out.stdout        # the snippet read both
        assert report.startswith("closed"), report
        for p in (target, folder):
            assert os.stat(p).st_atime_ns == old_ns, (p, report)
    finally:
        for p, st in saved.items():
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


PAGE_TABLE_ATTACK = VIA_CTYPES + """libc.mmap.restype = ct.c_void_p
libc.mmap.argtypes = [ct.c_void_p, ct.c_size_t, ct.c_int, ct.c_int, ct.c_int, ct.c_long]
FAILED = (None, 2**64 - 1)
rounds = 0
while True:      # map 64 MiB, read one page per 2 MiB, unmap the rest: span without size
    p = libc.mmap(None, 64 << 20, 1, 0x22, -1, 0)
    if p in FAILED:
        break
    for off in range(0, 64 << 20, 2 << 20):
        ct.c_char.from_address(p + off).value
        libc.munmap(ct.c_void_p(p + off + 4096), ct.c_size_t((2 << 20) - 4096))
    rounds += 1
pages = 0
for k in range(1, 1 << 17):      # one page every 1 GiB, asked for by hint and by fixed address
    for flags in (0x22, 0x22 | 0x100000):
        p = libc.mmap(k << 30, 4096, 1, flags, -1, 0)
        if p not in FAILED:
            ct.c_char.from_address(p).value
            pages += 1
print(rounds, pages)
"""


def _vm_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith(key + ":")).split()[1])


@needs_seccomp
def test_attack_page_tables_stay_within_the_stated_bound(report, no_leaks):
    """Single pages mapped far apart cost page tables that RLIMIT_AS does not count (256 MB
    for a stopped worker at memory_mb=128 before). With the free address space sealed, an
    idle worker's page tables stay within the bound it states, which stays within
    page_table_bound_bytes(memory_mb) with its defaults."""
    if not report["mseal"]:
        pytest.skip("no mseal (Linux < 6.10): page tables are not bounded here, and the report says so")
    with Sandbox(timeout_s=60, memory_mb=128) as s:
        run_ok(s, "0")
        pid = s._worker.pid
        before = _vm_kb(pid, "VmPTE")
        stated = s.isolation["address_space"]["page_table_bound"]
        assert stated <= executor.page_table_bound_bytes(128)
        r = s.run(PAGE_TABLE_ATTACK)
        assert r.ok, r.error
        rounds, pages = map(int, r.stdout.split())
        assert rounds > 0 and pages > 1000, r.stdout      # the attack did map and fault in
        assert wait_until(lambda: open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T")
        after = _vm_kb(pid, "VmPTE")
        assert after * 1024 <= stated, (before, after, stated)
        assert run_ok(s, "6 * 7") == "42\n"          # the session still works (its memory is used up)


SPIN = "import random\nt = random._os.sys.modules['time']\nt0 = t.process_time()\nwhile t.process_time() - t0 < {s}:\n    pass"


def _cpu_limits(pid: int) -> list[str]:
    with open(f"/proc/{pid}/limits") as f:
        return next(line for line in f if line.startswith("Max cpu time")).split()[3:5]


def test_attack_cpu_limit_during_every_snippet(report, no_leaks):
    """The worker's RLIMIT_CPU, read from outside while snippets run, is never unlimited, and
    a session whose snippets each fit the timeout is never killed by it, however long it runs
    (without CAP_SYS_RESOURCE the caller cannot raise a hard limit it has lowered). What holds
    is named in Sandbox.isolation and isolation_report()."""
    with Sandbox(timeout_s=8, session_cpu_s=120) as s:
        run_ok(s, "0")
        pid = s._worker.pid
        mode = s.isolation["cpu_limit"]
        assert mode in executor.CPU_LIMIT_MODES.values()
        assert report["cpu_limit"] == mode
        seen = []
        for i in range(5):          # 5 x 2.2 s of CPU: more than any one snippet's budget (8 s + 2)
            done = []
            t = threading.Thread(target=lambda: done.append(s.run(SPIN.format(s=2.2))))
            t.start()
            time.sleep(0.5)
            seen.append(_cpu_limits(pid))
            t.join(30)
            assert done and done[0].ok, (i, done and done[0].error, seen)
        for soft, hard in seen:
            assert soft != "unlimited" and hard != "unlimited", seen
            if mode == executor.CPU_LIMIT_MODES["ceiling"]:
                assert soft == hard == "120", seen
            else:
                assert int(soft) <= int(hard) and int(soft) <= 5 * (8 + 1) + 3, seen
        if mode != executor.CPU_LIMIT_MODES["ceiling"]:
            assert len({soft for soft, _ in seen}) > 1, seen    # set again before each snippet


def test_cpu_ceiling_where_the_caller_may_not_set_a_workers_limits(tmp_path):
    """Root without CAP_SYS_RESOURCE whose workers run as `nobody` (a Python that nobody can
    read: the unprivileged venv) cannot prlimit them. The session's ceiling, set by the worker
    itself, then holds during snippets, and both reports say that this is all that holds."""
    if os.geteuid() != 0 or executor._RAISE_HARD_LIMITS:
        pytest.skip("needs root without CAP_SYS_RESOURCE (this machine's case)")
    python = UNPRIVILEGED_VENV + "/bin/python"
    if not os.path.exists(python):
        pytest.skip(f"no {UNPRIVILEGED_VENV}: `python tests/test_executor.py --make-unprivileged-venv`")
    script = tmp_path / "caller.py"
    script.write_text(f"""import json, sys, threading, time
sys.path.insert(0, {os.path.dirname(executor.__file__)!r})
import executor
sb = executor.Sandbox(timeout_s=5, session_cpu_s=77)
sb.run("0")
pid = sb._worker.pid
res = []
t = threading.Thread(target=lambda: res.append(sb.run({SPIN.format(s=1.0)!r})))
t.start()
time.sleep(0.5)
limits = open(f"/proc/{{pid}}/limits").read()
uid = open(f"/proc/{{pid}}/status").read().split("Uid:")[1].split()[0]
t.join()
print(json.dumps({{"iso": sb.isolation.get("cpu_limit"), "report": executor.isolation_report().get("cpu_limit"),
                  "limits": [l for l in limits.splitlines() if l.startswith("Max cpu time")], "uid": int(uid),
                  "ok": res[0].ok}}))
""")
    out = subprocess.run([python, str(script)], capture_output=True, text=True, timeout=300, cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]
    got = __import__("json").loads(out.stdout.splitlines()[-1])
    if got["uid"] == 0:
        pytest.skip("the workers kept uid 0 here, so the caller may set their limits")
    assert got["ok"]
    assert got["iso"] == got["report"] == executor.CPU_LIMIT_MODES["ceiling"], got
    assert got["limits"][0].split()[3:5] == ["77", "77"], got


def _unprivileged_python() -> tuple[list[str] | None, str]:
    """A command prefix that runs this file's Python as `nobody`, or None and why not."""
    if os.geteuid() != 0:
        return None, "already unprivileged: this whole run is the unprivileged run"
    candidates = [os.environ.get("DEEPMATH_UNPRIVILEGED_PYTHON"), UNPRIVILEGED_VENV + "/bin/python"]
    runuser = next((p for p in ("/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser") if os.path.exists(p)), None)
    if runuser is None:
        return None, "runuser is not installed"
    for python in filter(None, candidates):
        cmd = [runuser, "-u", "nobody", "--", python]
        try:
            ok = subprocess.run(cmd + ["-c", "import numpy, scipy, sympy, pytest"], capture_output=True,
                                timeout=60, cwd="/").returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return cmd, ""
    return None, ("no Python that `nobody` can run with numpy, scipy, sympy and pytest "
                  f"(tried $DEEPMATH_UNPRIVILEGED_PYTHON and {UNPRIVILEGED_VENV}); make one with "
                  "`python tests/test_executor.py --make-unprivileged-venv`")


UNPRIVILEGED_VENV = "/tmp/deepmath-unprivileged-venv"
UNPRIVILEGED_SUBSET = ("(attack or layers_are_active or no_file_writes or no_reads or no_network"
                       " or no_new_processes or cannot_kill or limits_cannot) and not unprivileged")


def test_attacks_as_an_unprivileged_user():
    """The attack tests again, as `nobody` with its own Python (the workers then run as an
    ordinary uid: no capability drop, RLIMIT_NPROC = 0, and the caller cannot raise hard limits)."""
    cmd, why = _unprivileged_python()
    if cmd is None:
        pytest.skip(why)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if subprocess.run(cmd[:-1] + ["test", "-r", os.path.abspath(__file__)]).returncode != 0:
        pytest.skip(f"`nobody` cannot read the project at {here}")
    out = subprocess.run(cmd + ["-m", "pytest", os.path.abspath(__file__), "-q", "-p", "no:cacheprovider",
                                "-k", UNPRIVILEGED_SUBSET],
                         capture_output=True, text=True, timeout=600, cwd="/")
    tail = out.stdout[-3000:] + out.stderr[-2000:]
    assert out.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail, tail


# ---------------------------------------------------------------------------------------
# 6) The smolagents adapter
# ---------------------------------------------------------------------------------------

# Only this section needs smolagents; a module-level importorskip would skip every sandbox
# test above on a machine without it.
try:
    import smolagents
except ImportError:
    smolagents = None
needs_smolagents = pytest.mark.skipif(smolagents is None, reason="smolagents is not installed "
                                      "(pip install -r requirements.txt); the adapter needs it")


def scripted_model(replies):
    """A deterministic stand-in for an LLM: returns the next scripted reply each call."""

    class ScriptedModel(smolagents.models.Model):
        def __init__(self):
            super().__init__(model_id="scripted")
            self.replies = list(replies)

        def generate(self, messages, stop_sequences=None, response_format=None, tools_to_call_from=None, **kwargs):
            from smolagents.models import ChatMessage, MessageRole
            return ChatMessage(role=MessageRole.ASSISTANT, content=self.replies.pop(0))

    return ScriptedModel()


@needs_smolagents
def test_code_agent_with_scripted_model(report, no_leaks):
    from smolagents import CodeAgent
    from executor import SandboxExecutor
    replies = [
        "Thought: compute it.\n<code>\nresult = 1 / 0\n</code>",                 # an error the model sees
        "Thought: fix it.\n<code>\nimport sympy as sp\nx = sp.symbols('x')\nroots = sp.solve(x**2 - 4, x)\nprint(roots)\n</code>",
        "Thought: done.\n<code>\nfinal_answer(sum(roots) + 17 * 23)\n</code>",
    ]
    ex = SandboxExecutor(timeout_s=5)
    agent = CodeAgent(tools=[], model=scripted_model(replies), executor=ex, max_steps=5, verbosity_level=0)
    try:
        assert agent.run("What is 17 * 23 plus the sum of the roots of x^2 - 4?") == 391
        assert ex.calls == 3
        steps = [s for s in agent.memory.steps if type(s).__name__ == "ActionStep"]
        assert "ZeroDivisionError: division by zero (line 1: result = 1 / 0)" in str(steps[0].error)
        assert "[-2, 2]" in steps[1].observations
    finally:
        agent.cleanup()


@needs_smolagents
def test_adapter_tools_variables_and_errors(report, no_leaks):
    from executor import SandboxCodeError, SandboxExecutor
    from smolagents.default_tools import FinalAnswerTool, WebSearchTool
    ex = SandboxExecutor(timeout_s=5)
    try:
        ex.send_tools({"final_answer": FinalAnswerTool()})
        with pytest.raises(ValueError, match="supports only the final_answer tool"):
            ex.send_tools({"final_answer": FinalAnswerTool(), "web_search": WebSearchTool()})
        ex.send_variables({"n": 12, "coeffs": [1, -3, 2]})
        out = ex("import numpy as np\nprint(n)\nsorted(np.roots(coeffs).round(6).tolist())")
        assert (out.output, out.logs, out.is_final_answer) == ("[1.0, 2.0]", "12\n", False)
        out = ex("final_answer({'n': n, 'half': n / 2})")
        assert out.is_final_answer and out.output == {"n": 12, "half": 6.0}
        with pytest.raises(SandboxCodeError, match=r"^NameError: name 'nope' is not defined \(line 1: nope\)$"):
            ex("nope")
        with pytest.raises(SandboxCodeError, match="import of 'os' is not allowed"):
            ex("import os")
    finally:
        ex.cleanup()


@needs_smolagents
@needs_seccomp
def test_attack_one_agent_run_cannot_decide_the_next(report, no_leaks):
    """smolagents keeps the executor across CodeAgent.run() calls. Task 1's snippet replaces the
    worker's runner so that every later snippet "returns" a planted final answer; task 2's
    honest `n * 7` must still return its own value, from a fresh session."""
    from smolagents import CodeAgent
    from executor import SandboxExecutor
    planted = PLANT_RUNNER.replace("{PLANTED}", "{'err': None, 'val': None, 'fa': True, 'fav': 'planted', 'drop': 0}")
    replies = [
        f"Thought: prepare.\n<code>\n{planted}final_answer('task 1 done')\n</code>",
        "Thought: compute.\n<code>\nresult = n * 7\nresult\n</code>",
        "Thought: done.\n<code>\nfinal_answer(result)\n</code>",
    ]
    ex = SandboxExecutor(timeout_s=5)
    agent = CodeAgent(tools=[], model=scripted_model(replies), executor=ex, max_steps=4, verbosity_level=0)
    try:
        assert agent.run("Task 1") == "task 1 done"
        assert agent.run("Task 2: what is n * 7?", additional_args={"n": 6}) == 42
        steps = [s for s in agent.memory.steps if type(s).__name__ == "ActionStep"]
        assert "42" in steps[0].observations, steps[0].observations    # the honest value, not the plant
        assert ex.calls == 3 and ex.sessions == 2
        assert ex.sandbox.run("m = 1").ok          # straight through .sandbox, as agent.MathAgent runs snippets
        ex.send_variables({})
        assert ex.sessions == 3 and ex.sandbox.run("m").error.startswith("NameError")
    finally:
        agent.cleanup()


@needs_smolagents
def test_code_agent_with_the_real_embedded_model(report, no_leaks):
    """SmolLM2-135M through smolagents' TransformersModel: its answers are unpredictable,
    so assert only that the agent ran, reached the executor, and nothing crashed."""
    models = pytest.importorskip("models")
    torch = pytest.importorskip("torch")
    from smolagents import CodeAgent, TransformersModel
    from executor import SandboxExecutor
    import importlib.resources
    import yaml
    path = models.resolve_model("smollm2-135m")
    # float32: bf16 matmuls are emulated on most CPUs and many times slower. One torch
    # thread: on a busy 2-core machine two threads were 5-20x slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = TransformersModel(model_id=path, device_map="cpu", max_new_tokens=40, torch_dtype="float32")
    templates = yaml.safe_load(importlib.resources.files("smolagents.prompts").joinpath("code_agent.yaml").read_text())
    # smolagents' own system prompt is ~2300 tokens; a short one keeps this test fast on a CPU.
    # With greedy decoding this task makes the model open a ```python block (checked here).
    templates["system_prompt"] = ("You answer math questions by writing Python in a ```python block.\n"
                                  "Example:\nQuestion: What is 2 + 3?\n```python\nprint(2 + 3)\n```")
    ex = SandboxExecutor(timeout_s=10)
    agent = CodeAgent(tools=[], model=model, executor=ex, max_steps=1, code_block_tags="markdown",
                      prompt_templates=templates, verbosity_level=0)
    try:
        agent.run("Write a ```python block that prints 17 * 23.")
        outputs = [getattr(s, "model_output", None) for s in agent.memory.steps]
        assert ex.calls >= 1, outputs
        assert any(type(s).__name__ == "ActionStep" for s in agent.memory.steps)
    finally:
        agent.cleanup()
        torch.set_num_threads(threads)


if __name__ == "__main__" and sys.argv[1:] == ["--make-unprivileged-venv"]:
    # A Python that `nobody` can run, for test_attacks_as_an_unprivileged_user: the system
    # interpreter with its own venv (a pyenv Python under /root is unreadable to others).
    system_python = next(p for p in ("/usr/bin/python3.11", "/usr/bin/python3") if os.path.exists(p))
    subprocess.run([system_python, "-m", "venv", UNPRIVILEGED_VENV], check=True)
    versions = {m: __import__(m).__version__ for m in ("numpy", "scipy", "sympy", "mpmath", "pytest")}
    subprocess.run([UNPRIVILEGED_VENV + "/bin/pip", "install", "-q"] + [f"{m}=={v}" for m, v in versions.items()], check=True)
    os.chmod(UNPRIVILEGED_VENV, 0o755)
    print(f"made {UNPRIVILEGED_VENV} with {versions}")
