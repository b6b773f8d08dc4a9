# vaeserve: every target sets up what it needs, so a fresh clone with Python 3.11 and pip is enough.
#   make test    all Python tests (creates .venv with the four distributions, editable)
#   make serve   serve the bundled digits model (creates .venv-server: api + server only, no torch)
#   make test-batch  vaeserve-batch on a two-node Ray cluster (creates .venv-batch: no torch, with Ray)
PYTHON ?= python3
VENV ?= .venv
SERVER_VENV ?= .venv-server
PIP_FLAGS ?= -q --disable-pip-version-check -c constraints.txt
ARGS ?=

DISTS := proto server client training
DEV_STAMP := $(VENV)/.installed
SERVER_STAMP := $(SERVER_VENV)/.installed
BATCH_VENV ?= .venv-batch
BATCH_STAMP := $(BATCH_VENV)/.installed

.PHONY: test serve venv proto lint docs models bench bench-kernel bench-anomaly bench-observability soak test-compose test-batch bench-batch base-image wheels clean

$(DEV_STAMP): constraints.txt requirements-dev.txt $(foreach d,$(DISTS),$(d)/pyproject.toml)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "vaeserve needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip setuptools wheel
	$(VENV)/bin/pip install $(PIP_FLAGS) $(foreach d,$(DISTS),-e ./$(d)) -r requirements-dev.txt
	@touch $@

$(SERVER_STAMP): constraints.txt proto/pyproject.toml server/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "vaeserve needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(SERVER_VENV)
	$(SERVER_VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip setuptools wheel
	$(SERVER_VENV)/bin/pip install $(PIP_FLAGS) ./proto ./server
	@touch $@

venv: $(DEV_STAMP)

test: $(DEV_STAMP)
	$(VENV)/bin/python -m pytest $(ARGS)

serve: $(SERVER_STAMP)
	$(SERVER_VENV)/bin/vaeserve-server $(ARGS)

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy -p vaeserve.api -p vaeserve.server -p vaeserve.client -p vaeserve.training -p vaeserve.batch -p bench

# The docs site from docs/ (mkdocs.yml) into site/; --strict: a broken link, anchor or nav entry fails.
docs: $(DEV_STAMP)
	$(VENV)/bin/mkdocs build --strict --quiet

# Regenerate the gRPC stubs after editing a .proto under proto/vaeserve/api (a test checks they are current).
PROTOS := vaeserve/api/v1/vae.proto vaeserve/api/v2/grpc_predict_v2.proto
proto: $(DEV_STAMP)
	cd proto && PATH="$(abspath $(VENV))/bin:$$PATH" python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. \
		--mypy_out=. --mypy_grpc_out=. $(PROTOS)

# Retrain the bundled models (the commands documented in docs/training.md).
models: $(DEV_STAMP)
	$(VENV)/bin/vaeserve-train train digits --out models/digits --split 0.1,0.1,0.1
	$(VENV)/bin/vaeserve-train train mnist5k --out models/mnist5k --model mlp
	$(VENV)/bin/vaeserve-train train breast-cancer --out models/breast-cancer --split 0.1,0,0.1

bench: $(DEV_STAMP)
	$(VENV)/bin/python -m bench --page docs/benchmarks/serving.md $(ARGS)

# Where the fused scoring graph's time goes (onnxruntime's profiler) and what chunk sizes and threads do to it.
bench-kernel: $(DEV_STAMP)
	$(VENV)/bin/python -m bench.kernel --page docs/benchmarks/kernel.md $(ARGS)

# Mixed load, overload, drain, kill -9 and abuse against real servers, each figure against its goal (minutes).
soak: $(DEV_STAMP)
	$(VENV)/bin/python -m bench.soak --page docs/benchmarks/soak.md $(ARGS)

# The served anomaly scores against classical detectors (one-class digits and mnist5k, breast cancer).
bench-anomaly: $(DEV_STAMP)
	$(VENV)/bin/python -m bench.anomaly --page docs/benchmarks/anomaly.md $(ARGS)

# Score throughput and p99 with tracing and payload logging on against off, the servers taking turns.
bench-observability: $(DEV_STAMP)
	$(VENV)/bin/python -m bench.observability --page docs/benchmarks/observability.md $(ARGS)

base-image:
	docker/build-base-image.sh

# The images' wheel cache, from this host's pip configuration (ARGS=--training adds the trainer's).
wheels: $(DEV_STAMP)
	docker/build-wheels.sh $(ARGS)

test-compose: $(DEV_STAMP)
	$(VENV)/bin/python -m pytest -m compose tests/compose $(ARGS)

# vaeserve-batch (bulk scoring on Ray Data) has its own environment: api, server, client and batch, with Ray
# and no torch (the dev one has torch and no Ray). Its tests start a two-node Ray cluster on this machine;
# scikit-learn is there for the docs' examples (examples/make_inputs.py), which its tests run too.
$(BATCH_STAMP): constraints.txt proto/pyproject.toml server/pyproject.toml client/pyproject.toml batch/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "vaeserve needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(BATCH_VENV)
	$(BATCH_VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip setuptools wheel
	$(BATCH_VENV)/bin/pip install $(PIP_FLAGS) -e ./proto -e ./server -e ./client -e ./batch pytest pytest-timeout scikit-learn
	@touch $@

test-batch: $(BATCH_STAMP)
	$(BATCH_VENV)/bin/python -m pytest -m batch tests/batch $(ARGS)

# ELBO over 100,000 inputs and IWAE(1000) over 1,000: Ray actors against the single-process engine.
bench-batch: $(BATCH_STAMP)
	$(BATCH_VENV)/bin/python -m bench.batch --page docs/benchmarks/batch.md $(ARGS)

clean:
	rm -rf $(VENV) $(SERVER_VENV) $(BATCH_VENV) .venv-tritonclient .pytest_cache .wheels
