"""How long the bundled base's greedy answers to the held-out knowledge questions are, and which share a QA
token budget cuts before the answer ends; with and without the short-answer system prompt.

    python scripts/answer_lengths.py [--limit N] [--out docs/answer_lengths.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sdft_lab import load
from sdft_lab.eval import load_knowledge
from sdft_lab.prompts import encode, render_chat
from sdft_lab.recipes import SHORT_ANSWER
from sdft_lab.report import machine
from sdft_lab.rollout import greedy

BUDGETS = (16, 24, 32, 48, 64, 96, 128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    model, tok = load("bundled")
    items = load_knowledge().eval[: args.limit]
    out = {"date": time.strftime("%Y-%m-%d"), "machine": machine(next(model.parameters()).device), "questions": len(items),
           "max_new_tokens": args.max_new_tokens, "systems": {}}
    for name, system in (("default", None), ("short-answer", SHORT_ANSWER)):
        prompts = [encode(tok, render_chat(tok, it.question, system)) for it in items]
        texts, cut = greedy(model, tok, prompts, args.max_new_tokens, desc=f"answers ({name})")
        lengths = [len(encode(tok, t)) + 1 for t in texts]  # + the EOS
        ended = [n for n, c in zip(lengths, cut) if not c]
        rates = {b: sum(n > b for n in lengths) / len(lengths) for b in BUDGETS}
        out["systems"][name] = {"system": system, "never_ended": sum(cut), "lengths": lengths,
                                "cut_rate": rates, "median": sorted(ended)[len(ended) // 2] if ended else None}
        print(f"{name:>13}: median {out['systems'][name]['median']} tokens, {sum(cut)} of {len(items)} not ended "
              f"in {args.max_new_tokens}; cut at " + ", ".join(f"{b}: {r:.0%}" for b, r in rates.items()))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
