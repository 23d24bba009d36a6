"""
replicate.py (`make replicate`): the miniature Table 1, checked for its shape, never its values.

Run:  .venv/bin/python -m pytest tests/test_replicate.py -q     (~5 minutes on 2 CPU cores)

What is checked:
  - tier 1: the recipe settings the evaluation copies, the paired difference and its interval on
    literal records, the report's columns and differences over the same problems, where each
    row's directory goes, one-line refusals; what changed inputs invalidate (literal row folders
    and adapter files, no engine: one asked for means a row is evaluated afresh): a changed or
    retrained adapter re-evaluates +GRPO and DeepMath and keeps Baseline and +Agent, an adapter
    of another recipe is trained again; the hard row group asked for or skipped; the per-family
    and per-level maj@k and mean@k of literal runs with known verdicts (report.json and
    report.md's table); the per-level targets pooled over row groups, met / MISSED / not
    measured on literal inputs;
  - tier 3: a CI-sized run of the real command as a subprocess -- a copy of recipes/cpu-mini.yaml
    (not the default cpu-curriculum.yaml: its candidate problems double or triple a step's
    generation; tests/test_dynamic.py runs that recipe's real 2 steps) cut to 2 training steps of 2
    completions and one solved example, 2 problems x 2 samples per row -- trains a real adapter,
    evaluates all four rows of every row group (the hard one included) with real vLLM engines, and
    writes the tables, both plots and the report, with its per-family tables and targets per level;
    a second run reuses everything (no training, no engine, no row moved aside) and writes the same
    report.
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

import evaluate as E
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
    assert r["examples_file"] == "examples.txt"  # the recipe names none: train.py's default
    curriculum = R.read_recipe(str(ROOT / "recipes" / "cpu-curriculum.yaml"))
    assert curriculum["examples_file"] == "examples-multistep.txt" and curriculum["examples"] == 2


def test_recipe_without_procedural_data_is_refused(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("dataset: openmathreasoning\n")
    with pytest.raises(R.ReplicateError, match="not procedural"):
        R.read_recipe(str(bad))
    with pytest.raises(R.ReplicateError, match="not found"):
        R.read_recipe(str(tmp_path / "missing.yaml"))


def _sample(j, correct):
    return {"sample": j, "answer": "1" if correct else "2", "correct": correct, "status": "correct" if correct else "wrong",
            "finish_reason": "answer", "prompt_tokens": 10, "output_tokens": 10, "total_tokens": 12, "executor_tokens": 2,
            "snippets": 1, "errors": 0, "timeouts": 0, "sandbox_seed": None, "calls": [], "text": ""}


def _record(pid, correct: list[bool], problem=None, gold="1"):
    samples = [_sample(j, c) for j, c in enumerate(correct)]
    vote = E.majority_vote([s["answer"] for s in samples], [s["correct"] for s in samples])
    return {"id": pid, "problem": problem or f"What is {pid}?", "gold": gold, "source": "t", "maj_answer": vote[0],
            "maj_correct": vote[1], "n_correct": sum(correct), "samples": samples}


def _run(d: Path, correct: list[bool], summarised: int | None = None, mode="agent", ids=None):
    """A row folder as evaluate.py leaves it: generations.jsonl (problem i, id ids[i] or "i": maj
    right iff correct[i], one of two samples right when it is) and a summary.json over the first
    `summarised` problems."""
    d.mkdir(parents=True)
    ids = ids or [str(i) for i in range(len(correct))]
    recs = [_record(pid, [c, False] if c else [False, False]) for pid, c in zip(ids, correct, strict=True)]
    for r in recs:
        E.append_record(d / "generations.jsonl", r)
    s = {"bench": "procedural", "mode": mode, "model": "m", **E.summarize(recs[:summarised], 2)}
    E.write_json(d / "summary.json", s)


def test_paired_difference_over_common_problems(tmp_path):
    _run(tmp_path / "a", [False] * 10)
    _run(tmp_path / "b", [True] * 6 + [False] * 4)
    runs = [E.load_run(tmp_path / "a"), E.load_run(tmp_path / "b")]
    d = E.paired_difference(*runs, E.shared_problems(runs))  # the one implementation replicate.py reports
    assert d["n"] == 10 and d["diff"] == 0.6 and 0 < d["ci95"][0] <= 0.6 <= d["ci95"][1]
    m = E.paired_difference(*runs, E.shared_problems(runs), "mean")
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


def test_report_pairs_every_column_and_difference_on_the_same_problems(tmp_path):
    """Rows rerun with --problems 4 into folders that hold 8 (issue 17): every row's summary says
    100% over 4 problems, and the report's differences are over the same 4 (before: over all 8,
    +50 points for DeepMath over +Agent beside two columns of 100%)."""
    cfg = R.Config(out=str(tmp_path / "o"), heldout_templates=0, math500=0)
    for row, right in (("baseline", [True] * 4 + [False] * 4), ("agent", [True] * 4 + [False] * 4),
                       ("grpo", [True] * 8), ("deepmath", [True] * 8)):
        _run(R.row_dir(cfg, "", row, 0), right, summarised=4)
    recipe = R.read_recipe(str(ROOT / "recipes" / "cpu-mini.yaml"))
    g = R.report(cfg, recipe, {"": {}}, R.Walls(Path(cfg.out)))["groups"]["procedural/seed0"]
    for key in ("deepmath_minus_agent", "deepmath_minus_agent_mean_at_k", "deepmath_minus_baseline", "grpo_minus_baseline"):
        assert (g[key]["n"], g[key]["diff"]) == (4, 0.0), key
    assert g["n_paired"] == 4 and {r["maj_at_k"] for r in g["rows"].values()} == {1.0}
    assert g["table"].splitlines()[-2].startswith("paired on 4 problems")
    assert "over 4 problems" in (tmp_path / "o" / "report.md").read_text()


def test_the_hard_row_group_is_asked_for_or_skipped(capsys):
    recipe = {"difficulty": "easy:2,medium:1"}
    g = R.groups(R.Config(hard=3, math500=0), recipe)
    assert list(g) == ["", "heldout-templates", "hard"]
    assert g["hard"] == {"bench": "procedural", "limit": 3, "templates": "train", "difficulty": "hard"}
    assert g[""]["difficulty"] == g["heldout-templates"]["difficulty"] == "easy:2,medium:1"  # the recipe's mix
    assert "hard" not in R.groups(R.Config(hard=0, math500=0), recipe)
    assert R.parse_args(["--hard", "0"]).hard == 0 and R.Config().hard == 16
    with pytest.raises(SystemExit):
        R.parse_args(["--hard", "-1"])
    assert capsys.readouterr().err.strip() == "error: --hard must be >= 0 (see `python replicate.py --help`)"


# the four rows of the per-family report: Baseline and +GRPO never right, +Agent on problem 0 only
FAMILY_ROWS = {"baseline": [False] * 6, "agent": [True] + [False] * 5, "grpo": [False] * 6,
               "deepmath": [True, True, True, False, True, False]}


def test_per_family_and_level_breakdown_of_literal_runs(tmp_path):
    """6 mixed problems come as easy, medium, hard, easy, medium, hard (data._levels); the rows'
    literal verdicts give every family's and level's maj@k and mean@k, in report.json and report.md."""
    cfg = R.Config(out=str(tmp_path / "o"), problems=6, heldout_templates=0, hard=0, math500=0, samples=2)
    recipe = {**R.read_recipe(str(ROOT / "recipes" / "cpu-mini.yaml")), "difficulty": "mixed"}
    grps = R.groups(cfg, recipe)
    problems = E.load_problems(E.Config(seed=cfg.seed, **grps[""]))
    assert [p.meta["difficulty"] for p in problems] == ["easy", "medium", "hard"] * 2
    for row, right in FAMILY_ROWS.items():
        _run(R.row_dir(cfg, "", row, 0), right, ids=[p.id for p in problems])
    rep = R.report(cfg, recipe, grps, R.Walls(Path(cfg.out)))
    g = rep["groups"]["procedural/seed0"]
    lv = g["per_level"]
    assert list(lv) == ["easy", "medium", "hard"] and {c["n"] for c in lv.values()} == {2}
    assert [lv[x]["deepmath"]["maj_at_k"] for x in lv] == [0.5, 1.0, 0.5]
    assert [lv[x]["agent"]["maj_at_k"] for x in lv] == [0.5, 0.0, 0.0]
    assert lv["medium"]["deepmath"]["mean_at_k"] == 0.5  # one sample of two right on each
    assert {c["baseline"]["maj_at_k"] for c in lv.values()} == {c["grpo"]["maj_at_k"] for c in lv.values()} == {0.0}
    fams = g["per_family"]
    for fam, c in fams.items():  # each family: DeepMath's share of its problems that it got right
        mine = [n for n, p in enumerate(problems) if p.meta["family"] == fam]
        assert c["n"] == len(mine) and c["level"] == problems[mine[0]].meta["difficulty"], fam
        assert c["deepmath"]["maj_at_k"] == sum(FAMILY_ROWS["deepmath"][n] for n in mine) / len(mine), fam
    assert sum(c["n"] for c in fams.values()) == 6
    assert [c["level"] for c in fams.values()] == sorted((c["level"] for c in fams.values()),
                                                         key=["easy", "medium", "hard"].index)  # grouped by level
    md = (tmp_path / "o" / "report.md").read_text()
    assert "| family | n | Baseline | +Agent | +GRPO | DeepMath |" in md
    assert "| **medium, all** | 2 | 0.0% | 0.0% | 0.0% | 100.0% |" in md
    assert md.index("| family |") > md.index("paired on 6 problems")  # after the group's Table 1
    assert md.index("## Targets per level, training seed 0") > md.index("| **hard, all** |")
    targets = rep["levels"]["seed0"]["targets"]
    assert rep["levels"]["seed0"]["groups"] == ["procedural"]
    assert targets["medium"]["status"] == "met" and targets["medium"]["n"] == 2  # +100 points, CI [100, 100]
    assert "- medium: DeepMath >= +Agent + 15 with CI above 0: met (+100.0 points" in md


def _literal_groups(tmp_path, deepmath: dict[str, list[bool]]):
    """Two procedural groups of 4 literal problems each, +Agent never right: (runs, ids, families)."""
    fams = {"a0": ("remainder", "medium"), "a1": ("gcd", "medium"), "a2": ("change", "hard"),
            "a3": ("linear_system", "hard"), "b0": ("change", "hard"), "b1": ("distance", "hard"),
            "b2": ("product", "easy"), "b3": ("linear_system", "hard")}
    parts = []
    for grp, right in deepmath.items():
        ids = [f"{grp}{n}" for n in range(4)]
        for row in ("baseline", "agent", "grpo", "deepmath"):
            _run(tmp_path / grp / row, right if row == "deepmath" else [False] * 4, ids=ids)
        runs = [E.load_run(tmp_path / grp / row) for row in ("baseline", "agent", "grpo", "deepmath")]
        parts.append((runs, ids, fams))
    return parts


def test_per_level_targets_pool_the_groups(tmp_path):
    parts = _literal_groups(tmp_path, {"a": [True, True, False, True], "b": [False, False, True, True]})
    t = R.level_targets(parts)
    assert (t["medium"]["status"], t["medium"]["n"], t["medium"]["diff"]) == ("met", 2, 1.0)
    # hard: a2, a3 of one group and b0, b1, b3 of the other -- +40 points, but 5 problems leave the
    # interval at 0: missed
    assert (t["hard"]["n"], t["hard"]["diff"], t["hard"]["ci95"][0]) == (5, 0.4, 0.0)
    assert t["hard"]["status"] == "MISSED"
    assert (t["multi_step_words"]["n"], t["multi_step_words"]["diff"]) == (3, 0.0)  # change, change, distance
    assert t["multi_step_words"]["status"] == "MISSED"
    assert (t["deepmath_shorter_than_baseline"]["n"], t["deepmath_shorter_than_baseline"]["status"]) == (8, "MISSED")
    only_a = R.level_targets([(parts[0][0], ["a0", "a1"], parts[0][2])])  # no hard problem: not measured
    assert [x["status"] for x in only_a.values()] == ["met", "not measured", "not measured", "MISSED"]
    assert {x["status"] for x in R.level_targets([(parts[0][0], [], parts[0][2])]).values()} == {"not measured"}
    lines = R.level_lines(only_a)
    assert lines[1] == ("- hard: DeepMath >= +Agent + 15 with CI above 0: not measured "
                        "(no such problem among the paired ones)")
    # a problem two groups share is one problem: counted once
    assert R.pool([(parts[0][0], parts[0][1])] * 2)[1] == ["a0", "a1", "a2", "a3"]
    same = R.pooled_difference([(parts[0][0][1], parts[0][0][3], ["a0", "a1"])])
    assert same == E.paired_difference(parts[0][0][1], parts[0][0][3], ["a0", "a1"])  # one group: paired_difference's


class _Started(Exception):
    pass


def _no_engine(c):
    raise _Started(c.out)


def _finished_rows(configs, legacy=False):
    """Row folders as evaluate.run leaves them when every problem is done (literal records)."""
    for c in configs:
        settings = E.settings_of(c)
        if legacy:  # as written before the content keys
            settings = {k: v for k, v in settings.items() if not k.endswith("_sha256")}
        E.pin_settings(Path(c.out), settings)
        for p in E.load_problems(c):
            E.append_record(Path(c.out) / "generations.jsonl", _record(p.id, [True, False], p.problem, p.answer))


def _rows_and_adapter(tmp_path, legacy=False):
    cfg = R.Config(out=str(tmp_path / "o"), problems=2, heldout_templates=0, hard=0, math500=0, samples=2)
    recipe = R.read_recipe(str(ROOT / "recipes" / "cpu-mini.yaml"))
    grps = R.groups(cfg, recipe)
    adapter = R.adapter_dir(cfg, 0)
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 4}')
    (adapter / "adapter_model.safetensors").write_bytes(b"weights of the first training")
    untrained, trained = R.eval_configs(cfg, recipe, grps, None, 0), R.eval_configs(cfg, recipe, grps, adapter, 0)
    _finished_rows(untrained + trained, legacy)
    return cfg, adapter, untrained, trained


def _moved(cfg, row):
    return sorted(Path(cfg.out).glob(f"{row}.old-*"))


def test_a_changed_adapter_re_evaluates_its_rows_and_reuses_the_others(tmp_path, monkeypatch, capsys):
    cfg, adapter, untrained, trained = _rows_and_adapter(tmp_path)
    monkeypatch.setattr(E, "make_backend", _no_engine)  # an engine asked for = a row evaluated afresh
    R.evaluate_model(untrained)
    R.evaluate_model(trained)  # nothing changed: every row reused, no engine
    assert "moved aside" not in capsys.readouterr().out
    (adapter / "adapter_model.safetensors").write_bytes(b"weights of the second training")  # retrained in place
    R.evaluate_model(untrained)  # Baseline and +Agent: their inputs did not change
    with pytest.raises(_Started):
        R.evaluate_model(trained)  # +GRPO and DeepMath: evaluated afresh (before: the old rows resumed)
    out = capsys.readouterr().out
    for row in ("grpo", "deepmath"):
        (old,) = _moved(cfg, row)
        assert len(E.read_generations(old / "generations.jsonl")) == 2  # kept, renamed
        assert f"{Path(cfg.out) / row}: scored other inputs or settings (lora_sha256" in out and old.name in out
    assert not _moved(cfg, "baseline") and not _moved(cfg, "agent")
    assert len(E.read_generations(Path(cfg.out) / "agent" / "generations.jsonl")) == 2


def test_rows_from_before_the_content_keys_are_re_evaluated_after_a_retraining(tmp_path, monkeypatch, capsys):
    cfg, adapter, untrained, trained = _rows_and_adapter(tmp_path, legacy=True)
    monkeypatch.setattr(E, "make_backend", _no_engine)
    R.evaluate_model(trained)  # no key, no check: resumed, as before
    with pytest.raises(_Started):
        R.evaluate_model(trained, retrained=True)  # the adapter was trained in this run: its rows are stale
    assert "scored an earlier adapter (trained again in this run)" in capsys.readouterr().out
    assert len(_moved(cfg, "grpo")) == len(_moved(cfg, "deepmath")) == 1
    R.evaluate_model(untrained, retrained=True)  # the untrained model's rows are not the adapter's


def _finished_adapter_and_no_trainer(cfg, monkeypatch) -> tuple[Path, list]:
    """A finished-looking adapter in cfg.out, and train.py's subprocess replaced by one that records
    its command and raises _Started: what R.train reuses, and whether it would train again."""
    adapter = R.adapter_dir(cfg, 0)
    adapter.mkdir(parents=True)
    for name in ("adapter_config.json", "trainer_state.json"):
        (adapter / name).write_text("{}")
    started = []

    def no_training(cmd, **kw):
        started.append(cmd)
        raise _Started

    monkeypatch.setattr(R.subprocess, "Popen", no_training)
    return adapter, started


def test_an_adapter_of_other_training_inputs_is_trained_again(tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text((ROOT / "recipes" / "cpu-mini.yaml").read_text())
    cfg = R.Config(out=str(tmp_path / "o"), recipe=str(recipe))
    adapter, started = _finished_adapter_and_no_trainer(cfg, monkeypatch)
    assert R.train(cfg, 0) == (adapter, False) and not started  # no record yet (an older OUT): reused
    E.write_json(Path(cfg.out) / "train_inputs.json", R.train_inputs(cfg, 0))
    assert R.train(cfg, 0) == (adapter, False) and not started  # the same inputs: reused
    r = yaml.safe_load(recipe.read_text())
    recipe.write_text(yaml.safe_dump({**r, "learning_rate": 2 * float(r.get("learning_rate", 1e-5))}))
    with pytest.raises(_Started):
        R.train(cfg, 0)
    (old,) = sorted(Path(cfg.out).glob("adapter.old-*"))
    assert (old / "adapter_config.json").is_file() and not adapter.exists() and len(started) == 1
    assert "trained from other inputs (recipe_sha256 changed)" in capsys.readouterr().out
    assert json.loads((Path(cfg.out) / "train_inputs.json").read_text()) == R.train_inputs(cfg, 0)


def test_an_adapter_trained_under_an_edited_prompt_is_trained_again(tmp_path, monkeypatch, capsys, prompts_copy):
    """The recipe names its examples file by name; train_inputs.json also records what the prompt
    says (prompt_sha256), so an edited example retrains even though the recipe is unchanged. A
    record from before the key was added is no difference: that adapter is reused."""
    import protocol

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text((ROOT / "recipes" / "cpu-curriculum.yaml").read_text())
    cfg = R.Config(out=str(tmp_path / "o"), recipe=str(recipe))
    adapter, started = _finished_adapter_and_no_trainer(cfg, monkeypatch)
    older = {k: v for k, v in R.train_inputs(cfg, 0).items() if k != "prompt_sha256"}
    E.write_json(Path(cfg.out) / "train_inputs.json", older)
    assert R.train(cfg, 0) == (adapter, False) and not started  # recorded before the key: reused
    E.write_json(Path(cfg.out) / "train_inputs.json", R.train_inputs(cfg, 0))
    assert R.train(cfg, 0) == (adapter, False) and not started  # the same prompt: reused
    f = prompts_copy / "examples-multistep.txt"
    f.write_text(f.read_text().replace("print(14 * 23 + 9 * 31 - 57)", "print(14*23 + 9*31 - 57)"))
    protocol.load_examples.cache_clear()
    with pytest.raises(_Started):
        R.train(cfg, 0)
    assert "trained from other inputs (prompt_sha256 changed)" in capsys.readouterr().out
    assert len(list(Path(cfg.out).glob("adapter.old-*"))) == 1 and len(started) == 1


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
           "--problems", "2", "--heldout-templates", "2", "--hard", "2", "--math500", "2", "--samples", "2"]
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=1200)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    return out, first, second


def test_all_four_rows_of_every_group(tiny_replication, data_dir):
    out, first, _ = tiny_replication
    for group in ("", "heldout-templates", "hard", "math500"):
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
    md = (out / "report.md").read_text()
    assert "DeepMath - +Agent (maj)" in md
    # per family and level: a table after each procedural group's Table 1, none for MATH-500
    assert md.count("| family | n | Baseline | +Agent | +GRPO | DeepMath |") == 3
    hard = rep["groups"]["hard/seed0"]
    assert list(hard["per_level"]) == ["hard"] and hard["per_level"]["hard"]["n"] == 2
    assert sum(c["n"] for c in hard["per_family"].values()) == 2 and "per_family" not in rep["groups"]["math500/seed0"]
    assert hard["rows"]["deepmath"]["n_problems"] == 2
    assert "## Targets per level, training seed 0" in md
    levels = rep["levels"]["seed0"]
    assert levels["groups"] == ["procedural", "heldout-templates", "hard"]
    assert set(levels["targets"]) == {"medium", "hard", "multi_step_words", "deepmath_shorter_than_baseline"}
    assert levels["targets"]["hard"]["n"] >= 2 and levels["targets"]["hard"]["status"] in ("met", "MISSED")


def test_rerun_reuses_everything(tiny_replication):
    out, first, second = tiny_replication
    assert second.returncode == 0, second.stderr[-2000:]
    assert "already trained, reused" in second.stdout
    assert "moved aside" not in second.stdout  # unchanged inputs hash the same: nothing is evaluated again
    # a reused stage keeps what it took the first time (OUT/wall_s.json sums over runs)
    first_train = float(re.search(r"- train_seed0: (\d+) s", first.stdout).group(1))
    rep = json.loads((out / "report.json").read_text())
    assert first_train > 0 and rep["wall_s"]["train_seed0"] >= first_train - 0.5  # report.md rounds to 1 s
    assert rep["wall_s_this_run"]["train_seed0"] < first_train  # reused: only the check ran
    tables = [p.stdout.split("# Table 1 in miniature")[1].split("## Wall time")[0] for p in (first, second)]
    assert tables[0] == tables[1]  # the same report from the saved generations
