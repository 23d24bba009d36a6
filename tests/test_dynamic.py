"""
Dynamic sampling, the no-signal guard and the curriculum (train.py section 6, data.Curriculum).

Run:  .venv/bin/python -m pytest tests/test_dynamic.py -q            (unit tests: seconds)
      .venv/bin/python -m pytest tests/test_dynamic.py -q -k real    (the real trainer: minutes)

Tier 1 (literal inputs, no model): DynamicSampling around a scripted inner rollout_func, with
the real reward functions (train.build_rewards) grading its texts: flat groups are dropped and
replaced by candidates with signal, the rewards get each kept completion's own gold, a batch
with no signal at all says so, and per-step figures are handed on; the guard leaves the weights
of a real torch AdamW untouched on a step without signal (and moves them on one with signal);
the curriculum's draws, running rates, both advance triggers, and its state through a
checkpoint (also one cut short before curriculum.json).
Tier 2 (real GRPOTrainer, SmolLM2-135M, the real sandbox): recipes/cpu-curriculum.yaml for a
few steps; every step's line has the dynamic-sampling figures, trainer_state.json holds them,
and the checkpoint holds curriculum.json.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import data  # noqa: E402
import train  # noqa: E402


# ---------------------------------------------------------------------------
# tier 1: a scripted inner rollout, the real reward functions
# ---------------------------------------------------------------------------

class FakeTokenizer:
    """Token ids are the characters' code points: decode is exact, no model needed."""

    def batch_decode(self, ids, skip_special_tokens=True):
        return ["".join(map(chr, x)) for x in ids]


class ScriptedRollout:
    """An inner rollout_func whose completions are given per problem text: a list of G strings
    (each with or without an agent call and a boxed answer). Records what it was asked."""

    def __init__(self, script: dict[str, list[str]]):
        self.script, self.calls = script, []

    def __call__(self, prompts, trainer):
        self.calls.append([train.prompt_key(p) for p in prompts])
        seen: dict[str, int] = {}
        texts = []
        for p in prompts:
            k = train.prompt_key(p)
            texts.append(self.script[k][seen.get(k, 0)])
            seen[k] = seen.get(k, 0) + 1
        ids = [[ord(c) for c in t] for t in texts]
        calls = [int("<tool_call>" in t) for t in texts]
        return {"prompt_ids": [[1, 2]] * len(texts), "completion_ids": ids, "logprobs": [[0.0] * len(i) for i in ids],
                "env_mask": [[1] * len(i) for i in ids], "num_snippets": calls, "num_errors": [0] * len(texts),
                "num_timeouts": [0] * len(texts), "finish_reason": ["answer"] * len(texts),
                "snippets": [["print(1)"] * c for c in calls], "snippet_ok": [[True] * c for c in calls],
                "model_tokens": [len(i) for i in ids]}


def fake_trainer(rows: list[dict], G: int = 2, step: int = 0):
    from datasets import Dataset

    return SimpleNamespace(num_generations=G, state=SimpleNamespace(global_step=step),
                           model=SimpleNamespace(training=True), train_dataset=Dataset.from_list(rows),
                           accelerator=SimpleNamespace(num_processes=1), processing_class=FakeTokenizer())


def rewards_of():
    script = train.ScriptArguments(reward_truncated=True)
    args = SimpleNamespace(process_index=0, reward_weights=[0.1, 1.0])
    return train.build_rewards(script, args, None)


RIGHT, WRONG = "<tool_call>print(1)</tool_call> \\boxed{%s}", "<tool_call>print(1)</tool_call> \\boxed{0}"


def row(q, a):
    return {"prompt": [{"role": "user", "content": q}], "answer": a, "problem_id": q}


@pytest.fixture(autouse=True)
def plain_tokenizer(monkeypatch):
    monkeypatch.setattr(train.backends, "trainer_tokenizer", lambda trainer: trainer.processing_class)


