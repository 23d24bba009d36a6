"""
executor.py -- the sandbox that runs the model's Python snippets.

Paper ("How it works"): the model writes short Python snippets in the middle of its
reasoning; an executor runs each one and its output goes back into the trace. The paper
sets three limits on that executor: it is sandboxed, it allows imports only from a fixed
list of modules, and each snippet has a timeout. Snippets may not touch files or the
network. The design card calls it an "AST allow-list executor" that needs no RestrictedPython.

This file is standalone (stdlib, plus the math libraries that snippets may import): copy it
alone and you have the whole sandbox, OS layers included. It has no torch, vllm, trl,
pyseccomp or landlock import; the smolagents adapter imports smolagents only when asked for.

Data flow. Sections 0-4 are what a reader of the paper looks for, 5-8 the machinery beneath;
the numbers match the section banners and step comments in the code.

  0) The allow-lists and settings, in one place: imports, AST node types, builtins, system
     calls, the zygote's environment, the size caps.
  1) Static check, in the caller (static_check). A snippet longer than max_code_chars is
     refused before anything parses it. Then node types not in ALLOWED_NODES, imports not in
     ALLOWED_IMPORTS, dunder names and attributes, frame and code attributes and string
     literals that look like dunders are rejected. A rejection is ExecResult.error: nothing
     is raised, nothing runs.
  2) A session: Sandbox.run(code) -> ExecResult. Each session has its own worker process,
     so names, functions and imports persist across run() calls; run() never raises for
     anything a snippet does.
     a) The first run() gets a worker (5, 6), which isolates itself before any snippet (7).
     b) Where it may change the worker's limits (CPU_LIMIT_MODES), the caller lowers its
        CPU-time limit to this snippet's; it continues the worker (SIGCONT), sends the
        source and starts its clock. The worker runs it natively with exec() (8).
     c) The reply is a small JSON message, never pickle. The caller stops the worker
        (SIGSTOP) the moment it arrives and treats it as untrusted, since a snippet can
        replace the worker's reply code: a frame longer than an honest reply can be
        (_reply_frame_limit) is refused unread, every field is checked and cut again by the
        worker's own rules, duration_s is the caller's clock, a final answer counts only
        where the session enabled final_answer(), and bytes found on the socket before the
        next snippet is sent end the session. Output (stdout and stderr, then the repr() of
        a bare last-line expression, as IPython shows it) is read from the worker's memfd,
        bounded, and cut at max_output_chars with a visible marker.
     d) Failures. At timeout_s the caller kills the worker's whole process group, whatever
        it is doing; if the worker dies (memory, crash, a snippet that kills itself), the
        caller asks the zygote for its exit status. Either way the result says "...; names
        defined before this snippet are lost", and the next run() starts a fresh worker.
        The caller never waits on a worker or the zygote without a deadline.
  3) Many sessions: run_batch() runs one snippet in each of many sessions at once, on a
     small thread pool, bounded by max_running (snippets running together, default
     os.cpu_count()) and max_workers (live workers, default 32 * cpu_count). At the worker
     limit the least recently used idle session loses its worker; its next run() replays its
     earlier snippets (without their output) in a new worker, and the start, the replay and
     the snippet share that run's one deadline (a replay that does not fit is a timeout that
     says the session was lost). Replay, rather than a fixed number of live sessions: a GRPO
     step holds hundreds of sessions, most of them idle at any moment. Fixed `random` and
     numpy seeds and PYTHONHASHSEED make replay rebuild the state of deterministic snippets.
  4) The smolagents adapter: SandboxExecutor puts a Sandbox behind smolagents'
     PythonExecutor, so CodeAgent(executor=SandboxExecutor()) works. Each agent run gets a
     fresh session (at send_variables/send_tools): nothing one task did reaches the next.
  5) The worker from the caller's side. The zygote hands the caller three fds per worker
     (socket.send_fds): its socket, its output memfd and a pidfd; snippets then go straight
     from caller to worker. The caller's handle stops, continues, limits and kills it.
  6) The zygote: one clean helper per calling process, started on first use by running this
     file (`python executor.py --zygote`). It is NOT a fork of the caller, which may hold
     torch or vLLM threads, and ZYGOTE_ENV is its whole environment. It moves into a private
     mount namespace where every mount is read-only, so no read writes an access time
     (_private_readonly_view); sets one BLAS thread, preloads PRELOAD, warms up lazy imports,
     calls gc.freeze() so forked workers share those pages, probes which isolation layers the
     machine offers, and exits when its caller does (it watches its control socket and its
     parent pid; PR_SET_PDEATHSIG would fire when the *thread* that started it exits).
  7) Isolation, applied by the worker to itself before any untrusted code runs: a new
     session and process group; death with the zygote (PR_SET_PDEATHSIG); fds 1 and 2 on the
     output memfd; free address space sealed but a window (mseal), which bounds page tables;
     rlimits with hard = soft, RLIMIT_CPU at the session's ceiling; capabilities dropped, or
     uid nobody; no_new_privs; Landlock; last, the seccomp allow-list.
  8) Running a snippet, inside the worker: compile once, then plain exec(), with no tracing
     and no per-node interpretation, so loops run at native speed; restricted builtins;
     imports through the allow-list again; output capped in the worker's writer; every reply
     field cut (MAX_ERROR_CHARS, max_output_chars, _bound_answer).

Departures from the paper, and why:
  - The paper gives no details of its sandbox. Ours uses OS isolation (one process per
    session, seccomp, Landlock, rlimits), because an AST check alone is not a boundary:
    sympy.sympify, parse_expr and lambdify call eval() on strings, numpy.load, fromfile,
    loadtxt and memmap read files, and private module attributes (`random._os`, then
    `os.sys.modules['ctypes']`) reach libc without a single dunder.
  - Snippets run natively with exec(). The executor that smolagents ships (LocalPythonExecutor)
    interprets every AST node itself, and is 20-80 times slower on loops.
  - Integers print without the 4300-digit limit, because a math agent works with big
    numbers. The timeout bounds the quadratic cost.
  - The import allow-list adds to the paper's stack what a solver reaches for next:
    mpmath, heapq, bisect, numbers, string, copy (ALLOWED_IMPORTS says why each is safe).
  - final_answer() is available only when asked for (the smolagents adapter asks). The
    DeepMath protocol itself reads a \\boxed{} answer from the text.

THREAT MODEL. The snippet is hostile and can reach any Python object in the worker, libc
included (`random._os` is `os`, `os.sys.modules['ctypes']` is ctypes, ctypes.CDLL(None) makes
raw system calls). The static check and the restricted builtins only reduce that surface. The
boundary is the worker process as the kernel sees it (seccomp, Landlock, rlimits, privileges)
and the caller that stops and kills it. The full table (which layer stops each effect) and the
measurements: docs/sandbox.md. Sandbox.isolation and isolation_report() say what holds on this
machine, so a deployment can refuse to run without the layers it needs.

Covered (Linux; all of it on the development machine, caller root):
  - time: the caller's wall clock and SIGKILL of the process group; no threads (CPU <= wall);
    RLIMIT_CPU, per session and per snippet where the caller may (CPU_LIMIT_MODES); SIGSTOP
    between snippets, after a forged early reply too
  - memory: RLIMIT_AS = preloaded baseline + memory_mb; no SysV shm, shared anonymous maps,
    memfd or pipes; page tables below page_table_bound_bytes(memory_mb) (sealed address space)
  - output: cap in the worker's writer, RLIMIT_FSIZE on the memfd, bounded read by the caller
  - processes, threads, exec: fork, vfork, clone, clone3, execve, execveat refused
  - files: open/openat read-only (no O_PATH); every file-changing call refused; Landlock grants
    no write, and reads only beneath the Python, library and system-library trees (/etc/passwd,
    /tmp, /proc and the project are unreadable); five harmless ioctls; read-only mounts
  - secrets: ZYGOTE_ENV is the whole environment; no fd of the caller inherited; no /proc
  - channels across sessions and runs: SysV IPC, POSIX mqueues, sockets, pipes, inotify,
    fanotify and F_NOTIFY refused; access times, by the read-only mount namespace
  - network: socket calls refused (only sendto/recvfrom on its own socket); no TCP (Landlock)
  - other processes: signals only to its own pid, the SIGIO route closed (F_SETOWN, F_SETSIG,
    O_ASYNC, FIOASYNC, FIOSETOWN); ptrace, process_vm_*, pidfd_* refused; no leases or locks
  - per-uid kernel quotas: RLIMIT_SIGPENDING = RLIMIT_MSGQUEUE = RLIMIT_MEMLOCK = 0; fork,
    inotify, fanotify, epoll, timers, keys, namespaces, pipes and mlock refused
  - its own limits and privileges: hard = soft for every rlimit but RLIMIT_CPU (whose soft
    limit only the caller lowers); setrlimit/prlimit writes, prctl, setsid/setpgid refused;
    capabilities dropped (bounding set too); no_new_privs; PR_SET_PDEATHSIG armed after the
    uid change and not clearable; sealed reservations
  - the kernel: only the ~70 calls of the allow-list (mount, bpf, io_uring, perf_event_open,
    userfaultfd, keyctl, unshare and every newer call refused); the x32 ABI and other
    architectures' calls refused or fatal
  - the caller: it never unpickles worker data; replies are bounded JSON (~130 KB at the
    default max_output_chars), checked and cut field by field; snippets over max_code_chars
    refused before parsing; every wait has a deadline; the zygote dies with its caller
  - one task deciding the next: SandboxExecutor opens a fresh session per agent run
As root, workers run as `nobody` only where `nobody` can still read the libraries (the zygote
checks); else they keep uid 0 without capabilities, as on the development machine (Python
under /root, mode 700), and seccomp and Landlock keep them off root's files.

NOT covered: CPU-cache and timing side channels; metadata of any path (stat, readlink and
access work everywhere: they show existence, size and times, not contents; closing them
breaks imports); executable memory (mprotect PROT_EXEC gives nothing ctypes does not: every
call still goes through the filter); kernel bugs in the allowed calls; a snippet that uses
its full timeout, every time; what the caller's own use of many sessions costs: per worker
memory_mb + its preloaded baseline (~0.33 GB of address space) + page tables + its output
memfd (4 * max_output_chars + 64 KiB) + the kernel's bookkeeping of its mappings, times
max_workers (size it yourself); reclaimable kernel caches a snippet fills (dentries, page
cache), charged to no one; one
pending instance of each standard signal a worker sends itself (about 30 * max_workers); and
access times where the zygote can make neither a mount nor a user namespace (user namespaces
disabled, root in default Docker): about one bit per file or directory under the read roots
per day, persistent across reboots.

How it degrades (details in docs/sandbox.md):
  - Landlock ABI < 6 (Linux < 6.12): no Landlock signal scope; seccomp's own-pid rule and the
    SIGIO checks still stop signals. ABI < 4: no TCP rules; socket() is still refused.
  - No Landlock (Linux < 5.13): reads are not confined (any file its uid can read, such as
    /proc/<pid>/environ of its uid's processes); writes, exec, network, IPC and signals are
    still refused.
  - No CAP_SYS_RESOURCE (any non-root caller, root in Docker or on the development machine):
    a soft per-snippet RLIMIT_CPU only; workers under another uid: the session ceiling only.
  - No mount or user namespace: mounts stay writable (seccomp and Landlock still refuse every
    write) and the access-time channel is open.
  - No mseal (Linux < 6.10, 32-bit): page tables bounded only by vm.max_map_count, about 1 GB
    per worker.
  - No pidfd (Linux < 5.3): signals by pid, so a reused pid could in principle receive one.
  - No seccomp (architectures other than x86_64 and aarch64; aarch64 is untested): a snippet
    can fork, open sockets, use SysV IPC and inotify, and clear its death signal.
  - macOS and other POSIX systems: a process per session, stopped between snippets, killed
    at the deadline, with rlimits (macOS ignores RLIMIT_AS), but no file or network
    confinement: isolation against crashes, not a security boundary. Windows: Sandbox()
    raises (there is no fork).

Run:
    python executor.py                      # a short demo: isolation report and a few snippets
    python -m pytest tests/test_executor.py # the tests (they read as documentation)
    python bench/executor.py [--quick]      # latency and throughput against baselines
"""

from __future__ import annotations

import ast
import atexit
import collections
import ctypes
import gc
import io
import json
import math
import numbers
import os
import pickle
import platform
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence


# ---------------------------------------------------------------------------------------
# 0) The allow-lists and settings a reviewer should see first
# ---------------------------------------------------------------------------------------

ALLOWED_IMPORTS: tuple[str, ...] = (
    "math", "cmath", "fractions", "decimal", "itertools", "functools", "operator",
    "statistics", "random", "collections", "numpy", "scipy", "sympy",
    "mpmath", "heapq", "bisect", "numbers", "string", "copy",
)
"""Top-level modules a snippet may import (their submodules too, except BLOCKED_SUBMODULES).
The first thirteen are the paper's computing stack. The rest are what a solver reaches for
next, and each only computes: mpmath is sympy's own arbitrary-precision numerics (already
loaded with sympy); heapq and bisect are list algorithms (priority queues, binary search);
numbers holds the abstract number types for isinstance checks; string holds constants such
as ascii_lowercase; copy copies nested data. None opens files, processes or sockets."""

BLOCKED_SUBMODULES: tuple[str, ...] = (
    "numpy.ctypeslib", "numpy.f2py", "numpy.distutils", "numpy.testing",
    "scipy.io", "scipy.datasets",
    "sympy.testing", "sympy.external", "sympy.printing.preview",
    "sympy.utilities.autowrap", "sympy.utilities.codegen", "sympy.utilities.runtests",
    "mpmath.tests",
)
"""Submodules of allowed packages that exist to read and write files, load C code or
start compilers. Refusing them only reduces the surface (the OS layers are the boundary).
It also gives the model a clear message instead of a PermissionError from deep inside."""

INTERPRETER_IMPORTS: tuple[str, ...] = ("_pylong",)
"""Modules CPython itself imports through builtins.__import__ while running allowed code:
from 3.12, str(n), int(s) and Decimal of huge integers call into `_pylong` (without it,
`len(str(3**20000))` would fail with "import of '_pylong' is not allowed"). The runtime import
hook accepts exactly these names, the static check never does, so no snippet can name them
(`__import__` is a dunder, rejected before anything runs)."""

