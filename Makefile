# Two commands do all the set-up: `make demo` and `make test` (see README).
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# A CPU wheel of torch lies on this machine's disk; an open range would pull a CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test lint format clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e .
	touch $@

# The browser tests drive Debian's chromium (never a browser download); installed here when missing.
$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PIP) install -q -e '.[test,ui]'
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	touch $@

# The default model with its shipped sparse config (the `window` preset when none is shipped).
demo: $(VENV)/.installed
	$(VENV)/bin/sparsediff generate --compare --out outputs/demo.mp4

test: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; a suite that ran nothing has checked nothing" >&2; fi; \
	exit $$rc

lint:
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
