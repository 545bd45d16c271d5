"""A lean sampler for llama-family models: what `generate()` does, in one readable loop.

On-policy rollouts are most of an SDFT step, and `model.generate` spends much of its time outside the
matmuls. This loop prefills the prompts once, keeps keys and values in a preallocated cache, and decodes one
token per step through the same modules the model uses (norms, rotary embedding, projections, the LoRA
adapter as peft applies it), so it samples the same tokens as `generate` for the same seed.

On the CPU, each the same result up to float rounding: with a float32 base each LoRA layer samples with a
temporary merged weight W + s·B·A (one matmul instead of three; the model's own weights stay untouched, so
the teacher is the base bit for bit), and the layers that read one input are fused (q/k/v, gate/up: 4
matmuls per layer instead of 7). Decoding multiplies a few rows by each weight, and which of `x @ W.T`
(nn.Linear's) and `W @ x.T` is faster depends on the CPU's BLAS, so the first decode at a batch size times
both over the model's own weights and keeps the faster per shape (`measure_layouts`). On CUDA the one-token
step runs with fixed shapes (`StaticStep`), captured as a CUDA graph once per rollout and replayed per token.
bench/step_time.py and bench/decode_ab.py measure them.
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from .bundled import machine_key, read_cache, write_cache
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


FUSED = {"self_attn": ("q_proj", "k_proj", "v_proj"), "mlp": ("gate_proj", "up_proj")}  # inputs shared


def merged_weights(model) -> dict:
    """Each active LoRA layer → W + Σ s·B·A, as new tensors: the model itself is not touched.

    Layers that read the same input are folded into one weight, keyed by their parent: self_attn → (W_qkv, b)
    and mlp → (W_gate_up, b), so a decode step runs 4 matmuls per layer where nn.Linear runs 7 (fewer, wider
    GEMMs; the concatenation is the copy the merge makes anyway). Other layers map to their merged weight.
    Only for float32 bases on the CPU, where one matmul per layer instead of three is what pays and the
    copies (≈ the base's linear weights) live only while sampling. Elsewhere {}: the adapter path.
    """
    layers = [m for m in lora_layers(model) if not m.disable_adapters]
    if not layers or any(type(m.base_layer) is not nn.Linear or m.base_layer.weight.dtype != torch.float32
                         or m.base_layer.weight.device.type != "cpu"
                         or any(b.bias is not None for b in m.lora_B.values()) for m in layers):
        return {}

    def merge(m: nn.Module, out: torch.Tensor) -> torch.Tensor:
        out.copy_(m.base_layer.weight)
        for name in m.active_adapters:
            if name in m.lora_A:
                out += (m.lora_B[name].weight @ m.lora_A[name].weight) * m.scaling[name]
        return out

    merged, todo = {}, set(layers)
    for layer in decoder(model).layers:
        for parent_name, names in FUSED.items():
            parent = getattr(layer, parent_name)
            parts = [getattr(parent, n) for n in names]
            if not all(m in todo for m in parts):  # a layer LoRA does not cover keeps its own weight
                continue
            biases = [m.base_layer.bias for m in parts]
            if len({b is None for b in biases}) > 1:
                continue
            w = parts[0].base_layer.weight.new_empty(sum(m.base_layer.out_features for m in parts),
                                                     parts[0].base_layer.in_features)
            start = 0
            for m in parts:
                merge(m, w[start:start + m.base_layer.out_features])
                start += m.base_layer.out_features
                todo.discard(m)
            merged[parent] = (w, None if biases[0] is None else torch.cat(biases))
    for m in todo:
        merged[m] = merge(m, torch.empty_like(m.base_layer.weight))
    return merged


def projections(parent: nn.Module, h: torch.Tensor, merged: dict | None) -> list[torch.Tensor]:
    """The outputs of parent's layers in FUSED that read h: one matmul when merged_weights fused them."""
    names = FUSED["self_attn" if hasattr(parent, "q_proj") else "mlp"]
    if merged and parent in merged:
        sizes = [getattr(parent, n).base_layer.out_features for n in names]
        return list(matmul(*merged[parent], h).split(sizes, -1))
    return [linear(getattr(parent, n), h, merged) for n in names]


def linear(module: nn.Module, x: torch.Tensor, merged: dict | None = None) -> torch.Tensor:
    """module(x) for an nn.Linear or a peft LoRA Linear (eval mode: no dropout), using merged[module] if given."""
    if merged and module in merged:  # the adapter already in the weight: base bias, one matmul
        return matmul(merged[module], module.base_layer.bias, x)
    if hasattr(module, "base_layer"):  # peft LoRA layer: base(x) + Σ_active B(A(x))·scaling
        y = linear(module.base_layer, x)
        dtype = y.dtype
        # peft's plain lora.Linear adds each delta in the wider dtype and rounds the sum once; its bitsandbytes
        # layers (and others over quantised bases) round each delta to the base's dtype first. Same order here.
        round_each = type(module.base_layer) is not nn.Linear
        if not module.disable_adapters:
            for name in module.active_adapters:
                if name in module.lora_A:
                    a = module.lora_A[name]  # fp32 over a bf16/fp16 base, as peft keeps it: compute in its dtype
                    delta = linear(module.lora_B[name], linear(a, x.to(a.weight.dtype))) * module.scaling[name]
                    y = y + (delta.to(dtype) if round_each else delta)
        return y.to(dtype)
    if type(module) is nn.Linear and x.device.type == "cpu":
        return matmul(module.weight, module.bias, x)
    return module(x)  # quantised (bitsandbytes) layers, GPUs: the module's own kernel


# (weight shape, dtype, rows) → whether W @ x.T beat x @ W.T there, measured on this machine. Kept per machine
# in the cache folder, so that every process on it multiplies alike: the two layouts round differently, and
# a run must repeat bit for bit (docs/machines.md). SDFT_LAB_MATMUL=plain or =transposed pins one instead.
TRANSPOSED: dict[tuple, bool] = {}
MEASURED_ROWS = 64  # above this the product is compute-bound and both layouts run alike: x @ W.T
MARGIN = 0.9  # W @ x.T must take under 90 % of the time: a near-tie keeps nn.Linear's layout


LAYOUTS_FILE = "matmul_layouts.json"  # in the cache folder


def _name(key: tuple) -> str:
    return f"{'x'.join(map(str, key[0]))} {str(key[1]).removeprefix('torch.')} {key[2]} rows"


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
    lora = {m for m in merged if hasattr(m, "base_layer")}
    lora |= {getattr(parent, n) for parent in merged if parent not in lora
             for n in FUSED["self_attn" if hasattr(parent, "q_proj") else "mlp"]}
    folded = {id(sub) for m in lora for sub in (m.base_layer, *m.lora_A.values(), *m.lora_B.values())}
    own = [m.weight for m in model.modules()
           if type(m) is nn.Linear and id(m) not in folded and m.weight.device.type == "cpu"]
    return [w[0] if isinstance(w, tuple) else w for w in merged.values()] + own


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
    saved = read_cache(LAYOUTS_FILE)
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
        write_cache(LAYOUTS_FILE, saved)


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

    def update(self, layer: int, start: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        if isinstance(start, torch.Tensor):  # a static-shape step (StaticStep): every column, written in place
            self.k[layer].index_copy_(2, start, k), self.v[layer].index_copy_(2, start, v)
            return self.k[layer], self.v[layer]
        end = start + k.shape[2]
        self.k[layer, :, :, start:end], self.v[layer, :, :, start:end] = k, v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
    """Causal attention of q [B, heads, q, d] over the cache's k, v [B, kv_heads, T, d] under the mask
    attend [B, 1, q, T], with SDPA's fused kernels. `enable_gqa=True` with a mask sends CUDA's SDPA to its
    math kernel (B × heads × q × T scores in memory), and a query whose last dimension is not contiguous (the
    W @ x.T layout's output) sends the CPU's there too. So: one new token per row → the query heads that share
    a key head become that head's queries ([B, kv_heads, group, d], one mask row for all); a prompt → the
    key and value heads repeated to the query heads, as the model's own attention does."""
    B, heads, length, d = q.shape
    group = heads // k.shape[1]
    if length == 1:
        q = q.reshape(B, k.shape[1], group, d).contiguous()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attend)\
            .reshape(B, heads, 1, d)
    k, v = (t.repeat_interleave(group, 1) for t in (k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attend)


def forward(model, x: torch.Tensor, positions: torch.Tensor, start: int | torch.Tensor, attend: torch.Tensor,
            cache: KVCache, head_dim: int, merged: dict | None = None) -> torch.Tensor:
    """Run new tokens' embeddings x [B, q, H] at cache columns start…start+q; returns final hidden states.
    start as a tensor [1]: one token written at that column, attending over the whole cache (static shapes).
    merged: weights with the adapter folded in (merged_weights)."""
    body, cfg = decoder(model), model.config
    B, q, _ = x.shape
    heads = cfg.num_attention_heads
    cos, sin = (t.unsqueeze(1) for t in body.rotary_emb(x, positions))
    for i, layer in enumerate(body.layers):
        attn, mlp = layer.self_attn, layer.mlp
        h = layer.input_layernorm(x)
        qs, ks, vs = (t.reshape(B, q, -1, head_dim).transpose(1, 2) for t in projections(attn, h, merged))
        ks, vs = cache.update(i, start, rotate(ks, cos, sin), vs)
        out = attention(rotate(qs, cos, sin), ks, vs, attend)
        x = x + linear(attn.o_proj, out.transpose(1, 2).reshape(B, q, heads * head_dim), merged)
        h = layer.post_attention_layernorm(x)
        gate, up = projections(mlp, h, merged)
        x = x + linear(mlp.down_proj, mlp.act_fn(gate) * up, merged)
    return body.norm(x)


class StaticStep:
    """One decode step with fixed shapes: inputs copied into buffers it owns, then `run` over those buffers.

    The tensors a step reads (the token's embedding, its position, its cache column, the mask over every
    column) keep their shape and address from token to token, as a CUDA graph needs: on CUDA the step is
    captured once per rollout and replayed per token, one launch instead of ~15 per layer (the eager loop is
    launch-bound there). Elsewhere, or if capture fails (a kernel that syncs with the host), `run` is called
    eagerly over the same buffers, which is how the CPU tests it."""

    def __init__(self, run, *inputs: torch.Tensor, capture: bool):
        self.run, self.inputs, self.graph, self.how = run, [t.clone() for t in inputs], None, "static"
        if capture:
            try:
                with torch.cuda.device(self.inputs[0].device):
                    side = torch.cuda.Stream()
                    side.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(side):  # warm-up off the capture: kernels chosen, workspaces allocated
                        for _ in range(2):
                            run(*self.inputs)  # writes this token's keys and values: the same ones each time
                    torch.cuda.current_stream().wait_stream(side)
                    self.graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(self.graph):
                        self.output = run(*self.inputs)
                self.how = "CUDA graph"
            except RuntimeError as err:  # keep sampling, eagerly, and say why in the engine's name
                self.graph, self.how = None, f"static, not captured: {str(err).splitlines()[0][:80]}"

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        for buffer, new in zip(self.inputs, inputs):
            buffer.copy_(new)
        if self.graph is None:
            return self.run(*self.inputs)
        self.graph.replay()
        return self.output


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
             eos: list[int], pad_id: int, static: bool | None = None) -> tuple[torch.Tensor, str]:
    """Sample up to max_new_tokens after left-padded prompts ids/mask [B, P]; returns the new tokens [B, ≤ N]
    and how they were decoded (the matmul layouts, or the static step's kind).

    Rows that emitted an EOS continue with pad_id, and decoding stops when every row is done. static (CUDA's
    default): decode through StaticStep, captured as a CUDA graph on a GPU.
    """
    static = ids.device.type == "cuda" if static is None else static
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
    eos_t = torch.tensor(eos, dtype=torch.long, device=ids.device)
    done = torch.zeros(B, dtype=torch.bool, device=ids.device)

    def logits(x, positions, start, attend) -> torch.Tensor:
        h = forward(model, x, positions, start, attend, cache, head_dim, merged)
        return linear(head, h[:, -1:], merged).squeeze(1).float()

    start, out, step = 0, [], None
    for _ in range(max_new_tokens):
        q = x.shape[1]
        if static and q == 1:  # after the prompt: the one-token step with fixed shapes
            column = torch.tensor([start], device=ids.device)
            attend = valid[:, None, None]  # the new token's column is already valid
            step = step or StaticStep(logits, x, positions, column, attend, capture=ids.device.type == "cuda")
            scores = step(x, positions, column, attend)
        else:
            cols = torch.arange(start + q, device=ids.device)
            rows = cols[start:, None]
            # causal, real keys only; each position may always see itself so that pad rows stay finite
            attend = ((cols <= rows) & valid[:, None, : start + q]) | (cols == rows)
            scores = logits(x, positions, start, attend.unsqueeze(1))
        token = next_tokens(scores, temperature, top_p)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        out.append(token)
        done |= torch.isin(token, eos_t)
        if done.all():
            break
        start += q
        valid[:, start] = True
        positions = positions[:, -1:] + 1
        x = body.embed_tokens(token[:, None])
    return torch.stack(out, 1), step.how if step else layouts(B)
