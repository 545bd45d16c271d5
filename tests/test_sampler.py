"""The lean sampler (sampler.py) draws the same tokens as model.generate, so SDFT's losses do not change."""

import json
from unittest import mock

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

from conftest import tiny_llama
from sdft_lab import SDFT, SDFTConfig, add_student, sample, sampler, teacher_view
from sdft_lab.bundled import machine_key
from sdft_lab.prompts import PromptConfig, student_ids

SETTINGS = [dict(temperature=1.0, top_p=1.0), dict(temperature=0.7, top_p=0.9), dict(temperature=0)]


def perturbed_student(model):
    """A LoRA student whose adapter is not zero, so that adapter on and off sample differently."""
    model = add_student(model)
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.3)
    return model


def prompts(tokenizer, demo, n=3):
    return [student_ids(tokenizer, ex, PromptConfig()) for ex in demo[:n]]  # different lengths: left padding


def same_tokens(model, tokenizer, ps, new_tokens=24, **kw):
    for seed in range(3):
        lean = sample(model, tokenizer, ps, new_tokens, seed=seed, engine="lean", **kw)
        hf = sample(model, tokenizer, ps, new_tokens, seed=seed, engine="hf", **kw)
        assert torch.equal(lean.ids, hf.ids) and torch.equal(lean.mask, hf.mask), (seed, kw, lean.texts, hf.texts)


@pytest.mark.parametrize("kw", SETTINGS)
def test_lean_matches_generate_with_and_without_adapter(tokenizer, demo, kw):
    model = perturbed_student(tiny_llama(tokenizer))
    ps = prompts(tokenizer, demo)
    same_tokens(model, tokenizer, ps, **kw)
    with teacher_view(model, "base"):
        same_tokens(model, tokenizer, ps, **kw)
    on = sample(model, tokenizer, ps, 24, seed=0, engine="lean").ids
    with teacher_view(model, "base"):
        off = sample(model, tokenizer, ps, 24, seed=0, engine="lean").ids
    assert not torch.equal(on, off)  # the adapter is really applied


@pytest.mark.parametrize("kw", SETTINGS[::2])
def test_the_unmerged_adapter_path_matches_generate(tokenizer, demo, monkeypatch, kw):
    """The path every GPU, bf16 and NF4 rollout takes: base layer + B(A(x))·scaling, no merged weight. In fp32
    it must draw generate's tokens. Breaks it fails on (each made once): `if not module.disable_adapters:`
    replaced by `if False:` (rollouts from the base, not the student), and `* module.scaling[name]` dropped."""
    monkeypatch.setattr(sampler, "merged_weights", lambda model: {})
    model = perturbed_student(tiny_llama(tokenizer))
    assert next(iter(model.peft_config.values())).lora_alpha != next(iter(model.peft_config.values())).r  # scaling ≠ 1
    same_tokens(model, tokenizer, prompts(tokenizer, demo), **kw)


@pytest.mark.parametrize("merged", [True, False])
def test_the_static_step_a_cuda_graph_replays_draws_generates_tokens(tokenizer, demo, monkeypatch, merged):
    """CUDA decodes through StaticStep (fixed shapes, buffers refreshed per token, then captured as a graph);
    on the CPU the same step runs eagerly over the same buffers, merged and unmerged. Breaks it fails on (each
    made once): StaticStep.__call__ not copying the new inputs into its buffers (every token replays the
    first one's position), and KVCache.update writing the static step's keys one column early."""
    real = sampler.generate
    monkeypatch.setattr(sampler, "generate", lambda *a, **k: real(*a, **k, static=True))
    if not merged:
        monkeypatch.setattr(sampler, "merged_weights", lambda model: {})
    model = perturbed_student(tiny_llama(tokenizer))
    same_tokens(model, tokenizer, prompts(tokenizer, demo), **SETTINGS[0])
    assert sample(model, tokenizer, prompts(tokenizer, demo), 4, seed=0, engine="lean").engine == "lean (static)"


