"""
replicate.py -- the paper's Table 1 in miniature, on one CPU, in one command (`make replicate`).

Paper, "Results" (Table 1): four rows on the same problems -- Baseline (the model, no agent),
+Agent (the same model with the agent), +GRPO (the GRPO-trained model, no agent) and DeepMath
(the trained model with the agent) -- scored by majority@16 accuracy and mean output length. The
claim is about a mechanism: handing computation to a sandbox shortens traces and fixes arithmetic,
and GRPO toward code use makes the agent better. This script runs that mechanism for real at a
size a 2-core CPU can afford: SmolLM2-135M-Instruct, the real sandbox, TRL's real GRPOTrainer
(train.py) and the real evaluation (evaluate.py). Nothing is mocked or scripted.

Data flow (the numbers match the code below):
  1. Config: one dataclass (its field docstrings are --help). The evaluation budget -- token cap,
     agent steps, executor output, prompt layout and examples, difficulty mix -- is read from the
     training recipe, so the four rows are scored under the conditions the policy trained in.
  2. Train: `train.py --config RECIPE --seed S --output_dir OUT/adapter` in a subprocess, its log
     appended to OUT/train.log. What it trains from (the recipe's content, its prompt's, the seed,
     --train-args) is written to OUT/train_inputs.json first. A finished adapter of the same
     inputs is reused; an interrupted run resumes from its last checkpoint
     (--resume_from_checkpoint last); an adapter of other inputs is moved aside (renamed
     ADAPTER.old-TIME, with a printed line) and trained again.
  3. Evaluate: the four rows of each row group through evaluate.run, one vLLM engine per model
     (the untrained model: Baseline and +Agent; the adapter merged into it: +GRPO and DeepMath).
     Row groups:
       - procedural (OUT/baseline, OUT/agent, OUT/grpo, OUT/deepmath): held-out problems, split
         "test" of data.procedural (disjoint from the training split by construction) with an
         evaluation seed, in the training phrasings and difficulty mix;
       - heldout-templates (OUT/heldout-templates/ROW): the same families phrased in templates the
         training never saw;
       - hard (OUT/hard/ROW): held-out problems of the hard level alone (multi-step word problems,
         linear systems, congruences), in the training phrasings: where handing the arithmetic to
         the sandbox should matter most, and a level the recipe may not train on;
       - math500 (OUT/math500/ROW): a slice of MATH-500 as a sanity row, from --math500-data, the
         shared data folder, or the hub; where none is reachable it says so and goes on.
     Every problem is written as it finishes (evaluate.py's generations.jsonl): a rerun resumes.
     A row whose folder holds the evaluation of other inputs -- an adapter trained again in this
     run or changed since (evaluate.py pins its content), other settings (the recipe's budget,
     --samples, --seed, the data) -- is moved aside (ROW.old-TIME, printed) and evaluated afresh;
     rows whose inputs did not change are reused (retraining re-evaluates +GRPO and DeepMath only).
  4. Report: evaluate.py's Table 1 per group (accuracy with its interval, output tokens, agent
     calls per solution, snippet error rate) and its accuracy-against-length PNG; the training
     curves (reward, accuracy, code-use rate, temperature per step) as OUT/training.png; the
     targets checked with a paired bootstrap over problems (evaluate.paired_difference); every
     column and difference of a group over the same problems, those all four rows' summaries
     cover (evaluate.shared_problems), their count stated; all of it in OUT/report.json and
     OUT/report.md, with the wall time of every stage (summed over reruns: OUT/wall_s.json).
  5. Per family and level: each procedural group's problems are generated again (the call its rows
     were evaluated with) to name each problem's family and level; every row's maj@k and mean@k per
     family and per level, over the same paired problems, follow that group's Table 1 (one markdown
     table: the families of each level, then its subtotal) and go to report.json's
     groups[GROUP/seedS]["per_family"] and ["per_level"].
  6. Targets per level: per training seed, every procedural group pooled (one paired bootstrap over
     all their problems: pooled_difference); for the medium level, the hard level and the
     multi-step word families (MULTI_STEP_FAMILIES), DeepMath - +Agent maj@k must be >= 15 points
     with its interval above 0; and DeepMath's traces shorter than Baseline's. Each is met, MISSED,
     or "not measured" (no such problem: never met), in report.md's "Targets per level" and
     report.json["levels"]["seedS"].

Departures from the paper, and why:
  - a 135M model, generated problems with exact answers and a short completion cap instead of
    Qwen3-4B on OpenMathReasoning with 5k tokens: what one CPU can train in minutes (the recipe,
    recipes/cpu-curriculum.yaml, says what else it scales down, and what it adds: DAPO's dynamic
    sampling and a curriculum; recipes/cpu-mini.yaml is the same run without them, one example shown);
  - majority@4 instead of majority@16 on 32 held-out problems (16, 16 and 8 in the other three groups),
    with the paired interval over problems: evaluation time is the budget (the command's target
    is 45 minutes on 2 cores, training included). 32 problems give a 95% interval of about +-16
    points on a difference, enough to tell a 15-point gain from none only when the gain is large;
    --problems raises it (the 64-problem run in docs/replication.md took 59 minutes);
  - the evaluation samples at protocol.EVAL_SAMPLING (T 0.6, top_p 0.95, top_k 20: the Qwen3
    card's), the same for all four rows.

Run:  make replicate                        (= python replicate.py; 37-44 min on 2 CPU cores here)
      python replicate.py --train-seeds 0 1 (a second training seed: OUT/seed1/{adapter,grpo,deepmath}, +34-41 min)
      python replicate.py --recipe recipes/cpu-mini.yaml --out runs/replication-mini  (no curriculum)
      python replicate.py --help
Tests: python -m pytest tests/test_replicate.py -q   (a CI-sized run: 2 training steps, 2 problems a row)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import data
import evaluate as E
from cli import dataclass_parser
from protocol import EVAL_SAMPLING
from train import ScriptArguments  # train.py's flags: a recipe's missing key has their default

ROOT = Path(__file__).resolve().parent
SHARED_MATH500 = ROOT.parent / "shared" / "data" / "math500.jsonl"
"""Where this project's sessions keep MATH-500 offline (../shared/data, see its SOURCES.md)."""

