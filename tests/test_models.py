"""
Tests of models.py's LoRA merge (issue 17): the merged checkpoint keeps the base model's dtype.

Run:  .venv/bin/python -m pytest tests/test_models.py -q                 (about half a minute here)
      .venv/bin/python -m pytest tests/test_models.py -q -k "not real"    (unit tests only, seconds)

Tier 1 (unit, literal inputs): checkpoint_dtype reads config.json ("dtype", then "torch_dtype"),
else the safetensors headers; merge_lora refuses a directory that is not an adapter.
Tier 2 (integration, named test_real_*): a peft adapter made here on the real SmolLM2-135M
(a bf16 checkpoint) is merged; by default the checkpoint is bf16 throughout, about the base's
size, and its weights are the float32 sum W + B @ A * scale rounded once; asked for float32 (what
evaluate.py asks for a backend computing in float32) it is that sum itself. A tiny float16 model
shows that the default dtype is the base's, not a fixed bf16. (evaluate.py --lora through this merge, on a trained
adapter: tests/test_evaluate.py and tests/test_train.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import models


def test_doctests():
    import doctest

    assert doctest.testmod(models).failed == 0


def _write_safetensors(path: Path, dtype: str) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"a.step": torch.zeros(2, dtype=torch.int64), "b.weight": torch.zeros(2, 2, dtype=getattr(torch, dtype))},
              str(path))


@pytest.mark.parametrize("config, weights, expected", [
    ({"dtype": "bfloat16", "torch_dtype": "float32"}, "float32", "bfloat16"),  # transformers >= 4.56 writes "dtype"
    ({"torch_dtype": "float16"}, "float32", "float16"),                      # older checkpoints
    ({}, "bfloat16", "bfloat16"),                                            # no dtype named: the weights tell
    ({"dtype": "auto"}, "float16", "float16"),                               # not a dtype: the weights tell
    ({}, None, None),                                                        # nothing says: None
])
def test_checkpoint_dtype_reads_the_files_not_a_loaded_model(tmp_path, config, weights, expected):
    (tmp_path / "config.json").write_text(json.dumps(config))
    if weights:
        _write_safetensors(tmp_path / "model.safetensors", weights)
    assert models.checkpoint_dtype(str(tmp_path)) == expected


def test_merge_lora_refuses_a_directory_without_an_adapter_or_an_unknown_dtype(tmp_path):
    with pytest.raises(models.LoraMergeError, match="no adapter_config.json there"):
        models.merge_lora(str(tmp_path), str(tmp_path))
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(models.LoraMergeError, match="merge dtype 'fp8': use one of bfloat16, float16, float32"):
        models.merge_lora(str(tmp_path), str(tmp_path), "fp8")


# ---------------------------------------------------------------------------
# Tier 2: real merges
# ---------------------------------------------------------------------------

def _adapter(model, out: Path) -> None:
    """A peft LoRA adapter on `model` with random A and B (init_lora_weights=False), so the
    merge really changes the weights: r=4 on q_proj and v_proj."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    peft_model.save_pretrained(out)


def _header_dtypes(path: Path) -> set[str]:
    import struct

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {e["dtype"] for k, e in header.items() if k != "__metadata__"}


def test_real_merged_smollm2_keeps_bf16_and_rounds_once(smollm2_dir, tmp_path, monkeypatch, one_torch_thread):
    """Before issue 17 the merge read the dtype from a model loaded in float32 (its config then
    says float32), so the merged checkpoint was float32: twice the base's size."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("DEEPMATH_CACHE", str(tmp_path / "cache"))
    assert models.checkpoint_dtype(smollm2_dir) == "bfloat16"
    adapter = tmp_path / "adapter"
    _adapter(AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32), adapter)
    out = Path(models.merge_lora(smollm2_dir, str(adapter)))
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert _header_dtypes(out / "model.safetensors") == {"BF16"}
    base_size = (Path(smollm2_dir) / "model.safetensors").stat().st_size
    assert (out / "model.safetensors").stat().st_size < 1.1 * base_size  # float32 was 2x
    assert json.loads((out / "deepmath_merged_from.json").read_text())["dtype"] == "bfloat16"
    # the weights: W (bf16, read as float32) + B @ A * alpha / r, summed in float32, rounded once
    base, merged, lora = (load_file(str(p)) for p in (Path(smollm2_dir) / "model.safetensors",
                                                        out / "model.safetensors",
                                                        adapter / "adapter_model.safetensors"))
    name = next(k for k in base if k.endswith("layers.3.self_attn.v_proj.weight"))
    a = next(v for k, v in lora.items() if "layers.3.self_attn.v_proj.lora_A" in k)
    b = next(v for k, v in lora.items() if "layers.3.self_attn.v_proj.lora_B" in k)
    expected = (base[name].float() + (b.float() @ a.float()) * (8 / 4)).to(torch.bfloat16)
    assert torch.equal(merged[name], expected)
    assert not torch.equal(merged[name], base[name])  # the adapter changed it
    k_name = name.replace("v_proj", "k_proj")
    assert torch.equal(merged[k_name], base[k_name])  # not a target: untouched, bit for bit
    # cached: a second call returns the same directory without merging again
    assert models.merge_lora(smollm2_dir, str(adapter)) == str(out)
    # for a backend that computes in float32 (models.merge_dtype on this CPU): the float32 sum
    # itself, in a checkpoint of its own
    out32 = Path(models.merge_lora(smollm2_dir, str(adapter), "float32"))
    assert out32 != out and _header_dtypes(out32 / "model.safetensors") == {"F32"}
    merged32 = load_file(str(out32 / "model.safetensors"))
    assert torch.allclose(merged32[name], base[name].float() + (b.float() @ a.float()) * (8 / 4), rtol=0, atol=1e-7)
    assert torch.equal(merged32[name].to(torch.bfloat16), merged[name])  # rounding it gives the bf16 merge


def test_real_merged_float16_model_stays_float16(tmp_path, monkeypatch):
    """The dtype is the base's own: a (tiny, random) float16 Llama stays float16."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models as tok_models

    monkeypatch.setenv("DEEPMATH_CACHE", str(tmp_path / "cache"))
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    base_dir = tmp_path / "tiny"
    AutoModelForCausalLM.from_config(cfg).to(torch.float16).save_pretrained(base_dir)
    vocab = {f"t{i}": i for i in range(64)}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tok_models.WordLevel(vocab, unk_token="t0"))).save_pretrained(
        base_dir)
    assert models.checkpoint_dtype(str(base_dir)) == "float16"
    adapter = tmp_path / "adapter"
    _adapter(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter)
    out = Path(models.merge_lora(str(base_dir), str(adapter)))
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    assert _header_dtypes(out / "model.safetensors") == {"F16"}
