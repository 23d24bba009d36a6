"""
train.py end to end on CPU: the real GRPOTrainer (TRL 1.16), the real agent rollout (transformers
on the trainer's own SmolLM2-135M weights, backends.HFBackend), the real sandbox and rewards.

Run:  .venv/bin/python -m pytest tests/test_train.py -q        (several minutes on 2 CPU cores)

What is checked:
  - the smoke recipe (recipes/cpu-smoke.yaml), 2 steps in process: finite loss; every reward
    component, agent statistic and the temperature logged at every step; checkpoint-2 and the
    LoRA adapter written (its B matrices moved when a step had advantages); `evaluate.py --lora`
    runs on it as a subprocess (merged into the base model, cached, evaluated);
  - the temperature schedule on both sides, measured from the model, not from our bookkeeping:
    at each training rollout the sampler's logprobs and the logprobs of the loss's fused LM
    head both equal log_softmax(logits / T_step) of a plain forward pass, T_step changes from
    step to step, and the head does NOT match the initial temperature once T has moved (so the
    test fails if either side stays fixed);
  - resume: `train.py --resume_from_checkpoint last` (a subprocess) skips a newer checkpoint whose
    save was cut short, continues at the saved step 2 and trains step 3 only, at the schedule's
    step-2 temperature; which checkpoint it took, or that it starts fresh, is one line (unit tests);
  - two processes: `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo): world size
    2, per-rank rollout seeds differ, each rank scores its own slice, the adapter is saved once;
  - MemoryTrim (installed by build_trainer) hands a freed 800 MB heap back to the OS;
  - bench/truncation.py's table reader on the smoke run's real log_history;
  - bad configurations: one line on stderr and exit code 2, each (subprocesses); --help lists
    our fields with their docs;
  - recipes/deepmath.yaml builds a GRPOTrainer (SmolLM2 in place of Qwen, use_vllm off) with
    the released settings, so clashes between TRL settings are caught here; every released
    setting is in it or named in its Departures list (tier 1, no model);
  - the hub data path (a local stand-in of OpenMathReasoning's layout, streamed by the real
    `datasets`): with two processes the main one streams and caches the pool, the other reads
    it; offline, the errors name train.py's flags and DEEPMATH_DATA, and a missing evaluation
    set is named before the training split is read.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import protocol
import train

ROOT = Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "recipes" / "cpu-smoke.yaml")
SHORT = ["--examples", "1", "--max_completion_length", "128"]
"""What the runs that train here add to the smoke recipe, to fit CI's time: the last solved example
only (a ~330-token prompt instead of ~950, as recipes/cpu-mini.yaml) and a 128-token cap. What
they check (logging, the schedule, 2 processes, resume, the adapter) does not depend on either."""
PAPER = str(ROOT / "recipes" / "deepmath.yaml")
PY = sys.executable
NO_GPU = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusals of a machine without a GPU")


def _env(**extra) -> dict:
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return {**env, **extra}


# ---------------------------------------------------------------------------
# Two processes through accelerate (gloo on CPU)
# ---------------------------------------------------------------------------

def test_two_process_accelerate_run(smollm2_dir, tmp_path):
    out = tmp_path / "ddp"
    accelerate = str(Path(PY).parent / "accelerate")
    proc = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
         "train.py", "--config", SMOKE, *SHORT, "--output_dir", str(out), "--max_steps", "1", "--save_strategy", "no"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    seeds = dict(re.findall(r"rank (\d) of world size 2: rollout seed (\d+)", text))
    assert set(seeds) == {"0", "1"}, text[-3000:]
    assert seeds["0"] != seeds["1"]
    # each rank ran the agent on its own slice: 2 completions (1 problem x num_generations 2)
    for rank in "01":
        assert re.search(rf"rank {rank}: scoring 2 completions", text), text[-3000:]
    assert len(re.findall(r"saved LoRA adapter", text)) == 1  # the main process saves, once
    assert (out / "adapter_model.safetensors").is_file()
    assert re.search(r"^step 1 \| loss", text, re.M)


# ---------------------------------------------------------------------------
# Bad configurations: one line, exit code 2
# ---------------------------------------------------------------------------

@NO_GPU
def test_bad_configurations_fail_fast_with_one_line(tmp_path):
    no_answer = tmp_path / "no_answer.jsonl"
    no_answer.write_text(json.dumps({"id": "a", "problem": "What is 2+2?"}) + "\n")
    cases = {
        "paper recipe without a GPU": ([], "needs a GPU"),
        "num_generations does not divide the batch": (["--config", SMOKE, "--num_generations", "3"],
                                                      "divisible by num_generations"),
        "cap below the in-context examples": (["--config", SMOKE, "--max_completion_length", "100"],
                                              "smaller than the longest in-context example"),
        "dataset without answers": (["--config", SMOKE, "--dataset", str(no_answer)], "answer"),
        "reward weights of the wrong length": (["--config", SMOKE, "--reward_weights", "0.1", "1.0", "0.5"],
                                               "reward_weights has 3 values"),
        "use_vllm on CPU": (["--config", SMOKE, "--use_vllm", "true"], "use_vllm needs a GPU"),
        "sync_ref_model with LoRA": (["--config", SMOKE, "--sync_ref_model", "true", "--beta", "0.04"],
                                     "sync_ref_model does not work with LoRA"),
        "unknown layout": (["--config", SMOKE, "--layout", "sideways"], "--layout must be one of"),
        "unknown examples file": (["--config", SMOKE, "--examples_file", "nosuch.txt"],
                                  "--examples_file must name a file of prompts/"),
        "curriculum floor of 0": (["--config", SMOKE, "--dynamic_sampling", "true", "--curriculum", "easy",
                                   "--curriculum_floor", "0"], "floor must be in (0, 1]"),
    }
    procs = {name: subprocess.Popen([PY, "train.py", *argv], cwd=ROOT, env=_env(), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, (argv, _) in cases.items()}
    helped = subprocess.Popen([PY, "train.py", "--help"], cwd=ROOT, env=_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        errors = [l for l in stderr.splitlines() if l.startswith("error: ")]
        if name == "paper recipe without a GPU":
            assert train.CPU_COMMAND in stderr
        assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{stderr[-2000:]}"
        assert len(errors) == 1 and cases[name][1] in errors[0], f"{name}: {stderr[-2000:]}"
        assert "Traceback" not in stderr, f"{name}: {stderr[-2000:]}"
    # --help lists our fields with their docstrings, beside TRL's
    stdout, _ = helped.communicate(timeout=300)
    assert helped.returncode == 0
    for flag in ("--dataset", "--temperature_end", "--reward_truncated", "--max_agent_steps", "--num_generations"):
        assert flag in stdout
    assert "Last value of the linear temperature schedule" in stdout


@NO_GPU
def test_refusals_name_the_fix(monkeypatch):
    """check_config alone (no subprocess): the no-GPU line names the CPU command; bf16 on a CPU
    without native bf16 is refused (this machine has it, so the probe is replaced)."""
    import models

    with pytest.raises(train.ConfigError, match=re.escape(train.CPU_COMMAND)):
        train.check_config(*train.parse_args([]))  # the paper recipe (transformers refuses its bf16 already)
    with pytest.raises(train.ConfigError, match=re.escape(train.CPU_COMMAND)):
        train.check_config(*train.parse_args(["--bf16", "false"]))  # ... and check_config the rest
    script, args, model_args = train.parse_args(["--config", SMOKE, "--bf16", "true"])
    monkeypatch.setattr(models, "_cpu_has_bf16", lambda: False)
    with pytest.raises(train.ConfigError, match="no native bf16"):
        train.check_config(script, args, model_args)
    script, args, model_args = train.parse_args(["--config", SMOKE, "--use_peft", "false", "--bf16", "true"])
    monkeypatch.setattr(models, "_cpu_has_bf16", lambda: True)
    with pytest.raises(train.ConfigError, match="full fine-tune"):
        train.check_config(script, args, model_args)


TRIM_PROBE = """
import psutil, torch, train
rss = lambda: psutil.Process().memory_info().rss >> 20
cb = train.memory_trim_callback()
x = torch.ones(1 << 20); del x  # glibc raises its mmap threshold to 4 MB: the blocks below go to the heap
blocks = [torch.ones(1 << 20) for _ in range(200)]  # 800 MB in 4 MB blocks, as a step's activations
last = blocks[-1]  # still in use: the heap's top cannot shrink by itself
del blocks
freed = rss()
cb.on_substep_end(None, None, None)
print(freed, rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's (Linux)")
def test_memory_trim_hands_freed_blocks_back():
    """After a step's blocks are freed, glibc keeps them resident until malloc_trim: the
    callback train.py installs must hand them back (a fresh interpreter, so the heap is ours)."""
    run = subprocess.run([PY, "-c", TRIM_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    freed, trimmed = map(int, run.stdout.split()[-2:])
    assert freed - trimmed > 500, (freed, trimmed)  # MB: most of the 800 MB went back


def test_doctests():
    import doctest

    assert doctest.testmod(train).failed == 0


# ---------------------------------------------------------------------------
# The paper's recipe builds a trainer (a small model in place of Qwen3-4B, on CPU)
# ---------------------------------------------------------------------------

def test_paper_recipe_builds_a_trainer(smollm2_dir, tmp_path):
    from datasets import Dataset

    from models import _cpu_has_bf16

    overrides = ["--config", PAPER, "--model_name_or_path", smollm2_dir, "--use_cpu", "true", "--use_vllm", "false",
                 "--output_dir", str(tmp_path), "--bf16", str(_cpu_has_bf16()).lower()]
    script, args, model_args = train.parse_args(overrides)
    train.check_config(script, args, model_args)
    ds = Dataset.from_list([{"prompt": protocol.build_messages("What is 2+2?"), "answer": "4"}] * 8)
    trainer = train.build_trainer(script, args, model_args, train_dataset=ds)
    a = trainer.args
    assert (a.learning_rate, a.lr_scheduler_type.value, a.warmup_steps) == (1e-6, "cosine", 0.1)
    assert (a.num_generations, a.per_device_train_batch_size, a.gradient_accumulation_steps) == (4, 4, 2)
    assert (a.top_p, a.top_k, a.epsilon_high, a.max_completion_length) == (0.8, 50, 0.4, 5000)
    assert a.gradient_checkpointing and a.reward_weights == [0.1, 1.0] and not a.sync_ref_model
    # issue 17: the rest of the released config reaches the trainer (TRL keeps use_reentrant off here)
    assert (a.weight_decay, a.seed, a.num_train_epochs, a.max_steps) == (0.001, 42, 1, -1)
    assert a.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert (trainer.temperature_sync.start, trainer.temperature_sync.end, trainer.temperature_sync.steps) == (1.2, 0.7, None)
    assert (script.max_agent_steps, script.dev_size, script.layout) == (50, 150, "system")
    lora = trainer.model.peft_config["default"]
    assert (lora.r, lora.lora_alpha, lora.use_rslora, lora.lora_dropout) == (32, 16, True, 0.1)
    assert trainer.reward_func_names == ["accuracy_reward", "code_use_reward"]
    # the schedule's loss side works on this model: rebuild the head at another T and check it
    import torch

    train.set_loss_temperature(trainer, 0.7)
    model = trainer.model
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        model.eval()
        logits = model(input_ids=ids).logits[0, :-1].float()
        fused = model(input_ids=ids, labels=ids, fused_lm_head=True).log_probs[0]
    want = torch.log_softmax(logits / 0.7, -1).gather(1, ids[0, 1:, None])[:, 0]
    assert (fused.float() - want).abs().max() < 0.05  # bf16 weights: loose; a T of 1.2 is off by far more


# ---------------------------------------------------------------------------
# The smoke run, in process, with a probe of both temperatures at every training rollout
# ---------------------------------------------------------------------------

def _probe(trainer, out: dict, rows: int = 2) -> dict:
    """Right after a rollout (before this step's update): compare the sampler's logprobs and the
    loss head's logprobs of the sampled tokens with log_softmax(logits / T) of a plain forward."""
    import torch

    T, T0 = trainer.temperature_sync.current, trainer.args.temperature
    model = trainer.accelerator.unwrap_model(trainer.model)
    was_training = model.training
    model.eval()  # no dropout, as at sampling time
    d_sampled, d_fused, d_fused_T0 = [], [], []
    try:
        with torch.no_grad():
            for i in range(min(rows, len(out["completion_ids"]))):
                p, c = out["prompt_ids"][i], out["completion_ids"][i]
                ids = torch.tensor([p + c])  # (1, P+C)
                mask = torch.tensor(out["env_mask"][i], dtype=torch.bool)  # (C,) sampled tokens
                tok = torch.tensor(c)  # (C,)
                logits = model(input_ids=ids).logits[0, len(p) - 1:-1].float()  # (C, V) plain forward

                def at(t):
                    return torch.log_softmax(logits / t, dim=-1).gather(1, tok[:, None])[:, 0]  # (C,)

                labels = ids.clone()
                labels[0, :len(p)] = -100
                # the call TRL's loss makes (GRPOTrainer._get_per_token_logps_and_entropies)
                fused = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs[0, len(p) - 1:]  # (C,)
                sampled = torch.tensor(out["logprobs"][i])  # (C,)
                d_sampled.append((sampled - at(T))[mask].abs().max().item())
                d_fused.append((fused - at(T))[mask].abs().max().item())
                d_fused_T0.append((fused - at(T0))[mask].abs().max().item())
    finally:
        model.train(was_training)
    return {"step": trainer.state.global_step, "T": T, "sampled_vs_T": max(d_sampled),
            "fused_vs_T": max(d_fused), "fused_vs_T0": max(d_fused_T0)}


@pytest.fixture(scope="module")
def smoke(smollm2_dir, tmp_path_factory):
    import gc

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/conftest.py one_torch_thread: 1 thread is faster on this shared CPU
    out = tmp_path_factory.mktemp("smoke")
    try:
        script, args, model_args = train.parse_args(["--config", SMOKE, *SHORT, "--output_dir", str(out),
                                                     "--max_steps", "2"])
        train.check_config(script, args, model_args)
        trainer = train.build_trainer(script, args, model_args)
        probes, inner = [], trainer.rollout_func

        def probing_rollout(prompts, tr):
            result = inner(prompts, tr)
            probes.append(_probe(tr, result))
            return result

        trainer.rollout_func = probing_rollout  # instrumentation only: observes, changes nothing
        trainer.train()
        trainer.save_model(str(out))
        # keep what the tests read; free the model and optimizer before the subprocess tests
        run = SimpleNamespace(log_history=trainer.state.log_history, T0=trainer.args.temperature,
                              callbacks=[type(cb).__name__ for cb in trainer.callback_handler.callbacks],
                              sync_history=trainer.temperature_sync.history, probes=probes, out=out)
        del trainer, inner, probing_rollout
        gc.collect()
    finally:
        torch.set_num_threads(threads)
    return run


STEP_KEYS = (
    "loss", "reward", "rewards/accuracy_reward/mean", "rewards/code_use_reward/mean",
    "completions/mean_length", "completions/mean_length_all_tokens", "completions/clipped_ratio",
    "agent/calls_per_completion", "agent/code_use_rate", "agent/snippet_error_rate",
    "agent/snippet_timeout_rate", "agent/truncated_rate", "temperature", "step_time",
)


def test_smoke_recipe_trains_and_logs_everything(smoke):
    logs = [h for h in smoke.log_history if "loss" in h]
    assert [h["step"] for h in logs] == [1, 2]
    for h in logs:
        missing = [k for k in STEP_KEYS if h.get(k) is None]
        assert not missing, f"step {h['step']} did not log {missing}"
        assert math.isfinite(h["loss"])
        assert h["completions/mean_length_all_tokens"] >= h["completions/mean_length"]  # model tokens <= all tokens
        line = train.StepLine.line(h, h["step"])
        assert line.startswith(f"step {h['step']} | loss ") and " | T " in line and " | calls " in line
    assert "MemoryTrim" in smoke.callbacks or not sys.platform.startswith("linux")
    # the logged temperature is the one both sides used at that step
    assert [round(h["temperature"], 6) for h in logs] == [round(p["T"], 6) for p in smoke.probes]


def test_bench_truncation_reads_this_log(smoke):
    """bench/truncation.py's table is read from trainer_state.json's log_history; its three real
    runs are too slow for CI, so its reader is checked here on the smoke run's real log (a key
    renamed in train.py's logging would otherwise only show in the next measurement)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_truncation", ROOT / "bench" / "truncation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for arm in bench.ARMS:
        r = bench.row(smoke.log_history, arm)
        assert set(r) == {"trunc", "len", "len_all", "acc", "code", "reward"}
        assert all(math.isfinite(v) for v in r.values()), (arm, r)
        assert 0 <= r["trunc"] <= 1 and 0 <= r["acc"] <= 1 and 0 <= r["code"] <= 1 and r["len_all"] >= r["len"] > 0


def test_temperature_schedule_reaches_sampler_and_loss(smoke):
    probes = smoke.probes
    assert [p["step"] for p in probes] == [0, 1]
    temps = [p["T"] for p in probes]
    assert temps == pytest.approx([1.2, 0.95])  # recipe: 1.2 -> 0.7 over 2 steps
    assert temps[0] != temps[1], "the schedule must move between steps"
    for p in probes:
        # the sampler drew the completions at T, and the loss scores them at the same T
        assert p["sampled_vs_T"] < 2e-3, p
        assert p["fused_vs_T"] < 2e-3, p
    # once T moved, the loss head no longer uses the initial temperature (the TRL 1.16 default)
    moved = [p for p in probes if abs(p["T"] - smoke.T0) > 0.1]
    assert moved and all(p["fused_vs_T0"] > 0.02 for p in moved), probes
    assert smoke.sync_history == [(0, pytest.approx(1.2)), (1, pytest.approx(0.95))]


def test_adapter_written_and_loads_in_evaluate(smoke, smollm2_dir, tmp_path):
    out = smoke.out
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 32 and cfg["use_rslora"] and cfg["lora_alpha"] == 16
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2

    # the update reached the adapter: LoRA's B matrices start at zero, and a step whose groups had
    # any reward variance (non-zero advantages) moves them
    from safetensors.torch import load_file

    lora_b = [v for k, v in load_file(str(out / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert lora_b
    logs = [h for h in smoke.log_history if "loss" in h]
    if any(h["frac_reward_zero_std"] < 1 for h in logs):
        assert any(bool(v.abs().sum() > 0) for v in lora_b), "a step with advantages left the adapter at zero"

    # `evaluate.py --lora` as a user runs it (a subprocess): it merges the adapter into the base
    # model (models.merge_lora; peft raises if the adapter does not fit SmolLM2), caches the
    # merged checkpoint and evaluates it (transformers backend: no engine start-up; vLLM loading
    # the merged model is tests/test_replicate.py's)
    env = _env(DEEPMATH_CACHE=str(tmp_path / "cache"))
    p = subprocess.run([PY, str(ROOT / "evaluate.py"), "--bench", "procedural", "--model", "smollm2-135m",
                        "--lora", str(out), "--backend", "transformers", "--mode", "baseline", "--limit", "1", "--samples", "1",
                        "--max-tokens", "16", "--out", str(tmp_path / "eval")],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["settings"]["lora"] == str(out.resolve()) and summary["n_problems"] == 1
    merged = [m.parent for m in (tmp_path / "cache").rglob("deepmath_merged_from.json")]
    assert len(merged) == 1 and (merged[0] / "model.safetensors").is_file()
    assert json.loads((merged[0] / "deepmath_merged_from.json").read_text())["lora"] == str(out)


def test_resume_continues_at_saved_step(smoke):
    """`--resume_from_checkpoint last` with a newer checkpoint whose save was killed before its
    last file (a copy of the real checkpoint-2 without trainer_state.json, as checkpoint-7): the
    run must resume from checkpoint-2, the newest complete one, and say so in one line."""
    import shutil

    out = smoke.out
    shutil.copytree(out / "checkpoint-2", out / "checkpoint-7", ignore=shutil.ignore_patterns("trainer_state.json"))
    try:
        proc = subprocess.run(
            [PY, "train.py", "--config", SMOKE, *SHORT, "--output_dir", str(out), "--max_steps", "3",
             "--resume_from_checkpoint", "last"],
            cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900,
        )
    finally:
        shutil.rmtree(out / "checkpoint-7")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    said = [l for l in text.splitlines() if "--resume_from_checkpoint last:" in l]
    assert len(said) == 1 and f"resuming from {out / 'checkpoint-2'}" in said[0], text[-3000:]
    assert "checkpoint-7: no trainer_state.json" in said[0]
    steps = [int(m) for m in re.findall(r"^step (\d+) \| loss", text, re.M)]
    assert steps == [3], text[-3000:]  # steps 1-2 came from the checkpoint; only step 3 ran
    line = next(l for l in text.splitlines() if l.startswith("step 3 |"))
    assert " | T 0.700" in line  # the schedule's value at global step 2, restored with the state
    assert "rollout_func: step 2, T=0.700" in text


# ---------------------------------------------------------------------------
# Issue 17: the released configuration complete; the hub data path; resuming from "last"
# ---------------------------------------------------------------------------

RELEASED = {
    # every setting of the released DeepMath config that this project knows (the paper, its released
    # configuration as issue 17 lists it); the recipe carries each one or names it under "Departures"
    "model_name_or_path": "Qwen/Qwen3-4B-Thinking-2507", "use_peft": True, "lora_r": 32, "lora_alpha": 16,
    "use_rslora": True, "lora_dropout": 0.1, "lora_target_modules": "all-linear",
    "learning_rate": 1e-6, "lr_scheduler_type": "cosine", "warmup_steps": 0.1, "weight_decay": 0.001,
    "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "num_train_epochs": 1, "seed": 42,
    "bf16": True, "gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False},
    "num_generations": 4, "epsilon_high": 0.4, "reward_weights": [0.1, 1.0], "max_completion_length": 5000,
    "temperature": 1.2, "temperature_end": 0.7, "top_p": 0.8, "top_k": 50, "max_agent_steps": 50, "dev_size": 150,
    "sync_ref_model": True, "ref_model_mixup_alpha": 0.4, "ref_model_sync_steps": 300,
    "dataset": "a preprocessed TIR set",
}


def test_paper_recipe_carries_every_released_setting():
    """Tier 1 (no model): each released setting is in recipes/deepmath.yaml with its value, or the
    recipe's "Departures" list names it; the run length is one epoch, so no max_steps may be set
    (transformers: max_steps > 0 overrides num_train_epochs)."""
    import yaml

    text = Path(PAPER).read_text()
    recipe = yaml.safe_load(text)
    assert "# Departures from the released config" in text, "recipes/deepmath.yaml has no Departures list"
    block = text.split("# Departures from the released config", 1)[1].split("\n\n", 1)[0]
    departed = {k for k in RELEASED if re.search(rf"\b{k}\b", block)}
    assert departed == {"sync_ref_model", "ref_model_mixup_alpha", "ref_model_sync_steps", "dataset"}, departed
    for key, value in RELEASED.items():
        if key not in departed:
            assert key in recipe, f"recipes/deepmath.yaml lacks the released {key}: {value!r} and does not list it as a departure"
            assert recipe[key] == value, f"{key}: recipe {recipe[key]!r}, released {value!r}, not listed as a departure"
    assert "max_steps" not in recipe
    script, args, model_args = train.parse_args(["--use_cpu", "true", "--bf16", "false", "--use_vllm", "false"])
    assert (args.num_train_epochs, args.max_steps, args.weight_decay, args.seed) == (1, -1, 0.001, 42)
    assert args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert script.temperature_steps is None  # the schedule spans the run, which is now one epoch


def _checkpoint(folder: Path, step: int, skip: tuple[str, ...] = (), state: str | None = None) -> Path:
    """A checkpoint folder with the files transformers 5.19's Trainer._save_checkpoint writes for a
    LoRA run, in its order (the adapter, optimizer.pt, scheduler.pt, rng_state.pth, then
    trainer_state.json last), leaving out `skip` (a save cut short)."""
    ck = folder / f"checkpoint-{step}"
    ck.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        if name not in skip:
            (ck / name).write_bytes(b"x")
    if "trainer_state.json" not in skip:
        (ck / "trainer_state.json").write_text(state if state is not None else json.dumps({"global_step": step}))
    return ck


def test_resume_last_takes_the_newest_complete_checkpoint(tmp_path, caplog):
    out = tmp_path / "run"
    good = _checkpoint(out, 4)
    _checkpoint(out, 2)
    _checkpoint(out, 6, skip=("trainer_state.json",))                 # killed before the last file
    _checkpoint(out, 8, state='{"global_step": 8, "log_hist')          # killed while writing it
    _checkpoint(out, 10, skip=("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"))
    (out / "checkpoint-12-tmp").mkdir()                                   # not a checkpoint folder
    caplog.set_level("INFO", logger="deepmath.train")
    assert train.resume_path("last", str(out)) == str(good)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and str(good) in lines[0], lines
    assert all(f"checkpoint-{n}" in lines[0] for n in (6, 8, 10)), lines[0]  # the skipped ones are named
    # a named checkpoint must be complete too; "true" means "last" (transformers' spelling)
    with pytest.raises(train.ConfigError, match=r"checkpoint-8.*incomplete.*trainer_state.json"):
        train.resume_path(str(out / "checkpoint-8"), str(out))
    assert train.resume_path("true", str(out)) == str(good)
    assert train.resume_path(str(good), str(out)) == str(good)


def test_resume_last_says_when_it_starts_fresh(tmp_path, caplog):
    caplog.set_level("INFO", logger="deepmath.train")
    assert train.resume_path("last", str(tmp_path / "absent")) is None
    out = tmp_path / "run"
    _checkpoint(out, 3, skip=("trainer_state.json",))
    assert train.resume_path("last", str(out)) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("starting fresh" in l for l in lines), lines
    assert "checkpoint-3" in lines[1] and "incomplete" in lines[1]
    caplog.clear()
    assert train.resume_path(None, str(out)) is None and not caplog.records  # not asked to resume: silent


HUB_OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": "/nonexistent-deepmath-test-cache",
               "HF_HOME": "/nonexistent-deepmath-hf-home"}


def test_hub_data_errors_name_train_flags(tmp_path):
    """`python train.py` with the hub out of reach: one line naming train.py's own flags and
    DEEPMATH_DATA (not evaluate.py's --data), for the training split and for a decontamination set;
    the decontamination set is named before the training split is touched."""
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "math500.jsonl").write_text(json.dumps({"id": "m", "problem": "q", "answer": "1"}) + "\n")
    cases = {
        "training split": (["--dataset", "openmathreasoning", "--decontaminate_against", "none"], {},  # none: no sets
                           ("cannot load openmathreasoning", "--dataset FILE.jsonl", "--dataset procedural")),
        "decontamination set": (["--dataset", "openmathreasoning", "--decontaminate_against", "math500", "hle"],
                                {"DEEPMATH_DATA": str(folder)},
                                ("decontamination set 'hle'", "DEEPMATH_DATA", "--decontaminate_against")),
    }
    procs = {name: subprocess.Popen([PY, "train.py", "--config", SMOKE, "--output_dir", str(tmp_path / "out"), *argv],
                                    cwd=ROOT, env=_env(**HUB_OFFLINE, **extra), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, (argv, extra, _) in cases.items()}
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=300)
        errors = [l for l in stderr.splitlines() if l.startswith("error: ")]
        assert proc.returncode == 2 and len(errors) == 1, f"{name}: exit {proc.returncode}\n{stderr[-2000:]}"
        assert all(s in errors[0] for s in cases[name][2]), f"{name}: {errors[0]}"
        assert "--data " not in errors[0] and "Traceback" not in stderr, f"{name}: {errors[0]}"


POOL_PROBE = """
import json, sys
sys.path.insert(0, {root!r})
import data, train
data.OPENMATHREASONING = data.Benchmark({folder!r}, "tir", fields={{"problem": "problem", "answer": "expected_answer"}})
opened, real = [], data._hub_rows
data._hub_rows = lambda spec, what, *a, **k: (opened.append(what), real(spec, what, *a, **k))[1]
script, args, _ = train.parse_args(["--config", {smoke!r}, "--dataset", "openmathreasoning", "--dev_size", "1",
                                    "--output_dir", {out!r}])
tr, dev = train.load_datasets(script, args)
print("POOL", json.dumps({{"rank": args.process_index, "world": args.world_size,
                          "streams": opened.count("openmathreasoning"),
                          "ids": sorted(list(tr["problem_id"]) + list(dev["problem_id"]))}}))
"""


def test_hub_pool_built_by_the_main_process_and_read_by_the_other(tmp_path):
    """Two processes (accelerate, gloo on CPU) load the hub pool through train.load_datasets: the
    main process streams the split once and caches it; the other waits, then reads the cache.
    The stand-in is nvidia/OpenMathReasoning's layout in a local folder (see tests/test_data.py's
    omr fixture), streamed by the real datasets.load_dataset."""
    folder = tmp_path / "omr"
    folder.mkdir()
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: tir\n"
                                      "    path: tir.jsonl\n---\n")
    rows = [{"problem": f"What is {i}+{i}?", "expected_answer": str(2 * i)} for i in range(1, 9)]
    (folder / "tir.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    probe = tmp_path / "probe.py"
    probe.write_text(POOL_PROBE.format(root=str(ROOT), folder=str(folder), smoke=SMOKE, out=str(tmp_path / "out")))
    accelerate = str(Path(PY).parent / "accelerate")
    proc = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", "0", str(probe)],
        cwd=ROOT, env=_env(DEEPMATH_CACHE=str(tmp_path / "cache")), capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    got = {r["rank"]: r for r in (json.loads(l.split(" ", 1)[1]) for l in proc.stdout.splitlines() if l.startswith("POOL "))}
    assert set(got) == {0, 1} and got[0]["world"] == 2, text[-3000:]
    assert (got[0]["streams"], got[1]["streams"]) == (1, 0), got
    assert got[0]["ids"] == got[1]["ids"] == sorted(f"openmathreasoning-{i}" for i in range(len(rows)))
