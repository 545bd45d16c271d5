"""What a first GPU user would hit, tested on the CPU: other models' tokenizers, dtypes and generation configs.

Every model and tokenizer here is built in memory (no download): a tiny llama, a bf16 copy of it, tiny Gemma 2,
Cohere and Granite models, and copies of the bundled tokenizer with Qwen- and Llama-3-style end tokens.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import CohereConfig, CohereForCausalLM, Gemma2Config, Gemma2ForCausalLM, GraniteConfig
from transformers import GraniteForCausalLM

from sdft_lab import SDFT, SFT, StudentConfig, SDFTConfig, TrainConfig, Trainer, add_student, sample
from sdft_lab.losses import DivergenceConfig, chunked_token_losses, chunked_token_logp, divergence
from sdft_lab.models import EMA, STUDENT, teacher_view
from sdft_lab.prompts import PromptConfig, encode, student_ids, teacher_ids
from sdft_lab.rollout import completion_hidden, completions_from_ids, end_of_turn_id

from conftest import tiny_llama


# ---------------------------------------------------------------------------- the end-of-turn token


def test_sft_ends_on_the_chat_templates_end_of_turn_not_the_smallest_eos_id(tokenizer, demo):
    """Qwen2.5-Instruct lists EOS ids [<|im_end|>, <|endoftext|>]; the turn ends with <|im_end|>, the larger here
    too (the bundled ChatML tokenizer has <|endoftext|> = 0 and <|im_end|> = 2)."""
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert endoftext < im_end
    model = add_student(tiny_llama(tokenizer))
    model.generation_config.eos_token_id = [im_end, endoftext]
    assert end_of_turn_id(model, tokenizer) == im_end

    examples = demo[:2]
    loss, _ = SFT().loss(model, tokenizer, examples)
    # by hand: cross-entropy of demonstration + <|im_end|> after the bare question, full logits
    prompts = [student_ids(tokenizer, ex, PromptConfig()) for ex in examples]
    y = completions_from_ids([encode(tokenizer, ex.demonstration) + [im_end] for ex in examples], tokenizer,
                             [im_end], tokenizer.pad_token_id)
    logits = model.get_output_embeddings()(completion_hidden(model, prompts, y)).float()
    ce = F.cross_entropy(logits.transpose(1, 2), y.ids, reduction="none")
    per_seq = (ce * y.mask).sum(-1) / y.mask.sum(-1)
    torch.testing.assert_close(loss, per_seq.mean(), rtol=1e-5, atol=1e-6)


def test_llama3_style_template_ends_on_eot_not_end_of_text(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                                                          "<|end_header_id|>"]})
    end_of_text, eot = tok.convert_tokens_to_ids(["<|end_of_text|>", "<|eot_id|>"])
    tok.chat_template = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                         "{{ m['content'] }}<|eot_id|>{% endfor %}"
                         "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
    model = tiny_llama(tokenizer)
    model.generation_config.eos_token_id = [end_of_text, eot]
    assert end_of_text < eot and end_of_turn_id(model, tok) == eot


# ---------------------------------------------------------------------------- a bf16 base


def test_a_bf16_base_samples_and_trains_with_the_default_settings(tokenizer, demo):
    """The LoRA matrices stay fp32 over a bf16 base (peft's default); the lean sampler must cast between them."""
    model = add_student(tiny_llama(tokenizer).to(torch.bfloat16))
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}
    prompts = [student_ids(tokenizer, ex, PromptConfig()) for ex in demo[:2]]
    assert sample(model, tokenizer, prompts, max_new_tokens=6, seed=0).ids.shape[0] == 2
    trainer = Trainer(model, tokenizer, SDFT(SDFTConfig(max_new_tokens=6, skip_first=0)), demo[:2],
                      TrainConfig(steps=1, batch_size=2, preflight=False))
    record = trainer.step()
    assert torch.isfinite(torch.tensor(record["loss"])) and record["grad_norm"] > 0


# ---------------------------------------------------------------------------- generate() with a model's own settings


def test_hf_engine_ignores_the_models_generation_config(tokenizer, demo):
    """Qwen2.5-Instruct ships repetition_penalty 1.05, others top_k, min_p or no_repeat_ngram_size. Rollouts must be
    samples of the student itself, so engine="hf" must draw what the lean sampler draws."""
    model = add_student(tiny_llama(tokenizer))
    model.generation_config.update(repetition_penalty=5.0, top_k=5, no_repeat_ngram_size=1, min_p=0.3)
    prompts = [student_ids(tokenizer, ex, PromptConfig()) for ex in demo[:3]]
    lean = sample(model, tokenizer, prompts, max_new_tokens=16, seed=3, engine="lean")
    hf = sample(model, tokenizer, prompts, max_new_tokens=16, seed=3, engine="hf")
    assert torch.equal(lean.ids, hf.ids)
    assert model.generation_config.repetition_penalty == 5.0  # the model's own config is left as it was


