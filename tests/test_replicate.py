"""
replicate.py (`make replicate`): the miniature Table 1, checked for its shape, never its values.

Run:  .venv/bin/python -m pytest tests/test_replicate.py -q     (~5 minutes on 2 CPU cores)

What is checked:
  - tier 1: the recipe settings the evaluation copies, the paired difference and its interval on
    literal records, where each row's directory goes, one-line refusals;
  - tier 3: a CI-sized run of the real command as a subprocess -- a copy of recipes/cpu-mini.yaml
    cut to 2 training steps of 2 completions and one solved example, 2 problems x 2 samples per
    row -- trains a real adapter, evaluates all four rows of every row group with real vLLM
    engines, and writes the tables, both plots and the report; a second run reuses everything
    (no training, no engine) and writes the same report.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import replicate as R

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------
# Tier 1: literal inputs
# ---------------------------------------------------------------------------

def test_evaluation_copies_the_recipe_budget_and_prompt():
    r = R.read_recipe(str(ROOT / "recipes" / "cpu-mini.yaml"))
    mini = yaml.safe_load((ROOT / "recipes" / "cpu-mini.yaml").read_text())
    assert r["max_tokens"] == mini["max_completion_length"] and r["max_steps"] == mini["max_agent_steps"]
    assert r["layout"] == mini["layout"] and r["examples"] == mini.get("examples")
    assert r["difficulty"] == mini["dataset"].partition(":")[2]


def test_recipe_without_procedural_data_is_refused(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("dataset: openmathreasoning\n")
    with pytest.raises(R.ReplicateError, match="not procedural"):
        R.read_recipe(str(bad))
    with pytest.raises(R.ReplicateError, match="not found"):
        R.read_recipe(str(tmp_path / "missing.yaml"))


def _run(d: Path, correct: list[bool]):
    d.mkdir(parents=True)
    with open(d / "generations.jsonl", "w") as f:
        for i, c in enumerate(correct):
            f.write(json.dumps({"id": str(i), "maj_correct": c, "samples": [{"correct": c}, {"correct": False}]}) + "\n")


def test_paired_difference_over_common_problems(tmp_path):
    _run(tmp_path / "a", [False] * 10)
    _run(tmp_path / "b", [True] * 6 + [False] * 4)
    d = R.paired(tmp_path / "a", tmp_path / "b")
    assert d["n"] == 10 and d["diff"] == 0.6 and 0 < d["ci95"][0] <= 0.6 <= d["ci95"][1]
    m = R.paired(tmp_path / "a", tmp_path / "b", "mean")
    assert m["diff"] == 0.3  # mean@k: one of two samples right on 6 problems


def test_row_directories():
    cfg = R.Config(out="o", train_seeds=[3, 5])
    assert R.row_dir(cfg, "", "deepmath", 3) == Path("o/deepmath")
    assert R.row_dir(cfg, "math500", "grpo", 5) == Path("o/seed5/math500/grpo")
    assert R.row_dir(cfg, "math500", "agent", 5) == Path("o/math500/agent")  # untrained rows: once
    assert R.adapter_dir(cfg, 5) == Path("o/seed5/adapter")


def test_flags_lists_and_one_line_errors(capsys):
    cfg = R.parse_args(["--train-seeds", "0", "1", "--train-args=--max_steps=2", "--train-args=--seed=3"])
    assert cfg.train_seeds == [0, 1] and cfg.train_args == ["--max_steps=2", "--seed=3"]
    assert R.parse_args([]).train_args == [] and R.parse_args([]).train_seeds == [0]
    with pytest.raises(SystemExit) as e:
        R.parse_args(["--train-seeds", "0", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err == ["error: --train-seeds must be distinct (see `python replicate.py --help`)"]


def test_bad_flags_are_one_line(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "replicate.py"), "--recipe", str(tmp_path / "nope.yaml"),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("error: recipe")
    assert "Traceback" not in p.stderr


# ---------------------------------------------------------------------------
# Tier 3: the command, CI-sized
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_replication(tmp_path_factory, smollm2_dir):
    tmp = tmp_path_factory.mktemp("replicate")
    recipe = yaml.safe_load((ROOT / "recipes" / "cpu-mini.yaml").read_text())
    recipe.update(max_steps=2, temperature_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=1,
                  num_generations=2, examples=1, max_completion_length=96, max_agent_steps=2, save_steps=1,
                  output_dir=str(tmp / "unused"))
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp / "rep"
    cmd = [sys.executable, str(ROOT / "replicate.py"), "--recipe", str(tmp / "tiny.yaml"), "--out", str(out),
           "--problems", "2", "--heldout-templates", "2", "--math500", "2", "--samples", "2"]
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=1200)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    return out, first, second


def test_all_four_rows_of_every_group(tiny_replication, data_dir):
    out, first, _ = tiny_replication
    for group in ("", "heldout-templates", "math500"):
        for row in ("baseline", "agent", "grpo", "deepmath"):
            s = json.loads((out / group / row / "summary.json").read_text())
            assert s["n_problems"] == 2 and s["samples"] == 2
            assert s["mode"] == ("agent" if row in ("agent", "deepmath") else "baseline")
            assert bool(s["settings"]["lora"]) == (row in ("grpo", "deepmath"))
        table = (out / group / "table.txt").read_text()
        assert [line.split()[0] for line in table.splitlines()[2:6]] == ["baseline", "agent", "grpo", "deepmath"]
        assert (out / group / "accuracy_vs_length.png").read_bytes()[:8] == PNG


def test_training_adapter_curves_and_report(tiny_replication):
    out, first, _ = tiny_replication
    assert (out / "adapter" / "adapter_config.json").is_file()
    state = json.loads((out / "adapter" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert (out / "training.png").read_bytes()[:8] == PNG
    assert "step 2 |" in (out / "train.log").read_text()
    rep = json.loads((out / "report.json").read_text())
    main = rep["groups"]["procedural/seed0"]
    assert set(main["targets"]) == {"deepmath_beats_agent_by_15_with_ci_above_0", "deepmath_beats_baseline",
                                    "deepmath_shorter_than_baseline"}
    assert main["deepmath_minus_agent"]["n"] == 2
    assert "DeepMath - +Agent (maj)" in (out / "report.md").read_text()


def test_rerun_reuses_everything(tiny_replication):
    out, first, second = tiny_replication
    assert second.returncode == 0, second.stderr[-2000:]
    assert "already trained, reused" in second.stdout
    # a reused stage keeps what it took the first time (OUT/wall_s.json sums over runs)
    first_train = float(re.search(r"- train_seed0: (\d+) s", first.stdout).group(1))
    rep = json.loads((out / "report.json").read_text())
    assert first_train > 0 and rep["wall_s"]["train_seed0"] >= first_train - 0.5  # report.md rounds to 1 s
    assert rep["wall_s_this_run"]["train_seed0"] < first_train  # reused: only the check ran
    tables = [p.stdout.split("# Table 1 in miniature")[1].split("## Wall time")[0] for p in (first, second)]
    assert tables[0] == tables[1]  # the same report from the saved generations
