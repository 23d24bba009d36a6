"""
cli.py -- the command-line machinery every entry point shares: a dataclass becomes its --help,
and an error becomes one line.

Not a paper section: the project's rule that a user reads `--help` as the config's documentation
(one dataclass per entry point, a docstring per field, as CleanRL's scripts do) and that bad input
gets one line naming the problem and the fix, never a traceback wall. Standard library only, so
the modules that must run without an ML stack can import it.

  1. field_docs(cls): the docstring written under each field of a dataclass.
  2. dataclass_parser(cls, prog): an argparse parser with one flag per field, its docstring as
     the help; agent.py, evaluate.py and replicate.py parse their Config with it (train.py goes
     through TRL's TrlParser, and takes field_docs for its own dataclass's help).
  3. first_line(e): the one line of an exception a user is shown; fail(message) prints it.

Tests: python -m pytest tests/test_agent.py -q -k "cli or help"
"""

from __future__ import annotations

import argparse
import ast
import inspect
import sys
from dataclasses import MISSING, fields


# 1) The docstring under each field
def field_docs(cls) -> dict[str, str]:
    """The docstring under each dataclass field (Python keeps no such docstrings: read the source).

    >>> from dataclasses import dataclass
    >>> import protocol
    >>> field_docs(protocol.Budget)["max_steps"].split(";")[0]
    'Agent calls per trajectory'
    """
    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


# 2) One flag per field
def dataclass_parser(cls, prog: str, choices: dict | None = None, special: dict | None = None):
    """An argparse parser with one flag per field of the dataclass `cls`, the field's docstring as
    its help and its default shown (how CleanRL/tyro make --help).
    A field's type picks the flag: bool -> a switch, int/float (or None) -> that type, else str.
    `special` maps a field to its own add_argument keywords (a list, a positional via "flag").
    Errors print one line that names the problem and points to --help, not a usage dump."""

    class OneLineErrors(argparse.ArgumentParser):
        def error(self, message):
            self.exit(2, f"error: {message} (see `python {prog} --help`)\n")

    parser = OneLineErrors(prog=prog, description=cls.__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    docs, choices = field_docs(cls), choices or {}
    for f in fields(cls):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        kw = dict((special or {}).get(f.name, {}))
        name = kw.pop("flag", "--" + f.name.replace("_", "-"))
        if not kw and f.type == "bool":
            kw = {"action": "store_true"}
        elif not kw:
            kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(f.type, str)
            kw = {"type": kind, "choices": choices.get(f.name)}
            if name.startswith("-") and f.name not in choices:
                kw["metavar"] = kind.__name__.upper()
        if name.startswith("-") and kw.get("action") != "store_true":
            kw["default"] = default  # argparse appends to a list default: default_factory made a fresh one
        parser.add_argument(name, help=docs.get(f.name, ""), **kw)
    return parser


# 3) One line per error
def first_line(e: BaseException, limit: int | None = None) -> str:
    """The first non-blank line of an exception's message (its type name if it has none), cut to
    `limit` characters: what a user is shown instead of a traceback.

    >>> first_line(ValueError("bad value\\n  details")), first_line(KeyError()), first_line(OSError("x" * 9), 3)
    ('bad value', 'KeyError', 'xxx')
    """
    line = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    return line if limit is None else line[:limit]


def fail(message: str, status: int = 1) -> int:
    """Print `error: message` on stderr; return the exit status for main() to return."""
    print(f"error: {message}", file=sys.stderr)
    return status
