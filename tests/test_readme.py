"""
Tests for README.md's "Read it beside the paper" map: every file and name it points a reader to
exists, and its layout table lists every tracked top-level file.

Run:   .venv/bin/python -m pytest tests/test_readme.py -q        (under a second; no ML stack)

The map is a table of `paper | where`; a "where" cell is a `;`-separated list of
"`file`" or "`file.py`: `name`, `name`". A name must be defined in that file: a top-level
def, class or assignment, or a class defined anywhere in it (executor.py builds its smolagents
adapter class inside a function, so that importing it never imports smolagents). Files are
parsed with ast, never imported.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CODE = re.compile(r"`([^`]+)`")


def section(text: str, title: str) -> str:
    """The body of README's `## title` section, up to the next `## `."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if not m:
        raise AssertionError(f"README has no '## {title}' section")
    return m.group(1)


def table_rows(body: str) -> list[list[str]]:
    """The cells of a markdown table's body rows (header and rule skipped)."""
    rows = [line for line in body.splitlines() if line.startswith("|")]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows[2:]]


def reading_map(text: str) -> list[tuple[str, str, list[str]]]:
    """(paper paragraph, file, names) for every entry of the map."""
    out = []
    for paper, where in table_rows(section(text, "Read it beside the paper")):
        for entry in where.split(";"):
            entry = entry.strip()
            if not entry or not entry.startswith("`"):
                continue                      # prose such as "the table above"
            head, _, names = entry.partition(":")
            files = CODE.findall(head)
            assert len(files) == 1, f"map entry {entry!r} must start with one `file`"
            out.append((paper, files[0], CODE.findall(names)))
    return out


def defined_names(path: Path) -> set[str]:
    """Top-level defs, classes and assigned names, plus classes defined anywhere."""
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    names.update(n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef))
    return names


def test_reading_map_parser_on_literal_text():
    text = ("## Read it beside the paper\n\n| paper | where |\n|---|---|\n"
            "| Rewards | `rewards.py`: `accuracy_reward`, `REWARD_WEIGHTS`; `prompts/examples.txt` |\n"
            "| Results | `replicate.py`: `main`; the table above |\n\n## Tests\n")
    assert reading_map(text) == [("Rewards", "rewards.py", ["accuracy_reward", "REWARD_WEIGHTS"]),
                                 ("Rewards", "prompts/examples.txt", []),
                                 ("Results", "replicate.py", ["main"])]


def test_defined_names_finds_nested_classes_only(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("X = 1\nY: int = 2\ndef f():\n    class Inner: pass\n    z = 3\nclass C:\n    def m(self): pass\n")
    assert defined_names(f) == {"X", "Y", "f", "Inner", "C"}


def test_every_file_and_name_in_the_reading_map_exists():
    entries = reading_map(README.read_text())
    assert len(entries) >= 20, "the map should cover the paper's method and evaluation paragraphs"
    missing = []
    for paper, file, names in entries:
        path = ROOT / file
        if not path.exists():
            missing.append(f"{paper}: {file} does not exist")
            continue
        if names:
            assert file.endswith(".py"), f"{file}: names are only checked in Python files"
            have = defined_names(path)
            missing += [f"{paper}: {file} defines no {n}" for n in names if n not in have]
    assert not missing, "\n".join(missing)


def test_layout_table_lists_every_top_level_file():
    try:
        tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                                 check=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"git ls-files failed ({e}): the layout check needs a git checkout")
    top = {p.split("/")[0] + ("/" if "/" in p else "") for p in tracked}
    top -= {".gitignore", "pytest.ini", "README.md"}   # the repo's own plumbing
    listed = set()
    for row in table_rows(section(README.read_text(), "Layout")):
        listed.update(CODE.findall(row[0]))
    # a folder counts as listed when it, or a file in it (`.ci/run`), is
    unlisted = sorted(t for t in top if not any(item == t or item.startswith(t) for item in listed))
    assert not unlisted, f"README's layout table does not list: {unlisted}"


def test_readme_is_the_front_door():
    """README stays a front door (issue 18: about 300 lines at most); every image and docs/ page
    it links to is committed."""
    text = README.read_text()
    assert len(text.splitlines()) <= 300, "README is over 300 lines: move detail into docs/"
    links = re.findall(r"\]\(((?:docs/)[^)#\s]+)", text)
    assert any(link.endswith(".png") for link in links), "README shows the replication's plots"
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
