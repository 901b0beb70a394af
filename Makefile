# jbptt: two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Two install levels: `demo` needs only jbptt and the experiments' extras;
# `test` (and everything else) adds the dev tools and the peers.
BASE   := $(VENV)/.installed-base
STAMP  := $(VENV)/.installed
# Optional peers for cross-checks and benchmarks (never library dependencies):
# PyTorch CPU checks LSTM/GRU weight conversion and is the benchmark peer.
# `make test PEERS=` skips it. `make demo` never installs it.
PEERS  ?= torch==2.13.0

.PHONY: venv venv-base demo test test-fast bench lint clean report docs

venv-base: $(BASE)
venv: $(STAMP)

$(BASE): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[experiments]"
	touch $(BASE)

$(STAMP): $(BASE)
	$(PY) -m pip install -q -e ".[dev,experiments]"
	test -z "$(PEERS)" || $(PY) -m pip install -q $(PEERS) \
		|| echo "optional peers ($(PEERS)) not installed; their checks are skipped"
	touch $(STAMP)

# The main job: bias/variance sweep of TBPTT and ARTBP on the default task.
demo: venv-base
	$(PY) -m experiments.bias_sweep --out results

# Two workers: CI has 2 cores; tests sharing one notebook run stay together;
# the 20 slowest tests are listed at the end (the 15-minute budget). A worker
# that dies is not replaced: pytest-xdist 3.8's loadgroup scheduler can wait
# forever for a replaced worker, so the run fails at once, naming the test.
test: venv
	$(PY) -m pytest -q -n 2 --dist loadgroup --max-worker-restart=0 --durations=20

# The inner loop (about 1.5 min on 2 cores, warm compilation cache, which
# JBPTT_TEST_CACHE= turns off; conftest.py): the core
# and estimator modules, jitted variants only, and no end-to-end runs
# (subprocesses, notebooks, CLIs, README examples: marked `e2e` by conftest.py).
# `make test` runs everything.
FAST := tests/test_core.py tests/test_protocol.py tests/test_cells.py \
	tests/test_truncation.py tests/test_validation.py tests/test_checks.py \
	tests/test_train.py tests/test_sweep.py tests/test_estimators.py
test-fast: venv
	JBPTT_TEST_CACHE=$${JBPTT_TEST_CACHE-.pytest_cache/jax-compilation} \
	$(PY) -m pytest -q -n 2 -m "not e2e" -k "not without_jit" $(FAST)

bench: venv
	$(PY) -m benchmarks.bench_grad --out benchmarks
	$(PY) -m benchmarks.bench_online --out benchmarks
	$(PY) -m benchmarks.bench_segments --out benchmarks
	$(PY) -m benchmarks.bench_devices --out benchmarks

# GPU in one command: the venv, jax[cuda12] at the venv's jax version, the
# gradient checks and the benchmarks, each time-boxed (8 minutes after the
# install), summarised in $(GPU_OUT)/gpu_results.md. GPU_ARGS=--quick for tiny
# shapes; benchmarks/gpu.sh --help lists its settings.
GPU_OUT  ?= benchmarks/gpu_results
GPU_ARGS ?=
.PHONY: gpu
gpu:
	VENV=$(VENV) bash benchmarks/gpu.sh --out $(GPU_OUT) $(GPU_ARGS)

# The documentation site into site/ (open site/index.html); a warning (a
# broken link or cross-reference, an unreadable docstring) fails the build.
docs: venv
	$(PY) -m mkdocs build --strict --site-dir site

# Rerun every full-run experiment and rebuild experiments/RESULTS.md's tables.
report: venv
	$(PY) -m experiments.report

LINTED := jbptt tests experiments benchmarks conftest.py notebooks/*.py

lint: venv
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)

clean:
	rm -rf $(VENV) results .pytest_cache
