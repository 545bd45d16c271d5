"""Models a single-GPU user would pick, with settings to start from and the GPU memory an SDFT step needs.

    load("qwen2.5-1.5b")        # resolves the preset to its hub id, from a local folder or the local hub cache

Each preset keeps the model's shape (the fields of its Hugging Face config), which gives the memory estimate
below and lets `bench/gpu_check.py` build a random model of the same size without downloading anything.
The VRAM figure of a preset is `measured` where `make gpu-check` ran that shape, else the estimate.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    hub_id: str
    architecture: str  # transformers model class family: "qwen2" or "llama"
    shape: dict  # config fields: hidden_size, intermediate_size, num_hidden_layers, heads, kv heads, vocab, tied
    lora_r: int
    batch_size: int  # prompts per step
    max_new_tokens: int
    lr: float
    # make gpu-check's peak allocated where it ran this shape, + CUDA_CONTEXT_GIB as the estimate counts it …
    measured_vram_gib: float | None = None
    measured_on: str = ""  # … with its date and GPU, e.g. "2027-01-05, H200"
    note: str = field(default="")

    @property
    def vram_gib(self) -> float:
        return self.measured_vram_gib if self.measured_vram_gib is not None else estimate_vram_gib(self)

    @property
    def vram_source(self) -> str:
        return f"measured {self.measured_on}" if self.measured_vram_gib is not None else "estimated"


def _shape(hidden, intermediate, layers, heads, kv_heads, vocab, tied):
    return {"hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab,
            "tie_word_embeddings": tied}


PRESETS: dict[str, Preset] = {
    "qwen2.5-0.5b": Preset("Qwen/Qwen2.5-0.5B-Instruct", "qwen2", _shape(896, 4864, 24, 14, 2, 151936, True),
                           lora_r=32, batch_size=16, max_new_tokens=512, lr=1e-4),
    "qwen2.5-1.5b": Preset("Qwen/Qwen2.5-1.5B-Instruct", "qwen2", _shape(1536, 8960, 28, 12, 2, 151936, True),
                           lora_r=32, batch_size=16, max_new_tokens=512, lr=1e-4),
    "qwen2.5-3b": Preset("Qwen/Qwen2.5-3B-Instruct", "qwen2", _shape(2048, 11008, 36, 16, 2, 151936, True),
                         lora_r=64, batch_size=8, max_new_tokens=512, lr=5e-5,
                         note="the paper saw SDFT lose to SFT at 3B"),
    "qwen2.5-7b": Preset("Qwen/Qwen2.5-7B-Instruct", "qwen2", _shape(3584, 18944, 28, 28, 4, 152064, False),
                         lora_r=64, batch_size=4, max_new_tokens=512, lr=5e-5,
                         note="the paper's model (there fully fine-tuned)"),
    "smollm2-1.7b": Preset("HuggingFaceTB/SmolLM2-1.7B-Instruct", "llama", _shape(2048, 8192, 24, 32, 32, 49152, True),
                           lora_r=32, batch_size=16, max_new_tokens=512, lr=1e-4),
    "llama-3.2-1b": Preset("meta-llama/Llama-3.2-1B-Instruct", "llama", _shape(2048, 8192, 16, 32, 8, 128256, True),
                           lora_r=32, batch_size=16, max_new_tokens=512, lr=1e-4, note="gated on the hub"),
    "llama-3.2-3b": Preset("meta-llama/Llama-3.2-3B-Instruct", "llama", _shape(3072, 8192, 28, 24, 8, 128256, True),
                           lora_r=64, batch_size=8, max_new_tokens=512, lr=5e-5, note="gated on the hub"),
}


def parameter_count(p: Preset) -> tuple[int, int]:
    """(weights in the decoder's linear layers, embedding + lm_head weights); norms and biases are left out."""
    s = p.shape
    H, I, L, V = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"], s["vocab_size"]
    kv = s["num_key_value_heads"] * (H // s["num_attention_heads"])
    linear = L * (2 * H * H + 2 * H * kv + 3 * H * I)  # q, o; k, v; gate, up, down
    return linear, V * H * (1 if s["tie_word_embeddings"] else 2)


def adapter_parameters(p: Preset) -> int:
    """LoRA parameters of the student adapter on every linear layer of the decoder: r·(in + out) each."""
    s = p.shape
    H, I, L = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
    kv = s["num_key_value_heads"] * (H // s["num_attention_heads"])
    return L * p.lora_r * (4 * H + 2 * (H + kv) + 3 * (H + I))  # q, o; k, v; gate, up, down


CUDA_CONTEXT_GIB = 0.5  # the CUDA context and cuBLAS workspaces: outside torch's allocator, on every card


def estimate_vram_gib(p: Preset, batch_size: int | None = None, max_new_tokens: int | None = None,
                      prompt_tokens: int = 512, chunk_tokens: int = 256, ema: bool = True) -> float:
    """Peak GPU memory of one SDFT step over an NF4 base with gradient checkpointing, in GiB (2**30 bytes).

    weights      4-bit linear layers at 0.5 byte per weight + ~3 % for double-quantised block scales;
                 embeddings (and an untied lm_head) in bf16
    adapter      r·(in + out) per linear layer, 16 bytes each: fp32 weight, gradient, two Adam moments;
                 + 4 bytes each for the EMA teacher's copy (ema=True, the conservative default)
    KV cache     the rollout's keys and values in bf16 for prompt + new tokens
    activations  the student pass keeps one bf16 hidden state per layer (checkpointing) plus one layer
                 recomputed in backward with its gradients
    logits       one chunk of [chunk_tokens, vocab] in fp32, ~6 copies (two sides, log-softmax, grads)
    Plus 20 % for the allocator's fragmentation, and the CUDA context. A guide for choosing a GPU, not a
    guarantee: `make gpu-check` measures it.
    """
    s = p.shape
    B, N = batch_size or p.batch_size, max_new_tokens or p.max_new_tokens
    H, I, L, V = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"], s["vocab_size"]
    kv = s["num_key_value_heads"] * (H // s["num_attention_heads"])
    T = prompt_tokens + N
    linear, embeddings = parameter_count(p)
    weights = linear * 0.5 * 1.03 + embeddings * 2
    adapter = adapter_parameters(p) * (16 + 4 * ema)
    kv_cache = 2 * L * B * T * kv * 2
    activations = L * B * T * H * 2 + B * T * (6 * H + 2 * kv + 3 * I) * 2 * 2
    logits = chunk_tokens * V * 4 * 6
    return round(1.2 * (weights + adapter + kv_cache + activations + logits) / 2**30 + CUDA_CONTEXT_GIB, 1)


def table() -> str:
    """The presets as a markdown table (docs/gpu.md holds a copy)."""
    rows = ["| preset | hub id | LoRA r | prompts/step | new tokens | lr | VRAM per SDFT step |",
            "|---|---|---|---|---|---|---|"]
    for name, p in PRESETS.items():
        rows.append(f"| `{name}` | {p.hub_id} | {p.lora_r} | {p.batch_size} | {p.max_new_tokens} | {p.lr:g} | "
                    f"{p.vram_gib} GiB ({p.vram_source}) |")
    return "\n".join(rows)
