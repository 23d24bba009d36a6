"""
Tests for prompts/: the solved examples (examples.txt and every other examples*.txt a recipe may
name), the agent instruction, and protocol.build_messages.

  .venv/bin/python -m pytest tests/test_prompts.py -q       # about 10 s (starts the sandbox)
  .venv/bin/python tests/test_prompts.py --rewrite          # regenerate the output blocks

The examples are what the model imitates, so their output blocks must be exactly what it
will see at run time: each example's snippets are re-run, in order, in one fresh
executor.Sandbox session (one session per example, as the agent runs one problem), and
the blocks protocol.format_result renders must match the file byte for byte.
After a change to the executor or to format_output, `--rewrite` regenerates them.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import protocol  # noqa: E402

EXAMPLES = protocol.load_examples()
FILES = sorted(f.name for f in protocol.PROMPTS_DIR.glob("examples*.txt"))
"""Every examples file: examples.txt (the paper's 4) and the recipes' others (examples_file)."""
EVERY = [(name, n) for name in FILES for n in range(len(protocol.load_examples(name)))]
_OLD_BLOCK = re.compile(r"\n```output\n.*?\n```\n", re.DOTALL)


def replay(solution: str, sandbox) -> tuple[str, list]:
    """The solution with every output block replaced by what `sandbox` prints for its snippet
    now, and the ExecResults. Walks the text the way the agent produces it: a chunk up to the
    closing tag, then the inserted block."""
    rebuilt, rest, results = "", solution, []
    while (end := rest.find(protocol.CALL_CLOSE)) != -1:
        chunk, rest = rest[: end + len(protocol.CALL_CLOSE)], rest[end + len(protocol.CALL_CLOSE):]
        result = sandbox.run(protocol.trailing_snippet(chunk))
        results.append(result)
        old = _OLD_BLOCK.match(rest)
        rest = rest[old.end():] if old else rest
        rebuilt += chunk + protocol.format_result(result)
    return rebuilt + rest, results


def _stored_names(code: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _loaded_names(code: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


# -- the examples --------------------------------------------------------------------------

def test_four_examples_each_with_an_agent_call():
    assert len(EXAMPLES) == 4  # the paper: "we include 4 solved examples"
    for ex in EXAMPLES:
        assert protocol.find_snippets(ex.solution), ex.problem
        assert ex.solution.count(protocol.CALL_OPEN) == ex.solution.count(protocol.CALL_CLOSE)


@pytest.mark.parametrize("name,n", EVERY, ids=[f"{name}:example{n + 1}" for name, n in EVERY])
def test_output_blocks_are_what_the_executor_prints(name, n):
    from executor import Sandbox

    example = protocol.load_examples(name)[n]
    assert protocol.find_snippets(example.solution)
    with Sandbox() as sandbox:
        rebuilt, results = replay(example.solution, sandbox)
    assert [r.error for r in results] == [None] * len(results)  # examples show working code
    assert rebuilt == example.solution


def test_an_example_reuses_a_name_from_an_earlier_snippet():
    reused = []
    for ex in EXAMPLES:
        snippets = protocol.find_snippets(ex.solution)
        for i, later in enumerate(snippets[1:], 1):
            defined = set().union(*(_stored_names(s) for s in snippets[:i]))
            reused += sorted((_loaded_names(later) - _stored_names(later)) & defined)
    assert reused, "no example shows that names persist from one snippet to the next"


@pytest.mark.parametrize("name", FILES)
def test_each_example_ends_with_its_answer_boxed(name):
    for ex in protocol.load_examples(name):
        assert protocol.last_boxed(ex.solution) == ex.answer
        final_chunk = _OLD_BLOCK.split(ex.solution)[-1]
        assert protocol.CALL_OPEN not in final_chunk and "\\boxed" in final_chunk
        # read as a last generated chunk, it ends the trajectory with an answer
        assert protocol.end_reason(final_chunk, protocol.FINISH_EOS, 1, 0, protocol.Budget()) == "answer"


def test_parse_examples_format():
    text = ("note above the first example\n\n=== example 1 ===\n--- problem ---\nP?\n\n--- solution ---\n"
            "line 1\n\nline 2 \\boxed{3}\n\n--- answer ---\n3\n")
    assert protocol.parse_examples(text) == [protocol.Example("P?", "line 1\n\nline 2 \\boxed{3}", "3")]
    with pytest.raises(ValueError, match="outside a section"):
        protocol.parse_examples("=== example 1 ===\nstray\n--- problem ---\nP\n")
    with pytest.raises(ValueError, match="no answer"):
        protocol.parse_examples("=== example 1 ===\n--- problem ---\nP\n--- solution ---\nS\n")


# -- the instruction -------------------------------------------------------------------------

def test_instruction_lists_exactly_the_executors_allowed_imports():
    import executor

    line = re.search(r"Only these modules can be imported: (.+)\.$", protocol.read_prompt("agent_instruction.txt"), re.M)
    assert line, "the instruction must list the allowed imports on one line"
    assert tuple(line.group(1).split(", ")) == tuple(executor.ALLOWED_IMPORTS)


def test_instruction_names_the_delimiters_and_the_answer_format():
    text = protocol.read_prompt("agent_instruction.txt")
    assert protocol.CALL_OPEN in text and protocol.CALL_CLOSE in text
    assert protocol.OUTPUT_OPEN.strip() in text and "\\boxed{" in text


# -- build_messages --------------------------------------------------------------------------

def test_build_messages_system_layout_puts_the_examples_in_the_system_prompt():
    messages = protocol.build_messages("What is 2+2?")
    assert [m["role"] for m in messages] == ["system", "user"]
    system = messages[0]["content"]
    assert system.startswith(protocol.read_prompt("agent_instruction.txt"))
    for n, ex in enumerate(EXAMPLES, 1):
        assert protocol.SYSTEM_LAYOUT_EXAMPLE.format(n=n, problem=ex.problem, solution=ex.solution) in system
    assert messages[1] == {"role": "user", "content": "What is 2+2?"}


def test_build_messages_turns_layout_gives_each_example_as_a_chat_turn():
    messages = protocol.build_messages("What is 2+2?", layout="turns")
    assert messages[0] == {"role": "system", "content": protocol.read_prompt("agent_instruction.txt")}
    pairs = list(zip(messages[1:-1:2], messages[2:-1:2]))
    assert [(u["content"], a["content"]) for u, a in pairs] == [(ex.problem, ex.solution) for ex in EXAMPLES]
    assert all(u["role"] == "user" and a["role"] == "assistant" for u, a in pairs)
    assert messages[-1] == {"role": "user", "content": "What is 2+2?"}


@pytest.mark.parametrize("layout", protocol.LAYOUTS)
def test_build_messages_baseline_has_no_agent(layout):
    messages = protocol.build_messages("What is 2+2?", mode="baseline", layout=layout)
    assert len(messages) == 1 and messages[0]["role"] == "user"
    content = messages[0]["content"]
    assert content.startswith("What is 2+2?") and "\\boxed{" in content and "{problem}" not in content
    assert protocol.CALL_OPEN not in content


def test_build_messages_rejects_unknown_mode_and_layout():
    with pytest.raises(ValueError, match="layout must be one of system, turns"):
        protocol.build_messages("x", layout="inline")
    with pytest.raises(ValueError, match="mode must be one of agent, baseline"):
        protocol.build_messages("x", mode="tools")


def test_examples_file_picks_the_file_and_refuses_one_outside_prompts():
    multistep = protocol.load_examples("examples-multistep.txt")
    messages = protocol.build_messages("q", layout="turns", examples=1, examples_file="examples-multistep.txt")
    assert [m["content"] for m in messages[1:3]] == [multistep[-1].problem, multistep[-1].solution]
    both = protocol.build_messages("q", layout="turns", examples=2, examples_file="examples-multistep.txt")
    assert [m["content"] for m in both[1:5]] == [multistep[0].problem, multistep[0].solution,
                                                 multistep[1].problem, multistep[1].solution]  # the file's order
    assert protocol.build_messages("q", layout="turns", examples=1)[1]["content"] == EXAMPLES[-1].problem
    for bad in ("nope.txt", "../README.md", "baseline.txt/.."):
        with pytest.raises(ValueError, match="examples_file must name a file of prompts/"):
            protocol.load_examples(bad)


def test_build_messages_is_pure():
    assert protocol.build_messages("q", layout="turns") == protocol.build_messages("q", layout="turns")
    first = protocol.build_messages("q")
    first[0]["content"] = "changed"
    assert protocol.build_messages("q")[0]["content"] != "changed"


# -- regenerate the output blocks ---------------------------------------------------------------

def rewrite() -> None:
    """Rewrite every prompts/examples*.txt with output blocks from the current executor."""
    from executor import Sandbox

    for name in FILES:
        path = protocol.PROMPTS_DIR / name
        text = path.read_text(encoding="utf-8")
        for ex in protocol.load_examples(name):
            with Sandbox() as sandbox:
                rebuilt, results = replay(ex.solution, sandbox)
            for r in results:
                if r.error:
                    print(f"warning: a snippet of {ex.problem[:40]!r}... fails: {r.error}")
            text = text.replace(ex.solution, rebuilt)
        path.write_text(text, encoding="utf-8")
        print(f"rewrote {path}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--rewrite"]:
        rewrite()
    else:
        sys.exit(pytest.main([__file__, "-q", *sys.argv[1:]]))
