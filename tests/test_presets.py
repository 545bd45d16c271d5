"""Presets: their shapes match the published model sizes, and the memory estimate adds up (offline loading of a
preset: test_reliability)."""

import pytest

from pathlib import Path

from sdft_lab.presets import PRESETS, adapter_parameters, estimate_vram_gib, parameter_count, table

# Parameter counts the model cards publish, in billions (embeddings included, counted once when tied).
PUBLISHED_B = {"qwen2.5-0.5b": 0.49, "qwen2.5-1.5b": 1.54, "qwen2.5-3b": 3.09, "qwen2.5-7b": 7.62,
               "smollm2-1.7b": 1.71, "llama-3.2-1b": 1.24, "llama-3.2-3b": 3.21}


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_shape_gives_the_published_parameter_count(name):
    linear, embeddings = parameter_count(PRESETS[name])
    assert (linear + embeddings) / 1e9 == pytest.approx(PUBLISHED_B[name], rel=0.02)


def test_the_vram_estimate_by_hand_for_the_7b_shape():
    p = PRESETS["qwen2.5-7b"]
    linear, embeddings = parameter_count(p)
    assert linear == 28 * (2 * 3584**2 + 2 * 3584 * 512 + 3 * 3584 * 18944)
    weights = linear * 0.5 * 1.03 + embeddings * 2  # NF4 + scales, bf16 embeddings and untied lm_head
    assert weights / 1e9 == pytest.approx(5.54, abs=0.01)
    small, large = estimate_vram_gib(p, batch_size=1, max_new_tokens=1, prompt_tokens=1), estimate_vram_gib(p)
    # r 64: fp32 weight + gradient + 2 Adam moments, and the EMA teacher's fp32 copy
    adapter = 28 * 64 * (4 * 3584 + 2 * (3584 + 512) + 3 * (3584 + 18944)) * (16 + 4)
    logits = 256 * 152064 * 4 * 6  # one fp32 chunk, ~6 copies
    # one token of prompt and rollout: the KV cache and activations are negligible, the rest is by hand
    assert small == pytest.approx(1.2 * (weights + adapter + logits) / 2**30 + 0.5, abs=0.06)  # + CUDA context
    no_ema = estimate_vram_gib(p, batch_size=1, max_new_tokens=1, prompt_tokens=1, ema=False)
    assert small - no_ema == pytest.approx(1.2 * adapter / 5 / 2**30, abs=0.06)  # the EMA copy: 4 of 20 bytes
    assert estimate_vram_gib(p, batch_size=8) > large  # grows with the batch
    assert p.vram_source == "estimated" and f"{large} GiB (estimated)" in table()



@pytest.mark.parametrize("name", ["qwen2.5-7b", "llama-3.2-1b"])
def test_the_counts_match_the_model_and_the_adapter_transformers_and_peft_build(name):
    """The estimate's parts against real modules (built on the meta device: no memory, no download), not
    against its own formula. Break it fails on (made once): k and v counted as one projection."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch import nn
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    p = PRESETS[name]
    config = (Qwen2Config if p.architecture == "qwen2" else LlamaConfig)(**p.shape)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linear = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, nn.Linear))
    embeddings = model.model.embed_tokens.weight.numel() + (0 if p.shape["tie_word_embeddings"] else
                                                            model.lm_head.weight.numel())
    assert parameter_count(p) == (linear, embeddings)
    with torch.device("meta"):
        peft_model = get_peft_model(model, LoraConfig(r=p.lora_r, target_modules="all-linear"))
    assert adapter_parameters(p) == sum(t.numel() for n, t in peft_model.named_parameters() if "lora_" in n)


def test_the_docs_table_is_the_presets_table():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "gpu.md").read_text()
    assert table() in docs, "docs/gpu.md's preset table differs from presets.table(): paste it again"
