# Two commands do all the set-up: `make demo` and `make test` (see README).
# Both install the exact versions the suite passed with (LOCK); pyproject.toml keeps open ranges.
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
LOCK := requirements-lock.txt
# A CPU wheel of torch lies on this machine's disk; an open range would pull a CUDA build.
TORCH := torch==2.13.0
EXTRAS := test,ui,triton

.PHONY: demo test test-latest lock gpu-wheels gpu-check lint format clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: pyproject.toml $(LOCK) | $(PY)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -c $(LOCK) -e .
	touch $@

# The browser tests drive Debian's chromium (never a browser download); installed here when missing.
$(VENV)/.installed-test: pyproject.toml $(LOCK) $(VENV)/.installed
	$(PIP) install -q -r $(LOCK)
	$(PIP) install -q --no-deps -e '.[$(EXTRAS)]'
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	touch $@

# The default model with its shipped sparse config (the `local` preset when none is shipped).
demo: $(VENV)/.installed
	$(VENV)/bin/sparsediff generate --compare --out outputs/demo.mp4

test: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@$(PY) -m pytest -q --durations=20 $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; a suite that ran nothing has checked nothing" >&2; fi; \
	exit $$rc

# The newest release of every dependency (torch stays the CPU wheel), in a venv of its own: a
# breaking upstream release shows here before it reaches users.
LATEST := .venv-latest
test-latest:
	python3 -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q $(TORCH)
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[$(EXTRAS)]' $(TORCH)
	$(LATEST)/bin/python -m pip list --format=freeze > $(LATEST)/versions.txt
	$(LATEST)/bin/python -m pytest -q $(PYTEST_ARGS)

# Re-resolve the lock from pyproject.toml's ranges: torch pinned to the CPU wheel, whose CUDA
# libraries (dependencies of PyPI's build only) are left out. Run `make test` on the result before
# committing it: the lock holds only versions the suite passed with.
CUDA_ONLY := cuda-bindings cuda-pathfinder cuda-toolkit nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc \
	nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse \
	nvidia-cusparselt-cu13 nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx
lock: | $(PY)
	$(PIP) install -q uv
	echo "$(TORCH)" > $(VENV)/torch-pin.txt
	printf '%s\n' $(CUDA_ONLY) > $(VENV)/cuda-only.txt
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --extra ui --extra triton --no-header \
		-c $(VENV)/torch-pin.txt --excludes $(VENV)/cuda-only.txt \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 -o $(LOCK)

# Wheels for the GPU check's machine (Python 3.12, its own torch and triton; no registry there):
# what it lacks, at the lock's versions, carried in the git-ignored gpu-wheels/ (scripts/gpu_check.sh).
GPU_WHEELS := diffusers transformers huggingface-hub hf-xet tokenizers safetensors accelerate pydantic pydantic-core \
	annotated-types typing-inspection typing-extensions regex
gpu-wheels: | $(PY)
	rm -rf gpu-wheels && mkdir gpu-wheels
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
		-d gpu-wheels $$(for p in $(GPU_WHEELS); do grep -i "^$$p==" $(LOCK); done)

gpu-check: | $(PY)
	PYTHON=$(PY) bash scripts/gpu_check.sh --dry --out outputs/gpu-check-dry

lint:
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) $(LATEST) build *.egg-info .pytest_cache .ruff_cache .hypothesis
