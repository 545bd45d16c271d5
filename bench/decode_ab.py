"""The lean sampler's decode step, this tree against another commit's, interleaved: is a sampler change faster?

Each round runs one process per (code, rows) in turn (A B A B …), each timing one decode step as in
step_time.py: a full rollout minus a one-token one, per extra token, best of 3, on the bundled model in fp32
with a LoRA student whose B is not zero (so the merged weights are used), after a warm-up that measures the
matmul layouts. The ratio new / old is taken within each round and printed as median (min–max) with the machine.

    python bench/decode_ab.py --against 2f9209c                 # rows 4 and 16, 3 rounds
    python bench/decode_ab.py --against HEAD~1 --rows 4 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = """
import json, sys, time, torch
from sdft_lab import StudentConfig, add_student, load, load_dataset, sample
from sdft_lab.prompts import PromptConfig, student_ids
torch.manual_seed(0)
model, tok = load("bundled", quantization="none", device="cpu")
model = add_student(model, StudentConfig())
with torch.no_grad():
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.normal_(0, 0.01)
rows, new_tokens = int(sys.argv[1]), int(sys.argv[2])
examples = load_dataset("demo")
prompts = [student_ids(tok, ex, PromptConfig()) for ex in (examples * 4)[:rows]]
def timed(n):
    t = time.perf_counter()
    y = sample(model, tok, prompts, n, seed=0, engine="lean")
    return time.perf_counter() - t, int(y.lengths.max())
timed(2)
steps = []
for _ in range(3):
    (full, length), (one, _) = timed(new_tokens), timed(1)
    steps.append((full - one) / max(1, length - 1))
print(json.dumps(min(steps)))
"""


def decode_step(tree: Path, rows: int, new_tokens: int) -> float:
    out = subprocess.run([sys.executable, "-c", WORKER, str(rows), str(new_tokens)], cwd=tree, check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tree)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="a commit (the old code)")
    parser.add_argument("--rows", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from sdft_lab.report import machine

    m = machine()
    print(f"machine: {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="decode-ab-") as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.against],
                       check=True, capture_output=True)
        try:
            ratios: dict[int, list[float]] = {r: [] for r in args.rows}
            for r in range(1, args.rounds + 1):
                for rows in args.rows:
                    t_old = decode_step(old, rows, args.new_tokens)
                    t_new = decode_step(ROOT, rows, args.new_tokens)
                    ratios[rows].append(t_new / t_old)
                    print(f"  round {r}, {rows:>2} rows: old {1000 * t_old:.1f} ms, new {1000 * t_new:.1f} ms per "
                          f"decode step, new/old {t_new / t_old:.2f}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=True)
    for rows, values in ratios.items():
        print(f"{rows:>2} rows: new / old decode step {statistics.median(values):.2f} "
              f"({min(values):.2f}–{max(values):.2f}) over {len(values)} rounds, against {args.against}")


if __name__ == "__main__":
    main()
