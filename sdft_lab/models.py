"""Load a base model, add the LoRA student, and switch to the teacher view.

One copy of the base weights serves both roles: the student is the base plus
the "student" LoRA adapter; the teacher is the same base with the adapter off
(default) or with an EMA copy of the adapter switched in.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from . import precision
from .bundled import BUNDLED, bundled_path
from .presets import PRESETS

STUDENT = "default"  # peft's default name, so PeftModel.from_pretrained(base, path) just works
EMA = "ema_teacher"
TEACHER_KINDS = ("base", "ema", "live")


# ----------------------------------------------------------------------------
# Loading


def resolve_quantization(quantization: str, device: str) -> str:
    if quantization not in ("auto", "nf4", "none"):
        raise ValueError(f"quantization must be 'auto', 'nf4' or 'none', got {quantization!r}")
    if quantization == "auto":
        return "nf4" if device.startswith("cuda") else "none"
    return quantization


def load(
    name_or_path: str = BUNDLED,
    quantization: str = "auto",
    device: str | None = None,
    trust_remote_code: bool = False,
):
    """Load (model, tokenizer). `name_or_path` is "bundled", a preset name (presets.PRESETS), a local folder or
    a hub id.

    quantization: "auto" = NF4 on CUDA and fp32 on the CPU; "nf4" forces 4-bit (bitsandbytes, double
    quant); "none" = no quantisation. The base computes in the precision policy's type (precision.py): bf16 on
    GPUs that have it natively, fp16 on those that do not; on the CPU fp32, or bf16 where measured faster.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    # One GPU per process under `accelerate launch` / torchrun (LOCAL_RANK); plain "cuda:0" otherwise.
    device = device or (f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
    quant = resolve_quantization(quantization, device)
    preset = PRESETS.get(name_or_path)
    path = str(bundled_path()) if name_or_path == BUNDLED else preset.hub_id if preset else name_or_path
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    dtype = precision.load_dtype(device, quant == "nf4")
    kwargs["dtype"] = dtype
    if quant == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        fetch = (f"The preset {name_or_path!r} is {path}: fetch it once where there is a network "
                 f"(`hf download {path}`), then it loads from the local hub cache offline. ") if preset else ""
        raise OSError(
            f"Could not load {name_or_path!r}: it is neither a local folder nor a model in the local "
            f"hub cache, and this machine may be offline. {fetch}Use load('bundled') for the bundled "
            f"SmolLM2-135M-Instruct, or pass a local path. ({err})"
        ) from err
    if quant != "nf4":
        model.to(device)
    elif device == "cpu":
        portable_cpu_4bit(model)
    precision.resolve(model, quantized=quant == "nf4")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def portable_cpu_4bit(model) -> None:
    """Keep every 4-bit layer on bitsandbytes' plain CPU path: dequantize, then an fp32 matmul with autograd.

    On CPUs with AVX512-BF16, bitsandbytes (0.50) repacks a Linear4bit's weight *in place* into a CPU
    inference layout the first time the layer runs in eval mode without grad (our sampler does exactly
    that). From then on every call, in train mode too, goes through `gemv_4bit`: bf16 compute with the
    block scales rounded to bf16, and no autograd kernel, so gradients to earlier layers are silently
    wrong; saving converts back with a re-quantised scale, so the model no longer matches its own
    checkpoint. On AVX2 CPUs that path never runs. Turning it off gives the same path, and the same
    numbers, on every CPU; it costs nothing on AVX2 and the fused kernel's inference speed on AVX-512.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


@contextmanager
def quiet_peft() -> Iterator[None]:
    """peft (0.21) reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model: that
    FutureWarning is about the two libraries, not about anything a user did.

    peft also imports bitsandbytes whenever it is installed, even for an fp32 model. On CPUs with AVX512-BF16,
    bitsandbytes (0.50) then logs that it cannot fetch a fused 4-bit kernel from the hub: a kernel for the
    repacked CPU path that portable_cpu_4bit switches off on every layer, so sdft_lab never calls it."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        yield


def load_adapter(model, path: str | Path):
    """The base model with a saved peft adapter folder applied (inference mode). The base is modified in
    place; `with teacher_view(adapted, "base"):` scores the base again without reloading it."""
    from peft import PeftModel

    if not (Path(path) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{path} is not a saved adapter: it has no adapter_config.json "
                                "(save one with Trainer.save_adapter or model.save_pretrained).")
    with quiet_peft():
        return PeftModel.from_pretrained(model, str(path)).eval()


# ----------------------------------------------------------------------------
# The student adapter and the teacher view


@dataclass
class StudentConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    # Recompute layer activations in backward: less memory, one more forward. None = on for 4-bit bases
    # (the QLoRA convention: they are loaded to fit a small GPU), off otherwise.
    gradient_checkpointing: bool | None = None


def enable_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing: it needs no input grads and works under no_grad teacher passes.

    transformers 5.23 calls it activation_checkpointing_enable and keeps gradient_checkpointing_enable as a
    deprecated alias; 5.17 (the air-gapped GPU box's version) has only the old name.
    """
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def add_student(model, lora: StudentConfig | None = None, seed: int | None = 0):
    """Wrap the frozen base in a PeftModel whose only trainable weights are the student adapter.

    seed: the adapter's random init (LoRA A; B starts at zero), drawn from its own seeded generator so
    that the same seed gives the same run in any process. None draws from the global RNG instead.
    """
    from peft import LoraConfig, get_peft_model

    check_supported(model)
    lora = lora or StudentConfig()
    # Not peft's prepare_model_for_kbit_training: it upcasts every weight that is not 4-bit (embeddings,
    # lm_head, norms: +2.0 GiB on a 7B) to fp32, and the whole forward then runs in fp32. The base stays in
    # its dtype; peft keeps the LoRA matrices in fp32 and the losses upcast the logits.
    checkpointing = lora.gradient_checkpointing
    if checkpointing is None:
        checkpointing = bool(getattr(model, "is_loaded_in_4bit", False))
    if checkpointing:
        enable_checkpointing(model)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=cuda), quiet_peft():  # the caller's RNG stream is kept
            if seed is not None:
                torch.manual_seed(seed)
            # the adapter in fp32 over a bf16/fp16 base (peft's default, said here: the precision policy needs it)
            return get_peft_model(model, config, adapter_name=STUDENT, autocast_adapter_dtype=True)
    except ValueError as err:
        if "not found" not in str(err) and "Target modules" not in str(err):
            raise
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"LoRA target_modules {lora.target_modules!r} match no layer of this "
                         f"{type(model).__name__}. Its linear layers are named {linear}; use some of these, "
                         "or 'all-linear'.") from err


def add_ema_teacher(model) -> None:
    """Add a second adapter that starts as a copy of the student and follows it by EMA.

    On a model that has one already (a second Trainer on the same model), it is reset to the student.
    """
    if EMA not in model.peft_config:
        model.add_adapter(EMA, model.peft_config[STUDENT])
    with torch.no_grad():
        for ema, student in _adapter_pairs(model):
            ema.copy_(student)
    model.set_adapter(STUDENT)  # keeps the student the only trainable adapter


def _adapter_pairs(model) -> Iterator[tuple[nn.Parameter, nn.Parameter]]:
    params = dict(model.named_parameters())
    for name, student in params.items():
        if f".{STUDENT}." in name:
            yield params[name.replace(f".{STUDENT}.", f".{EMA}.")], student


@torch.no_grad()
def ema_update(model, rate: float) -> None:
    """θ_T ← (1−r)·θ_T + r·θ_S for each LoRA matrix.

    This averages A and B separately, which is not the EMA of the product B·A
    (the weight delta); the two agree only to first order in r.
    """
    for ema, student in _adapter_pairs(model):
        ema.lerp_(student, rate)


@contextmanager
def teacher_view(model, kind: str = "base"):
    """Run the teacher: "base" = adapter off (default), "ema" = EMA adapter,
    "live" = the current student itself (known to collapse; for demonstrations only).

    Inside, the model is in eval mode: the teacher only scores, and dropout (LoRA's, or the base's own)
    would make its targets random.
    """
    if kind not in TEACHER_KINDS:
        raise ValueError(f"teacher kind must be one of {TEACHER_KINDS}, got {kind!r}")
    was_training = model.training
    model.eval()
    try:
        if kind == "base" and hasattr(model, "disable_adapter"):  # a plain model is its own base
            with model.disable_adapter():
                yield
        elif kind == "ema":
            model.set_adapter(EMA, inference_mode=True)
            try:
                yield
            finally:
                model.set_adapter(STUDENT)
        else:
            yield
    finally:
        model.train(was_training)


def trainable_parameters(model) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def lm_head(model) -> nn.Module:
    return model.get_output_embeddings()


def decoder(model) -> nn.Module:
    """The transformer body that returns final (normed) hidden states, inside any PeftModel wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


# Config fields with which a model post-processes lm_head's output (Gemma 2/3 soft-capping, Cohere's
# logit_scale, Granite's logits_scaling, …). sdft_lab makes logits as lm_head(h) chunk by chunk, so such
# a model would train on the wrong logits.
LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def check_supported(model) -> None:
    """Refuse models whose logits are not lm_head(hidden), with the field that says so."""
    cfg = model.config
    for attr in LOGIT_POSTPROCESSING:
        if getattr(cfg, attr, None) not in (None, 1.0):
            raise NotImplementedError(f"{cfg.model_type} sets config.{attr}={getattr(cfg, attr)}: its logits are "
                                      "post-processed, and sdft_lab computes logits as lm_head(hidden states). "
                                      "Use a model without it (llama, qwen2, mistral, smollm, …).")