PRELOAD: tuple[str, ...] = ALLOWED_IMPORTS + INTERPRETER_IMPORTS + (
    "numpy.linalg", "scipy.special", "scipy.linalg", "scipy.optimize", "scipy.integrate",
    "scipy.stats", "sympy.parsing.sympy_parser",
)
"""What the zygote imports once, so that a session's first import costs nothing."""

ALLOWED_NODES: frozenset[type] = frozenset({
    # module and statements (no async, no match, no except*)
    ast.Module, ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete, ast.Pass,
    ast.If, ast.For, ast.While, ast.Break, ast.Continue, ast.With, ast.withitem,
    ast.FunctionDef, ast.Lambda, ast.Return, ast.Yield, ast.YieldFrom, ast.ClassDef,
    ast.Try, ast.ExceptHandler, ast.Raise, ast.Assert, ast.Global, ast.Nonlocal,
    ast.Import, ast.ImportFrom, ast.alias, ast.arguments, ast.arg, ast.keyword,
    # expressions
    ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.IfExp, ast.NamedExpr, ast.Call,
    ast.Attribute, ast.Subscript, ast.Slice, ast.Starred, ast.Name, ast.Constant,
    ast.List, ast.Tuple, ast.Set, ast.Dict, ast.ListComp, ast.SetComp, ast.DictComp,
    ast.GeneratorExp, ast.comprehension, ast.JoinedStr, ast.FormattedValue,
    ast.Load, ast.Store, ast.Del,
    # operators
    ast.And, ast.Or, ast.Add, ast.Sub, ast.Mult, ast.MatMult, ast.Div, ast.Mod, ast.Pow,
    ast.LShift, ast.RShift, ast.BitOr, ast.BitXor, ast.BitAnd, ast.FloorDiv,
    ast.Invert, ast.Not, ast.UAdd, ast.USub,
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Is, ast.IsNot, ast.In, ast.NotIn,
})
"""The AST node types a snippet may contain. Anything else is rejected."""

BLOCKED_ATTRIBUTES: frozenset[str] = frozenset({
    # frames, code objects and tracebacks: the classic ways from an object to globals
    "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await",
    "ag_frame", "ag_code", "ag_await", "f_globals", "f_locals", "f_builtins", "f_back",
    "f_code", "f_trace", "tb_frame", "tb_next", "co_code", "co_consts", "co_names",
    "func_globals", "func_code",
})
"""Non-dunder attribute names that reach frames or code objects. Dunders are blocked by rule."""

SAFE_BUILTINS: tuple[str, ...] = (
    "abs", "all", "any", "ascii", "bin", "bool", "bytearray", "bytes", "callable", "chr",
    "classmethod", "complex", "dict", "dir", "divmod", "enumerate", "filter", "float",
    "format", "frozenset", "hash", "hex", "id", "int", "isinstance", "issubclass", "iter",
    "len", "list", "map", "max", "memoryview", "min", "next", "object", "oct", "ord", "pow",
    "print", "property", "range", "repr", "reversed", "round", "set", "slice", "sorted",
    "staticmethod", "str", "sum", "super", "tuple", "type", "zip",
    "True", "False", "None", "Ellipsis", "NotImplemented",
)
"""Builtins a snippet gets as they are. All exception classes are added too.
getattr/hasattr/setattr/delattr are replaced by versions that refuse dunder names.
__import__ is replaced by the allow-list importer."""

FORBIDDEN_BUILTINS: tuple[str, ...] = (
    "open", "exec", "eval", "compile", "__import__", "input", "breakpoint", "help",
    "globals", "locals", "vars", "exit", "quit", "copyright", "credits", "license",
)
"""Builtins a snippet does not get. Calling one raises a clear PermissionError."""

SYSCALLS_ALLOWED: tuple[str, ...] = (
    # traced in the benign workload: output, the socket to the caller, reading libraries
    "read", "write", "close", "lseek", "ftruncate", "sendto", "recvfrom", "getdents64",
    "getcwd", "newfstatat", "brk", "munmap", "mremap", "mprotect", "madvise", "futex",
    "rt_sigaction", "rt_sigprocmask", "getrandom", "getpid", "gettid", "getppid", "exit_group",
    # the same information as newfstatat, for other libc versions and os.access/realpath
    "fstat", "stat", "lstat", "statx", "access", "faccessat", "faccessat2", "readlink", "readlinkat",
    # its own file descriptors (RLIMIT_NOFILE bounds them) and waiting on them; readv and
    # writev are read and write in pieces (musl's stdio uses them)
    "dup", "dup2", "dup3", "close_range", "select", "pselect6", "poll", "ppoll", "readv", "writev",
    # clocks (the vDSO's fallbacks), sleeping, and a sleep that continues after SIGCONT
    "clock_gettime", "gettimeofday", "time", "nanosleep", "clock_nanosleep", "restart_syscall",
    "rt_sigreturn", "sched_yield",
    # questions about itself
    "getuid", "geteuid", "getgid", "getegid", "getrlimit", "getrusage", "sched_getaffinity",
    "uname", "exit",
)
"""System calls a worker may make with any arguments once its snippet loop starts; every
other call fails with EPERM (SYSCALLS_ENOSYS with ENOSYS). How the list was made: the worker
ran the benign workload (the tests' benign snippets, the snippets of prompts/examples.txt and
bench/executor.py, and imports and typical calls of numpy, scipy's submodules, sympy and
mpmath, including memory errors, output floods and timeouts) under `strace -f`, and the calls
each worker made after installing its filter were counted. The first group is that set; the
other groups are calls with the same effect that other libc or kernel versions use instead,
or that CPython makes on paths the workload did not take. Not on it, so refused: fork, clone
(threads too), exec, every socket call but sendto/recvfrom on the open socket, pipes, SysV
IPC, POSIX message queues, inotify/fanotify, memfd_create, eventfd, timers, prctl, ptrace,
setrlimit, setsid/setpgid, mount, bpf, io_uring, userfaultfd, keyctl, and any newer call."""

SYSCALLS_CHECKED: tuple[str, ...] = ("open", "openat", "fcntl", "ioctl", "mmap", "prlimit64", "kill",
                                     "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")
"""Allowed only with these arguments (the comments in _seccomp_program say why):
open/openat read-only and without O_PATH; fcntl F_DUPFD, F_GETFD, F_SETFD, F_GETFL,
F_DUPFD_CLOEXEC, and F_SETFL without O_ASYNC; ioctl TCGETS and TIOCGWINSZ (isatty), FIONBIO,
FIOCLEX, FIONCLEX; mmap unless both shared and anonymous; prlimit64 on itself with no new
limit (a read); kill and the other signal calls only to its own pid."""

SYSCALLS_ENOSYS: tuple[str, ...] = ("clone3", "openat2")
"""Refused with ENOSYS instead of EPERM: glibc reads ENOSYS as "older kernel" and falls back
(clone3 to clone, which is then refused with EPERM)."""

ZYGOTE_ENV: dict[str, str] = {
    "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1", "VECLIB_MAXIMUM_THREADS": "1",
    "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
}
"""The whole environment of the zygote and its workers. Nothing is copied from the caller's
environment, which may hold tokens (HF_TOKEN, WANDB_API_KEY): a snippet that reaches libc
getenv() or /proc/self/environ sees only these. One BLAS/OpenMP thread (a forked worker cannot
use a thread pool made before the fork, and seccomp refuses new threads); a fixed hash seed, so
that replay after an eviction rebuilds the same state."""

MAX_CODE_CHARS = 20_000
"""The default cap on a snippet's length (Sandbox(max_code_chars=...)). It is checked before
anything parses the snippet: parsing and checking cost the caller up to ~4 us per character of
hostile code while it holds the GIL (~0.4 s for 100,000 characters, ~0.08 s at this cap), and
a 5,000-token completion has no room for a longer snippet anyway."""

MAX_ERROR_CHARS = 2_400
"""The bound on ExecResult.error from a worker: an exception's message is cut at 2,000
characters and its location adds at most ~250. The worker cuts to it, and so does the caller."""

DEFAULT_MAX_RUNNING = os.cpu_count() or 1
DEFAULT_MAX_WORKERS = 32 * DEFAULT_MAX_RUNNING


# ---------------------------------------------------------------------------------------
# 1) Static check (in the caller, before any process is involved)
# ---------------------------------------------------------------------------------------

_DUNDER_STRING = re.compile(r"__\w+__")


def _module_allowed(name: str, allowed: Sequence[str]) -> bool:
    """`name` is importable: its top-level package is allowed and it is not a blocked submodule."""
    if name.split(".")[0] not in allowed:
        return False
    return not any(name == b or name.startswith(b + ".") for b in BLOCKED_SUBMODULES)


def _where(lineno: int | None, lines: Sequence[str]) -> str:
    if not lineno or lineno > len(lines):
        return ""
    return f" (line {lineno}: {lines[lineno - 1].strip()[:200]})"


def static_check(code: str, allowed_imports: Sequence[str] = ALLOWED_IMPORTS,
                 max_code_chars: int = MAX_CODE_CHARS) -> str | None:
    """Return a model-readable reason why `code` may not run, or None if it passes.
    A snippet longer than max_code_chars is refused before it is parsed (MAX_CODE_CHARS says why).

    >>> static_check("import numpy as np; np.eye(2)") is None
    True
    >>> static_check("import os")
    "ImportError: import of 'os' is not allowed; allowed: math, cmath, fractions, decimal, itertools, functools, operator, statistics, random, collections, numpy, scipy, sympy, mpmath, heapq, bisect, numbers, string, copy (line 1: import os)"
    """
    if not isinstance(code, str):
        return f"TypeError: the snippet must be a str, not {type(code).__name__}"
    if len(code) > max_code_chars:
        return (f"SandboxError: the snippet has {len(code)} characters, over the limit of {max_code_chars} "
                "(max_code_chars); split the work into shorter snippets")
    try:
        tree = ast.parse(code, "<snippet>")
    except SyntaxError as e:
        return f"SyntaxError: {e.msg}" + (f" (line {e.lineno}: {(e.text or '').strip()[:200]})" if e.lineno else "")
    except (ValueError, MemoryError, RecursionError) as e:  # null bytes, absurd nesting
        return f"SyntaxError: {type(e).__name__}: {e}"
    lines = code.splitlines()
    allowed_list = ", ".join(allowed_imports)

    def reject(node: ast.AST, what: str) -> str:
        return f"SandboxError: {what} is not allowed in the sandbox" + _where(getattr(node, "lineno", None), lines)

    def bad_name(name: str | None) -> bool:
        return name is not None and name.startswith("__")

    # Defining special methods (__init__, __repr__, __lt__...) directly in a class body is
    # ordinary Python and reaches nothing; it is *reading* dunders that walks to globals.
    methods: set[int] = set()

    for node in ast.walk(tree):  # breadth-first and iterative: deep trees cannot exhaust the stack
        kind = type(node)
        if kind not in ALLOWED_NODES:
            return reject(node, f"'{kind.__name__}' syntax")
        if kind is ast.ClassDef:  # visited before its body (breadth-first)
            methods.update(id(n) for n in node.body if isinstance(n, ast.FunctionDef)
                           and re.fullmatch(r"__[a-z]\w*__", n.name))
        if kind is ast.Name and bad_name(node.id):
            return reject(node, f"the name '{node.id}' (names starting with '__')")
        if kind is ast.Attribute:
            if bad_name(node.attr):
                return reject(node, f"the attribute '{node.attr}' (dunder attributes)")
            if node.attr in BLOCKED_ATTRIBUTES:
                return reject(node, f"the attribute '{node.attr}' (frames and code objects)")
        if kind in (ast.FunctionDef, ast.ClassDef) and bad_name(node.name) and id(node) not in methods:
            return reject(node, f"the name '{node.name}'")
        if kind is ast.arg and bad_name(node.arg):
            return reject(node, f"the argument name '{node.arg}'")
        if kind is ast.keyword and bad_name(node.arg):
            return reject(node, f"the keyword '{node.arg}'")
        if kind is ast.ExceptHandler and bad_name(node.name):
            return reject(node, f"the name '{node.name}'")
        if kind in (ast.Global, ast.Nonlocal) and any(bad_name(n) for n in node.names):
            return reject(node, "a dunder name")
        if kind is ast.Constant and isinstance(node.value, str) and _DUNDER_STRING.search(node.value):
            # catches "{0.__class__}".format(x), sympify("__import__('os')") and getattr(x, "__dict__")
            return reject(node, "a string containing a dunder name")
        if kind is ast.Import:
            for a in node.names:
                if not _module_allowed(a.name, allowed_imports):
                    return (f"ImportError: import of '{a.name}' is not allowed; allowed: {allowed_list}"
                            + _where(node.lineno, lines))
                if bad_name(a.asname):
                    return reject(node, f"the name '{a.asname}'")
        if kind is ast.ImportFrom:
            if node.level:
                return reject(node, "a relative import")
            if not _module_allowed(node.module or "", allowed_imports):
                return (f"ImportError: import from '{node.module}' is not allowed; allowed: {allowed_list}"
                        + _where(node.lineno, lines))
            for a in node.names:
                if a.name != "*" and not _module_allowed(f"{node.module}.{a.name}", allowed_imports):
                    return (f"ImportError: import of '{node.module}.{a.name}' is not allowed"
                            + _where(node.lineno, lines))
                if bad_name(a.name) or bad_name(a.asname):
                    return reject(node, f"the name '{a.asname or a.name}'")
    return None


# ---------------------------------------------------------------------------------------
# 2) A session (Sandbox): persistent names, the timeout, the output cap, failures
# ---------------------------------------------------------------------------------------

