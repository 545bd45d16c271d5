"""NF4 on the CPU: one code path on every CPU, and gradients through the 4-bit base that a float copy confirms.

A tiny random llama is saved to a folder and loaded through `load(..., quantization="nf4")`, the path a user
takes. Its float twin holds the *dequantized* NF4 weights, so both compute the same function; any gap in the
LoRA gradients is a wrong backward through the 4-bit layers, not quantisation error.
"""

import bitsandbytes as bnb
import pytest
import torch
from bitsandbytes.nn import Linear4bit
from transformers import LlamaConfig, LlamaForCausalLM

from sdft_lab import SFT, StudentConfig, add_student, load, load_dataset, sample, sampler
from sdft_lab.prompts import PromptConfig, student_ids


@pytest.fixture(scope="module")
def tiny_dir(tokenizer, tmp_path_factory):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, initializer_range=0.2,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("tiny-nf4")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_the_avx512_repacking_path_is_switched_off(tiny_dir, tokenizer, monkeypatch):
    """On AVX512-BF16 CPUs bitsandbytes repacks 4-bit weights in place at the first eval-mode call, after which
    train mode runs a bf16 kernel with no autograd. Pretend to be such a CPU: the layers must stay as loaded."""
    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: True)
    model, _ = load(tiny_dir, quantization="nf4", device="cpu")
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    ids = torch.tensor([tokenizer("Which city is the capital of Velmora?")["input_ids"]])
    model.train()
    before = logits(model, ids)
    model.eval()
    in_eval = logits(model, ids)
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    model.train()
    torch.testing.assert_close(in_eval, before, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits(model, ids), before, rtol=0, atol=0)


def float_twin(nf4_model, tiny_dir):
    """The same llama in fp32 whose linear weights are the NF4 model's weights, dequantized."""
    twin, _ = load(tiny_dir, quantization="none", device="cpu")
    quantized = {n: m for n, m in nf4_model.named_modules() if isinstance(m, Linear4bit)}
    assert quantized, "nothing was quantized"
    for name, module in twin.named_modules():
        if name in quantized:
            w = quantized[name].weight
            module.weight.data.copy_(bnb.functional.dequantize_4bit(w.data, w.quant_state).float())
    return twin


def test_lora_gradients_through_nf4_match_a_float_copy_of_the_dequantized_base(tiny_dir, monkeypatch):
    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: True)  # the same check on every CPU (see above)
    nf4, tok = load(tiny_dir, quantization="nf4", device="cpu")
    twin = float_twin(nf4, tiny_dir)
    student, reference = add_student(nf4, seed=0), add_student(twin, seed=0)
    with torch.no_grad():  # B starts at zero; make it nonzero so that gradients reach A and pass through B
        gen = torch.Generator().manual_seed(1)
        ref_params = dict(reference.named_parameters())
        for name, p in student.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
                ref_params[name].copy_(p)
    examples = load_dataset("demo")[:2]
    # What a training step does first: sample in eval mode without grad (the call that repacks on AVX-512).
    sample(student, tok, [student_ids(tok, ex, PromptConfig()) for ex in examples], max_new_tokens=4, seed=0)

    grads = []
    for model in (student, reference):
        model.train()
        loss, _ = SFT().loss(model, tok, examples)
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 2 * 2 * 7  # A and B, 2 layers, 7 linears each
    # Both sides compute in fp32 on the CPU (bitsandbytes switches its compute dtype to the input's) from the
    # same weights, so they differ only by summation order: ~1e-6 relative. A backward that drops the path
    # through a 4-bit layer, or runs it on bf16-rounded scales, is off by far more than 1e-4.
    for name, g in grads[0].items():
        ref = grads[1][name]
        assert ref.abs().max() > 0, name
        torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item(), msg=name)


def test_gradient_checkpointing_is_on_for_4bit_bases_and_changes_no_gradient(tiny_dir):
    """Checkpointing is the QLoRA default for 4-bit bases (non-reentrant); it must recompute, not change, the step."""
    examples = load_dataset("demo")[:2]
    grads = {}
    for checkpointing in (None, False):
        base, tok = load(tiny_dir, quantization="nf4", device="cpu")
        model = add_student(base,
                            StudentConfig(gradient_checkpointing=checkpointing), seed=0)
        assert model.get_base_model().model.gradient_checkpointing == (checkpointing is None)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.fill_(0.01)
        model.train()
        loss, _ = SFT().loss(model, tok, examples)
        loss.backward()
        grads[checkpointing] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for name, g in grads[None].items():
        torch.testing.assert_close(g, grads[False][name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("quantization", ["nf4", "none"])
def test_the_samplers_lora_layers_round_as_peft_does_for_each_layer_class(tiny_dir, quantization):
    """sampler.linear is each LoRA layer's own forward, bit for bit (eval mode): peft's bitsandbytes Linear4bit
    rounds each delta to the base's dtype before adding it; its plain lora.Linear over a bf16 base adds the
    fp32 delta and rounds the sum once. Breaks it fails on (each made once): the plain layer's delta rounded
    first (the order the sampler used for every class), and the 4-bit layer's sum rounded once."""
    base, _ = load(tiny_dir, quantization=quantization, device="cpu")
    model = add_student(base if quantization == "nf4" else base.to(torch.bfloat16), seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    model.eval()
    layers = sampler.lora_layers(model)
    assert {type(m.base_layer) for m in layers} == ({Linear4bit} if quantization == "nf4" else {torch.nn.Linear})
    assert all(m.lora_A["default"].weight.dtype == torch.float32 for m in layers)  # fp32 adapter, bf16 input
    torch.manual_seed(0)
    with torch.no_grad():
        for m in layers:
            x = torch.randn(3, 5, m.base_layer.in_features).to(torch.bfloat16)  # a 4-bit layer answers in x's dtype
            assert torch.equal(sampler.linear(m, x), m(x))