def test_flat_groups_are_replaced_by_candidates_with_signal():
    rows = [row("q1", "7"), row("q2", "8"), row("q3", "9"), row("q4", "5")]
    inner = ScriptedRollout({
        "q1": [RIGHT % 7, RIGHT % 7],        # flat: both right
        "q2": [RIGHT % 8, WRONG],            # signal
        "q3": [RIGHT % 9, WRONG],            # signal (a candidate)
        "q4": [WRONG, WRONG],                # flat
    })
    funcs, weights = rewards_of()
    ds = train.DynamicSampling(inner, funcs, weights, build_prompt=None, extra=2, rounds=1)
    trainer = fake_trainer(rows)
    # the batch's own problems are q1 and q2; pin the two candidates to q3 and q4
    ds._dataset_draw = lambda trainer, n, rng: [rows[2], rows[3]][:n]
    out = ds([rows[0]["prompt"]] * 2 + [rows[1]["prompt"]] * 2, trainer)
    assert inner.calls == [["q1", "q1", "q2", "q2", "q3", "q3", "q4", "q4"]]  # one batched round
    assert out["problem_id"] == ["q2", "q2", "q3", "q3"]  # the groups with signal, the batch's own first
    assert out["answer"] == ["8", "8", "9", "9"]  # each completion graded against its own gold
    assert len(out["completion_ids"]) == len(out["env_mask"]) == 4
    assert out["dyn_groups_dropped"][0] == 2 and out["dyn_problems_sampled"][0] == 4
    assert out["dyn_signal_share"][0] == 1.0 and ds.signal is True
    # the real rewards on what is returned: accuracy follows the kept completions' own answers
    acc = funcs[0]([FakeTokenizer().batch_decode([c])[0] for c in out["completion_ids"]], answer=out["answer"],
                   finish_reason=out["finish_reason"])
    assert acc == [1.0, 0.0, 1.0, 0.0]


def test_no_signal_anywhere_keeps_the_batch_and_says_so():
    rows = [row("q1", "7"), row("q2", "8"), row("q3", "9")]
    inner = ScriptedRollout({"q1": [RIGHT % 7] * 2, "q2": [WRONG] * 2, "q3": [WRONG] * 2})
    funcs, weights = rewards_of()
    ds = train.DynamicSampling(inner, funcs, weights, build_prompt=None, extra=1, rounds=2)
    ds._dataset_draw = lambda trainer, n, rng: [rows[2]] * n
    out = ds([rows[0]["prompt"]] * 2 + [rows[1]["prompt"]] * 2, fake_trainer(rows))
    assert len(inner.calls) == 2  # a second round was tried, it found no signal either
    assert out["problem_id"] == ["q1", "q1", "q2", "q2"]  # the batch's own flat groups fill the slots
    assert ds.signal is False and out["dyn_signal_share"][0] == 0.0


def test_split_groups_are_refused():
    rows = [row("q1", "7"), row("q2", "8")]
    funcs, weights = rewards_of()
    ds = train.DynamicSampling(ScriptedRollout({}), funcs, weights, build_prompt=None)
    with pytest.raises(RuntimeError, match="whole groups"):
        ds([rows[0]["prompt"], rows[1]["prompt"]], fake_trainer(rows))


def test_evaluation_batches_pass_through():
    rows = [row("q1", "7")]
    inner = ScriptedRollout({"q1": [WRONG, WRONG]})
    funcs, weights = rewards_of()
    ds = train.DynamicSampling(inner, funcs, weights, build_prompt=None)
    trainer = fake_trainer(rows)
    trainer.model.training = False
    out = ds([rows[0]["prompt"]] * 2, trainer)
    assert "dyn_groups_dropped" not in out and len(inner.calls) == 1