@dataclass
class ExecResult:
    """What one snippet did. `stdout` is what the model should see after the call."""

    stdout: str = ""
    """Printed output (stdout and stderr, in order), then the display of a bare last-line
    expression: repr() of its value unless None, like IPython's Out without "Out[n]:".
    Truncated to max_output_chars with a visible marker."""
    error: str | None = None
    """"ExceptionType: message (line N: <source line>)", a static-check rejection, or why
    the worker was killed. None when the snippet finished without an exception."""
    timed_out: bool = False
    duration_s: float = 0.0
    """Wall time from sending the snippet to its result, on the caller's clock. After an
    eviction it includes the replay that rebuilt the session (not the ~10 ms worker start)."""
    session_reset: bool = False
    """The worker died or was killed: names defined before this snippet are lost."""
    final_answer: Any = None
    """The argument of final_answer(x), as JSON-safe data (str() for other objects). Bounded
    (_bound_answer): its size, a str's length or else its JSON text's, is at most
    max_output_chars + 64; a larger answer arrives as a str, that text cut to max_output_chars
    with the truncation marker."""
    is_final_answer: bool = False
    """final_answer(...) was called (its argument may legitimately be None)."""
    value: str | None = None
    """The display text of the last-line expression, or None (also part of stdout); cut to
    max_output_chars with the marker, like stdout."""
    printed: str = ""
    """stdout without the display of the last expression (smolagents' "logs")."""

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out

    @property
    def error_type(self) -> str | None:
        """The error's class, for counting: the exception's name ("ZeroDivisionError"),
        "TimeoutError" for a timeout, "SandboxError" for a refused snippet or a lost worker."""
        if self.error is None and not self.timed_out:
            return None
        if self.timed_out:
            return "TimeoutError"
        # describe() writes "Name: message (line N: ...)", "Name (line N: ...)" or "Name"
        m = re.match(r"([A-Za-z_]\w*)(?=: | \(|\Z)", self.error)
        return m.group(1) if m else "SandboxError"


class Sandbox:
    """One session: one solution trajectory. Names, functions and imports persist across
    run() calls. run() never raises for anything the snippet does.

    timeout_s         wall-clock limit per snippet, from the moment it is sent to the worker
    memory_mb         what a snippet may allocate: the worker's address space is capped at the
                      preloaded libraries' footprint (~200-300 MB of address space) + memory_mb
    max_output_chars  stdout/stderr (and the last value's display) beyond this are cut, with a marker
    allowed_imports   top-level modules a snippet may import (submodules follow, except
                      BLOCKED_SUBMODULES); only those in PRELOAD cost nothing to import
    seed              seeds `random` and numpy's global generator (random per session if None);
                      it also makes replay after an eviction reproduce the same state
    max_code_chars    longer snippets are refused before they are parsed (MAX_CODE_CHARS)
    enable_final_answer  define final_answer(x), which ends the snippet (the smolagents adapter)
    session_cpu_s     the CPU-time ceiling of one worker, over all its snippets (RLIMIT_CPU, set
                      by the worker at its start; default 100 * timeout_s, at least 60 s). A
                      session that reaches it loses its names, like a crash. Where the caller
                      may change a worker's limits, each snippet also gets its own RLIMIT_CPU
                      (CPU_LIMIT_MODES)

    The worker starts on the first run(), not here, so creating many sessions is cheap.

    >>> with Sandbox(timeout_s=5) as sb:
    ...     sb.run("x = 6").ok, sb.run("x * 7").stdout
    (True, '42\\n')
    """

    def __init__(self, timeout_s: float = 10.0, memory_mb: int = 1024, max_output_chars: int = 4000,
                 allowed_imports: Sequence[str] = ALLOWED_IMPORTS, *, seed: int | None = None,
                 max_code_chars: int = MAX_CODE_CHARS, enable_final_answer: bool = False,
                 session_cpu_s: float | None = None):
        if os.name != "posix":
            raise RuntimeError("executor.Sandbox needs a POSIX system (it forks worker processes)")
        self.timeout_s = float(timeout_s)
        self.memory_mb = int(memory_mb)
        self.max_output_chars = int(max_output_chars)
        self.allowed_imports = tuple(allowed_imports)
        self.max_code_chars = int(max_code_chars)
        self.seed = int.from_bytes(os.urandom(8), "little") if seed is None else int(seed)
        self.enable_final_answer = enable_final_answer
        self.session_cpu_s = float(session_cpu_s) if session_cpu_s else max(60.0, 100 * self.timeout_s)
        self._worker: _Worker | None = None
        self._history: list[tuple[str, Any]] = []   # what replay needs after an eviction
        self._evicted = False
        self._closed = False
        self._lock = threading.Lock()
        _POOL.sessions.add(self)

    # -- public API ------------------------------------------------------------------------

    def run(self, code: str) -> ExecResult:
        """Run one snippet in this session and return what happened."""
        rejection = static_check(code, self.allowed_imports, self.max_code_chars)
        if rejection is not None:
            return ExecResult(error=rejection)
        return self._submit("run", code)

    def set_variables(self, variables: dict[str, Any]) -> None:
        """Define names in the session (values are pickled: stdlib or allowed-library types).
        Raises in the caller for unpicklable values or dunder names: that is the caller's bug."""
        bad = [k for k in variables if not isinstance(k, str) or k.startswith("__")]
        if bad:
            raise ValueError(f"variable names must be str without a leading '__': {bad}")
        payload = pickle.dumps(dict(variables))
        result = self._submit("vars", payload)
        if result.error:
            raise RuntimeError(result.error)

    @property
    def isolation(self) -> dict:
        """The layers this session's worker applied (starts the worker if needed): its
        rlimits, sealed address space, uid, Landlock ABI, seccomp, and how its CPU time is
        bounded (cpu_limit, one of CPU_LIMIT_MODES' texts)."""
        with self._lock:
            if self._closed:
                return {}
            _POOL.begin_run(self)
            try:
                early, *_ = self._prepare()
                if early is not None:
                    return {"error": early.error}
                return dict(self._worker.isolation)
            finally:
                _POOL.end_run(self)

    def close(self) -> None:
        """Kill the worker and free its slot. Safe to call twice, or from another thread."""
        self._closed = True
        _POOL.forget(self)
        w = self._worker
        if w is not None:
            w.kill()
            if self._lock.acquire(blocking=False):   # not running: release now
                try:
                    self._drop_worker()
                finally:
                    self._lock.release()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- internals ---------------------------------------------------------------------------

    def _cfg(self) -> dict:
        return {"memory_mb": self.memory_mb, "max_output_chars": self.max_output_chars,
                "allowed_imports": list(self.allowed_imports), "seed": self.seed,
                "final_answer": self.enable_final_answer, "cpu_ceiling_s": self.session_cpu_s}

    def _drop_worker(self) -> None:
        """Forget this session's worker (killing it) and free its slot. Idempotent, and
        safe against a concurrent eviction: the swap happens under the pool lock."""
        with _POOL.cond:
            w, self._worker = self._worker, None
            if w is not None:
                _POOL.live -= 1
                _POOL.cond.notify_all()
        if w is not None:
            w.release()

    def _evict_locked(self) -> None:
        """Called by the pool, under its lock, on an idle session: its worker goes, its
        history stays, and the next run() replays the history in a new worker."""
        w, self._worker = self._worker, None
        if w is not None:
            w.release()
            _POOL.live -= 1
            _POOL.stats["evicted"] += 1
            self._evicted = True

    def _spawn(self, deadline: float | None = None) -> str | None:
        """Get a fresh worker from the zygote, wait for its isolation report (until
        `deadline`, or 30 s), and stop it until its first snippet. Returns an error
        message, or None."""
        _POOL.reserve_worker_slot()
        worker = None
        t0 = time.perf_counter()
        try:
            zygote = _POOL.get_zygote()
            worker = zygote.spawn(self._cfg())
            ready_by = time.monotonic() + 30.0 if deadline is None else deadline
            msg = json.loads(_recv_frame_deadline(worker.sock, ready_by, _MAX_CONTROL_FRAME))
            if "fatal" in msg:
                raise _SandboxStartError(str(msg["fatal"]))
            worker.isolation = msg["ready"]
            worker.choose_cpu_mode()
        except Exception as e:
            detail = str(e) if isinstance(e, _SandboxStartError) else f"{type(e).__name__}: {e}"
            if worker is not None:
                said, _ = worker.read_output(500)    # what the worker wrote before it died
                detail += f"; it wrote: {said.strip()}" if said.strip() else ""
                worker.release()
            _POOL.worker_gone()
            return f"SandboxError: the sandbox worker did not start ({detail})"
        worker.pause()
        worker.ran_s = time.perf_counter() - t0
        self._worker = worker
        _POOL.stats["spawned"] += 1
        return None

    def _prepare(self) -> tuple[ExecResult | None, float, float, bool]:
        """Make sure the session has a worker; after an eviction, rebuild its names by
        replaying its earlier snippets. The new worker's start, the replay and the snippet
        share one deadline, timeout_s from the start of run(), so run() stays within it.
        Returns (a result to return instead of running the snippet, or None; the deadline;
        the perf_counter start of this run's clock; whether the session's names were lost)."""
        reset = False
        replay = self._worker is None and self._evicted
        start, deadline = time.perf_counter(), time.monotonic() + self.timeout_s
        if self._worker is None:
            # The first worker's start is not the snippet's time (a fresh zygote takes
            # seconds); a rebuild's is, so that the whole run stays within timeout_s.
            err = self._spawn(deadline if replay else None)
            if err:
                if replay and time.monotonic() >= deadline:
                    self._history.clear()
                    self._evicted = False
                    return ExecResult(error=f"timed out after {self.timeout_s:g} s while rebuilding this "
                                            "session; names defined before this snippet are lost",
                                      timed_out=True, session_reset=True,
                                      duration_s=time.perf_counter() - start), 0.0, 0.0, True
                return ExecResult(error=err), 0.0, 0.0, False
            if not replay:
                start, deadline = time.perf_counter(), time.monotonic() + self.timeout_s
        if replay:
            self._evicted = False
            history, self._history = self._history, []
            for kind, payload in history:
                _POOL.stats["replayed"] += 1
                r = self._exchange(kind, payload, deadline, start, replaying=True)
                if r.timed_out:
                    return r, deadline, start, True
                if r.session_reset:     # it went differently this time: start fresh
                    err = self._spawn(deadline)
                    if err:
                        return ExecResult(error=err, session_reset=True), 0.0, 0.0, True
                    reset = True
                    break
        return None, deadline, start, reset

    def _submit(self, kind: str, payload: Any) -> ExecResult:
        with self._lock:
            if self._closed:
                return ExecResult(error="SandboxError: this sandbox is closed")
            _POOL.begin_run(self)
            try:
                early, deadline, start, reset = self._prepare()
                if early is not None:
                    return early
                result = self._exchange(kind, payload, deadline, start)
                result.session_reset = result.session_reset or reset
                return result
            except Exception as e:   # a bug here must not take the caller down
                self._drop_worker()
                self._history.clear()
                return ExecResult(error=f"SandboxError: internal error ({type(e).__name__}: {e}); "
                                        "names defined before this snippet are lost", session_reset=True)
            finally:
                if self._closed:     # close() was called from another thread meanwhile
                    self._drop_worker()
                _POOL.end_run(self)

    def _exchange(self, kind: str, payload: Any, deadline: float, start: float,
                  replaying: bool = False) -> ExecResult:
        """Steps 2b-2d from the caller's side: continue the worker, send, wait until the
        deadline, stop the worker again the moment it replies, then read the result.
        Only the caller's clock and the session's settings decide duration_s and
        is_final_answer; the reply is data from an untrusted process."""
        w = self._worker
        w.seq += 1
        frame = pickle.dumps((kind, w.seq, payload))
        failure = _pending(w.sock)   # anything waiting before we asked is forged or stale
        remaining = deadline - time.monotonic()
        if failure is None and remaining <= 0:
            failure = "timeout"
        elif failure is None:
            t_run = time.perf_counter()
            # A small frame goes into the socket buffer before SIGCONT, so that the worker
            # wakes once, with its input waiting; a large one could fill the buffer of a
            # stopped worker, so the worker is continued first.
            small = len(frame) <= _SEND_BEFORE_CONTINUE
            if not small:
                w.resume(remaining)
            try:
                w.sock.settimeout(remaining)   # a large frame's send counts against the deadline too
                _send_frame(w.sock, frame)
                if small:
                    w.resume(remaining)
                raw = _recv_frame_deadline(w.sock, deadline, _reply_frame_limit(self.max_output_chars))
            except TimeoutError:
                failure = "timeout"
            except (EOFError, OSError):
                failure = "died"
            except ValueError:
                failure = "protocol"
            finally:
                w.pause()
                w.ran_s += time.perf_counter() - t_run
        duration = time.perf_counter() - start
        if failure is None:
            try:
                reply = json.loads(raw)
                if not isinstance(reply, dict) or reply.get("seq") != w.seq:
                    raise ValueError("reply out of sequence")
                return self._result_from_reply(kind, payload, reply, duration)
            except (TypeError, ValueError, KeyError, AttributeError, OverflowError, RecursionError, MemoryError):
                failure = "protocol"
        # 2d) the worker is gone or misbehaved: kill it, keep what it printed, start over next time
        w.kill()
        printed, unread = w.read_output(self.max_output_chars)
        lost = "names defined before this snippet are lost"
        if failure == "timeout" and replaying:
            error = (f"timed out after {self.timeout_s:g} s while rebuilding this session (its process "
                     f"had been reclaimed to bound the number of live workers), before the snippet ran; {lost}")
            printed, unread = "", 0   # output of the replayed snippets, not of this one
        elif failure == "timeout":
            error = f"timed out after {self.timeout_s:g} s; {lost}"
        elif failure == "protocol":
            error = f"SandboxError: the sandbox process sent a malformed reply and was stopped; {lost}"
        else:
            error = f"{self._death_reason(w)}; {lost}"
        self._drop_worker()
        self._history.clear()
        self._evicted = False
        if len(printed) >= self.max_output_chars or unread:   # the worker's own count died with it
            printed = printed[:self.max_output_chars] + "\n... [output truncated]"
        return ExecResult(stdout=printed, printed=printed, error=error, timed_out=failure == "timeout",
                          duration_s=duration, session_reset=True)

    @staticmethod
    def _death_reason(w: _Worker) -> str:
        z = w.zygote
        status = z.status(w.pid) if z is not None and not z.dead else {}
        sig = status.get("signal")
        if sig is not None:
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            if sig == signal.SIGKILL:
                return "the sandbox process was killed (SIGKILL: out of memory, or killed from outside)"
            if sig == signal.SIGXCPU:
                return "the sandbox process exceeded its CPU time limit (SIGXCPU)"
            if sig == signal.SIGSYS:
                return "the sandbox process made a forbidden system call (SIGSYS)"
            return f"the sandbox process crashed ({name})"
        if "exit" in status:
            return f"the sandbox process exited (exit code {status['exit']})"
        return "the sandbox process died"

    def _result_from_reply(self, kind: str, payload: Any, reply: dict, duration: float) -> ExecResult:
        """Step 2c. Every field is checked and bounded here by the rules the worker applies, so
        a worker whose reply code a snippet replaced cannot hand the caller more: error <=
        MAX_ERROR_CHARS, value and stdout <= max_output_chars + the marker, final answer <=
        max_output_chars + the marker as JSON text (_bound_answer). _reply_frame_limit follows
        from these bounds."""
        w = self._worker
        limit = self.max_output_chars
        err, val = reply["err"], reply["val"]
        hidden, val_hidden = reply.get("drop", 0), reply.get("vh", 0)
        if not (err is None or isinstance(err, str)) or not (val is None or isinstance(val, str)):
            raise TypeError("bad reply")
        for n in (hidden, val_hidden):
            if type(n) is not int or not 0 <= n < 1 << 60:
                raise TypeError("bad reply")
        if err is not None:
            err = _clean_text(err[:MAX_ERROR_CHARS])
        if val is not None:
            val = _truncate(_clean_text(val[:limit]), limit, val_hidden + max(len(val) - limit, 0))
        printed, unread = w.read_output(limit)
        self._history.append((kind, payload))
        printed = _truncate(printed, limit, hidden + unread)
        stdout = printed
        if val is not None:
            stdout += ("\n" if printed and not printed.endswith("\n") else "") + val + "\n"
            stdout = _truncate(stdout, limit)
        # a final answer counts only where this session defined final_answer()
        fa = reply.get("fa") is True and self.enable_final_answer and kind == "run"
        answer = _bound_answer(reply.get("fav"), limit) if fa else None
        return ExecResult(stdout=stdout, error=err, duration_s=duration, value=val, printed=printed,
                          final_answer=answer, is_final_answer=fa)


