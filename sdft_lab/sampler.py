"""A lean sampler for llama-family models: what `generate()` does, in one readable loop.

On-policy rollouts are most of an SDFT step, and `model.generate` spends much of
its time outside the matmuls. This loop prefills the prompts once, keeps keys and
values in a preallocated cache, and decodes one token per step through the same
modules the model uses (norms, rotary embedding, projections, the LoRA adapter as
peft applies it), so it samples the same tokens as `generate` for the same seed.

Two CPU speed-ups, each the same result up to float rounding. Decoding multiplies a few rows by each
weight, and which of `x @ W.T` (what nn.Linear does) and `W @ x.T` is faster depends on the CPU's BLAS:
on a 2-core AMD EPYC (AVX2, MKL) `W @ x.T` takes a third of the time at 4 rows, elsewhere it can lose. So
the first decode at a batch size times both over the model's own weights and keeps the faster per weight
shape (`measure_layouts`). And with a float32 base, each LoRA layer samples with a temporary merged
weight W + s·B·A: one matmul instead of three, while the model's own weights stay untouched (the teacher
is the base, bit for bit). bench/step_time.py measures both.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .bundled import cache_root
from .models import decoder

SUPPORTED = ("llama", "mistral", "qwen2")  # pre-norm, rotary, GQA, gated MLP, no extra norms


def supported(model) -> bool:
    cfg = model.config
    # Qwen2 configs carry a sliding_window that only use_sliding_window turns on; Mistral's is on when set
    sliding = getattr(cfg, "use_sliding_window", getattr(cfg, "sliding_window", None) is not None)
    if cfg.model_type not in SUPPORTED or sliding:
        return False
    # LoRA variants (DoRA, …) and merged adapters change the layer's maths: leave them to generate().
    return not any(getattr(m, "lora_variant", None) or getattr(m, "merged", False) for m in model.modules())


def lora_layers(model) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")]


def merged_weights(model) -> dict[nn.Module, torch.Tensor]:
    """Each active LoRA layer → W + Σ s·B·A, as new tensors: the model itself is not touched.

    Only for float32 bases on the CPU, where one matmul per layer instead of three is what pays and the
    copies (≈ the base's linear weights) live only while sampling. Elsewhere {}: the adapter path.
    """
    layers = [m for m in lora_layers(model) if not m.disable_adapters]
    if not layers or any(type(m.base_layer) is not nn.Linear or m.base_layer.weight.dtype != torch.float32
                         or m.base_layer.weight.device.type != "cpu"
                         or any(b.bias is not None for b in m.lora_B.values()) for m in layers):
        return {}
    merged = {}
    for m in layers:
        w = m.base_layer.weight.clone()
        for name in m.active_adapters:
            if name in m.lora_A:
                w += (m.lora_B[name].weight @ m.lora_A[name].weight) * m.scaling[name]
        merged[m] = w
    return merged


def linear(module: nn.Module, x: torch.Tensor, merged: dict | None = None) -> torch.Tensor:
    """module(x) for an nn.Linear or a peft LoRA Linear (eval mode: no dropout), using merged[module] if given."""
    if merged and module in merged:  # the adapter already in the weight: base bias, one matmul
        return matmul(merged[module], module.base_layer.bias, x)
    if hasattr(module, "base_layer"):  # peft LoRA layer: base(x) + Σ_active B(A(x))·scaling
        y = linear(module.base_layer, x)
        if not module.disable_adapters:
            for name in module.active_adapters:
                if name in module.lora_A:
                    a = module.lora_A[name]  # fp32 over a bf16/fp16 base, as peft keeps it: compute in its dtype
                    delta = linear(module.lora_B[name], linear(a, x.to(a.weight.dtype))) * module.scaling[name]
                    y = y + delta.to(y.dtype)
        return y
    if type(module) is nn.Linear and x.device.type == "cpu":
        return matmul(module.weight, module.bias, x)
    return module(x)  # quantised (bitsandbytes) layers, GPUs: the module's own kernel


# (weight shape, dtype, rows) → whether W @ x.T beat x @ W.T there, measured on this machine. Kept per machine
# in the cache folder, so that every process on it multiplies alike: the two layouts round differently, and
# a run must repeat bit for bit (docs/machines.md). SDFT_LAB_MATMUL=plain or =transposed pins one instead.
TRANSPOSED: dict[tuple, bool] = {}
MEASURED_ROWS = 64  # above this the product is compute-bound and both layouts run alike: x @ W.T
MARGIN = 0.9  # W @ x.T must take under 90 % of the time: a near-tie keeps nn.Linear's layout


def machine_key() -> str:
    try:
        cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M).group(1).strip()
    except (OSError, AttributeError):
        cpu = platform.processor() or platform.machine()
    return f"{cpu}; torch {torch.__version__}; {torch.get_num_threads()} threads"


def layouts_file() -> Path:
    return cache_root() / "matmul_layouts.json"


def _name(key: tuple) -> str:
    return f"{'x'.join(map(str, key[0]))} {str(key[1]).removeprefix('torch.')} {key[2]} rows"


def _saved() -> dict:
    try:
        return json.loads(layouts_file().read_text())
    except (OSError, ValueError):
        return {}


def product(weight: torch.Tensor, rows: torch.Tensor, transposed: bool) -> torch.Tensor:
    return (weight @ rows.T).T if transposed else rows @ weight.T


def matmul(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """x @ W.T + b, in the layout measured faster for this shape and number of rows (measure_layouts)."""
    rows = x.reshape(-1, x.shape[-1])
    if pin := os.environ.get("SDFT_LAB_MATMUL"):
        transposed = pin == "transposed"
    else:
        transposed = TRANSPOSED.get((tuple(weight.shape), weight.dtype, rows.shape[0]), False)
    y = product(weight, rows, transposed).reshape(*x.shape[:-1], -1)
    return y if bias is None else y + bias


def decode_weights(model, merged: dict) -> list[torch.Tensor]:
    """The CPU weights a decode step multiplies by: merged ones where the adapter is folded in, else each
    nn.Linear's (base layers, LoRA A and B, the output head)."""
    folded = {id(sub) for m in merged for sub in (m.base_layer, *m.lora_A.values(), *m.lora_B.values())}
    own = [m.weight for m in model.modules()
           if type(m) is nn.Linear and id(m) not in folded and m.weight.device.type == "cpu"]
    return list(merged.values()) + own


def measure_layouts(weights: list[torch.Tensor], rows: int) -> None:
    """For each weight shape not yet measured at `rows` rows, time both layouts over every weight of that
    shape, and keep the faster in TRANSPOSED. A sweep through all of them reads the weights from memory, as
    decoding does; one weight timed alone stays in cache, where the two layouts run alike. The inputs are
    constants, so the random stream (the rollouts' seed) is untouched. A fraction of a second, once per
    process and batch size."""
    if rows > MEASURED_ROWS or os.environ.get("SDFT_LAB_MATMUL"):
        return
    groups: dict[tuple, list[torch.Tensor]] = {}
    for w in weights:
        key = (tuple(w.shape), w.dtype, rows)
        if key not in TRANSPOSED:
            groups.setdefault(key, []).append(w)
    if not groups:  # every later rollout at this batch size: nothing to read or time
        return
    saved = _saved()
    here = saved.setdefault(machine_key(), {})
    new = False
    for key, ws in groups.items():
        if _name(key) in here:  # measured on this machine by an earlier process
            TRANSPOSED[key] = here[_name(key)]
            continue
        x = torch.full((rows, ws[0].shape[1]), 0.01, dtype=ws[0].dtype)
        best = {}
        for transposed in (False, True):
            times = []
            for _ in range(3):  # the first sweep warms up, the best of the other two counts
                t0 = time.perf_counter()
                for w in ws:
                    product(w, x, transposed)
                times.append(time.perf_counter() - t0)
            best[transposed] = min(times[1:])
        TRANSPOSED[key] = here[_name(key)] = best[True] < MARGIN * best[False]
        new = True
    if new:
        try:
            layouts_file().parent.mkdir(parents=True, exist_ok=True)
            tmp = layouts_file().with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(saved, indent=1, sort_keys=True))
            tmp.replace(layouts_file())  # whole or not at all, whatever runs beside it
        except OSError:
            pass  # a read-only home: measured again by the next process