ROWS = (  # name, evaluate.py --mode, trained?  (the paper's Table 1, top to bottom)
    ("baseline", "baseline", False),
    ("agent", "agent", False),
    ("grpo", "baseline", True),
    ("deepmath", "agent", True),
)
LABELS = {"baseline": "Baseline", "agent": "+Agent", "grpo": "+GRPO", "deepmath": "DeepMath"}
MULTI_STEP_FAMILIES = ("change", "distance", "crates", "work_rate", "committee", "divisible_or")
"""The hard families whose text needs several quantities combined (prices and counts, speeds and
hours...): the word problems where handing the arithmetic to the sandbox should pay most. The other
two hard families, linear_system and congruence, are one stated equation each."""



class ReplicateError(Exception):
    """Printed as one line by main(), exit status 2."""


# ---------------------------------------------------------------------------
# 1) Config
# ---------------------------------------------------------------------------

@dataclass
class Config:
    """The paper's Table 1 in miniature: train with recipes/cpu-curriculum.yaml, evaluate four rows."""

    out: str = "runs/replication"
    """Output directory: the adapter, each row's evaluate.py directory, the plots and the report."""
    recipe: str = "recipes/cpu-curriculum.yaml"
    """train.py recipe; the evaluation reads its budget, prompt layout, examples and difficulty."""
    train_seeds: list[int] = field(default_factory=lambda: [0])
    """Training seeds. The first writes OUT/adapter and the main rows; each other seed S writes
    OUT/seedS/adapter and its own +GRPO and DeepMath rows."""
    train_args: list[str] = field(default_factory=list)
    """Extra train.py flags after the recipe (e.g. --train-args=--max_steps=2 for a CI-sized run)."""
    problems: int = 32
    """Held-out procedural problems per row (the main row group)."""
    heldout_templates: int = 16
    """Problems per row phrased in templates the training never saw (0 skips the group)."""
    hard: int = 16
    """Held-out problems of the hard level per row (multi-step word problems, linear systems, ...); 0 skips
    the group."""
    math500: int = 8
    """MATH-500 problems per row, the sanity row group (0 skips it)."""
    math500_data: str | None = None
    """MATH-500 JSONL; default: $DEEPMATH_DATA, then ../shared/data/math500.jsonl, then the hub."""
    samples: int = 4
    """Samples per problem (the k of maj@k; the paper: 16)."""
    seed: int = 1
    """Evaluation seed: of the held-out procedural problems (split "test") and of sampling."""
    temperature: float = EVAL_SAMPLING.temperature
    """Evaluation sampling temperature, the same for every row (protocol.EVAL_SAMPLING, as evaluate.py)."""
    top_p: float = EVAL_SAMPLING.top_p
    """Evaluation nucleus sampling (protocol.EVAL_SAMPLING)."""
    top_k: int = EVAL_SAMPLING.top_k
    """Evaluation top-k (protocol.EVAL_SAMPLING)."""