# ---------------------------------------------------------------------------------------
# 3) Many sessions: the worker bound, eviction, run_batch
# ---------------------------------------------------------------------------------------

class _Pool:
    """Process-wide bookkeeping: the zygote, live workers, running snippets, idle LRU."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.max_workers = DEFAULT_MAX_WORKERS
        self.max_running = DEFAULT_MAX_RUNNING
        self.running = 0
        self.live = 0
        self.idle: collections.OrderedDict[int, weakref.ref] = collections.OrderedDict()
        self.sessions: weakref.WeakSet[Sandbox] = weakref.WeakSet()
        self.zygote: _ZygoteClient | None = None
        self.zygote_lock = threading.Lock()
        self.stats = collections.Counter()

    def get_zygote(self) -> _ZygoteClient:
        with self.zygote_lock:
            z = self.zygote
            if z is None or z.dead or z.proc.poll() is not None:
                if z is not None:
                    z.close()
                self.zygote = z = _ZygoteClient()
                self.stats["zygotes_started"] += 1
            return z

    def begin_run(self, session: "Sandbox") -> None:
        with self.cond:
            while self.running >= self.max_running:
                self.cond.wait()
            self.running += 1
            self.idle.pop(id(session), None)

    def end_run(self, session: "Sandbox") -> None:
        with self.cond:
            self.running -= 1
            if session._worker is not None and not session._closed:
                self.idle[id(session)] = weakref.ref(session)
            self.cond.notify_all()

    def reserve_worker_slot(self) -> None:
        """Make room for one more live worker, evicting the least recently used idle one."""
        with self.cond:
            while self.live >= self.max_workers:
                victim = None
                while self.idle and victim is None:
                    _, ref = self.idle.popitem(last=False)
                    victim = ref()
                if victim is not None:
                    victim._evict_locked()
                    continue
                self.cond.wait()
            self.live += 1

    def worker_gone(self) -> None:
        with self.cond:
            self.live -= 1
            self.cond.notify_all()

    def forget(self, session: "Sandbox") -> None:
        with self.cond:
            self.idle.pop(id(session), None)

    def shutdown(self) -> None:
        for s in list(self.sessions):
            s.close()
        with self.zygote_lock:
            if self.zygote is not None:
                self.zygote.close()
                self.zygote = None


_POOL = _Pool()


def set_limits(max_workers: int | None = None, max_running: int | None = None) -> None:
    """Bound this process's live worker processes and concurrently running snippets.
    max_workers is raised to max_running if lower (each running snippet needs a worker)."""
    with _POOL.cond:
        if max_running is not None:
            _POOL.max_running = max(1, int(max_running))
        if max_workers is not None:
            _POOL.max_workers = max(1, int(max_workers))
        _POOL.max_workers = max(_POOL.max_workers, _POOL.max_running)
        _POOL.cond.notify_all()


def pool_stats() -> dict:
    """Counters for benchmarks and debugging: workers spawned/evicted, snippets replayed..."""
    with _POOL.cond:
        return dict(_POOL.stats, live_workers=_POOL.live, running=_POOL.running,
                    max_workers=_POOL.max_workers, max_running=_POOL.max_running)


def isolation_report() -> dict:
    """What this machine offers, as probed by the zygote (starts it if needed), and what
    follows for this caller: how CPU time is bounded (cpu_limit), whether page tables are
    (page_tables), and whether access times can carry data across sessions (access_times).
    Sandbox.isolation says what one worker actually applied."""
    z = _POOL.get_zygote()
    with z.lock:
        report = dict(z._ensure_ready())
    workers_uid = _nobody_ids()[0] if report.get("euid") == 0 and report.get("drop_to_nobody") else report.get("euid")
    if not _CAN_PRLIMIT:
        mode = "ceiling"
    elif _RAISE_HARD_LIMITS:
        mode = "per-snippet"
    else:
        mode = "per-snippet-soft" if workers_uid == (os.getuid() if os.name == "posix" else None) else "ceiling"
    report["cpu_limit"] = CPU_LIMIT_MODES[mode]
    report["page_tables"] = (
        "bounded: all free address space outside a window of 2 * memory_mb + 1 GiB is sealed "
        f"(mseal), so page tables stay below ~(2 * memory_mb + 2 GiB) / 512 per worker "
        f"(page_table_bound_bytes: {page_table_bound_bytes(1024) / 2**20:.1f} MiB at memory_mb=1024)"
        if report.get("mseal") else
        "not bounded (no mseal, Linux < 6.10): a worker can hold page tables beyond memory_mb, "
        "up to ~16 KiB per mapping, vm.max_map_count mappings")
    return report


def shutdown() -> None:
    """Close every session and stop the zygote. Runs at interpreter exit."""
    _POOL.shutdown()


atexit.register(shutdown)


def _after_fork_in_child() -> None:
    """A forked copy of the caller (a DataLoader worker, say) must not touch the parent's
    workers or zygote: forget them without killing anything; it gets its own on demand."""
    global _POOL
    old = _POOL
    _POOL = _Pool()
    _POOL.max_workers, _POOL.max_running = old.max_workers, old.max_running
    for s in list(old.sessions):
        w = s._worker
        if w is not None:
            w.close_fds()
            s._worker = None
            s._history.clear()
        s._lock = threading.Lock()
        _POOL.sessions.add(s)
    if old.zygote is not None:
        try:
            old.zygote.sock.close()
        except OSError:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def run_batch(sandboxes: Sequence[Sandbox], codes: Sequence[str], max_running: int | None = None) -> list[ExecResult]:
    """Run codes[i] in sandboxes[i], concurrently, and return the results in input order.

    At most `max_running` snippets run at once (default, and upper bound: the process-wide
    limit, os.cpu_count() unless set_limits() changed it); live workers stay within
    max_workers. Each sandbox may appear once per batch."""
    if len(sandboxes) != len(codes):
        raise ValueError(f"{len(sandboxes)} sandboxes but {len(codes)} snippets")
    if len({id(s) for s in sandboxes}) != len(sandboxes):
        raise ValueError("a sandbox appears twice in one batch; its snippets would race")
    if len(sandboxes) <= 1:
        return [s.run(c) for s, c in zip(sandboxes, codes)]
    threads = min(len(sandboxes), max_running or _POOL.max_running)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sandbox") as pool:
        return list(pool.map(Sandbox.run, sandboxes, codes))


# ---------------------------------------------------------------------------------------
# 4) The smolagents adapter (built on first access, so importing executor never imports smolagents)
# ---------------------------------------------------------------------------------------

class SandboxCodeError(Exception):
    """Raised by SandboxExecutor when a snippet fails; str(e) is the model-readable error."""


def _make_sandbox_executor() -> type:
    try:
        from smolagents.local_python_executor import CodeOutput, PythonExecutor
    except ImportError:   # smolagents is optional: the adapter still works duck-typed
        PythonExecutor = object
        CodeOutput = None

    class SandboxExecutor(PythonExecutor):
        """smolagents PythonExecutor backed by a Sandbox: CodeAgent(executor=SandboxExecutor()).

        Only the final_answer tool can run inside the sandbox; other tools are refused at
        send_tools() with a clear error. Variables must be picklable.

        One session per agent run: smolagents keeps the executor across CodeAgent.run() calls
        and calls send_variables() then send_tools() at the start of each run, so the first of
        those after a snippet has run (through __call__ or straight through .sandbox, as
        agent.MathAgent does) closes the session and opens a fresh one. Nothing a snippet of
        one task did (a replaced runner, a planted answer, names) reaches the next task;
        run(..., reset=False) continues the conversation but not the names."""

        def __init__(self, timeout_s: float = 10.0, memory_mb: int = 1024, max_output_chars: int = 4000,
                     allowed_imports: Sequence[str] = ALLOWED_IMPORTS, **sandbox_kwargs: Any):
            self._sandbox_args = (timeout_s, memory_mb, max_output_chars, allowed_imports)
            self._sandbox_kwargs = dict(sandbox_kwargs, enable_final_answer=True)
            self.sandbox = Sandbox(*self._sandbox_args, **self._sandbox_kwargs)
            self.state: dict[str, Any] = {"_print_outputs": ""}   # CodeAgent shows these logs on errors
            self.calls = 0
            self.sessions = 1
            self._used = False     # a snippet ran in the current session

        def _fresh_session(self) -> None:
            """A new Sandbox in place of one that has run a snippet (its worker is killed).
            A live worker that ran a snippet has it in the session's history (a failure that
            clears the history also kills the worker)."""
            if self._used or any(kind == "run" for kind, _ in self.sandbox._history):
                old, self.sandbox = self.sandbox, Sandbox(*self._sandbox_args, **self._sandbox_kwargs)
                old.close()
                self.sessions += 1
                self._used = False
                self.state["_print_outputs"] = ""

        def send_tools(self, tools: dict[str, Any]) -> None:
            self._fresh_session()
            others = sorted(set(tools) - {"final_answer"})
            if others:
                raise ValueError(f"SandboxExecutor runs snippets in an isolated process and supports only "
                                 f"the final_answer tool; remove these tools: {', '.join(others)}")

        def send_variables(self, variables: dict[str, Any]) -> None:
            self._fresh_session()
            usable = {k: v for k, v in variables.items() if isinstance(k, str) and not k.startswith("__")}
            if usable:
                self.sandbox.set_variables(usable)

        def __call__(self, code_action: str):
            self.calls += 1
            self._used = True
            r = self.sandbox.run(code_action)
            self.state["_print_outputs"] = r.printed
            if r.error is not None:
                raise SandboxCodeError(r.error)
            output = r.final_answer if r.is_final_answer else r.value
            if CodeOutput is None:
                return output, r.printed, r.is_final_answer
            return CodeOutput(output=output, logs=r.printed, is_final_answer=r.is_final_answer)

        def cleanup(self) -> None:
            self.sandbox.close()

    return SandboxExecutor


_LAZY: dict[str, type] = {}


def __getattr__(name: str) -> Any:   # PEP 562: `from executor import SandboxExecutor`
    if name == "SandboxExecutor":
        if name not in _LAZY:
            _LAZY[name] = _make_sandbox_executor()
        return _LAZY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# =======================================================================================
# The machinery beneath sections 2-4: the worker as the caller sees it (5), the zygote (6),
# the isolation layers (7), and the runner inside the worker (8).
# =======================================================================================


# ---------------------------------------------------------------------------------------
# 5) A session's worker, from the caller's side: frames, start, stop, continue, kill, the reply
# ---------------------------------------------------------------------------------------

_LEN = struct.Struct("!I")
_MAX_CONTROL_FRAME = 1 << 20
_MARKER_CHARS = 64   # the longest "\n... [output truncated: N more characters]" (N < 2**64)
_SEND_BEFORE_CONTINUE = 1 << 16   # bytes; well under a unix socket's default buffer (~200 KB)


# Every socket here (caller-zygote, caller-worker) carries length-prefixed frames.
def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


def _send_frame(sock: socket.socket, payload: bytes) -> None:
    # MSG_NOSIGNAL: a caller that restored the default SIGPIPE action must get EPIPE from
    # a dead worker, not die of the signal
    sock.sendall(_LEN.pack(len(payload)) + payload, _NOSIGNAL)


def _recv_frame(sock: socket.socket, limit: int = _MAX_CONTROL_FRAME) -> bytes:
    (n,) = _LEN.unpack(_recv_exact(sock, 4))
    if n > limit:
        raise ValueError(f"frame of {n} bytes")
    return _recv_exact(sock, n)


# The zygote is this very file, run again (`python executor.py --zygote`): see 6).
_THIS_FILE = os.path.abspath(__file__)


class _SandboxStartError(RuntimeError):
    pass


class _ZygoteClient:
    """One per calling process. All requests are serialised by a lock; every wait has a deadline."""

    START_TIMEOUT_S = 180.0
    REQUEST_TIMEOUT_S = 30.0

    def __init__(self) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        path = json.dumps([p for p in sys.path if isinstance(p, str)])
        self.proc = subprocess.Popen(
            [sys.executable, _THIS_FILE, "--zygote", str(child_end.fileno()), str(os.getpid()), path],
            pass_fds=[child_end.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            env=dict(ZYGOTE_ENV), close_fds=True, start_new_session=True)
        child_end.close()
        self.sock = parent_end
        self.lock = threading.Lock()
        self.owner_pid = os.getpid()
        self.probe: dict | None = None
        self.dead = False

    def _recv(self, deadline: float, with_fds: bool = False) -> tuple[dict, list[int]]:
        fds: list[int] = []
        buf = b""
        while len(buf) < 4 or len(buf) < 4 + _LEN.unpack(buf[:4])[0]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the sandbox zygote did not answer in time")
            self.sock.settimeout(remaining)
            if with_fds and not buf:
                # CLOEXEC: the worker's fds must not leak into programs the caller execs
                data, new_fds, _, _ = socket.recv_fds(self.sock, 65536, 4, getattr(socket, "MSG_CMSG_CLOEXEC", 0))
                fds.extend(new_fds)
            else:
                data = self.sock.recv(65536)
            if not data:
                raise EOFError("the sandbox zygote exited")
            buf += data
        return json.loads(buf[4:]), fds

    def _ensure_ready(self) -> dict:
        if self.probe is None:
            msg, _ = self._recv(time.monotonic() + self.START_TIMEOUT_S)
            self.probe = msg["probe"]
        return self.probe

    def spawn(self, cfg: dict) -> "_Worker":
        with self.lock:
            try:
                probe = self._ensure_ready()
                _send_frame(self.sock, json.dumps({"op": "spawn", "cfg": cfg}).encode())
                msg, fds = self._recv(time.monotonic() + self.REQUEST_TIMEOUT_S, with_fds=True)
            except (OSError, EOFError, ValueError, KeyError) as e:
                self.dead = True
                raise _SandboxStartError(f"the sandbox could not start a worker: {e}") from None
        sock = socket.socket(fileno=fds[0])
        worker = _Worker(msg["pid"], sock, fds[1], fds[2] if len(fds) > 2 else None, probe)
        worker.zygote = self
        return worker

    def status(self, pid: int) -> dict:
        with self.lock:
            if self.dead:
                return {}
            try:
                _send_frame(self.sock, json.dumps({"op": "status", "pid": pid}).encode())
                msg, _ = self._recv(time.monotonic() + self.REQUEST_TIMEOUT_S)
                return msg
            except (OSError, EOFError, ValueError):
                self.dead = True
                return {}

    def close(self) -> None:
        self.dead = True
        try:
            self.sock.close()   # the zygote sees EOF, kills its workers and exits
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


try:
    import resource
    _CAN_PRLIMIT = hasattr(resource, "prlimit")
except ImportError:   # not POSIX
    resource = None
    _CAN_PRLIMIT = False


def _has_cap_sys_resource() -> bool:
    """Whether this process may raise hard limits (CAP_SYS_RESOURCE in its effective set).
    Root often lacks it: Docker's default capability set drops it, and so does the
    development machine's root."""
    try:
        with open("/proc/self/status") as f:
            caps = next(line for line in f if line.startswith("CapEff:"))
        return bool(int(caps.split()[1], 16) >> 24 & 1)
    except (OSError, StopIteration, ValueError, IndexError):
        return os.name == "posix" and os.geteuid() == 0