def test_the_unmerged_path_in_bf16_follows_the_models_own_logits(tokenizer, demo, monkeypatch):
    """In bf16 the two engines may round apart, so the unmerged path is checked against the model's own
    forward: the greedy tokens it decodes are the argmax of the full model's logits over the same text, bar
    near-ties (top-2 gap under 0.05 nats, bf16's resolution at these logit sizes)."""
    monkeypatch.setattr(sampler, "merged_weights", lambda model: {})
    model = perturbed_student(tiny_llama(tokenizer).to(torch.bfloat16))
    ps = prompts(tokenizer, demo)
    y = sample(model, tokenizer, ps, 12, temperature=0, engine="lean")
    with teacher_view(model, "base"):
        base = sample(model, tokenizer, ps, 12, temperature=0, engine="lean")
    assert not torch.equal(y.ids, base.ids)  # the adapter decides tokens here
    for p, ids, n in zip(ps, y.ids.tolist(), y.lengths.tolist()):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + ids[:n]])).logits[0, len(p) - 1:len(p) + n - 1].float()
        top2 = logits.topk(2, -1).values
        clear = (top2[:, 0] - top2[:, 1]) > 0.05
        assert clear.sum() >= n // 2
        assert torch.equal(logits.argmax(-1)[clear], torch.tensor(ids[:n])[clear])


def test_lean_matches_generate_on_qwen2_with_biases(tokenizer, demo):
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = perturbed_student(Qwen2ForCausalLM(config).requires_grad_(False))
    assert model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.bias is not None
    same_tokens(model, tokenizer, prompts(tokenizer, demo), **SETTINGS[0])


def test_unsupported_models_fall_back_to_generate(tokenizer, demo):
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2,
                                       eos_token_id=tokenizer.eos_token_id))
    ps = prompts(tokenizer, demo, 2)
    assert not sampler.supported(model)
    assert sample(model, tokenizer, ps, 8, seed=0).ids.shape[0] == 2
    with pytest.raises(ValueError, match="engine='hf'"):
        sample(model, tokenizer, ps, 8, seed=0, engine="lean")
    with pytest.raises(ValueError, match="engine must be one of"):
        sample(model, tokenizer, ps, 8, engine="vllm")


def test_sdft_losses_are_the_same_with_either_sampler_and_the_metrics_name_it(tokenizer, demo):
    model = perturbed_student(tiny_llama(tokenizer))
    objective = {engine: SDFT(SDFTConfig(max_new_tokens=24, engine=engine)) for engine in ("lean", "hf", "auto")}
    scored = {engine: o.score(model, tokenizer, demo[:4], seed=7) for engine, o in objective.items()}
    assert torch.equal(scored["lean"].completions.ids, scored["hf"].completions.ids)
    torch.testing.assert_close(scored["lean"].per_token, scored["hf"].per_token)
    engines = {engine: o.loss(model, tokenizer, demo[:4], seed=7)[1]["engine"] for engine, o in objective.items()}
    assert engines["hf"] == "hf" and engines["lean"].startswith("lean (W·xᵀ ") and engines["auto"] == engines["lean"]


class Always(dict):
    """A layout table that answers `transposed` for every shape, as if measured so."""

    def __init__(self, transposed: bool):
        super().__init__()
        self.transposed = transposed

    def get(self, key, default=None):
        return self.transposed

    def __contains__(self, key):
        return True


@pytest.mark.parametrize("transposed", [False, True])
def test_either_matmul_layout_draws_the_same_tokens_as_generate(tokenizer, demo, monkeypatch, transposed):
    monkeypatch.setattr(sampler, "TRANSPOSED", Always(transposed))
    model = perturbed_student(tiny_llama(tokenizer))
    same_tokens(model, tokenizer, prompts(tokenizer, demo), **SETTINGS[1])


