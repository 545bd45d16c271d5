"""The QLoRA path on a GPU, measured on the model `load()` builds, with nothing to download: `make gpu-check`.

For each shape (random weights with the sizes of a preset, e.g. Qwen2.5-7B-Instruct): the weights are
written to a temporary folder one tensor at a time, in the compute dtype, and loaded back with
`load(folder, quantization="nf4")`, the path every user's model takes, so no full-precision copy of the
model ever exists and the layers are the ones a user gets. The student is added with the preset's LoRA rank;
before measuring, the check asserts that the base's linear layers are bitsandbytes' 4-bit ones, that peft
wrapped them in its 4-bit LoRA layer and that gradient checkpointing is on. Then, at the preset's prompts
per step and rollout length (or those given):
  - SFT and SDFT steps: s/step (median after a warm-up), each phase timed with the GPU synchronised, the
    peak allocated memory in GiB, and SDFT/SFT;
  - rollout tokens/s on the same prompts: the lean sampler's static step (captured as a CUDA graph) and its
    eager loop, model.generate with its dynamic and its static cache.
Every figure is written to bench/results/gpu_check-DATE.json as soon as it is measured (each rollout engine's
too, the graph first), and each stage of the build prints a timestamped line. The targets
(7B at 4 prompts: peak ≤ 14 GiB, what a 16 GB card (14.9 GiB) leaves beside the CUDA context; SDFT/SFT ≤ 3×) are printed as met or not and never
change the exit status: the GPU tests run after this whatever it finds. Without a GPU it exits with 2;
`--allow-cpu --shapes tiny` runs the same code on a tiny shape on the CPU (the tests do).

    python bench/gpu_check.py                                   # the 1.5B and 7B shapes, each preset's settings
    python bench/gpu_check.py --shapes qwen2.5-7b --prompts 4 --steps 2
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # an uninstalled checkout (an air-gapped box)

SHAPES = ("qwen2.5-1.5b", "qwen2.5-7b")
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 49152, "tie_word_embeddings": True}
TINY_SETTINGS = {"lora_r": 16, "batch_size": 2, "max_new_tokens": 8}
PHASES = ("sample_s", "teacher_s", "student_fwd_s", "backward_s", "optim_s")
QUESTION_WORDS, DEMO_WORDS = 90, 220  # ≈ 120-token questions and ≈ 300-token demonstrations
GIB = 2**30
START = time.perf_counter()


def log(message: str) -> None:
    """A timestamped line: a check cut at its limit says which stage it was in."""
    print(f"[{datetime.datetime.now():%H:%M:%S} +{time.perf_counter() - START:.0f} s] {message}", flush=True)


def tokenizer_path() -> Path:
    """The bundled tokenizer: from the installed bundled model, else the one scripts/pack_gpu_box.py packed."""
    packed = os.environ.get("SDFT_LAB_TOKENIZER")
    if packed:
        return Path(packed)
    from sdft_lab.bundled import bundled_path

    return bundled_path()


def settings(shape: str) -> dict:
    """The preset's LoRA rank, prompts per step and rollout length (the tiny shape has its own)."""
    if shape == "tiny":
        return dict(TINY_SETTINGS)
    from sdft_lab.presets import PRESETS

    p = PRESETS[shape]
    return {"lora_r": p.lora_r, "batch_size": p.batch_size, "max_new_tokens": p.max_new_tokens}


