"""The GPU path in a few minutes, with nothing to download: `make gpu-check`.

For each shape (random weights with the sizes of Qwen2.5-1.5B- and 7B-Instruct, from sdft_lab.presets), the
model is built on the GPU in bf16 and quantized to NF4 as `load(..., quantization="nf4")` does, a LoRA student
is added with the default settings of a 4-bit base (gradient checkpointing on), and then it measures:
  - SFT and SDFT steps at 4 and 16 prompts × 256 new tokens (realistic prompt lengths): s/step (median after a
    warm-up) with the per-phase breakdown, peak VRAM (torch.cuda.max_memory_allocated), SDFT/SFT;
  - rollout tokens/s of the lean sampler and of model.generate on the same prompts.
It prints a table, writes bench/results/gpu_check-DATE.json, and checks the 7B targets (4 prompts: peak ≤ 20 GB,
SDFT/SFT ≤ 3×). `make gpu-check` then runs the GPU-marked tests (pytest -m gpu). Without a GPU it says so and
exits with status 2; `--allow-cpu --shapes tiny` runs the same code on a tiny shape on the CPU (the tests do).

    python bench/gpu_check.py                          # both shapes, 4 and 16 prompts
    python bench/gpu_check.py --shapes qwen2.5-7b --prompts 4
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

SHAPES = ("qwen2.5-1.5b", "qwen2.5-7b")
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 49152, "tie_word_embeddings": True}
PHASES = ("sample_s", "teacher_s", "student_fwd_s", "backward_s", "optim_s")
QUESTION_WORDS, DEMO_WORDS = 90, 220  # ≈ 120-token questions and ≈ 300-token demonstrations


def build_nf4(shape_name: str, device: str):
    """A random-init model of the preset's shape, its linear layers quantized to NF4 (bf16 compute on CUDA)."""
    import bitsandbytes as bnb
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from sdft_lab.models import portable_cpu_4bit
    from sdft_lab.presets import PRESETS

    if shape_name == "tiny":
        config_cls, model_cls, shape = LlamaConfig, LlamaForCausalLM, TINY
    else:
        preset = PRESETS[shape_name]
        config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM),
                                 "llama": (LlamaConfig, LlamaForCausalLM)}[preset.architecture]
        shape = preset.shape
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = model_cls(config_cls(**shape, initializer_range=0.02)).to(dtype)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child is not model.get_output_embeddings():
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=dtype, quant_type="nf4", device="meta")
                q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4",
                                             compress_statistics=True, module=q).to(device)  # quantizes
                if child.bias is not None:
                    q.bias = nn.Parameter(child.bias.data, requires_grad=False)
                setattr(parent, name, q)
    model.requires_grad_(False)
    if device == "cpu":
        portable_cpu_4bit(model)
    return model


def examples(n: int) -> list:
    """n questions and demonstrations of realistic length, words drawn from the demo set."""
    from sdft_lab import Example, load_dataset

    words = " ".join(ex.question + " " + ex.demonstration for ex in load_dataset("demo")).split()
    pick = lambda k, i: " ".join(words[(i * 37 + j) % len(words)] for j in range(k))  # noqa: E731
    return [Example(pick(QUESTION_WORDS, i) + "?", pick(DEMO_WORDS, i + 1), id=f"q{i}") for i in range(n)]


def peak_gb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.startswith("cuda") else None


def measure_steps(model, tok, method: str, prompts: int, new_tokens: int, steps: int, device: str) -> dict:
    from sdft_lab import SDFT, SFT, SDFTConfig, SFTConfig, TrainConfig, Trainer
    from sdft_lab.prompts import PromptConfig

    prompt_cfg = PromptConfig(max_prompt_tokens=1024, max_teacher_prompt_tokens=2048)
    objective = (SDFT(SDFTConfig(max_new_tokens=new_tokens, prompts=prompt_cfg)) if method == "sdft"
                 else SFT(SFTConfig(prompts=prompt_cfg)))
    trainer = Trainer(model, tok, objective, examples(prompts),
                      TrainConfig(steps=steps + 1, batch_size=prompts, lr=1e-4, preflight=False))
    trainer.step()  # warm-up: kernels, allocator
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    records = [trainer.step() for _ in range(steps)]
    out = {"s_per_step": statistics.median(r["step_s"] for r in records), "peak_vram_gb": peak_gb(device),
           **{p: statistics.median(r.get(p, 0.0) for r in records) for p in PHASES}}
    if method == "sdft":
        out["rollout_len"] = statistics.mean(r["rollout_len"] for r in records)
    return out


