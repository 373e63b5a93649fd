# The two commands a newcomer needs: `make run` (local mode) and `make test` (every test).
PYTHON ?= python3
VENV   := .venv
TOOLS  := .venv-tools
CHECKOV := .venv-checkov
PORT   ?= 3000
CONFIG ?= examples/local.yaml

.PHONY: run test unit bench venv tools checkov interop lock build deploy clean events

venv: $(VENV)/.installed
tools: $(TOOLS)/.installed
checkov: $(CHECKOV)/.installed
interop: tests/interop/node_modules/.installed

# Exactly the pinned versions, each file checked against its hash; then the project, adding nothing
# and built with the lock's setuptools (no build isolation: nothing more is fetched).
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet --require-hashes -r requirements.lock
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Re-pin after editing pyproject's dependencies: requirements.lock, then the layer's requirements.txt
# cut from it. Pins stay where they are unless named: `make lock UPGRADE="cryptography pyjwt"`, or
# UPGRADE=all for every one.
lock: tools
	$(TOOLS)/bin/python tools/lock.py $(if $(UPGRADE),--upgrade $(filter-out all,$(UPGRADE)))

# SAM CLI and cfn-lint pin their own boto3; they live apart from the app's environment.
$(TOOLS)/.installed: requirements-tools.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --upgrade pip
	$(TOOLS)/bin/pip install --quiet -r requirements-tools.txt
	touch $@

# checkov in its own environment too: next to SAM CLI's pins pip backtracks for minutes.
$(CHECKOV)/.installed: requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV)
	$(CHECKOV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV)/bin/pip install --quiet -r requirements-checkov.txt
	touch $@

tests/interop/node_modules/.installed: tests/interop/package.json tests/interop/package-lock.json
	npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error
	touch $@

run: venv
	$(VENV)/bin/oidc-broker local --config $(CONFIG) --port $(PORT)

# With local mode running (`make run`): a fresh token from its development CI issuer in each sample
# event that carries one (events/token.json, events/exchange_*.json), for `sam local invoke -e`.
events: venv
	$(VENV)/bin/python -m oidc_broker_cli.local.samlocal events

test: venv tools checkov interop
	$(VENV)/bin/pytest

unit: venv
	$(VENV)/bin/pytest tests/unit

# Ratios and counts against the budgets in bench/bench.py; a regression past one fails.
bench: venv
	$(VENV)/bin/python bench/bench.py

# The layer is compiled for the local interpreter: build and deploy with the same runtime.
BUILD_RUNTIME ?= python$(shell $(PYTHON) -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

build: tools
	$(TOOLS)/bin/sam build --parameter-overrides PythonRuntime=$(BUILD_RUNTIME)

# Interactive by default; `make deploy CONFIG_ENV=ci` deploys without a question (samconfig.toml's
# [ci] settings: no changeset confirmation, an empty changeset is no failure), for a pipeline. More
# template parameters: PARAMS="IssuerUrl=https://id.example.com AlarmTopicArn=arn:aws:sns:…".
deploy: build
	$(TOOLS)/bin/sam deploy $(if $(CONFIG_ENV),--config-env $(CONFIG_ENV),--guided) --parameter-overrides PythonRuntime=$(BUILD_RUNTIME) $(PARAMS)

clean:
	rm -rf $(VENV) $(TOOLS) $(CHECKOV) .aws-sam tests/interop/node_modules