def layouts(rows: int) -> str:
    """The layouts decoding `rows` rows uses, for the metrics: "W·xᵀ 5/5" (shapes where W @ x.T is used, of
    those measured), or the pinned one."""
    if pin := os.environ.get("SDFT_LAB_MATMUL"):
        return f"pinned {pin}"
    used = [v for (_, _, r), v in TRANSPOSED.items() if r == rows]
    return f"W·xᵀ {sum(used)}/{len(used)}" if used else "x·Wᵀ"


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


class KVCache:
    def __init__(self, layers: int, batch: int, heads: int, length: int, head_dim: int, like: torch.Tensor):
        shape = (layers, batch, heads, length, head_dim)
        self.k, self.v = like.new_zeros(shape), like.new_zeros(shape)

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor):
        end = start + k.shape[2]
        self.k[layer, :, :, start:end], self.v[layer, :, :, start:end] = k, v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


def forward(model, x: torch.Tensor, positions: torch.Tensor, start: int, attend: torch.Tensor,
            cache: KVCache, head_dim: int, merged: dict | None = None) -> torch.Tensor:
    """Run new tokens' embeddings x [B, q, H] at cache columns start…start+q; returns final hidden states.
    merged: weights with the adapter folded in (merged_weights)."""
    body, cfg = decoder(model), model.config
    B, q, _ = x.shape
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    cos, sin = (t.unsqueeze(1) for t in body.rotary_emb(x, positions))
    for i, layer in enumerate(body.layers):
        attn, mlp = layer.self_attn, layer.mlp
        h = layer.input_layernorm(x)
        qs = linear(attn.q_proj, h, merged).view(B, q, heads, head_dim).transpose(1, 2)
        ks = linear(attn.k_proj, h, merged).view(B, q, kv_heads, head_dim).transpose(1, 2)
        vs = linear(attn.v_proj, h, merged).view(B, q, kv_heads, head_dim).transpose(1, 2)
        ks, vs = cache.update(i, start, rotate(ks, cos, sin), vs)
        out = F.scaled_dot_product_attention(rotate(qs, cos, sin), ks, vs, attn_mask=attend, enable_gqa=True)
        x = x + linear(attn.o_proj, out.transpose(1, 2).reshape(B, q, heads * head_dim), merged)
        h = layer.post_attention_layernorm(x)
        gated = mlp.act_fn(linear(mlp.gate_proj, h, merged)) * linear(mlp.up_proj, h, merged)
        x = x + linear(mlp.down_proj, gated, merged)
    return body.norm(x)