def test_curriculum_problems_replace_the_dataset_rows_and_feed_the_rates():
    cur = data.Curriculum(["medium"], pool_size=30, window=4)
    funcs, weights = rewards_of()
    class ByFamily(ScriptedRollout):
        def __call__(self, prompts, trainer):  # gcd problems solved, everything else wrong
            self.calls.append([train.prompt_key(p) for p in prompts])
            texts = [RIGHT % p_.answer if p_.meta["family"] == "gcd" else WRONG
                     for k in self.calls[-1] for p_ in [by_text[k]]]
            return ScriptedRollout({k: [t for kk, t in zip(self.calls[-1], texts) if kk == k]
                                    for k in set(self.calls[-1])})(prompts, trainer)

    by_text = {p.problem: p for lv in cur.pool.values() for p in lv}
    inner = ByFamily({})
    ds = train.DynamicSampling(inner, funcs, weights, build_prompt=lambda q: [{"role": "user", "content": q}],
                               extra=2, rounds=1, curriculum=cur)
    out = ds([row("slot", "1")["prompt"]] * 4, fake_trainer([row("slot", "1")]))
    asked = inner.calls[0]
    assert "slot" not in asked and len(asked) == 8  # 2 problems + 2 candidates, each x G=2
    assert set(out["family"]) <= {f.name for f in data.FAMILIES if f.level == "medium"}
    families = {by_text[k].meta["family"] for k in asked}
    for fam in families:
        assert cur.rate(fam) == (1.0 if fam == "gcd" else 0.0)


def test_guard_leaves_adamw_weights_alone_on_a_step_without_signal():
    import torch

    w = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(w.parameters(), lr=0.1)
    w(torch.ones(1, 3)).sum().backward()
    opt.step()  # one real step: AdamW now has momentum
    sampler = SimpleNamespace(signal=False)
    guard = train.no_signal_guard(sampler)
    before = [p.detach().clone() for p in w.parameters()]
    for p in w.parameters():
        p.grad = torch.zeros_like(p)  # what a batch without advantages leaves
    guard.on_pre_optimizer_step(None, SimpleNamespace(global_step=4), None, model=w)
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, w.parameters()))
    assert guard.skipped == [5]
    # with signal the guard does nothing, and zero gradients still move the weights (momentum):
    # the reason it exists
    sampler.signal = True
    for p in w.parameters():
        p.grad = torch.zeros_like(p)
    guard.on_pre_optimizer_step(None, SimpleNamespace(global_step=5), None, model=w)
    opt.step()
    assert not all(torch.equal(a, b) for a, b in zip(before, w.parameters()))
    assert guard.skipped == [5]


def test_curriculum_draws_its_stage_and_favours_families_with_signal():
    cur = data.Curriculum(["easy:1,medium:1", "hard"], pool_size=60, window=4, floor=0.01)
    rng = random.Random(0)
    assert {p.meta["difficulty"] for p in cur.draw(40, rng)} == {"easy", "medium"}
    assert all(p.meta["split"] == "train" for p in cur.draw(20, rng))  # never an evaluation problem
    cur.update({"product": [1.0] * 4, "sum3": [1.0] * 4, "expr": [0.5] * 4})
    easy = [p.meta["family"] for p in cur.draw(400, rng) if p.meta["difficulty"] == "easy"]
    assert easy.count("expr") > 0.8 * len(easy)  # the solved ones are drawn at the floor only


def test_curriculum_floor_sets_how_often_a_family_without_signal_is_drawn():
    """p(1 - p) + floor: with a solved and a never-solved family beside one at p 0.5, a smaller floor
    draws the one with signal more often; a floor of 0 is refused (a stage of solved and hopeless
    families would have no weight left to draw by)."""
    shares = {}
    for floor in (0.05, 0.01):
        cur = data.Curriculum(["easy"], pool_size=60, window=4, floor=floor)
        cur.update({"product": [1.0] * 4, "sum3": [0.0] * 4, "expr": [0.5] * 4})
        drawn = [p.meta["family"] for p in cur.draw(2000, random.Random(0))]
        shares[floor] = drawn.count("expr") / len(drawn)
    assert abs(shares[0.05] - 0.30 / 0.40) < 0.05 and abs(shares[0.01] - 0.26 / 0.28) < 0.05
    with pytest.raises(data.DataError, match="floor must be in"):
        data.Curriculum(["easy"], pool_size=10, floor=0.0)