def test_layouts_are_measured_once_per_machine_shape_and_rows_without_touching_the_random_stream(monkeypatch,
                                                                                                tmp_path):
    monkeypatch.setenv("SDFT_LAB_CACHE", str(tmp_path))
    monkeypatch.delenv("SDFT_LAB_MATMUL", raising=False)
    monkeypatch.setattr(sampler, "TRANSPOSED", {})
    weights = [torch.randn(8, 4) for _ in range(3)] + [torch.randn(5, 4)]
    state = torch.get_rng_state()
    sampler.measure_layouts(weights, 2)
    assert torch.equal(state, torch.get_rng_state())  # the rollouts' seed draws what it drew before
    measured = dict(sampler.TRANSPOSED)
    assert set(measured) == {((8, 4), torch.float32, 2), ((5, 4), torch.float32, 2)}
    sampler.measure_layouts(weights, sampler.MEASURED_ROWS + 1)  # compute-bound: not measured, x @ W.T
    assert len(sampler.TRANSPOSED) == 2
    # the next process on this machine reads the choice instead of measuring again (the same rounding)
    saved = json.loads((tmp_path / sampler.LAYOUTS_FILE).read_text())[machine_key()]
    saved = {k: not v for k, v in saved.items()}  # flipped: proves it is read, not remeasured
    (tmp_path / sampler.LAYOUTS_FILE).write_text(json.dumps({machine_key(): saved}))
    monkeypatch.setattr(sampler, "TRANSPOSED", {})
    sampler.measure_layouts(weights, 2)
    assert sampler.TRANSPOSED == {k: not v for k, v in measured.items()}
    # once every shape at this batch size is known, a rollout neither reads the file nor times anything
    # (break it fails on, made once: the early return `if not groups` removed)
    with mock.patch.object(sampler, "read_cache", side_effect=AssertionError("the layouts file was read again")), \
            mock.patch.object(sampler, "product", side_effect=AssertionError("a layout was timed again")):
        sampler.measure_layouts(weights, 2)
    assert sampler.layouts(2) == f"W·xᵀ {sum(sampler.TRANSPOSED.values())}/2" and sampler.layouts(3) == "x·Wᵀ"
    x = torch.randn(2, 4)
    for transposed in (False, True):
        torch.testing.assert_close(sampler.product(weights[0], x, transposed), x @ weights[0].T)


@pytest.mark.parametrize("pin", ["plain", "transposed"])
def test_a_pinned_layout_is_used_everywhere_and_named(monkeypatch, pin):
    monkeypatch.setenv("SDFT_LAB_MATMUL", pin)
    monkeypatch.setattr(sampler, "TRANSPOSED", {})
    calls = []
    real = sampler.product
    monkeypatch.setattr(sampler, "product", lambda w, x, t: calls.append(t) or real(w, x, t))
    w, x = torch.randn(8, 4), torch.randn(2, 4)
    sampler.measure_layouts([w], 2)
    torch.testing.assert_close(sampler.matmul(w, None, x), x @ w.T)
    assert sampler.TRANSPOSED == {} and calls == [pin == "transposed"] and sampler.layouts(2) == f"pinned {pin}"


def test_decode_weights_are_the_merged_ones_and_every_other_linear(tokenizer):
    model = perturbed_student(tiny_llama(tokenizer))
    merged = sampler.merged_weights(model)
    weights = sampler.decode_weights(model, merged)
    head = model.get_output_embeddings().weight
    assert len(weights) == len(merged) + 1 and any(w is head for w in weights)  # 14 merged + the output head
    with teacher_view(model, "base"):  # adapter off: the base layers and the LoRA A / B (unused but cheap)
        assert len(sampler.decode_weights(model, {})) == 14 * 3 + 1


@pytest.mark.slow
def test_lean_matches_generate_on_the_bundled_model(bundled, demo):
    model, tokenizer = bundled
    same_tokens(model, tokenizer, prompts(tokenizer, demo, 4), new_tokens=16, **SETTINGS[0])