_RAISE_HARD_LIMITS = _has_cap_sys_resource()
CPU_LIMIT_MODES = {
    "per-snippet": "RLIMIT_CPU per snippet, soft and hard, set by the caller (CAP_SYS_RESOURCE)",
    "per-snippet-soft": "RLIMIT_CPU per snippet, soft only, set by the caller (it cannot raise hard "
                        "limits); hard = the session's CPU ceiling",
    "ceiling": "no per-snippet RLIMIT_CPU (the caller may not change this worker's limits: "
               "no CAP_SYS_RESOURCE and another uid); RLIMIT_CPU = the session's CPU ceiling, "
               "set by the worker; the caller's wall clock bounds each snippet",
}
"""How a worker's CPU time is bounded, by case (Sandbox.isolation["cpu_limit"] holds one of
these texts; isolation_report()["cpu_limit"] the one this caller's workers will get)."""


class _Worker:
    """The caller's handle on one worker process: socket, output memfd, pidfd."""

    def __init__(self, pid: int, sock: socket.socket, out_fd: int, pidfd: int | None, probe: dict):
        self.pid, self.sock, self.out_fd, self.pidfd = pid, sock, out_fd, pidfd
        self.probe = probe
        self.seq = 0
        self.killed = False
        self.released = False
        self.isolation: dict = {}
        self.zygote: _ZygoteClient | None = None
        self.ran_s = 0.0          # wall time it was allowed to run: an upper bound on its CPU time
        self.cpu_mode = "ceiling"   # a key of CPU_LIMIT_MODES, chosen by choose_cpu_mode()
        self.cpu_hard = 0
        self._lock = threading.Lock()

    def alive(self) -> bool:
        if self.pidfd is None:
            return not self.killed
        return not select.select([self.pidfd], [], [], 0)[0]   # a pidfd turns readable on exit

    def _signal(self, sig: int) -> None:
        """Signal exactly this process (the pidfd cannot point at a reused pid; after
        release() its number could name another fd, so nothing is sent then)."""
        with self._lock:
            if self.released:
                return
            try:
                if self.pidfd is not None:
                    signal.pidfd_send_signal(self.pidfd, sig)
                elif not self.killed:
                    os.kill(self.pid, sig)
            except OSError:
                pass

    def pause(self) -> None:
        """SIGSTOP after each reply: a worker that answered early (a forged reply) and kept
        computing is frozen until the next snippet is sent, and its time then counts."""
        self._signal(signal.SIGSTOP)

    def choose_cpu_mode(self) -> str:
        """Once, on the new (stopped) worker: may this caller change its limits? prlimit on
        another process needs CAP_SYS_RESOURCE or the same uid and gid (prlimit(2)); a read
        needs the same permission as a write, so a read and a write of the same values tell.
        The answer is recorded in isolation["cpu_limit"], never swallowed."""
        mode = "ceiling"
        if _CAN_PRLIMIT:
            try:
                current = resource.prlimit(self.pid, resource.RLIMIT_CPU)
                resource.prlimit(self.pid, resource.RLIMIT_CPU, current)
                self.cpu_hard = current[1]
                mode = "per-snippet" if _RAISE_HARD_LIMITS else "per-snippet-soft"
            except (OSError, ValueError) as e:
                self.isolation["cpu_limit_error"] = f"prlimit: {e}"
        self.cpu_mode = mode
        self.isolation["cpu_limit"] = CPU_LIMIT_MODES[mode]
        return mode

    def resume(self, budget_s: float) -> None:
        """Before sending a snippet: cap the worker's total CPU time at what it may have used
        so far (ran_s >= its CPU time: it has one thread) + this snippet's budget + 1 s, then
        SIGCONT. The caller sets the limit from outside; seccomp keeps the worker from
        changing it. With CAP_SYS_RESOURCE, hard = soft + 1 s; without it, the soft limit only,
        below the hard one (the session's CPU ceiling, which the worker set at its start);
        where the caller may not change the worker's limits at all, only that ceiling holds
        (CPU_LIMIT_MODES). A failure other than the worker's exit is recorded in isolation."""
        with self._lock:
            if not self.released and self.cpu_mode != "ceiling" and self.alive():
                soft = math.ceil(self.ran_s + budget_s) + 1
                try:
                    if self.cpu_mode == "per-snippet":
                        resource.prlimit(self.pid, resource.RLIMIT_CPU, (soft, soft + 1))
                    else:
                        if self.cpu_hard != resource.RLIM_INFINITY:
                            soft = min(soft, self.cpu_hard)
                        resource.prlimit(self.pid, resource.RLIMIT_CPU, (soft, self.cpu_hard))
                except ProcessLookupError:
                    pass   # it exited meanwhile: the caller finds out from the socket
                except (OSError, ValueError) as e:
                    self.isolation["cpu_limit_error"] = f"prlimit failed before a snippet: {e}"
                    self.cpu_mode = "ceiling"
                    self.isolation["cpu_limit"] = CPU_LIMIT_MODES["ceiling"]
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the worker's process group, then the worker itself. The pidfd makes the
        second one immune to pid reuse; the group is signalled only while its leader is
        alive, so its id cannot have been reused either."""
        with self._lock:
            if self.released:
                return
            self.killed = True
            try:
                if self.alive():
                    os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                if self.pidfd is not None:
                    signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
                else:
                    os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass

    def read_output(self, max_chars: int) -> tuple[str, int]:
        """The worker's output so far (bounded read) and how many bytes were left unread."""
        try:
            size = os.fstat(self.out_fd).st_size
            data = os.pread(self.out_fd, min(size, 4 * max_chars + 4096), 0)
        except OSError:
            return "", 0
        return data.decode("utf-8", "replace"), max(size - len(data), 0)

    def release(self) -> None:
        """Kill (if needed) and close our fds. Idempotent."""
        self.kill()
        with self._lock:
            if self.released:
                return
            self.released = True
            self.close_fds()

    def close_fds(self) -> None:
        """Close our ends (socket, output file, pidfd) without killing or locking: release() calls
        it under the lock; a forked child of the caller calls it alone, since a lock held by
        another thread at fork time is never released there."""
        for close in (self.sock.close, lambda: os.close(self.out_fd),
                      lambda: self.pidfd is not None and os.close(self.pidfd)):
            try:
                close()
            except OSError:
                pass


def _truncate(text: str, limit: int, hidden: int = 0) -> str:
    """Cut `text` to `limit` characters and add a marker saying how much was hidden."""
    if len(text) > limit:
        hidden += len(text) - limit
        text = text[:limit]
    if hidden > 0:
        text += f"\n... [output truncated: {hidden} more characters]"
    return text


def _reply_frame_limit(max_output_chars: int) -> int:
    """The largest reply an honest worker can send, from the bounds on its fields: error
    (MAX_ERROR_CHARS), value and final answer (max_output_chars + the marker each), as JSON with
    ASCII escapes (at most 12 bytes per character: a surrogate pair), plus the fixed keys and
    numbers. A longer frame is a protocol error: the worker is killed, the frame never read."""
    return 12 * (MAX_ERROR_CHARS + 2 * (max_output_chars + _MARKER_CHARS)) + 4096


def _clean_text(s: str | None) -> str | None:
    """Text from the worker may hold lone surrogates (via JSON escapes): make it encodable."""
    return None if s is None else s.encode("utf-8", "replace").decode("utf-8")


def _pending(sock: socket.socket) -> str | None:
    """What an idle worker's socket holds: None (nothing, as it should), "died" (EOF) or
    "protocol" (bytes nobody asked for). A zero-timeout select, and a peek if readable."""
    try:
        if not select.select([sock], [], [], 0)[0]:
            return None
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return None
    except (OSError, ValueError):
        return "died"
    return "protocol" if data else "died"


def _recv_frame_deadline(sock: socket.socket, deadline: float, limit: int) -> bytes:
    """Read one length-prefixed frame, or raise TimeoutError at the deadline / EOFError."""
    def exact(n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            k = sock.recv_into(view[got:])
            if k == 0:
                raise EOFError
            got += k
        return bytes(buf)

    (n,) = _LEN.unpack(exact(4))
    if n > limit:
        raise ValueError(f"reply of {n} bytes")
    return exact(n)


# ---------------------------------------------------------------------------------------
# 6) The zygote: a clean process that preloads the libraries and forks workers
# ---------------------------------------------------------------------------------------

def _warm_up() -> None:
    """Import the lazily loaded parts and fill the caches that typical snippets hit, once,
    in the zygote: every forked worker then starts warm (a first sympy.solve costs ~0.3 s)."""
    try:
        import sympy
        x, y = sympy.symbols("x y")
        sympy.solve(x**2 - 2, x)
        sympy.solve([x + y - 3, x - y - 1], [x, y])
        sympy.simplify(sympy.sin(x) ** 2 + sympy.cos(x) ** 2)
        sympy.factor(x**2 - 1)
        sympy.expand((x + 1) ** 3)
        sympy.integrate(x**2, x)
        sympy.limit(sympy.sin(x) / x, x, 0)
        sympy.sympify("x**2 + 1")
        sympy.factorint(360)
        sympy.Rational(1, 3) + sympy.Rational(1, 6)
    except Exception:
        pass
    try:
        import numpy as np
        a = np.array([[2.0, 1.0], [1.0, 3.0]])
        np.linalg.det(a), np.linalg.inv(a), np.linalg.eig(a), np.linalg.solve(a, np.ones(2))
    except Exception:
        pass


# -- access times: reading a file updates its access time on disk (relatime), a channel that
# outlives sessions, callers and reboots. The zygote closes it for itself and every worker.
_CLONE_NEWNS, _CLONE_NEWUSER, _MS_REC, _MS_PRIVATE = 0x20000, 0x10000000, 0x4000, 1 << 18
_NR_MOUNT_SETATTR, _AT_FDCWD, _AT_RECURSIVE = 442, -100, 0x8000   # the same number on every arch
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NOATIME, _MOUNT_ATTR__ATIME = 0x1, 0x2, 0x10, 0x70


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _enter_private_view(userns: bool) -> None:
    """unshare a mount namespace (and, for an unprivileged process, a user namespace that
    maps its uid and gid to themselves, so that nothing else about it changes), make every
    mount private, then read-only. Raises OSError."""
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(ctypes.c_int(_CLONE_NEWNS | (_CLONE_NEWUSER if userns else 0))) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"unshare: {os.strerror(e)}")
    if userns:
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    # private first: no mount event of ours may propagate to the host's namespace
    if _libc.mount(None, b"/", None, ctypes.c_ulong(_MS_REC | _MS_PRIVATE), None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount(MS_PRIVATE): {os.strerror(e)}")
    if userns:   # access-time flags are locked here (MNT_LOCK_ATIME); read-only may be added
        attr = _MountAttr(_MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID, 0, 0, 0)
    else:
        attr = _MountAttr(_MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NOATIME, _MOUNT_ATTR__ATIME, 0, 0)
    _syscall(_NR_MOUNT_SETATTR, ctypes.c_int(_AT_FDCWD), b"/", ctypes.c_uint(_AT_RECURSIVE),
             ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))