def test_curriculum_advances_by_rate_or_by_deadline():
    cur = data.Curriculum(["easy", "medium", "hard"], advance_at=0.8, window=4, stage_steps=5, pool_size=10)
    cur.update({"product": [1.0] * 4, "sum3": [1.0] * 4})
    assert cur.maybe_advance(1) is None  # expr not seen yet
    cur.update({"expr": [0.25, 0.25]})
    assert cur.maybe_advance(2) is None  # mean (1 + 1 + 0.25) / 3 < 0.8
    cur.update({"expr": [1.0, 1.0]})  # expr's window: 0.625; mean 0.875
    assert cur.maybe_advance(3) == "rate" and cur.stage == 1
    assert cur.maybe_advance(7) is None  # 4 steps into stage 1, deadline 5
    assert cur.maybe_advance(8) == "deadline" and cur.stage == 2
    assert [a["why"] for a in cur.advances] == ["rate", "deadline"]
    assert cur.maybe_advance(100) is None  # the last stage stays


def test_curriculum_state_survives_a_checkpoint(tmp_path):
    stages = ["easy", "medium", "hard"]
    cur = data.Curriculum(stages, window=4, stage_steps=5, pool_size=10)
    cur.update({"product": [1.0, 0.0]})
    cur.maybe_advance(5)
    ck = tmp_path / "checkpoint-6"
    ck.mkdir()
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": 6}))
    (ck / "curriculum.json").write_text(json.dumps(cur.state()))
    again = data.Curriculum(stages, window=4, stage_steps=5, pool_size=10)
    train.restore_curriculum(again, ck)
    assert again.state() == json.loads(json.dumps(cur.state()))
    # a save cut short before curriculum.json: the stage the deadlines alone reach by step 12
    (ck / "curriculum.json").unlink()
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": 12}))
    third = data.Curriculum(stages, window=4, stage_steps=5, pool_size=10)
    train.restore_curriculum(third, ck)
    assert third.stage == 2
    with pytest.raises(data.DataError, match="other stages"):
        data.Curriculum(["easy"], pool_size=10).load_state(cur.state())


def test_bad_curriculum_settings_fail_with_one_line(tmp_path):
    for extra, msg in ((["--curriculum", "easy"], "needs --dynamic_sampling"),
                       (["--dynamic_sampling", "true", "--curriculum", "easy", "medum"], "difficulty 'medum'"),
                       (["--dynamic_sampling", "true", "--dynamic_sampling_extra", "0"], "at least 1")):
        r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "recipes/cpu-smoke.yaml"),
                            "--output_dir", str(tmp_path / "o"), *extra], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stderr[-2000:]
        assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]


# ---------------------------------------------------------------------------
# tier 2: the real trainer
# ---------------------------------------------------------------------------

def test_real_curriculum_recipe_logs_dynamic_sampling_and_saves_the_curriculum(smollm2_dir, tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "recipes/cpu-curriculum.yaml"),
                        "--max_steps", "2", "--save_steps", "2", "--curriculum_stage_steps", "1",
                        "--max_completion_length", "96", "--max_agent_steps", "1",  # CI-sized steps
                        "--output_dir", str(out)], capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = [line for line in r.stdout.splitlines() + r.stderr.splitlines() if line.startswith("step ")]
    # the recipe's 2 problems + 2 candidates, and 2 more when fewer than 2 groups have signal
    # (dynamic_sampling_rounds 2): every problem sampled beyond the batch's 2 is dropped
    counts = [(int(re.search(r"sampled (\d+)", s)[1]), int(re.search(r"drop (\d+)", s)[1])) for s in steps]
    assert len(steps) == 2 and all(n in (4, 6) and d == n - 2 for n, d in counts), steps
    assert "stage 0" in steps[0] and "stage 1" in steps[1]  # the deadline of 1 step moved it
    hist = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert [h["dynamic/curriculum_stage"] for h in hist] == [0, 1]
    saved = json.loads((out / "checkpoint-2" / "curriculum.json").read_text())
    assert saved["stage"] == 1 and saved["advances"][0]["why"] == "deadline" and saved["history"]