def test_sampling_uses_merged_weights_and_leaves_the_model_untouched(tokenizer, demo):
    model = perturbed_student(tiny_llama(tokenizer))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    merged = sampler.merged_weights(model)
    attn = model.get_base_model().model.layers[0].self_attn
    assert len(sampler.lora_layers(model)) == 14  # 7 projections × 2 layers: q,k,v and gate,up fused per layer
    assert len(merged) == 8 and attn in merged and attn.o_proj in merged and attn.q_proj not in merged
    by_hand = [m.base_layer.weight + m.lora_B["default"].weight @ m.lora_A["default"].weight * m.scaling["default"]
               for m in (attn.q_proj, attn.k_proj, attn.v_proj)]
    torch.testing.assert_close(merged[attn][0], torch.cat(by_hand))
    assert merged[attn][1] is None  # llama: no biases
    same_tokens(model, tokenizer, prompts(tokenizer, demo), **SETTINGS[0])  # lean (merged) = generate (adapter)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the base, bit for bit
    with teacher_view(model, "base"):
        assert sampler.merged_weights(model) == {}  # adapter off: nothing to merge
    assert sampler.merged_weights(model.to(torch.bfloat16)) == {}  # half precision keeps the adapter path


def test_auto_takes_the_engine_timed_faster_here_and_keeps_the_choice(tokenizer, demo, monkeypatch, tmp_path):
    """engine="auto" on the CPU: both samplers decode the batch once (a fake clock: generate takes half the lean
    sampler's time here), the faster samples, and the choice is saved per machine, model shape and batch size.
    Breaks it fails on (each made once): the comparison reversed, the choice not saved (timed again in a new
    process), and the choice not kept in the process (switched by another process's file)."""
    from sdft_lab import rollout

    monkeypatch.delenv("SDFT_LAB_ENGINE", raising=False)
    monkeypatch.setenv("SDFT_LAB_CACHE", str(tmp_path))
    monkeypatch.setattr(rollout, "CHOSEN", {})
    now, calls = [0.0], []
    monkeypatch.setattr(rollout, "clock", lambda: now[0])
    for module, name, cost in ((sampler, "generate", 1.0), (rollout, "generate_clean", 0.5)):
        def timed(*a, real=getattr(module, name), cost=cost, name=name, **k):
            now[0] += cost
            calls.append(name)
            return real(*a, **k)
        monkeypatch.setattr(module, name, timed)
    model, ps = tiny_llama(tokenizer), prompts(tokenizer, demo)
    first = sample(model, tokenizer, ps, 6, seed=0)
    assert first.engine == "hf" and calls == ["generate", "generate", "generate_clean", "generate_clean",
                                              "generate_clean"]  # warm-up and timed run of each, then sampling
    path = tmp_path / "engines.json"
    saved = json.loads(path.read_text())
    assert list(saved[machine_key()].values()) == ["hf"] and list(saved[machine_key()])[0].endswith("3 rows")
    rollout.CHOSEN.clear()  # a new process: the file's choice, not timed again
    again = sample(model, tokenizer, ps, 6, seed=0)
    assert calls[5:] == ["generate_clean"] and torch.equal(again.ids, first.ids)
    path.write_text(json.dumps({machine_key(): {k: "lean" for k in saved[machine_key()]}}))
    assert sample(model, tokenizer, ps, 6, seed=0).engine == "hf"  # within a process the choice holds
    assert sample(model, tokenizer, ps[:2], 6, seed=0).engine == "hf" and len(calls) == 12  # 2 rows: timed anew
    monkeypatch.setenv("SDFT_LAB_ENGINE", "lean")
    assert sample(model, tokenizer, ps, 6, seed=0).engine.startswith("lean")  # a pin wins over the timing


def test_an_adapter_on_some_projections_only_samples_like_generate(tokenizer, demo):
    """LoRA on q and v only: k, o and the MLP keep their own weights, nothing is fused where a part is not
    LoRA's. Break it fails on (the code before this test): merged_weights reading `base_layer` of a plain
    nn.Linear (AttributeError on every rollout)."""
    from sdft_lab import StudentConfig

    model = add_student(tiny_llama(tokenizer), StudentConfig(target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.3)
    merged = sampler.merged_weights(model)
    assert len(merged) == 4 and all(hasattr(m, "lora_A") for m in merged)  # q and v of 2 layers, not fused
    same_tokens(model, tokenizer, prompts(tokenizer, demo), **SETTINGS[0])