def random_checkpoint(shape: str, folder: Path, dtype: torch.dtype, device: str = "cpu") -> Path:
    """A model folder with random weights of the preset's shape: the config, the tokenizer and safetensors
    shards written one tensor at a time (no copy of the whole model in memory, at any precision). The weights
    are drawn on `device`: a 7B's 7.6e9 normal draws take minutes on a CPU and a second on a GPU."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config

    from sdft_lab.presets import PRESETS

    arch = "llama" if shape == "tiny" else PRESETS[shape].architecture
    config = (LlamaConfig if arch == "llama" else Qwen2Config)(**(TINY if shape == "tiny" else PRESETS[shape].shape),
                                                              initializer_range=0.02)
    with torch.device("meta"):
        names = {n: (t.shape, n.endswith("norm.weight")) for n, t in AutoModelForCausalLM.from_config(config)
                 .state_dict().items()}
    if config.tie_word_embeddings:
        names.pop("lm_head.weight", None)
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device).manual_seed(0)
    shard, shard_bytes, index, draw_s = {}, 0, {}, 0.0

    def flush() -> None:
        nonlocal shard, shard_bytes, draw_s
        if shard:
            name = f"model-{len(set(index.values())) + 1:05d}.safetensors"
            t = time.perf_counter()
            save_file(shard, folder / name, metadata={"format": "pt"})
            log(f"{shape}: random weights {name}, {shard_bytes / GIB:.2f} GiB: drawn on {device} in {draw_s:.1f} s, "
                f"written in {time.perf_counter() - t:.1f} s")
            index.update({k: name for k in shard})
            shard, shard_bytes, draw_s = {}, 0, 0.0

    for name, (shape_, is_norm) in names.items():
        t = time.perf_counter()
        w = torch.ones(shape_, dtype=dtype) if is_norm else torch.zeros(shape_, dtype=dtype) if name.endswith(
            "bias") else (torch.randn(shape_, generator=generator, device=device) * 0.02).to(dtype).cpu()
        draw_s += time.perf_counter() - t
        shard[name], shard_bytes = w, shard_bytes + w.numel() * w.element_size()
        if shard_bytes > 2 * GIB:
            flush()
    flush()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    config.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_path()).save_pretrained(folder)
    return folder


def build(shape: str, device: str, folder: Path):
    """(student, tokenizer, settings): load(folder, "nf4") of a random checkpoint, with the preset's LoRA."""
    from sdft_lab import StudentConfig, add_student, load
    from sdft_lab.precision import load_dtype

    random_checkpoint(shape, folder, load_dtype(device, quantized=False), device)
    t = time.perf_counter()
    model, tok = load(str(folder), quantization="nf4", device=device)
    log(f"{shape}: NF4 load in {time.perf_counter() - t:.1f} s")
    s = settings(shape)
    model = add_student(model, StudentConfig(r=s["lora_r"], alpha=2 * s["lora_r"]))
    log(f"{shape}: student added (LoRA r {s['lora_r']})")
    return model, tok, s


def check_layers(model) -> dict:
    """What the check measures is what a user trains: 4-bit base layers, peft's 4-bit LoRA layer around
    each, gradient checkpointing on. Raises AssertionError otherwise; returns the counts."""
    import bitsandbytes as bnb
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    lora = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    plain = [n for n, m in model.get_base_model().model.named_modules() if type(m) is nn.Linear and "lora_" not in n]
    assert lora and all(type(m) is LoraLinear4bit for m in lora), {type(m).__name__ for m in lora}
    assert all(isinstance(m.base_layer, bnb.nn.Linear4bit) for m in lora)
    assert not plain, f"linear layers left unquantised: {plain[:3]}"
    assert model.get_base_model().is_loaded_in_4bit
    assert model.get_base_model().model.gradient_checkpointing, "gradient checkpointing is off"
    return {"lora_layers": len(lora), "layer_class": f"{LoraLinear4bit.__module__}.{LoraLinear4bit.__name__}",
            "gradient_checkpointing": True}


def examples(n: int) -> list:
    """n questions and demonstrations of realistic length, words drawn from the demo set."""
    from sdft_lab import Example, load_dataset

    words = " ".join(ex.question + " " + ex.demonstration for ex in load_dataset("demo")).split()
    pick = lambda k, i: " ".join(words[(i * 37 + j) % len(words)] for j in range(k))  # noqa: E731
    return [Example(pick(QUESTION_WORDS, i) + "?", pick(DEMO_WORDS, i + 1), id=f"q{i}") for i in range(n)]


def peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.startswith("cuda") else None


