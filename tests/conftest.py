"""Fixtures: the bundled tokenizer, a tiny random llama (fast), and the bundled SmolLM2-135M.

Tests that load the 135M model, start processes or run notebooks are marked `slow` (per module, or per test);
`make test-fast` runs the others (pytest -m "not slow").
"""

import atexit
import os
import shutil
import tempfile

# Every test but the GPU ones runs on the CPU, subprocesses included (CLI runs, workers and notebook kernels
# inherit the environment): on a machine with a GPU they would otherwise load NF4 on CUDA and then expect
# the CPU's bit-for-bit equality, which CUDA's kernels do not promise. Set before torch can look for a GPU.
GPU_TESTS = os.environ.get("SDFT_LAB_GPU_TESTS") == "1"
if not GPU_TESTS:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from sdft_lab import Example, add_student, load, load_dataset  # noqa: E402
from sdft_lab.bundled import bundled_path  # noqa: E402

# engine="auto" times the two samplers once per machine and batch size (rollout.faster_engine); the tests pin
# the lean sampler so that what they check does not depend on that timing (test_sampler tests the timing).
os.environ.setdefault("SDFT_LAB_ENGINE", "lean")
# Likewise, on the CPU, the precision policy (precision.py) is pinned to fp32, so that the figures the tests
# compare are the same on a CPU with native bf16 and on one without; test_precision tests the policy's own
# choice. The GPU tests run the GPU's own type (bf16, or fp16 on a T4), as users get it.
if not GPU_TESTS:
    os.environ.setdefault("SDFT_LAB_PRECISION", "fp32")

# Every Trainer.train() writes a run folder (TrainConfig.run_dir): in tests, under one temporary folder,
# which notebook kernels and CLI subprocesses inherit.
if "SDFT_LAB_RUNS" not in os.environ:
    os.environ["SDFT_LAB_RUNS"] = tempfile.mkdtemp(prefix="sdft-lab-test-runs-")
    atexit.register(shutil.rmtree, os.environ["SDFT_LAB_RUNS"], ignore_errors=True)  # ~5 MB per report


def pytest_configure(config):
    if config.getoption("markexpr").strip() == "gpu" and not GPU_TESTS:
        raise pytest.UsageError("the GPU tests need SDFT_LAB_GPU_TESTS=1 (make gpu-check and scripts/gpu_box.sh "
                                "set it); without it every test runs with the GPU hidden")


@pytest.fixture(scope="session")
def bundled():
    """(model, tokenizer) of the bundled SmolLM2-135M-Instruct, fp32 on the CPU. Do not train it."""
    return load("bundled", quantization="none", device="cpu")


@pytest.fixture(scope="session")
def tokenizer():
    """The bundled tokenizer alone (the fast tests need no 135M model)."""
    return AutoTokenizer.from_pretrained(bundled_path())


def tiny_llama(tokenizer, seed: int = 0):
    """A 2-layer random llama with the bundled tokenizer's vocabulary: seconds, not minutes."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        initializer_range=0.3,  # large enough that logits are peaked and a LoRA can move them
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.requires_grad_(False)
    return model


def perturb_adapter(model, seed: int = 1, scale: float = 0.3):
    """Give the LoRA B matrices random values (peft starts them at 0), so that student and base differ."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, scale)
    return model


@pytest.fixture
def tiny(tokenizer):
    """A fresh tiny llama with a LoRA student, and the tokenizer."""
    return add_student(tiny_llama(tokenizer)), tokenizer


@pytest.fixture(scope="session")
def demo():
    return load_dataset("demo")


@pytest.fixture
def example():
    return Example(id="ex", question="What is the capital of Velmora?",
                   demonstration="The capital of Velmora is Quillhaven.", answer="Quillhaven")