def rollout_speed(model, tok, prompts: int, new_tokens: int, device: str) -> dict:
    from sdft_lab import sample
    from sdft_lab.prompts import PromptConfig, student_ids

    ids = [student_ids(tok, ex, PromptConfig(max_prompt_tokens=1024)) for ex in examples(prompts)]
    speed = {}
    for engine in ("lean", "hf"):
        sample(model, tok, ids, 8, seed=0, engine=engine)  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        y = sample(model, tok, ids, new_tokens, seed=0, engine=engine)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        speed[f"{engine}_tokens_per_s"] = y.lengths.sum().item() / (time.perf_counter() - t)
    return speed


def machine(device: str) -> dict:
    info = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine()}
    if device.startswith("cuda"):
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    driver=".".join(map(str, torch.cuda.get_device_capability(device))) + " (compute capability)")
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=[*SHAPES, "tiny"])
    parser.add_argument("--prompts", nargs="+", type=int, default=[4, 16])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no GPU (tests)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu-check: no CUDA GPU is visible to torch (torch.cuda.is_available() is False), so there is "
              "nothing to check. Run it on a machine with an NVIDIA GPU and a CUDA build of torch.", file=sys.stderr)
        return 2
    from sdft_lab import add_student
    from sdft_lab.bundled import bundled_path
    from transformers import AutoTokenizer

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(bundled_path())  # ids beyond its vocabulary decode to nothing: harmless
    results = {"machine": machine(device), "new_tokens": args.new_tokens, "shapes": {}}
    print(f"gpu-check on {results['machine'].get('gpu', 'the CPU')}, {args.new_tokens} new tokens per rollout")
    for shape in args.shapes:
        t0 = time.perf_counter()
        model = add_student(build_nf4(shape, device))  # 4-bit base: gradient checkpointing on by default
        row = {"build_s": time.perf_counter() - t0, "by_prompts": {}}
        for n in args.prompts:
            sft = measure_steps(model, tok, "sft", n, args.new_tokens, args.steps, device)
            sdft = measure_steps(model, tok, "sdft", n, args.new_tokens, args.steps, device)
            row["by_prompts"][n] = {"sft": sft, "sdft": sdft, "sdft_over_sft": sdft["s_per_step"] / sft["s_per_step"],
                                    **rollout_speed(model, tok, n, args.new_tokens, device)}
            r = row["by_prompts"][n]
            vram = "" if sdft["peak_vram_gb"] is None else f", peak {sdft['peak_vram_gb']:.1f} GB"
            print(f"{shape:>13} × {n:>2} prompts: SFT {sft['s_per_step']:.2f} s, SDFT {sdft['s_per_step']:.2f} s "
                  f"({r['sdft_over_sft']:.1f}×; sample {sdft['sample_s']:.2f}, teacher {sdft['teacher_s']:.2f}, "
                  f"student {sdft['student_fwd_s']:.2f}, backward {sdft['backward_s']:.2f}){vram}; rollouts: lean "
                  f"{r['lean_tokens_per_s']:.0f} tok/s, generate {r['hf_tokens_per_s']:.0f} tok/s", flush=True)
        results["shapes"][shape] = row
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    failed = targets(results)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu_check-{results['machine']['date']}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path}" + (f"; targets missed: {failed}" if failed else ""))
    return 1 if failed else 0


def targets(results: dict) -> list[str]:
    """The 7B shape at 4 prompts: peak ≤ 20 GB, SDFT/SFT ≤ 3×."""
    r = results["shapes"].get("qwen2.5-7b", {}).get("by_prompts", {}).get(4)
    if r is None:
        return []
    missed = []
    if r["sdft"]["peak_vram_gb"] is not None and r["sdft"]["peak_vram_gb"] > 20:
        missed.append(f"7B peak {r['sdft']['peak_vram_gb']:.1f} GB > 20 GB")
    if r["sdft_over_sft"] > 3:
        missed.append(f"7B SDFT/SFT {r['sdft_over_sft']:.1f}× > 3×")
    return missed


if __name__ == "__main__":
    sys.exit(main())
