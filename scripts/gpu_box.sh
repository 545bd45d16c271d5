#!/usr/bin/env bash
# The whole GPU check on an air-gapped box, with nothing installed there (docs/gpu.md):
#   here:      make setup && .venv/bin/python scripts/pack_gpu_box.py      # .gpu_box/, about 8 MiB
#   the box:   copy the checkout with .gpu_box/, then   bash scripts/gpu_box.sh [OUT]
# Runs the 7B-shaped check at 4 prompts (one warm-up and two measured steps of SFT and of SDFT, rollout speed),
# then the GPU tests; every figure goes to OUT (default bench/results) as soon as it is measured. About 6 of
# its 10 minutes are allowed to the check and 3 to the tests; each part is cut at its limit, never both.
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench/results}}
mkdir -p "$out"
[ -d .gpu_box ] || { echo "no .gpu_box/: run scripts/pack_gpu_box.py where the project is set up, and copy it here" >&2; exit 2; }
export PYTHONPATH="$PWD/.gpu_box:$PWD${PYTHONPATH:+:$PYTHONPATH}" SDFT_LAB_TOKENIZER="$PWD/.gpu_box/tokenizer"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
python - <<'PY' | tee "$out/gpu_box_env.txt"
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available() and torch.cuda.get_device_name(0))
for name in ("transformers", "peft", "accelerate", "safetensors", "bitsandbytes", "gguf", "sdft_lab"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"), m.__file__)
    except Exception as err:  # what the box lacks, said before anything runs
        print(name, "NOT IMPORTABLE:", type(err).__name__, err)
PY
timeout 360 python bench/gpu_check.py --shapes qwen2.5-7b --prompts 4 --steps 2 --out "$out" 2>&1 | tee "$out/gpu_check.log"
check=${PIPESTATUS[0]}
timeout 180 env SDFT_LAB_GPU_TESTS=1 python -m pytest -m gpu tests -q -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log"
tests=${PIPESTATUS[0]}
echo "gpu_check exit $check, GPU tests exit $tests (124: cut at the time limit)" | tee -a "$out/gpu_box_env.txt"
[ "$check" = 0 ] && [ "$tests" = 0 ]