def next_tokens(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Pick one token per row as generate() does: temperature, then top-p (nucleus), then a multinomial draw."""
    if temperature == 0:
        return logits.argmax(-1)
    scores = logits / temperature
    if top_p < 1:
        sorted_scores, order = scores.sort(-1)
        drop = sorted_scores.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[..., -1] = False  # always keep the most likely token
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(scores.softmax(-1), 1).squeeze(1)


@torch.no_grad()
def generate(model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, temperature: float, top_p: float,
             eos: list[int], pad_id: int) -> torch.Tensor:
    """Sample up to max_new_tokens after left-padded prompts ids/mask [B, P]; returns the new tokens [B, ≤ N].

    Rows that emitted an EOS continue with pad_id, and decoding stops when every row is done.
    """
    merged = merged_weights(model)  # freed when sampling ends
    B, P = ids.shape
    measure_layouts(decode_weights(model, merged), B)
    body, head = decoder(model), model.get_output_embeddings()
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    x = body.embed_tokens(ids)
    cache = KVCache(len(body.layers), B, cfg.num_key_value_heads, P + max_new_tokens, head_dim, x)
    valid = torch.zeros(B, P + max_new_tokens, dtype=torch.bool, device=ids.device)
    valid[:, :P] = mask.bool()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    eos_t = torch.tensor(eos, device=ids.device)
    done = torch.zeros(B, dtype=torch.bool, device=ids.device)
    start, out = 0, []
    for _ in range(max_new_tokens):
        q = x.shape[1]
        cols = torch.arange(start + q, device=ids.device)
        rows = cols[start:, None]
        # causal, real keys only; each position may always see itself so that pad rows stay finite
        attend = ((cols <= rows) & valid[:, None, : start + q]) | (cols == rows)
        h = forward(model, x, positions, start, attend.unsqueeze(1), cache, head_dim, merged)
        token = next_tokens(linear(head, h[:, -1:], merged).squeeze(1).float(), temperature, top_p)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        out.append(token)
        done |= torch.isin(token, eos_t)
        if done.all():
            break
        start += q
        valid[:, start] = True
        positions = positions[:, -1:] + 1
        x = body.embed_tokens(token[:, None])
    return torch.stack(out, 1)
