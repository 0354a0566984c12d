# The two commands of the README: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist
DEMO_RUN ?= runs/demo

.PHONY: setup data browser demo test lint format clean

# The virtual environment, with convlens installed in editable mode and the pinned dev tools.
# No pip cache: torch's CUDA build and its libraries would be stored twice (a few GB) on a
# machine whose disk may be small.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-cache-dir --upgrade pip
	$(BIN)/python -m pip install -q --no-cache-dir -e '.[dev]'
	touch $@

# Debian's Fashion-MNIST package, when the data is missing and apt is there (else convlens downloads it).
data:
	@if [ ! -d $(FMNIST) ] && [ -z "$$CONVLENS_DATA" ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	    || echo "could not install dataset-fashion-mnist; convlens will download Fashion-MNIST"; \
	fi

# Debian's chromium, for the test that renders report.html in a real browser (skipped without it).
browser:
	@if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ($$SUDO apt-get update -qq \
	    && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "could not install chromium; the browser test will be skipped"; \
	fi

setup: $(VENV)/.installed data browser

demo: $(VENV)/.installed data
	$(BIN)/convlens train --data fashion-mnist --run $(DEMO_RUN)
	@echo "run folder: $$(ls -dt runs/* | head -1) (report.html, metrics.json, weights/)"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-logo

test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