def _private_readonly_view() -> tuple[str, bool]:
    """Step 6: move the zygote, and so every worker it will fork, into a private mount
    namespace where every mount is read-only. The kernel writes no access time through a
    read-only mount (touch_atime needs write access to the mount), and mount flags are per
    mount, so the host's mounts are unchanged. With CAP_SYS_ADMIN (root outside most
    containers) the zygote does this directly, and adds noatime; without it, in a user
    namespace of its own, where the kernel allows adding read-only but locks the access-time
    flags. The user namespace is tried in a child first, so that a failure half-way cannot
    leave the zygote in a half-made one. Returns (what holds, whether a user namespace is
    in use: then the workers drop the capabilities they hold in it)."""
    if not _IS_LINUX:
        return "not covered (Linux only)", False
    try:
        _enter_private_view(userns=False)
        return "closed: a private mount namespace where every mount is read-only and noatime", False
    except OSError as e:
        first = e
    pid = os.fork()
    if pid == 0:
        try:
            _enter_private_view(userns=True)
            code = 0
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        try:
            _enter_private_view(userns=True)
            return ("closed: a private user and mount namespace (uids unchanged) where every mount "
                    "is read-only"), True
        except OSError as e:
            first = e
    return (f"not covered ({first}; no user namespace either): a snippet can set the access time "
            "of files and directories it can read, about one bit each per day (relatime)"), False


def _zygote_main(ctrl_fd: int, parent_pid: int, caller_path: list[str]) -> None:
    ctrl = socket.socket(fileno=ctrl_fd)
    access_times, userns = _private_readonly_view()   # before the first library is read
    # the caller's import path (it may hold libraries found through its PYTHONPATH, which the
    # clean environment does not carry), without the project directory: it is not a library
    project = os.path.dirname(_THIS_FILE)
    sys.path[:] = [p for p in caller_path if p and os.path.abspath(p) != project]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's business
    import importlib
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:
            pass       # not installed: a snippet importing it gets ModuleNotFoundError
    _warm_up()
    probe = _probe()
    probe["access_times"] = access_times
    probe["userns"] = userns
    # No SIGCHLD handler: workers stop and continue after every snippet, and each of those
    # would wake the zygote. Dead workers are reaped once a second, or at once when the
    # caller asks for one's exit status.
    children: set[int] = set()
    statuses: collections.OrderedDict[int, dict] = collections.OrderedDict()

    def reap(pid: int = -1) -> None:
        while True:
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return
            if got == 0:
                return
            children.discard(got)
            statuses[got] = ({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status)
                             else {"exit": os.WEXITSTATUS(status)})
            while len(statuses) > 4096:
                statuses.popitem(last=False)
            if pid != -1:
                return

    gc.collect()
    gc.freeze()   # forked workers then leave the preloaded objects' pages shared
    _send_frame(ctrl, json.dumps({"ready": True, "probe": probe, "pid": os.getpid()}).encode())
    while True:
        try:
            readable, _, _ = select.select([ctrl], [], [], 1.0)
        except InterruptedError:
            readable = []
        reap()
        if os.getppid() != parent_pid:
            break          # the caller died (a forked copy of it may still hold the socket)
        if ctrl not in readable:
            continue
        try:
            request = json.loads(_recv_frame(ctrl))
        except (EOFError, OSError, ValueError):
            break          # the caller closed the control socket or went away
        if request.get("op") == "spawn":
            parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            out_fd = (os.memfd_create("deepmath-sandbox-output", os.MFD_CLOEXEC)
                      if hasattr(os, "memfd_create") else _anonymous_tempfile())
            zygote_pid = os.getpid()
            pid = os.fork()
            if pid == 0:
                try:
                    ctrl.close()
                    parent_end.close()
                    _worker_main(child_end, out_fd, request["cfg"], zygote_pid, probe)
                except BaseException as e:
                    os.write(2, f"{type(e).__name__}: {e}".encode())  # fd 2 is the output memfd by now
                finally:
                    os._exit(70)
            children.add(pid)
            fds = [parent_end.fileno(), out_fd]
            pidfd = None
            if hasattr(os, "pidfd_open"):
                try:
                    pidfd = os.pidfd_open(pid)
                    fds.append(pidfd)
                except OSError:
                    pidfd = None
            payload = json.dumps({"pid": pid, "pidfd": pidfd is not None}).encode()
            try:
                socket.send_fds(ctrl, [_LEN.pack(len(payload)) + payload], fds)
            except OSError:
                break
            finally:
                for fd in (out_fd, pidfd):
                    if fd is not None:
                        os.close(fd)
                parent_end.close()
                child_end.close()
        elif request.get("op") == "status":
            pid = int(request["pid"])
            deadline = time.monotonic() + 2.0
            while pid in children and pid not in statuses and time.monotonic() < deadline:
                reap(pid)
                time.sleep(0.002)
            _send_frame(ctrl, json.dumps(statuses.get(pid, {})).encode())
    # the caller is gone: take every worker with us
    for pid in list(children):
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass
    for pid in list(children):
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    os._exit(0)


def _anonymous_tempfile() -> int:
    import tempfile
    f = tempfile.TemporaryFile()
    fd = os.dup(f.fileno())
    f.close()
    return fd


# ---------------------------------------------------------------------------------------
# 7) Isolation, applied by the worker to itself before any untrusted code runs
# ---------------------------------------------------------------------------------------

_IS_LINUX = sys.platform.startswith("linux")
_libc = ctypes.CDLL(None, use_errno=True) if os.name == "posix" else None
# prctl options
_PR_SET_PDEATHSIG, _PR_CAPBSET_DROP, _PR_SET_SECCOMP = 1, 24, 22
_PR_SET_NO_NEW_PRIVS, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4
_SECCOMP_MODE_FILTER = 2


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
    r = _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                    ctypes.c_ulong(0), ctypes.c_ulong(0))
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl({option}): {os.strerror(e)}")


def _syscall(nr: int, *args: Any) -> int:
    r = _libc.syscall(ctypes.c_long(nr), *args)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"syscall {nr}: {os.strerror(e)}")
    return r


# -- Landlock (https://docs.kernel.org/userspace-api/landlock.html), raw syscalls --------
_LL_CREATE, _LL_ADD_RULE, _LL_RESTRICT = 444, 445, 446   # the same number on every arch
_LL_READ_FILE, _LL_READ_DIR = 1 << 2, 1 << 3


class _LandlockRulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _LandlockPathBeneath(ctypes.Structure):
    _pack_ = 1  # the kernel's struct is __attribute__((packed))
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _landlock_abi() -> int:
    """The Landlock ABI version the kernel offers, 0 when none."""
    if not _IS_LINUX:
        return 0
    try:
        return _syscall(_LL_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    except OSError:
        return 0


def _landlock_apply(abi: int, read_paths: Sequence[str]) -> None:
    """Confine this process: read-only access beneath `read_paths`, nothing else.

    Every filesystem right this ABI knows is "handled" (so denied unless a rule grants it),
    TCP bind/connect are handled with no rule (ABI 4), and signals and abstract unix
    sockets are scoped to the sandbox (ABI 6)."""
    fs = (1 << 13) - 1                       # ABI 1: execute .. make_sym
    if abi >= 2: fs |= 1 << 13               # refer
    if abi >= 3: fs |= 1 << 14               # truncate
    if abi >= 5: fs |= 1 << 15               # ioctl_dev
    attr = _LandlockRulesetAttr(fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    ruleset = _syscall(_LL_CREATE, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    try:
        for path in read_paths:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                is_dir = os.path.isdir(path)
                rule = _LandlockPathBeneath(_LL_READ_FILE | (_LL_READ_DIR if is_dir else 0), fd)
                _syscall(_LL_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(1), ctypes.byref(rule), ctypes.c_uint32(0))
            finally:
                os.close(fd)
        _syscall(_LL_RESTRICT, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)


# -- seccomp: an allow-list, as a classic-BPF filter written out by hand --------------------
# Syscall numbers: (x86_64, aarch64/asm-generic); None where the arch lacks the call.
# Checked against /usr/include/x86_64-linux-gnu/asm/unistd_64.h and asm-generic/unistd.h.
_NR = {
    "read": (0, 63), "write": (1, 64), "close": (3, 57), "lseek": (8, 62), "ftruncate": (77, 46),
    "sendto": (44, 206), "recvfrom": (45, 207), "getdents64": (217, 61), "getcwd": (79, 17),
    "newfstatat": (262, 79), "fstat": (5, 80), "stat": (4, None), "lstat": (6, None),
    "statx": (332, 291), "access": (21, None), "faccessat": (269, 48), "faccessat2": (439, 439),
    "readlink": (89, None), "readlinkat": (267, 78), "dup": (32, 23), "dup2": (33, None),
    "dup3": (292, 24), "close_range": (436, 436), "select": (23, None), "pselect6": (270, 72),
    "poll": (7, None), "ppoll": (271, 73), "readv": (19, 65), "writev": (20, 66),
    "brk": (12, 214), "mmap": (9, 222), "munmap": (11, 215), "mremap": (25, 216),
    "mprotect": (10, 226), "madvise": (28, 233), "futex": (202, 98),
    "rt_sigaction": (13, 134), "rt_sigprocmask": (14, 135), "rt_sigreturn": (15, 139),
    "restart_syscall": (219, 128), "clock_gettime": (228, 113), "gettimeofday": (96, 169),
    "time": (201, None), "nanosleep": (35, 101), "clock_nanosleep": (230, 115),
    "sched_yield": (24, 124), "getrandom": (318, 278), "getpid": (39, 172), "gettid": (186, 178),
    "getppid": (110, 173), "getuid": (102, 174), "geteuid": (107, 175), "getgid": (104, 176),
    "getegid": (108, 177), "getrlimit": (97, 163), "getrusage": (98, 165),
    "sched_getaffinity": (204, 123), "uname": (63, 160), "exit": (60, 93), "exit_group": (231, 94),
    # allowed with checked arguments
    "open": (2, None), "openat": (257, 56), "fcntl": (72, 25), "ioctl": (16, 29),
    "prlimit64": (302, 261), "kill": (62, 129), "tkill": (200, 130), "tgkill": (234, 131),
    "rt_sigqueueinfo": (129, 138), "rt_tgsigqueueinfo": (297, 240),
    # refused with ENOSYS
    "clone3": (435, 435), "openat2": (437, 437),
}

_SECCOMP_ARCH = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # column, AUDIT_ARCH_*
_O_WRONLY, _O_RDWR, _O_CREAT, _O_TRUNC, _O_APPEND = 0o1, 0o2, 0o100, 0o1000, 0o2000
_O_ASYNC, _O_PATH, _O_TMPFILE = 0o20000, 0o10000000, 0o20000000
_OPEN_REFUSED_FLAGS = _O_WRONLY | _O_RDWR | _O_CREAT | _O_TRUNC | _O_APPEND | _O_PATH | _O_TMPFILE
_FCNTL_ALLOWED = (0, 1, 2, 3, 1030)   # F_DUPFD F_GETFD F_SETFD F_GETFL F_DUPFD_CLOEXEC (+ F_SETFL, checked)
_F_SETFL = 4
_IOCTL_ALLOWED = (0x5401, 0x5413, 0x5421, 0x5450, 0x5451)  # TCGETS TIOCGWINSZ FIONBIO FIONCLEX FIOCLEX
_MAP_SHARED, _MAP_ANONYMOUS = 0x01, 0x20   # MAP_SHARED_VALIDATE (0x03) has the MAP_SHARED bit too


def _seccomp_program(machine: str, self_pid: int) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) instructions. Default: EPERM. Each rule is a short
    block that returns or falls through to the next one, so no jump is ever long."""
    col, audit_arch = _SECCOMP_ARCH[machine]
    LD, JEQ, JSET, RET = 0x20, 0x15, 0x45, 0x06
    ALLOW, KILL = 0x7FFF0000, 0x80000000
    EPERM, ENOSYS = 0x00050000 | 1, 0x00050000 | 38

    def lo(i: int) -> int:   # offset of the low 32 bits of args[i] in struct seccomp_data
        return 16 + 8 * i

    def hi(i: int) -> int:   # and of the high 32 bits (little-endian: x86_64 and aarch64)
        return 20 + 8 * i

    prog = [(LD, 0, 0, 4), (JEQ, 1, 0, audit_arch), (RET, 0, 0, KILL),  # another ABI (int 0x80)
            (LD, 0, 0, 0)]   # x32 numbers (bit 30 set) match no rule below: EPERM

    for name in SYSCALLS_ALLOWED:
        nr = _NR[name][col]
        if nr is not None:
            prog += [(JEQ, 0, 1, nr), (RET, 0, 0, ALLOW)]
    for name in SYSCALLS_ENOSYS:
        nr = _NR[name][col]
        if nr is not None:
            prog += [(JEQ, 0, 1, nr), (RET, 0, 0, ENOSYS)]

    ruled: set[str] = set()

    def rule(name: str, body: list[tuple]) -> None:
        """A block for syscall `name`: `body` holds (code, k, jt, jf) with jump targets named
        by label ("allow", "deny", "next" or a label placed as ("label", name)); the block
        ends in its own RET EPERM and RET ALLOW. Load instructions use jt = jf = "next"."""
        ruled.add(name)
        nr = _NR[name][col]
        if nr is None:
            return
        code, labels = [], {}
        for ins in body:
            if ins[0] == "label":
                labels[ins[1]] = len(code)
            else:
                code.append(ins)
        labels["deny"], labels["allow"] = len(code), len(code) + 1

        def target(at: int, label: str) -> int:
            return 0 if label == "next" else labels[label] - at - 1

        block = [(c, target(i, jt), target(i, jf), k) for i, (c, k, jt, jf) in enumerate(code)]
        block += [(RET, 0, 0, EPERM), (RET, 0, 0, ALLOW)]
        prog.append((JEQ, 0, len(block), nr))   # not this call: skip the block
        prog.extend(block)

    # open/openat: read-only, and no O_PATH (it would open any path for fstat, past Landlock)
    for name, i in (("open", 1), ("openat", 2)):
        rule(name, [(LD, lo(i), "next", "next"), (JSET, _OPEN_REFUSED_FLAGS, "deny", "allow")])
    # fcntl: no F_SETOWN/F_SETSIG/F_SETLEASE/F_NOTIFY/locks/seals, and F_SETFL without O_ASYNC
    # (with Landlock ABI < 6 those were a way to signal any process of the same uid)
    rule("fcntl", [(LD, lo(1), "next", "next"), (JEQ, _F_SETFL, "setfl", "next")]
         + [(JEQ, cmd, "allow", "next") for cmd in _FCNTL_ALLOWED]
         + [(JEQ, 0xFFFFFFFF, "deny", "deny"),   # an unconditional jump to "deny"
            ("label", "setfl"), (LD, lo(2), "next", "next"), (JSET, _O_ASYNC, "deny", "allow")])
    # ioctl: only the terminal queries isatty() makes and (non)blocking/close-on-exec toggles
    rule("ioctl", [(LD, lo(1), "next", "next")]
         + [(JEQ, cmd, "allow", "next") for cmd in _IOCTL_ALLOWED] + [(JEQ, 0, "deny", "deny")])
    # mmap: no shared anonymous memory (private mappings and read-only files are fine)
    rule("mmap", [(LD, lo(3), "next", "next"), (JSET, _MAP_ANONYMOUS, "next", "allow"),
                  (JSET, _MAP_SHARED, "deny", "allow")])
    # prlimit64: read limits only (new_limit == NULL), and only its own
    rule("prlimit64", [(LD, lo(2), "next", "next"), (JEQ, 0, "next", "deny"),
                       (LD, hi(2), "next", "next"), (JEQ, 0, "next", "deny"),
                       (LD, lo(0), "next", "next"), (JEQ, 0, "allow", "next"),
                       (JEQ, self_pid, "allow", "deny")])
    # signals: only to itself (the caller's own signals come from outside the filter)
    for name in ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        rule(name, [(LD, lo(0), "next", "next"), (JEQ, self_pid, "allow", "deny")])
    prog.append((RET, 0, 0, EPERM))
    assert ruled == set(SYSCALLS_CHECKED), ruled ^ set(SYSCALLS_CHECKED)
    return prog


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _seccomp_apply(machine: str) -> None:
    prog = _seccomp_program(machine, os.getpid())
    array = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), array)
    _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog))


# -- capabilities --------------------------------------------------------------------------
class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> None:
    """Give up every capability for good: bounding set, ambient set, then capset(0)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = 63
    for cap in range(last + 1):
        try:
            _prctl(_PR_CAPBSET_DROP, cap)
        except OSError:
            pass
    try:
        _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(_CapHeader(0x20080522, 0)), data) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"capset: {os.strerror(e)}")


