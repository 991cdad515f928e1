# Kinetic Workspaces — the two commands (plus bench).
#   make demo   install what is needed, start everything locally, print the URL
#   make test   install what is needed, run the whole test suite
#   make bench  benchmarks (never part of the tests)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMPS := .stamps
PY := $(VENV)/bin/python
# Debian packages the system needs: podman+runc (enclave runner), chromium (browser tests),
# R + IR kernel (workspaces), openssh-server (SSH tests), zstd, debootstrap (enclave base image),
# postgresql (a throwaway database server for the PostgreSQL tests; tests/ops).
APT_PACKAGES := podman runc chromium r-base-core r-cran-irkernel openssh-server zstd debootstrap busybox-static \
                uidmap slirp4netns fuse-overlayfs caddy postgresql
export PATH := $(CURDIR)/node_modules/.bin:$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: demo test bench deps system-deps clean

deps: system-deps $(STAMPS)/venv $(STAMPS)/node

# apt packages are installed only when running as root and only when one is missing,
# so a second `make` costs nothing and a non-root developer is told what to install.
system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages: $$missing"; mkdir -p $(STAMPS); \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; } \
	      >$(STAMPS)/apt.log 2>&1 || { tail -n 30 $(STAMPS)/apt.log; exit 1; }; \
	  else \
	    echo "not root: please install these Debian packages: $$missing" >&2; \
	  fi; \
	fi

# Install output goes to a log (shown only when something fails): `make demo` prints what a
# person needs, not setuptools' and pip's chatter.
$(STAMPS)/venv: setup.cfg pyproject.toml rstudio_patch/jupyterlab-overrides.json
	@mkdir -p $(STAMPS)
	@echo "installing the Python environment in $(VENV) (log: $(STAMPS)/pip.log)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@{ $(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q -e '.[test]'; } \
	  >$(STAMPS)/pip.log 2>&1 || { tail -n 40 $(STAMPS)/pip.log; exit 1; }
	@# JupyterLab defaults for the process backend (installation-wide settings overrides)
	@install -D -m 0644 rstudio_patch/jupyterlab-overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	@touch $@

$(STAMPS)/node: package.json
	@mkdir -p $(STAMPS)
	@echo "installing configurable-http-proxy (log: $(STAMPS)/npm.log)"
	@npm install --no-audit --no-fund --loglevel=error >$(STAMPS)/npm.log 2>&1 || { tail -n 30 $(STAMPS)/npm.log; exit 1; }
	@touch $@

demo: deps
	@$(PY) -m hub_config.demo

test: deps
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc = 5 ]; then echo "pytest collected no tests: that is a failure" >&2; exit 1; fi; exit $$rc

bench: deps
	$(PY) -m bench

# ruff, configured in pyproject.toml (also run by .pre-commit-config.yaml): lint, then formatting
.PHONY: lint
lint: $(STAMPS)/venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(STAMPS) node_modules state
