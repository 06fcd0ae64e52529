# `make run` installs into .venv, starts the embedded default (`airavata server start`: a
# Prefect server, the default deployment, a worker) and runs the example experiment.
# `make test` installs and runs the whole suite against real services it starts.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-kubernetes bench lint clean server-start server-stop

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install_spicedb.sh
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (found %s)" % sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { echo "cannot create a venv: install python3-venv (apt-get install python3-venv)"; exit 1; }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	bash scripts/install_spicedb.sh
	@touch $@

run: install
	@bash scripts/run_example.sh

test: install
	@bash scripts/test.sh

# Needs a real cluster and more (tests/kubernetes_cluster/test_cluster.py); not part of `test`.
test-kubernetes: install
	AIRAVATA_KUBERNETES_CLUSTER=1 $(BIN)/pytest tests/kubernetes_cluster

bench: install
	@bash scripts/system_deps.sh
	@bash scripts/bench_peers.sh
	$(BIN)/python -m bench

lint: install
	@bash scripts/lint.sh

server-start: install
	@$(BIN)/airavata server start

server-stop:
	@$(BIN)/airavata server stop

clean:
	rm -rf $(VENV) .airavata