# -- what this machine offers (probed once, in the zygote) ---------------------------------
def _nobody_ids() -> tuple[int, int]:
    try:
        import pwd
        p = pwd.getpwnam("nobody")
        return p.pw_uid, p.pw_gid
    except (ImportError, KeyError):
        return 65534, 65534


def _library_probe_files() -> list[str]:
    """Files a worker must still be able to read: the stdlib and each preloaded package."""
    files = [os.__file__]
    for name in ("numpy", "scipy", "sympy", "mpmath"):
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod, "__file__", None):
            files.append(mod.__file__)
    return files


def _probe_uid_drop() -> tuple[bool, str]:
    """Can a worker become `nobody` and still read the libraries? Try it in a child."""
    if os.name != "posix" or os.geteuid() != 0:
        return False, "not running as root: nothing to drop"
    uid, gid = _nobody_ids()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            for f in _library_probe_files():
                with open(f, "rb") as fh:
                    fh.read(1)
        except BaseException as e:
            os.write(w, str(e).encode()[:500])
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        reason = fh.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return True, f"workers run as uid {uid}"
    return False, f"workers keep uid 0 (capabilities dropped): uid {uid} cannot read the libraries ({reason})"


def _read_roots() -> list[str]:
    """Directories a worker may read beneath: the Python installation, the site-packages
    that hold the preloaded libraries, and the system library directories (dlopen).
    Never "/" or a home directory: that would expose everything else."""
    import site
    import sysconfig
    # A prefix such as /usr (a venv on a system Python) would open all of /usr: the stdlib
    # and site-packages paths below already name what is needed from it.
    system = {"/", "/usr", "/usr/local", "/opt"}
    roots = {p for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)
             if os.path.abspath(p) not in system}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            roots.add(sysconfig.get_paths()[key])
        except KeyError:
            pass
    try:
        roots.update(site.getsitepackages())
    except AttributeError:
        pass
    path_entries = sorted({os.path.abspath(p) for p in sys.path if p}, key=len, reverse=True)
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if not f or os.path.abspath(f) == _THIS_FILE:
            continue
        f = os.path.abspath(f)
        for entry in path_entries:  # the sys.path entry the module was found in
            if f.startswith(entry + os.sep):
                roots.add(entry)
                break
    roots.update(["/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib",
                  "/etc/ld.so.cache", "/sys/devices/system/cpu"])
    forbidden = {"/", os.path.expanduser("~"), os.path.dirname(_THIS_FILE)}
    return sorted(r for r in roots if r and os.path.exists(r) and os.path.abspath(r) not in forbidden)


def _probe() -> dict:
    machine = platform.machine()
    can_drop, drop_note = _probe_uid_drop()
    return {
        "platform": sys.platform,
        "machine": machine,
        "euid": os.geteuid() if os.name == "posix" else None,
        "landlock_abi": _landlock_abi(),
        "seccomp": _IS_LINUX and machine in _SECCOMP_ARCH,
        "drop_to_nobody": can_drop,
        "uid_note": drop_note,
        "mseal": _mseal_available(),
        "read_roots": _read_roots(),
    }


def _vm_size_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


# -- the address span a worker can fault in (page tables) ---------------------------------
# RLIMIT_AS bounds how much a worker maps, not where: one page mapped every 1 GiB costs two
# page-table pages (8 KiB) per 4 KiB mapped, memory that RLIMIT_AS does not count. So every
# stretch of free address space outside a small window is filled with PROT_NONE mappings and
# sealed (mseal, Linux 6.10): no snippet can unmap, move, overmap or mprotect them, and the
# kernel must place every new mapping inside the window. Those mappings cost no memory (no
# page is ever faulted in them), and RLIMIT_AS is set after them, so they do not shrink what
# a snippet may allocate either.
_NR_MSEAL = 462                          # the same number on every arch (asm-generic)
_MAP_NORESERVE, _MAP_FIXED_NOREPLACE = 0x4000, 0x100000
_USER_TOPS = (1 << 56, 1 << 52, 1 << 48, 1 << 47, 1 << 39)   # possible ends of user space, highest first
BRK_ROOM = 256 << 20
"""Free address space kept above the brk heap (small allocations), in bytes."""
STACK_ROOM = 256 << 20
"""The most address space kept free below the stack: RLIMIT_STACK (made hard), at most this."""


def address_window_bytes(memory_mb: int) -> int:
    """The free address space a worker keeps for new mappings: twice what it may allocate
    (room for fragmentation) + 1 GiB."""
    return 2 * (int(memory_mb) << 20) + (1 << 30)


def page_table_bound_bytes(memory_mb: int, mapped_bytes: int = 512 << 20, pieces: int = 32) -> int:
    """The most page tables a worker can hold, where its address space is sealed. They can
    only cover its free address space (the window, BRK_ROOM, at most STACK_ROOM + 2 MiB) and
    what it had mapped at the start (`mapped_bytes`, which a snippet may unmap and map again),
    a span S in at most `pieces` separate stretches: at most S / 2 MiB page-table pages of
    4 KiB at the lowest level, S / 1 GiB at the next, S / 512 GiB above, and two more per
    level at the ends of each stretch. The defaults cover the development machine's workers
    (~0.35 GB mapped, 22 stretches): about 8.8 MiB at memory_mb=1024 and 5.3 MiB at 128,
    where the round-2 attack had reached 0.9 GB and 256 MB. Each worker states its own
    (Sandbox.isolation["address_space"]["page_table_bound"])."""
    span = address_window_bytes(memory_mb) + BRK_ROOM + STACK_ROOM + (2 << 20) + mapped_bytes
    return span // 512 + span // (1 << 18) + span // (1 << 27) + pieces * 3 * 2 * 4096


def _mseal_available() -> bool:
    """mseal(0, 0, 0) is a no-op on kernels that have it (6.10 and later, 64-bit)."""
    if not (_IS_LINUX and sys.maxsize > 2**32):
        return False
    try:
        _syscall(_NR_MSEAL, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
        return True
    except OSError:
        return False


def _seal_address_space(memory_mb: int) -> dict:
    """Step 7e: reserve and seal all free address space except a window of
    address_window_bytes(memory_mb) at the top of the largest gap below the stack (where new
    mappings go), the stack's growth room and BRK_ROOM above the heap. Returns what it left
    free and the page-table bound that follows. Raises OSError if a step fails."""
    window = address_window_bytes(memory_mb)
    page = os.sysconf("SC_PAGE_SIZE")
    mmap = _libc["mmap"]   # a private function object: its argtypes are ours alone
    mmap.restype = ctypes.c_void_p
    mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    flags = 0x02 | _MAP_ANONYMOUS | _MAP_NORESERVE | _MAP_FIXED_NOREPLACE   # MAP_PRIVATE

    errno_seen = [0]

    def reserve(lo: int, hi: int) -> bool:
        got = mmap(lo, hi - lo, 0, flags, -1, 0)
        if got != lo:
            errno_seen[0] = ctypes.get_errno()
            if got not in (None, 2**64 - 1):   # an old kernel took the address as a hint
                _libc.munmap(ctypes.c_void_p(got), ctypes.c_size_t(hi - lo))
            return False
        _syscall(_NR_MSEAL, ctypes.c_ulong(lo), ctypes.c_ulong(hi - lo), ctypes.c_ulong(0))
        return True

    def read_maps() -> list[tuple[int, int, str]]:
        maps = []
        with open("/proc/self/maps") as f:
            for line in f:
                span, rest = line.split(None, 1)
                lo, hi = (int(x, 16) for x in span.split("-"))
                if lo < _USER_TOPS[0]:             # not [vsyscall], which is kernel space
                    maps.append((lo, hi, rest.rstrip().rsplit(None, 1)[-1] if rest.strip() else ""))
        return maps

    def gaps_of(maps: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
        return [(floor, maps[0][0])] + [(a[1], b[0]) for a, b in zip(maps, maps[1:]) if b[0] > a[1]]

    maps = read_maps()
    try:
        with open("/proc/sys/vm/mmap_min_addr") as f:
            floor = max(int(f.read()), page)
    except (OSError, ValueError):
        floor = 65536
    floor = (floor + page - 1) // page * page
    stack = next((m for m in maps if m[2] == "[stack]"), None)
    heap = next((m for m in maps if m[2] == "[heap]"), None)
    # what stays free: the stack's room (RLIMIT_STACK, made hard, + the kernel's 1 MiB guard
    # gap + 1 MiB), BRK_ROOM above the heap, and the window
    keep: list[tuple[int, int]] = []
    if stack is not None:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_STACK)[0]
        room = min(soft if soft != resource.RLIM_INFINITY else STACK_ROOM, STACK_ROOM)
        resource.setrlimit(resource.RLIMIT_STACK, (room, room))
        keep.append((stack[0] - room - (2 << 20), stack[0]))
    if heap is not None:
        keep.append((heap[1], heap[1] + BRK_ROOM))
    below_stack = [g for g in gaps_of(maps)[1:] if stack is None or g[1] <= stack[0]]
    largest = max(below_stack, key=lambda g: g[1] - g[0])
    keep.append((max(largest[1] - window, largest[0]), largest[1]))
    # cut the keep ranges out of the gaps, then reserve what remains. A mapping made meanwhile
    # (Python's allocator taking a new arena while these lists grow, say) goes to the highest
    # free gap that fits, which may be one not reserved yet, and the reservation there then
    # fails (EEXIST): read the maps again and reserve what is still free, a few rounds at most.
    reserved: list[tuple[int, int]] = []
    for _ in range(8):
        todo = gaps_of(maps)
        for k_lo, k_hi in keep:
            todo = [piece for lo, hi in todo
                    for piece in ((lo, min(hi, k_lo)), (max(lo, k_hi), hi)) if piece[1] > piece[0]]
        failed = None
        for lo, hi in todo:
            lo, hi = (lo + page - 1) // page * page, hi // page * page
            if hi > lo:
                # the lowest stretch: a security module may forbid addresses below 64 KiB
                # (CONFIG_LSM_MMAP_MIN_ADDR) however low mmap_min_addr is
                if reserve(lo, hi):
                    reserved.append((lo, hi))
                elif lo < 65536 < hi and reserve(65536, hi):
                    reserved.append((65536, hi))
                else:
                    failed = (lo, hi)
                    break
        if failed is None:
            break
        maps = read_maps()
    else:
        raise OSError(f"could not reserve {failed[0]:#x}-{failed[1]:#x}: "
                      f"{os.strerror(errno_seen[0]) if errno_seen[0] else 'taken as a hint'}")
    maps = read_maps()
    regions = len(reserved)
    # what is left free below the last mapping, and what is mapped besides our reservations
    free = sum(hi - lo for lo, hi in gaps_of(maps))
    mapped = sum(hi - lo for lo, hi, _ in maps) - sum(hi - lo for lo, hi in reserved)
    # above the last mapping, up to the end of user space (found by trying, highest first)
    last = (maps[-1][1] + page - 1) // page * page
    if not any(top - page > last and reserve(last, top - page) for top in _USER_TOPS):
        raise OSError("could not reserve the address space above the stack")
    return {"sealed_regions": regions + 1, "free_address_space": free, "mapped_at_start": mapped,
            "page_table_bound": page_table_bound_bytes(memory_mb, mapped, regions + 2)}


def _apply_isolation(sock_fd: int, out_fd: int, cfg: dict, zygote_pid: int, probe: dict) -> dict:
    """Step 7. Everything here happens before the first untrusted byte is executed.
    A layer the probe said is available but fails to apply is fatal (fail closed)."""
    import resource
    applied: dict[str, Any] = {"pid": os.getpid()}
    # 7a) own session and process group: the caller kills the whole group at the deadline
    os.setsid()
    # 7b) die with the zygote; if it is already gone, stop now
    if _IS_LINUX:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        applied["pdeathsig"] = True
    if os.getppid() != zygote_pid:
        os._exit(0)
    # 7c) signals back to defaults (the zygote ignores SIGINT: Ctrl-C is the caller's business)
    for s in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # over-long output: EFBIG, not death
    # 7d) file descriptors: 0 = /dev/null, 1 and 2 = the output memfd, the socket; nothing else
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    keep = sorted({0, 1, 2, sock_fd})
    lo = 0
    for fd in keep:
        if lo < fd:   # os.closerange(0, 0) would close everything (close_range(0, ~0))
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, 1 << 16)
    os.chdir("/")
    # 7e) the address span (page tables), then resource limits. The sealed reservations
    # come first, so that RLIMIT_AS counts them in the baseline.
    if probe.get("mseal"):
        applied["address_space"] = _seal_address_space(cfg["memory_mb"])
    else:
        applied["address_space"] = "not sealed (no mseal): page tables are bounded only by vm.max_map_count"
    baseline = _vm_size_bytes()
    # (hard = soft: without CAP_SYS_RESOURCE no limit can be raised again, and seccomp
    # refuses setrlimit/prlimit with a new value anyway). RLIMIT_CPU starts at the session's
    # CPU ceiling; where the caller may change this worker's limits, it lowers the soft limit
    # before each snippet (_Worker.resume). RLIMIT_SIGPENDING = 0: the kernel counts queued
    # signals per uid, against the receiver's limit, so a worker (which may signal only itself)
    # can queue no real-time signal and cannot use up the quota of other processes of its uid.
    limits = {
        "RLIMIT_AS": baseline + cfg["memory_mb"] * 2**20 if baseline else cfg["memory_mb"] * 2**20,
        "RLIMIT_FSIZE": 4 * cfg["max_output_chars"] + 65536,
        "RLIMIT_CORE": 0,
        "RLIMIT_NOFILE": 64,
        "RLIMIT_MEMLOCK": 0,
        "RLIMIT_MSGQUEUE": 0,
        "RLIMIT_SIGPENDING": 0,
        "RLIMIT_CPU": math.ceil(cfg["cpu_ceiling_s"]),
    }
    for name, value in limits.items():
        try:
            resource.setrlimit(getattr(resource, name), (value, value))
            applied[name.lower()] = value
        except (ValueError, OSError, AttributeError) as e:  # macOS refuses RLIMIT_AS
            applied[name.lower()] = f"not set: {e}"
    # 7f) privileges: become nobody if the libraries stay readable, else drop capabilities
    if os.geteuid() == 0 and probe.get("drop_to_nobody"):
        uid, gid = _nobody_ids()
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    elif os.geteuid() == 0 and _IS_LINUX:
        _drop_capabilities()
        applied["capabilities"] = "dropped"
    if probe.get("userns"):   # the zygote's own user namespace gives every process in it all capabilities there
        _drop_capabilities()
        applied["capabilities"] = "dropped (those it held in the zygote's user namespace)"
    if os.geteuid() != 0:
        try:  # as a normal uid, RLIMIT_NPROC=0 is one more fence against fork (and threads)
            resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
        except (ValueError, OSError):
            pass
    if _IS_LINUX and applied.get("pdeathsig"):
        # changing credentials clears the parent-death signal (prctl(2), PR_SET_PDEATHSIG):
        # arm it again as nobody, and check the zygote did not die in between.
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != zygote_pid:
            os._exit(0)
    applied["uid"] = os.geteuid()
    applied["uid_note"] = probe.get("uid_note")
    # 7g) no_new_privs: required by Landlock and seccomp; exec can never gain privileges
    if _IS_LINUX:
        _prctl(_PR_SET_NO_NEW_PRIVS, 1)
        applied["no_new_privs"] = True
    # 7h) Landlock
    abi = probe.get("landlock_abi", 0)
    if abi:
        _landlock_apply(abi, probe["read_roots"])
    applied["landlock_abi"] = abi
    # 7i) seccomp, last: the steps above need syscalls it refuses
    if probe.get("seccomp"):
        _seccomp_apply(probe["machine"])
    applied["seccomp"] = bool(probe.get("seccomp"))
    return applied