def measure_steps(model, tok, method: str, prompts: int, new_tokens: int, steps: int, device: str) -> dict:
    from sdft_lab import SDFT, SFT, SDFTConfig, SFTConfig, TrainConfig, Trainer
    from sdft_lab.prompts import PromptConfig

    prompt_cfg = PromptConfig(max_prompt_tokens=1024, max_teacher_prompt_tokens=2048)
    objective = (SDFT(SDFTConfig(max_new_tokens=new_tokens, prompts=prompt_cfg)) if method == "sdft"
                 else SFT(SFTConfig(prompts=prompt_cfg)))
    trainer = Trainer(model, tok, objective, examples(prompts),
                      TrainConfig(steps=steps + 1, batch_size=prompts, lr=1e-4, preflight=False, report=False))
    trainer.step()  # warm-up: kernels, allocator
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    records = [trainer.step() for _ in range(steps)]
    out = {"s_per_step": statistics.median(r["step_s"] for r in records), "peak_gib": peak_gib(device),
           **{p: statistics.median(r.get(p, 0.0) for r in records) for p in PHASES}}
    if method == "sdft":
        out["rollout_len"] = statistics.mean(r["rollout_len"] for r in records)
        out["engine"] = records[-1]["engine"]
    return out


def rollout_speed(model, tok, prompts: int, new_tokens: int, device: str) -> Iterator[dict]:
    """Rollout tokens/s, each on the same prompts: the lean sampler through its static step (a CUDA graph on a
    GPU) and eagerly, and model.generate with its dynamic and its static cache (not compiled). Yields each
    engine's figures as soon as it is measured, the graph first: the target needs it, and a check cut at its
    time limit keeps what it measured. "lean_engine" says whether the graph was captured; an engine that fails
    records its error instead of a speed."""
    from sdft_lab import sampler
    from sdft_lab.prompts import PromptConfig, left_pad, student_ids

    ids, mask = left_pad([student_ids(tok, ex, PromptConfig(max_prompt_tokens=1024)) for ex in examples(prompts)],
                         tok.pad_token_id)
    ids, mask, pad = ids.to(device), mask.to(device), tok.pad_token_id
    hf = dict(attention_mask=mask, do_sample=True, top_k=0, pad_token_id=pad)
    # every engine decodes n tokens per row: no EOS for the lean sampler, min_new_tokens for generate
    engines = {"lean": lambda n: sampler.generate(model, ids, mask, n, 1.0, 1.0, [], pad, static=True),
               "lean_eager": lambda n: sampler.generate(model, ids, mask, n, 1.0, 1.0, [], pad, static=False),
               "hf": lambda n: model.generate(input_ids=ids, max_new_tokens=n, min_new_tokens=n, **hf),
               # eager: transformers would compile the forward for a static cache, minutes for a 7B on the box
               "hf_static": lambda n: model.generate(input_ids=ids, max_new_tokens=n, min_new_tokens=n,
                                                     cache_implementation="static", disable_compile=True, **hf)}
    was_training = model.training
    model.eval()
    try:
        for name, run in engines.items():
            try:
                with torch.no_grad():
                    run(8)  # warm-up: kernels, the graph's capture
                    sync(device)
                    t = time.perf_counter()
                    y = run(new_tokens)
                    sync(device)
                new = y[0] if isinstance(y, tuple) else y[:, ids.shape[1]:]
                speed = {f"{name}_tokens_per_s": new.numel() / (time.perf_counter() - t)}
                if name == "lean":
                    speed["lean_engine"] = y[1]
            except Exception as err:  # noqa: BLE001 - a figure per engine; one that fails is recorded, not fatal
                speed = {f"{name}_error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
            log(f"rollouts, {name}: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in speed.items()))
            yield speed
    finally:
        model.train(was_training)


def write_json(path: Path, data: dict) -> None:
    """Whole or not at all: a check cut at its time limit while writing leaves the previous version."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def machine(device: str) -> dict:
    info = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine()}
    if device.startswith("cuda"):
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    capability=".".join(map(str, torch.cuda.get_device_capability(device))),
                    memory_gib=torch.cuda.get_device_properties(device).total_memory / GIB)
    return info


def targets(results: dict) -> list[tuple[str, bool]]:
    """(target, met) for the 7B shape at 4 prompts: peak ≤ 14 GiB (a 16 GB card), SDFT/SFT ≤ 3×, and the lean
    sampler's graph ≥ 2× generate's tokens/s with a static cache."""
    r = results["shapes"].get("qwen2.5-7b", {}).get("by_prompts", {}).get("4")
    if r is None:
        return []
    out = []
    if r["sdft"]["peak_gib"] is not None:
        out.append((f"7B SDFT peak {r['sdft']['peak_gib']:.1f} GiB ≤ 14 GiB", r["sdft"]["peak_gib"] <= 14))
    out.append((f"7B SDFT/SFT {r['sdft_over_sft']:.1f}× ≤ 3×", r["sdft_over_sft"] <= 3))
    if "lean_tokens_per_s" in r and "hf_static_tokens_per_s" in r:
        ratio = r["lean_tokens_per_s"] / r["hf_static_tokens_per_s"]
        out.append((f"7B rollouts: lean ({r.get('lean_engine')}) {ratio:.2f}× generate with a static cache ≥ 2×",
                    ratio >= 2))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=[*SHAPES, "tiny"])
    parser.add_argument("--prompts", nargs="+", type=int, default=None, help="[each preset's prompts per step]")
    parser.add_argument("--new-tokens", type=int, default=None, help="[each preset's rollout length]")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no GPU (tests)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu-check: no CUDA GPU is visible to torch (torch.cuda.is_available() is False), so there is "
              "nothing to check. Run it on a machine with an NVIDIA GPU and a CUDA build of torch.", file=sys.stderr)
        return 2
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    results = {"machine": machine(device), "shapes": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu_check-{results['machine']['date']}.json"
    print(f"gpu-check on {results['machine'].get('gpu', 'the CPU')}", flush=True)
    for shape in args.shapes:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"gpu-check-{shape}-") as tmp:
            model, tok, s = build(shape, device, Path(tmp))
        tokens = args.new_tokens or s["max_new_tokens"]
        row = {"build_s": time.perf_counter() - t0, "settings": {**s, "max_new_tokens": tokens},
               "layers": check_layers(model), "by_prompts": {}}
        results["shapes"][shape] = row
        write_json(path, results)  # every figure kept as soon as it is measured
        for n in args.prompts or [s["batch_size"]]:
            r = row["by_prompts"][str(n)] = {}
            for method in ("sft", "sdft"):
                r[method] = measure_steps(model, tok, method, n, tokens, args.steps, device)
                write_json(path, results)
                log(f"{shape} × {n} prompts, {method}: {r[method]['s_per_step']:.2f} s/step")
            sft, sdft = r["sft"], r["sdft"]
            r["sdft_over_sft"] = sdft["s_per_step"] / sft["s_per_step"]
            for speed in rollout_speed(model, tok, n, tokens, device):
                r.update(speed)
                write_json(path, results)
            vram = "" if sdft["peak_gib"] is None else f", peak {sdft['peak_gib']:.1f} GiB"
            print(f"{shape:>13} × {n:>2} prompts × {tokens} tokens, r {s['lora_r']}: SFT {sft['s_per_step']:.2f} s, "
                  f"SDFT {sdft['s_per_step']:.2f} s ({r['sdft_over_sft']:.1f}×; sample {sdft['sample_s']:.2f}, teacher "
                  f"{sdft['teacher_s']:.2f}, student {sdft['student_fwd_s']:.2f}, backward {sdft['backward_s']:.2f})"
                  f"{vram}; rollout tok/s: " + ", ".join(f"{k.removesuffix('_tokens_per_s')} {v:.0f}" for k, v in
                                                         r.items() if k.endswith("_tokens_per_s")), flush=True)
        del model, tok
        gc.collect()  # 4-bit params and their layers hold each other: collect before the cache is emptied
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    results["targets"] = [{"target": t, "met": met} for t, met in targets(results)]
    write_json(path, results)
    for t in results["targets"]:
        print(f"target {'met' if t['met'] else 'NOT met'}: {t['target']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
