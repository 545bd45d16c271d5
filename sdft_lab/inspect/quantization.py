"""Is the 4-bit teacher good enough? Quantisation noise beside the signal SDFT distills.

In sdft_lab the teacher is the base with the adapter off, so on a GPU it is the 4-bit base. Quantisation moves
the teacher's per-token distributions a little; what matters is whether that move is small against the
signal, the teacher-to-student divergence the loss follows. On the student's own rollouts, per token:

  noise   KL(full-precision teacher ‖ 4-bit teacher), both with the demonstration in context;
  signal  KL(4-bit teacher ‖ student), the SDFT loss's forward KL.

Their ratio is the verdict: under 10 % the quantised teacher teaches what the full one would; over 50 %
much of the signal is rounding. Both models must be the same base (one loaded with quantization="none", the
other "nf4"); the student is the 4-bit one's adapter (a fresh one: the student is the base).

    python -m sdft_lab.inspect.quantization --data demo        # the bundled model, fp32 against NF4
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
import torch.nn.functional as F

from ..data import Example, load_dataset
from ..losses import sequence_means
from ..models import lm_head, teacher_view
from ..prompts import teacher_ids
from ..rollout import completion_hidden
from ..sdft import SDFT, SDFTConfig

SMALL, LARGE = 0.10, 0.50  # noise / signal


def verdict(ratio: float) -> str:
    """noise / signal in words: under SMALL the noise does not change what is taught, over LARGE it does."""
    return "small" if ratio < SMALL else "large" if ratio > LARGE else "notable"


@torch.no_grad()
def per_token_kl(p_model, q_model, prompts: list[list[int]], y, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] KL(p ‖ q) per completion token (0 outside mask), each model through its own output head. Full
    [B, T, vocab] logits: keep batches small for large vocabularies (a diagnostic, not a training path)."""
    logp = [F.log_softmax(lm_head(m)(completion_hidden(m, prompts, y)).float(), -1) for m in (p_model, q_model)]
    return (logp[0].exp() * (logp[0] - logp[1])).sum(-1) * mask


@torch.no_grad()
def teacher_noise(full, quantized, tokenizer, examples: list[Example], cfg: SDFTConfig | None = None,
                  seed: int = 0) -> dict:
    """noise, signal (mean over rollouts of each rollout's per-token mean), their ratio and a verdict.
    full: the base in full precision; quantized: the same base in 4 bits, with or without its student adapter."""
    # the student's own rollouts and the base as the teacher: the noise is the rounding, nothing else
    cfg = replace(cfg or SDFTConfig(), guided=0.0, teacher="base")
    scored = SDFT(cfg).score(quantized, tokenizer, examples, seed=seed)  # rollouts, and the signal on them
    y, mask = scored.completions, scored.eligible
    prompts = [teacher_ids(tokenizer, ex, cfg.prompts) for ex in examples]
    with teacher_view(quantized, cfg.teacher), teacher_view(full, "base"):
        noise = per_token_kl(full, quantized, prompts, y, mask.to(next(full.parameters()).device))
    n, has = sequence_means(noise, mask)
    s, _ = sequence_means(scored.stats["kl"], mask)
    out = {"noise": n[has].mean().item(), "signal": s[has].mean().item(), "rollouts": int(has.sum())}
    out["ratio"] = out["noise"] / max(out["signal"], 1e-12)
    out["verdict"] = verdict(out["ratio"])
    return out


def line(figures: dict) -> str:
    """One sentence for the pre-flight's printout and notebook 02."""
    return (f"4-bit teacher: quantisation noise KL(full ‖ 4-bit) {figures['noise']:.4f} per token against the "
            f"SDFT signal KL(teacher ‖ student) {figures['signal']:.4f}, {figures['ratio']:.0%} of it: "
            f"{figures['verdict']} (under {SMALL:.0%} is small, over {LARGE:.0%} large).")


def main(argv: list[str] | None = None) -> dict:
    from ..models import load

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--data", default="demo")
    parser.add_argument("--n", type=int, default=8, help="examples (one rollout each)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    full, tok = load(args.model, quantization="none", device=args.device)
    quantized, _ = load(args.model, quantization="nf4", device=args.device)
    figures = teacher_noise(full, quantized, tok, load_dataset(args.data)[: args.n],
                            SDFTConfig(max_new_tokens=args.max_new_tokens))
    print(line(figures))
    return figures


if __name__ == "__main__":
    main()