# ---------------------------------------------------------------------------------------
# 8) Running a snippet, inside the worker
# ---------------------------------------------------------------------------------------

class _FinalAnswer(BaseException):
    """Raised by final_answer(x). BaseException, so `except Exception` in a snippet misses it."""

    def __init__(self, value: Any):
        super().__init__()
        self.value = value


def _final_answer(answer: Any) -> None:
    """Provides a final answer to the given problem, and ends the snippet."""
    raise _FinalAnswer(answer)


class _Output(io.TextIOBase):
    """sys.stdout and sys.stderr inside the worker: writes the first `limit` characters to
    fd 1 (the memfd the caller reads) and only counts the rest."""

    def __init__(self, limit: int):
        self.limit = limit
        self.reset()

    def reset(self) -> None:
        self.kept = self.dropped = 0

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        n = len(s)
        room = self.limit - self.kept
        if n > room:                 # past the cap: count, do not keep (the fast path of a flood)
            self.dropped += n - max(room, 0)
            if room <= 0:
                return n
            s = s[:room]
        self.kept += len(s)
        # written at once (not buffered), so that a snippet killed at its deadline still
        # shows what it printed; at most `limit` characters ever reach this point
        data = s.encode("utf-8", "backslashreplace")   # lone surrogates
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
        except OSError:              # RLIMIT_FSIZE reached by C-level output: the rest is lost
            self.dropped += len(s)
        return n

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return 1

    @property
    def encoding(self) -> str:
        return "utf-8"


def _to_json_safe(x: Any, depth: int = 0) -> Any:
    """final_answer's argument as data the caller can parse without trusting the worker.
    Not cut here: _bound_answer cuts it next, so that its marker counts what was hidden."""
    if x is None or isinstance(x, (bool, float)):
        return x
    if isinstance(x, numbers.Integral):    # int, numpy and sympy integers
        x = int(x)
        return x if x.bit_length() < 10_000 else str(x)   # the caller's int-to-str limit
    if isinstance(x, numbers.Real) and not isinstance(x, numbers.Rational):
        return float(x)                     # numpy and sympy floats (sympy Rationals stay exact, as str)
    if isinstance(x, str):
        return x
    if depth < 8 and isinstance(x, (list, tuple)):
        return [_to_json_safe(v, depth + 1) for v in x]
    if depth < 8 and isinstance(x, dict):
        return {str(k): _to_json_safe(v, depth + 1) for k, v in x.items()}
    return str(x)


def _bound_answer(x: Any, limit: int) -> Any:
    """The bound on a final answer, applied by the worker and again by the caller (it is
    idempotent): its size, a str's length or else the length of its JSON text (json.dumps,
    ensure_ascii=False), is at most `limit` (max_output_chars) + the marker's room. A larger
    answer is cut to `limit` characters with the truncation marker, a non-str as its JSON text."""
    if isinstance(x, str):
        text = x
    else:
        try:
            text = json.dumps(x, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):   # not JSON data: the caller never sees this
            text = str(x)
    return x if len(text) <= limit + _MARKER_CHARS else _truncate(text, limit)


class _Runner:
    """A session's namespace, and step 8: compile once, exec natively, capture."""

    def __init__(self, cfg: dict, out: _Output):
        self.cfg = cfg
        self.out = out
        self.count = 0
        self.sources: dict[str, list[str]] = {}
        self.allowed = tuple(cfg["allowed_imports"])
        self.ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": self._builtins()}
        if cfg.get("final_answer"):
            self.ns["final_answer"] = _final_answer

    def _builtins(self) -> dict:
        import builtins
        real_import = builtins.__import__
        allowed = self.allowed

        def check_name(name: Any) -> None:
            if isinstance(name, str) and (name.startswith("__") or name in BLOCKED_ATTRIBUTES):
                raise PermissionError(f"attribute '{name}' is not accessible in the sandbox")

        def safe_getattr(obj, name, *default):
            check_name(name)
            return getattr(obj, name, *default)

        def safe_hasattr(obj, name):
            check_name(name)
            return hasattr(obj, name)

        def safe_setattr(obj, name, value):
            check_name(name)
            setattr(obj, name, value)

        def safe_delattr(obj, name):
            check_name(name)
            delattr(obj, name)

        def safe_import(name, globals=None, locals=None, fromlist=(), level=0):
            if level:
                raise ImportError("relative imports are not allowed in the sandbox")
            if name in INTERPRETER_IMPORTS:
                return real_import(name, globals, locals, fromlist, level)
            if not _module_allowed(name, allowed):
                raise ImportError(f"import of '{name}' is not allowed; allowed: {', '.join(allowed)}")
            for sub in fromlist or ():
                if sub != "*" and not _module_allowed(f"{name}.{sub}", allowed):
                    raise ImportError(f"import of '{name}.{sub}' is not allowed")
            return real_import(name, globals, locals, fromlist, level)

        def forbidden(fname: str):
            def stub(*args, **kwargs):
                raise PermissionError(f"{fname}() is not available in the sandbox "
                                      "(no file, console or interpreter access)")
            stub.__name__ = fname
            return stub

        table = {name: getattr(builtins, name) for name in SAFE_BUILTINS}
        table.update({name: value for name, value in vars(builtins).items()
                      if isinstance(value, type) and issubclass(value, BaseException)})
        table.update(getattr=safe_getattr, hasattr=safe_hasattr, setattr=safe_setattr, delattr=safe_delattr)
        table.update({name: forbidden(name) for name in FORBIDDEN_BUILTINS})
        table["__import__"] = safe_import          # used by `import` statements only
        table["__build_class__"] = builtins.__build_class__  # used by `class` statements only
        return table

    def describe(self, e: BaseException, current: str) -> str:
        """ExceptionType: message (line N: <source line>), naming the deepest snippet frame."""
        try:
            msg = e.msg if isinstance(e, SyntaxError) else str(e)
        except BaseException:
            msg = "<message could not be printed>"
        text = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
        if len(text) > 2000:
            text = text[:2000] + "..."
        text = text[:MAX_ERROR_CHARS]    # a class name can be long too
        fname, lineno = None, None
        if isinstance(e, SyntaxError):
            fname, lineno = current, e.lineno
        tb = e.__traceback__
        while tb is not None:
            f = tb.tb_frame.f_code.co_filename
            if f in self.sources:
                fname, lineno = f, tb.tb_lineno
            tb = tb.tb_next
        lines = self.sources.get(fname or "", [])
        if lineno and 0 < lineno <= len(lines):
            where = "line" if fname == current else f"{fname[1:-1]}, line"
            text += f" ({where} {lineno}: {lines[lineno - 1].strip()[:200]})"
        return text[:MAX_ERROR_CHARS]

    def run(self, code: str) -> dict:
        self.count += 1
        fname = f"<snippet {self.count}>"
        self.sources[fname] = code.splitlines()
        out = self.out
        out.reset()
        try:
            os.ftruncate(1, 0)
            os.lseek(1, 0, os.SEEK_SET)
        except OSError:
            pass
        limit = self.cfg["max_output_chars"]
        reply: dict[str, Any] = {"err": None, "val": None, "fa": False}
        try:
            tree = ast.parse(code, fname)
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr) and not code.rstrip().endswith(";"):
                last = ast.Expression(tree.body.pop().value)
            exec(compile(tree, fname, "exec"), self.ns)
            if last is not None:
                value = eval(compile(last, fname, "eval"), self.ns)
                if value is not None:
                    text = repr(value)   # cut here; the caller adds the marker ("vh": what was cut)
                    reply["val"], reply["vh"] = text[:limit], max(len(text) - limit, 0)
        except _FinalAnswer as fa:
            try:
                reply["fav"] = _bound_answer(_to_json_safe(fa.value), limit)
                reply["fa"] = True
            except BaseException as e:   # str() of the answer raised
                reply["err"] = self.describe(e, fname)
        except BaseException as e:  # SystemExit and KeyboardInterrupt too: the worker lives on
            reply["err"] = self.describe(e, fname)
            e.__traceback__ = None
        try:
            _libc.fflush(None)  # C-level printf output from the libraries
        except Exception:
            pass
        reply["drop"] = out.dropped
        return reply


def _worker_main(sock: socket.socket, out_fd: int, cfg: dict, zygote_pid: int, probe: dict) -> None:
    """The worker's whole life. Never returns: the caller of this is a forked zygote."""
    try:
        applied = _apply_isolation(sock.fileno(), out_fd, cfg, zygote_pid, probe)
    except BaseException as e:
        try:
            _send_frame(sock, json.dumps({"fatal": f"could not apply isolation: {type(e).__name__}: {e}"}).encode())
        finally:
            os._exit(71)
    # 8) the Python-level session
    out = _Output(cfg["max_output_chars"])
    sys.stdout = sys.stderr = out
    sys.stdin = None
    sys.dont_write_bytecode = True
    sys.set_int_max_str_digits(0)
    import random
    random.seed(cfg["seed"])
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(cfg["seed"] % 2**32)
    runner = _Runner(cfg, out)
    _send_frame(sock, json.dumps({"ready": applied}).encode())
    while True:
        try:
            kind, seq, payload = pickle.loads(_recv_frame(sock, 1 << 30))
        except BaseException:
            os._exit(0)   # the caller closed the session (or went away)
        if kind == "run":
            reply = runner.run(payload)
        elif kind == "vars":
            try:
                runner.ns.update(pickle.loads(payload))
                reply = {"err": None, "val": None, "fa": False, "drop": 0}
            except BaseException as e:
                reply = {"err": f"could not load variables: {type(e).__name__}: {e}"[:MAX_ERROR_CHARS],
                         "val": None, "fa": False, "drop": 0}
        else:
            os._exit(0)
        reply["seq"] = seq
        try:
            _send_frame(sock, json.dumps(reply).encode())
        except BaseException:
            os._exit(0)


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------

def _demo() -> None:
    print("isolation offered here:")
    for k, v in isolation_report().items():
        print(f"  {k}: {v}")
    with Sandbox(timeout_s=2) as sb:
        for code in ["import sympy as sp\nx = sp.symbols('x')\nsp.solve(x**2 - 5*x + 6, x)",
                     "sum(k**2 for k in range(1, 101))",
                     "import numpy as np\nnp.linalg.det(np.array([[1, 2], [3, 4]]))",
                     "import os", "open('/etc/passwd').read()", "while True: pass", "x"]:
            r = sb.run(code)
            print(f"\n>>> {code}\n{r.stdout.rstrip()}" + (f"error: {r.error}" if r.error else ""))


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "--zygote":
        _zygote_main(int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4]))
    else:
        _demo()
