"""A training run for test_reliability: checkpoints every step, logs each loss, can resume.

    python tests/resume_worker.py CKPT_DIR LOSSES.jsonl STEPS [--resume] [--pause SECONDS]
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_llama  # noqa: E402

from sdft_lab import SDFT, SDFTConfig, TrainConfig, Trainer, add_student, load, load_dataset  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("ckpt")
parser.add_argument("losses")
parser.add_argument("steps", type=int)
parser.add_argument("--resume", action="store_true")
parser.add_argument("--pause", type=float, default=0.0)
args = parser.parse_args()

_, tok = load("bundled", quantization="none", device="cpu")
model = add_student(tiny_llama(tok, seed=0))
cfg = TrainConfig(steps=args.steps, batch_size=2, lr=1e-2, preflight=False, checkpoint_dir=args.ckpt, checkpoint_every=1)
trainer = Trainer(model, tok, SDFT(SDFTConfig(max_new_tokens=6, teacher="ema", ema_rate=0.1)), load_dataset("demo"), cfg)
if args.resume:
    trainer.resume()
with open(args.losses, "a") as log:
    while trainer.step_count < args.steps:
        record = trainer.step()
        log.write(json.dumps({"step": record["step"], "loss": record["loss"], "kl": record["kl"]}) + "\n")
        log.flush()
        time.sleep(args.pause)