def parse_args(argv=None) -> Config:

    p = dataclass_parser(Config, "replicate.py", special={"train_seeds": {"type": int, "nargs": "+"},
                                                         "train_args": {"action": "append"}})
    cfg = Config(**vars(p.parse_args(argv)))
    for name in ("problems", "samples"):
        if getattr(cfg, name) < 1:
            p.error(f"--{name} must be at least 1")
    for name in ("heldout_templates", "hard", "math500"):
        if getattr(cfg, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if len(set(cfg.train_seeds)) != len(cfg.train_seeds):
        p.error("--train-seeds must be distinct")
    return cfg


def read_recipe(path: str) -> dict:
    """The recipe's settings that the evaluation must share with training."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ReplicateError(f"recipe {path} not found (the miniature's is recipes/cpu-curriculum.yaml)")
    r = yaml.safe_load(p.read_text()) or {}
    dataset = str(r.get("dataset", ""))
    if not dataset.startswith("procedural"):
        raise ReplicateError(f"{path}: dataset {dataset!r} is not procedural; the miniature scores held-out "
                             "procedural problems of the same families (use recipes/cpu-curriculum.yaml)")
    return {
        "model": r.get("model_name_or_path", "smollm2-135m"),
        "difficulty": dataset.partition(":")[2] or "mixed",
        # a key the recipe leaves out has train.py's default (max_completion_length: TRL's, 256)
        "layout": r.get("layout", ScriptArguments.layout),
        "examples": r.get("examples", ScriptArguments.examples),
        "examples_file": r.get("examples_file", ScriptArguments.examples_file),
        "max_tokens": int(r.get("max_completion_length", 256)),
        "max_steps": int(r.get("max_agent_steps", ScriptArguments.max_agent_steps)),
        "max_output_tokens": int(r.get("max_output_tokens", ScriptArguments.max_output_tokens)),
        "max_train_steps": r.get("max_steps"),
    }


# ---------------------------------------------------------------------------
# 2) Train
# ---------------------------------------------------------------------------

def adapter_dir(cfg: Config, seed: int) -> Path:
    return Path(cfg.out) / ("adapter" if seed == cfg.train_seeds[0] else f"seed{seed}/adapter")


def retire(d: Path, why: str) -> Path:
    """Move a folder of stale results aside (renamed D.old-TIME: nothing is deleted), saying why."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = d.with_name(f"{d.name}.old-{stamp}"), 1
    while dest.exists():
        dest, n = d.with_name(f"{d.name}.old-{stamp}-{n}"), n + 1
    d.rename(dest)
    print(f"{d}: {why}; moved aside to {dest.name}", flush=True)
    return dest


def train_inputs(cfg: Config, seed: int) -> dict:
    """What an adapter is trained from, as recorded beside it (ADAPTER/../train_inputs.json): the
    recipe's content, the prompt it trains under (the recipe names its examples file of prompts/ by
    name only: evaluate.prompt_hash hashes what the file says), the seed and --train-args."""
    r = read_recipe(cfg.recipe)
    prompt = E.prompt_hash(E.Config(mode="agent", model=r["model"], layout=r["layout"], examples=r["examples"],
                                    examples_file=r["examples_file"]))
    return {"recipe_sha256": E.content_hash(cfg.recipe), "prompt_sha256": prompt, "seed": seed,
            "train_args": list(cfg.train_args)}


def train(cfg: Config, seed: int) -> tuple[Path, bool]:
    """train.py in a subprocess (its own memory; its log kept). Returns (the adapter, whether it
    was trained in this call). A finished adapter of the same inputs is reused; one of other
    inputs (train_inputs: the recipe's content, its prompt, the seed, --train-args), finished or
    not, is moved aside and trained again. An adapter from before the record is reused as it is,
    and a key the record lacks (recorded before it was added) is no difference."""
    out = adapter_dir(cfg, seed)
    record = out.parent / "train_inputs.json"
    want = train_inputs(cfg, seed)
    have = json.loads(record.read_text()) if record.is_file() else None
    changed = ", ".join(k for k in want if have is not None and k in have and have[k] != want[k])
    if out.exists() and changed:
        retire(out, f"trained from other inputs ({changed} changed), so it is trained again")
    if (out / "adapter_config.json").is_file() and (out / "trainer_state.json").is_file():
        print(f"training seed {seed}: {out} is already trained, reused (delete it to train again)", flush=True)
        return out, False
    record.parent.mkdir(parents=True, exist_ok=True)
    E.write_json(record, want)  # before training: an interrupted run resumes only from the same inputs
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", cfg.recipe, "--seed", str(seed),
           "--output_dir", str(out), "--resume_from_checkpoint", "last", *cfg.train_args]
    logfile = Path(cfg.out) / ("train.log" if seed == cfg.train_seeds[0] else f"seed{seed}/train.log")
    logfile.parent.mkdir(parents=True, exist_ok=True)
    print(f"training seed {seed}: {' '.join(cmd[1:])}  (log: {logfile})", flush=True)
    with open(logfile, "a") as f:
        f.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # the log as it happens
        for line in proc.stdout:  # everything to the log; the step lines and errors to the console too
            f.write(line)
            f.flush()
            for part in line.split("\r"):  # the progress bar redraws with \r before a step line
                if part.startswith(("step ", "error")):
                    print(part.rstrip(), flush=True)
        rc = proc.wait()
    if rc != 0:
        tail = logfile.read_text().strip().splitlines()[-1:] or ["?"]
        raise ReplicateError(f"train.py failed (exit {rc}): {tail[0][:300]} -- see {logfile}; a rerun resumes")
    return out, True


