# `make demo` and `make test` each create .venv and install what they need, from a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint golden clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch; a plain `torch` requirement would pull several GB of CUDA wheels
	$(BIN)/pip install -q torch==2.13.0
	# setuptools warns on every editable install (a banner about its editable modes); nothing to act on
	PYTHONWARNINGS=ignore $(BIN)/pip install -q -e '.[test,tracking,wandb,mlflow]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/dfusion demo --out demo-run

# Two pytest-xdist workers: the shared stack's tests in one, in order, the other test files spread
# over both (tests/conftest.py). TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup tests

# also the RabbitMQ-broker reliability tests (skipped unless RabbitMQ listens on 127.0.0.1:5672)
test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m '' tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy dfusion_core services api workers cli reports devstack

golden: $(STAMP)
	$(BIN)/dfusion golden-check tests/golden/a

clean:
	rm -rf $(VENV) demo-run .pytest_cache
