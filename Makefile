# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test demo lint typecheck pytest bench clean lab deploy-venv ansible-lint

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy pikafka pi_broker pi_zookeeper clients bench

pytest: $(STAMP)
	$(VENV)/bin/pytest -q

demo: $(STAMP)
	$(PY) -m clients.demo

bench: $(STAMP)
	$(PY) bench/broker_bench.py

# Deployment tools live in a venv of their own, never in the project's test extras.
DEPLOY_VENV  := .venv-deploy
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed

$(DEPLOY_STAMP):
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install --quiet 'ansible-core>=2.15,<2.18' 'ansible-lint>=24'
	touch $(DEPLOY_STAMP)

deploy-venv: $(DEPLOY_STAMP)

ansible-lint: $(DEPLOY_STAMP)
	cd ansible && ../$(DEPLOY_VENV)/bin/ansible-lint --profile production

# Boots 3 Debian containers with systemd (root; debootstrap, systemd-container, iproute2, openssh-client), deploys
# with ansible/deploy.yml over ssh and checks failover, idempotence and a rolling restart. See docs/deploy.md.
lab: $(STAMP) $(DEPLOY_STAMP) ansible-lint
	$(PY) -m lab

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