# ---------------------------------------------------------------------------
# 3) Evaluate
# ---------------------------------------------------------------------------

def math500_source(cfg: Config) -> str | None:
    """A MATH-500 JSONL path, "hub", or None (no row group) -- said in one line."""
    if cfg.math500_data:
        if not Path(cfg.math500_data).is_file():
            raise ReplicateError(f"--math500-data {cfg.math500_data}: no such file")
        return cfg.math500_data
    folder = os.environ.get("DEEPMATH_DATA")
    for path in ([Path(folder) / "math500.jsonl"] if folder else []) + [SHARED_MATH500]:
        if path.is_file():
            return str(path)
    try:
        data.load_benchmark("math500", limit=1)
        return "hub"
    except data.DataError as e:
        print(f"math500 row group skipped: MATH-500 is neither local nor reachable ({e})", flush=True)
        return None


def groups(cfg: Config, recipe: dict) -> dict[str, dict]:
    """Row group name -> evaluate.Config fields shared by its four rows ("" is the main group)."""
    g = {"": {"bench": "procedural", "limit": cfg.problems, "templates": "train", "difficulty": recipe["difficulty"]}}
    if cfg.heldout_templates:
        g["heldout-templates"] = {"bench": "procedural", "limit": cfg.heldout_templates, "templates": "heldout",
                                  "difficulty": recipe["difficulty"]}
    if cfg.hard:  # the level the recipe may not train on: does the agent carry over to longer problems?
        g["hard"] = {"bench": "procedural", "limit": cfg.hard, "templates": "train", "difficulty": "hard"}
    if cfg.math500:
        src = math500_source(cfg)
        if src is not None:
            g["math500"] = {"bench": "math500", "limit": cfg.math500, "data": None if src == "hub" else src}
    return g


def row_dir(cfg: Config, group: str, row: str, seed: int) -> Path:
    base = Path(cfg.out) if seed == cfg.train_seeds[0] or row in ("baseline", "agent") else Path(cfg.out) / f"seed{seed}"
    return base / group / row if group else base / row


def eval_configs(cfg: Config, recipe: dict, grps: dict, adapter: Path | None, seed: int):
    out = []
    for gname, g in grps.items():
        for row, mode, trained in ROWS:
            if trained != (adapter is not None):
                continue
            out.append(E.Config(
                mode=mode, model=recipe["model"], lora=str(adapter) if adapter else None, layout=recipe["layout"],
                examples=recipe["examples"], examples_file=recipe["examples_file"], samples=cfg.samples,
                temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, max_tokens=recipe["max_tokens"], max_steps=recipe["max_steps"],
                max_output_tokens=recipe["max_output_tokens"], seed=cfg.seed,
                out=str(row_dir(cfg, gname, row, seed)), **g))
    return out


