#!/usr/bin/env bash
# `make box-sim`: the air-gapped GPU box simulated on the CPU, offline (docs/gpu.md).
# .venv-box holds the box's package versions and none of the packages it lacks; the pack goes on PYTHONPATH the
# way the box gets it; scripts/gpu_box.sh runs end to end with --allow-cpu on a tiny shape; then every test module
# is collected under `-m gpu`, as pytest does on the box before it filters by marker.
# Where this machine cannot have the box's version, the nearest is used:
#   Python 3.11 (the box: 3.12.3): the torch wheel on this project's CI machines is built for 3.11
#   torch 2.13.0+cpu (the box: 2.11.0+cu130): every other torch on PyPI pulls the CUDA libraries, several GB
#   numpy 2.4.6 (the box: 2.5.2): PyPI has no 2.5 for this Python
#   peft 0.19.0 (the box: unrecorded): the oldest pyproject.toml allows; the pack's pinned peft shadows it
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-box
box=(torch==2.13.0 transformers==5.17.0 accelerate==1.15.0 tokenizers==0.23.2 huggingface_hub==1.33.0
     safetensors==0.8.0 numpy==2.4.6 peft==0.19.0 tqdm pandas pyarrow pytest pytest-xdist pytest-timeout)
lacks=(bitsandbytes gguf plotly ipywidgets nbformat nbclient jupyter datasets trl lm_eval trackio)
stamp=$venv/.installed-$(echo "${box[*]}" | md5sum | cut -c1-12)
if [ ! -e "$stamp" ]; then
    rm -rf "$venv"
    "${PYTHON_SYS:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${box[@]}"
    touch "$stamp"
fi
"$venv/bin/python" - "${lacks[@]}" <<'PY'
import importlib.util, sys
present = [name for name in sys.argv[1:] if importlib.util.find_spec(name)]
sys.exit(f"box-sim: .venv-box has {present}, which the box lacks" if present else 0)
PY
.venv/bin/python scripts/pack_gpu_box.py  # from make setup's environment, as for the box
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# the box's `python3` is its venv's; the cache folder (engine and layout timings) is the run's own
export PATH="$PWD/$venv/bin:$PATH" SDFT_LAB_CACHE="$out/cache"
bash scripts/gpu_box.sh "$out" --allow-cpu --shapes tiny --prompts 2 --new-tokens 8 --steps 1
python3 - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
env = (out / "gpu_box_env.txt").read_text()
for name in ("bitsandbytes", "gguf", "peft"):  # the pack's copies, with the dist-info accelerate reads
    line = next(l for l in env.splitlines() if l.startswith(name + " "))
    assert "/.gpu_box/" in line and "NO DIST-INFO" not in line, line
row = json.loads(next(out.glob("gpu_check-*.json")).read_text())["shapes"]["tiny"]["by_prompts"]["2"]
assert all(row[f"{e}_tokens_per_s"] > 0 for e in ("lean", "lean_eager", "hf", "hf_static")), row
print("box-sim: gpu_box.sh ran end to end under the box's versions")
PY
SDFT_LAB_GPU_TESTS=1 PYTHONPATH="$PWD/.gpu_box:$PWD" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    python3 -m pytest -m gpu tests --collect-only -q -p no:cacheprovider