# ---------------------------------------------------------------------------- temperature in the loss


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl"])
def test_the_loss_compares_both_distributions_at_the_sampling_temperature(kind):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=False)
    s_h, t_h = torch.randn(2, 3, 8, requires_grad=True), torch.randn(2, 3, 8)
    tokens, mask = torch.randint(0, 11, (2, 3)), torch.tensor([[1, 1, 0], [1, 1, 1]])
    cfg, T = DivergenceConfig(kind=kind, chunk_tokens=2), 0.7
    per_token, stats = chunked_token_losses(s_h, t_h, head, tokens, mask, cfg, temperature=T)
    # by hand, from the tempered distributions: p = softmax(logits / T) on both sides
    p_t, p_s = F.softmax(head(t_h) / T, -1), F.softmax(head(s_h) / T, -1)
    p, q = (p_t, p_s) if kind == "forward_kl" else (p_s, p_t)
    expected = (p * (p.log() - q.log())).sum(-1) * mask
    torch.testing.assert_close(per_token, expected, rtol=1e-5, atol=1e-6)
    untempered, _ = chunked_token_losses(s_h, t_h, head, tokens, mask, cfg)
    assert not torch.allclose(per_token, untempered)
    torch.testing.assert_close(stats["student_logp"], (p_s.log().gather(-1, tokens[..., None])[..., 0]) * mask)


def test_sdft_passes_its_sampling_temperature_to_the_loss(tiny, demo):
    model, tok = tiny
    cfg = SDFTConfig(max_new_tokens=6, skip_first=0, temperature=0.5)
    scored = SDFT(cfg).score(model, tok, demo[:2], seed=0)
    s_prompts = [student_ids(tok, ex, cfg.prompts) for ex in demo[:2]]
    t_prompts = [teacher_ids(tok, ex, cfg.prompts) for ex in demo[:2]]
    head = model.get_output_embeddings()
    with torch.no_grad():
        s_logits = head(completion_hidden(model, s_prompts, scored.completions)) / 0.5
        with teacher_view(model):
            t_logits = head(completion_hidden(model, t_prompts, scored.completions)) / 0.5
    expected = divergence(t_logits, s_logits) * scored.mask
    torch.testing.assert_close(scored.per_token.detach(), expected, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------- SFT through the chunked path


def test_chunked_log_probs_equal_the_full_logits_values_and_gradients():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 13, bias=False)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    tokens, mask = torch.randint(0, 13, (2, 5)), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    chunked = chunked_token_logp(hidden, head, tokens, mask, chunk_tokens=3)
    (g_chunked,) = torch.autograd.grad(chunked.sum(), hidden)
    full = F.log_softmax(head(hidden), -1).gather(-1, tokens[..., None])[..., 0] * mask
    (g_full,) = torch.autograd.grad(full.sum(), hidden)
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(g_chunked, g_full)


# ---------------------------------------------------------------------------- models sdft_lab cannot train


@pytest.mark.parametrize("build, field", [
    (lambda: Gemma2ForCausalLM(Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=1, head_dim=8)),
     "final_logit_softcapping"),
    (lambda: CohereForCausalLM(CohereConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=1)), "logit_scale"),
    (lambda: GraniteForCausalLM(GraniteConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                              num_attention_heads=2, num_key_value_heads=1, logits_scaling=8.0)),
     "logits_scaling"),
], ids=["gemma2", "cohere", "granite"])
def test_models_that_post_process_their_logits_are_refused_when_the_student_is_made(build, field):
    with pytest.raises(NotImplementedError, match=field):
        add_student(build())


# ---------------------------------------------------------------------------- the teacher and a second Trainer


def test_the_teacher_scores_in_eval_mode_even_with_lora_dropout(tokenizer, example):
    model = add_student(tiny_llama(tokenizer), StudentConfig(dropout=0.5))
    with torch.no_grad():
        for p in (p for n, p in model.named_parameters() if "lora_B" in n):
            p.normal_(0, 0.5)  # so that the adapter, and its dropout, matter
    ids = torch.tensor([student_ids(tokenizer, example, PromptConfig())])
    model.train()
    with torch.no_grad(), teacher_view(model, "live"):
        first, second = model(input_ids=ids).logits, model(input_ids=ids).logits
    assert torch.equal(first, second)
    assert model.training  # back in train mode afterwards
    with torch.no_grad():
        assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)  # dropout is live here


def test_a_second_trainer_with_an_ema_teacher_on_the_same_model(tiny, demo):
    model, tok = tiny
    objective = SDFT(SDFTConfig(max_new_tokens=4, teacher="ema", ema_rate=0.5))
    first = Trainer(model, tok, objective, demo, TrainConfig(steps=2, batch_size=2, lr=1e-2, preflight=False))
    first.step()
    Trainer(model, tok, objective, demo, TrainConfig(steps=2, batch_size=2, preflight=False))  # raised before
    params = dict(model.named_parameters())
    pairs = [(params[n.replace(f".{STUDENT}.", f".{EMA}.")], p) for n, p in params.items() if f".{STUDENT}." in n]
    assert pairs and all(torch.equal(ema, student) for ema, student in pairs)  # reset to the student