def refresh_row(c, retrained: bool = False) -> None:
    """Move a row's folder aside when it holds the evaluation of other inputs, so that the row is
    evaluated afresh instead of refused (evaluate.run refuses a folder of other settings or inputs):
    a trained row when its adapter was trained again in this run (`retrained`: whatever the folder
    recorded, it scored an earlier adapter), or any row whose settings.json differs from what this
    config pins (evaluate.settings_change: the adapter's content, the recipe's budget, --samples...)."""
    d = Path(c.out)
    if not (d / "settings.json").is_file():
        return
    if retrained and c.lora:
        why = "scored an earlier adapter (trained again in this run)"
    else:
        diff = E.settings_change(d, E.settings_of(c))
        why = f"scored other inputs or settings ({'; '.join(diff)})" if diff else None
    if why:
        retire(d, why + ", so it is evaluated afresh")


def evaluate_model(configs: list, retrained: bool = False) -> None:
    """Every config of one model through ONE engine (vLLM's start-up is ~45 s on this CPU), started
    only when a config still has problems to run (evaluate.run decides, and resumes the rest).
    Rows of other inputs are moved aside first (refresh_row)."""
    for c in configs:
        refresh_row(c, retrained)
    engine = []

    def shared_backend(c):
        if not engine:
            engine.append(E.make_backend(c))
        return engine[0]

    try:
        for c in configs:
            t0 = time.perf_counter()
            s = E.run(c, backend_factory=shared_backend, progress=sys.stderr.isatty())
            print(f"  {Path(c.out).relative_to(Path(c.out).parents[1])}: maj@{c.samples} {E.pct(s['maj_at_k'])} "
                  f"mean@{c.samples} {E.pct(s['mean_at_k'])}, {s['mean_total_tokens']:.0f} tokens, "
                  f"{s['snippets_per_solution']:.2f} calls ({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        if engine:
            E.close_backend(engine[0])


# ---------------------------------------------------------------------------
# 4) Report
# ---------------------------------------------------------------------------

def plot_training(states: dict[int, Path], png: Path) -> bool:
    """Reward, accuracy, code-use rate and temperature per optimizer step, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("reward", "reward (weighted)"), ("rewards/accuracy_reward/mean", "accuracy"),
              ("agent/code_use_rate", "code-use rate"), ("temperature", "temperature"))
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    drawn = False
    for seed, path in states.items():
        hist = [h for h in json.loads(path.read_text()).get("log_history", []) if "loss" in h and "step" in h]
        for ax, (key, title) in zip(axes, panels):
            pts = [(h["step"], h[key]) for h in hist if isinstance(h.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=f"seed {seed}")
                drawn = True
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return drawn


def problem_families(cfg: Config, g: dict) -> dict[str, tuple[str, str]]:
    """Problem id -> (family, level) of a procedural row group. generations.jsonl keeps neither, so
    the group's problems are generated again by the call its rows were evaluated with
    (evaluate.load_problems: deterministic in seed, difficulty and templates). A problem without
    them (a procedural.jsonl in $DEEPMATH_DATA) is ("?", "?")."""
    problems = E.load_problems(E.Config(seed=cfg.seed, **g))
    return {p.id: (p.meta.get("family", "?"), p.meta.get("difficulty", "?")) for p in problems}


def _level_rank(level: str) -> int:
    return data.LEVELS.index(level) if level in data.LEVELS else len(data.LEVELS)


def breakdown(runs: list, ids: list[str], families: dict[str, tuple[str, str]]) -> dict:
    """Per family and per level, over the paired problems `ids`: how many, and each row's maj@k and
    mean@k -- evaluate.columns over that subset, the numbers Table 1 would show for it alone.
    Families in data.FAMILIES order, grouped by level (easy, medium, hard)."""
    def cell(sub):
        cols = {row: E.columns(run, sub) for (row, _, _), run in zip(ROWS, runs)}
        return {"n": len(sub), **{row: {k: c[k] for k in ("maj_at_k", "mean_at_k")} for row, c in cols.items()}}

    where = {i: families.get(i, ("?", "?")) for i in ids}
    order = {f.name: n for n, f in enumerate(data.FAMILIES)}
    fams = sorted(set(where.values()), key=lambda w: (_level_rank(w[1]), order.get(w[0], len(order)), w[0]))
    levels = dict.fromkeys(lv for _, lv in fams)  # in the families' order: easy, medium, hard
    return {"per_family": {f: {"level": lv, **cell([i for i in ids if where[i] == (f, lv)])} for f, lv in fams},
            "per_level": {lv: cell([i for i in ids if where[i][1] == lv]) for lv in levels}}


def family_table(bd: dict, k: int) -> list[str]:
    """breakdown() as a markdown table of maj@k: the families of each level, then its subtotal line."""
    def line(name, c):
        return f"| {name} | {c['n']} | " + " | ".join(E.pct(c[row]["maj_at_k"]) for row, _, _ in ROWS) + " |"

    md = [f"maj@{k} per family and level, over the same paired problems:", "",
          "| family | n | " + " | ".join(LABELS[row] for row, _, _ in ROWS) + " |", "|---|--:|" + "--:|" * len(ROWS)]
    for lv, total in bd["per_level"].items():
        md += [line(f, c) for f, c in bd["per_family"].items() if c["level"] == lv]
        md.append(line(f"**{lv}, all**", total))
    return md + [""]


def pool(parts: list, width: int = len(ROWS)) -> tuple[list[E.ScoredRun], list[str]]:
    """Several row groups as one run per row over all their problems, so that one paired bootstrap
    spans the groups: parts = [(runs, ids)] per group, the runs in the same row order in each. The
    procedural groups' ids differ (an id names its templates and difficulty); a problem two groups
    do share -- a recipe of difficulty "hard" makes the main group's problems the hard group's --
    counts once, as a problem scored twice would narrow the interval it does not narrow."""
    records, ids = [{} for _ in range(width)], []
    for runs, sub in parts:
        for i in sub:
            if i not in records[0]:
                ids.append(i)
                for rec, run in zip(records, runs):
                    rec[i] = run.records[i]
    k = parts[0][0][0].summary.get("samples") if parts else None
    return [E.ScoredRun("pooled", {"samples": k}, rec) for rec in records], ids


def pooled_difference(triples: list, metric: str = "maj") -> dict:
    """b - a over the problems of several row groups together, with ONE 95% paired-bootstrap interval
    over all of them (evaluate.paired_difference on pool()'s runs): triples = [(run_a, run_b, ids)],
    one per group; the same {"n", "diff", "ci95"} as paired_difference."""
    (a, b), ids = pool([((ra, rb), sub) for ra, rb, sub in triples], width=2)
    return E.paired_difference(a, b, ids, metric)


LEVEL_SETS = {  # per-level target -> (its line in report.md, which problems: from (family, level))
    "medium": ("medium: DeepMath >= +Agent + 15 with CI above 0", lambda fam, lv: lv == "medium"),
    "hard": ("hard: DeepMath >= +Agent + 15 with CI above 0", lambda fam, lv: lv == "hard"),
    "multi_step_words": ("multi-step word families: DeepMath >= +Agent + 15 with CI above 0",
                         lambda fam, lv: fam in MULTI_STEP_FAMILIES),
}


def _status(n: int, ok: bool) -> str:
    return "not measured" if n == 0 else "met" if ok else "MISSED"  # no problem: nothing shown, so never met


def level_targets(parts: list) -> dict:
    """The per-level targets of one training seed, over every procedural row group together (the
    main one alone holds few medium problems and no hard one): parts = [(runs, ids, families)] per
    group, families as problem_families gives them. For the medium level, the hard level and the
    multi-step word families: DeepMath - +Agent maj@k with its paired interval (pooled_difference),
    met at >= 15 points with the interval above 0. Then DeepMath's mean length (total tokens)
    against Baseline's over all those problems. Each: {"target", "status", "n", ...}."""
    out = {}
    for key, (text, keep) in LEVEL_SETS.items():
        d = pooled_difference([(runs[1], runs[3], [i for i in ids if keep(*fam.get(i, ("?", "?")))])
                               for runs, ids, fam in parts])
        ok = d["diff"] is not None and d["diff"] >= 0.15 and d["ci95"][0] > 0
        out[key] = {"target": text, "status": _status(d["n"], ok), **d}
    rows, ids = pool([(runs, ids) for runs, ids, _ in parts])
    base, dm = (E.columns(rows[j], ids)["mean_total_tokens"] if ids else None for j in (0, 3))
    out["deepmath_shorter_than_baseline"] = {"target": "DeepMath shorter than Baseline (mean total tokens)",
                                             "status": _status(len(ids), bool(ids) and dm < base), "n": len(ids),
                                             "baseline_total_tokens": base, "deepmath_total_tokens": dm}
    return out


def level_lines(targets: dict) -> list[str]:
    """level_targets() as report.md's lines: the verdict, then what it rests on."""
    md = []
    for t in targets.values():
        if t["status"] == "not measured":
            why = "no such problem among the paired ones"
        elif "diff" in t:
            why = (f"{100 * t['diff']:+.1f} points, 95% paired-bootstrap CI [{100 * t['ci95'][0]:+.1f}, "
                   f"{100 * t['ci95'][1]:+.1f}] over {t['n']} problems")
        else:
            why = f"{t['deepmath_total_tokens']:.1f} vs {t['baseline_total_tokens']:.1f} tokens over {t['n']} problems"
        md.append(f"- {t['target']}: {t['status']} ({why})")
    return md + [""]


def report(cfg: Config, recipe: dict, grps: dict, walls: Walls) -> dict:
    out = Path(cfg.out)
    rep = {"recipe": cfg.recipe, "recipe_settings": recipe, "config": dataclasses.asdict(cfg), "groups": {},
           "levels": {}, "wall_s": dict(walls), "wall_s_this_run": walls.this_run}
    md = [f"# Table 1 in miniature ({recipe['model']}, {cfg.recipe})", "",
          f"Prompt of the agent rows (+Agent and DeepMath alike): layout {recipe['layout']}, "
          f"{'all' if recipe['examples'] is None else recipe['examples']} solved example(s) of "
          f"prompts/{recipe['examples_file']}; the baseline rows show none.", ""]
    for seed in cfg.train_seeds:
        parts, pooled = [], []  # each procedural group's (runs, ids, families): the per-level targets pool them
        for gname in grps:
            dirs = [row_dir(cfg, gname, row, seed) for row, _, _ in ROWS]
            if not all((d / "summary.json").is_file() for d in dirs):
                continue
            where = (out if seed == cfg.train_seeds[0] else out / f"seed{seed}") / gname
            png = where / ("accuracy_vs_length.png")
            # every column and every difference over the same problems: those all four rows scored
            runs = [E.load_run(d) for d in dirs]
            ids = E.shared_problems(runs)
            table = E.compare_table(runs, ids, png)
            (where / "table.txt").write_text(table + "\n")
            key = f"{gname or 'procedural'}/seed{seed}"
            rows = {row: E.columns(run, ids) for (row, _, _), run in zip(ROWS, runs)}
            g = {
                "table": table,
                "n_paired": len(ids),
                "rows": {row: {k: s.get(k) for k in ("n_problems", "samples", "maj_at_k", "maj_at_k_ci95", "mean_at_k",
                                                    "mean_output_tokens", "mean_total_tokens", "snippets_per_solution",
                                                    "snippet_error_rate", "truncation_rate")} for row, s in rows.items()},
                "deepmath_minus_agent": E.paired_difference(runs[1], runs[3], ids),
                "deepmath_minus_agent_mean_at_k": E.paired_difference(runs[1], runs[3], ids, "mean"),
                "deepmath_minus_baseline": E.paired_difference(runs[0], runs[3], ids),
                "grpo_minus_baseline": E.paired_difference(runs[0], runs[2], ids),
            }
            d, lb = g["deepmath_minus_agent"], rows["baseline"]
            g["targets"] = {
                "deepmath_beats_agent_by_15_with_ci_above_0": bool(d["diff"] is not None and d["diff"] >= 0.15
                                                                   and d["ci95"][0] > 0),
                "deepmath_beats_baseline": bool((rows["deepmath"]["maj_at_k"] or 0) > (lb["maj_at_k"] or 0)),
                "deepmath_shorter_than_baseline": bool((rows["deepmath"]["mean_total_tokens"] or 0)
                                                       < (lb["mean_total_tokens"] or 0)),
            }
            rep["groups"][key] = g
            md += [f"## {gname or 'procedural (held-out problems)'}, training seed {seed}", "", "```", table, "```", ""]
            if grps[gname].get("bench") == "procedural":  # 5) per family and level
                fams = problem_families(cfg, grps[gname])
                g.update(breakdown(runs, ids, fams))
                parts.append((runs, ids, fams))
                pooled.append(gname or "procedural")
                md += family_table(g, runs[0].summary["samples"])
            for name, v in (("DeepMath - +Agent (maj)", d), ("DeepMath - +Agent (mean@k)", g["deepmath_minus_agent_mean_at_k"]),
                            ("DeepMath - Baseline (maj)", g["deepmath_minus_baseline"]),
                            ("+GRPO - Baseline (maj)", g["grpo_minus_baseline"])):
                if v["diff"] is not None:
                    md.append(f"- {name}: {100 * v['diff']:+.1f} points, 95% paired-bootstrap CI "
                              f"[{100 * v['ci95'][0]:+.1f}, {100 * v['ci95'][1]:+.1f}] over {v['n']} problems")
            md += [f"- target {k}: {'met' if ok else 'MISSED'}" for k, ok in g["targets"].items()] + [""]
        if parts:  # 6) the targets per level, every procedural group of this seed pooled
            targets = level_targets(parts)
            rep["levels"][f"seed{seed}"] = {"groups": pooled, "targets": targets}
            md += [f"## Targets per level, training seed {seed} (pooled over {', '.join(pooled)})", ""]
            md += level_lines(targets)
    md += ["## Wall time (summed over every run into this directory; this run's in brackets)", ""]
    md += [f"- {k}: {v:.0f} s ({walls.this_run.get(k, 0):.0f} s)" for k, v in walls.items()] + [""]
    (out / "report.json").write_text(json.dumps(rep, indent=2) + "\n")
    (out / "report.md").write_text("\n".join(md))
    return rep


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------

class Walls(dict):
    """Wall seconds per stage, summed over every run that wrote into OUT (OUT/wall_s.json), so a
    rerun that reuses a finished stage still reports what that stage took, and a resumed stage
    reports both parts. `this_run` holds this invocation's own times."""

    def __init__(self, out: Path):
        self.path = out / "wall_s.json"
        super().__init__(json.loads(self.path.read_text()) if self.path.is_file() else {})
        self.this_run: dict[str, float] = {}

    def add(self, stage: str, t0: float) -> None:
        dt = time.perf_counter() - t0
        self.this_run[stage] = round(dt, 1)
        self[stage] = round(self.get(stage, 0.0) + dt, 1)
        E.write_json(self.path, self)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    cfg = parse_args(argv)
    t_all = time.perf_counter()
    try:
        E.quiet_engine(False)
        recipe = read_recipe(cfg.recipe)
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        walls = Walls(out)
        # 2) train, every seed
        adapters, retrained = {}, set()
        for seed in cfg.train_seeds:
            t0 = time.perf_counter()
            adapters[seed], fresh = train(cfg, seed)
            if fresh:
                retrained.add(seed)
            walls.add(f"train_seed{seed}", t0)
        # 3) evaluate: the untrained model's rows once, the trained rows per seed
        grps = groups(cfg, recipe)
        t0 = time.perf_counter()
        print(f"evaluating the untrained model: {', '.join(g or 'procedural' for g in grps)} x Baseline, +Agent", flush=True)
        evaluate_model(eval_configs(cfg, recipe, grps, None, cfg.train_seeds[0]))
        walls.add("eval_untrained", t0)
        for seed, adapter in adapters.items():
            t0 = time.perf_counter()
            print(f"evaluating the trained model (seed {seed}): +GRPO, DeepMath", flush=True)
            evaluate_model(eval_configs(cfg, recipe, grps, adapter, seed), retrained=seed in retrained)
            walls.add(f"eval_trained_seed{seed}", t0)
        # 4) report
        states = {s: a / "trainer_state.json" for s, a in adapters.items() if (a / "trainer_state.json").is_file()}
        plot_training(states, out / "training.png")
        walls.add("total", t_all)
        rep = report(cfg, recipe, grps, walls)
    except (ReplicateError, E.EvalError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((out / "report.md").read_text())
    print(f"wrote {out}/report.md, report.json, training.png, accuracy_vs_length.png "
          f"({walls.this_run['total']:.0f} s this run, {walls['total']:.0f} s over all runs into {out})")
    return 0 if rep["groups"] else 1


if __name__ == "__main__":  # the guard vLLM's engine start-up needs
    raise SystemExit(main())
