# Two commands matter: `make run` (set up + mount a demo store at ./mnt) and
# `make test` (set up + run every test).  Everything else supports them.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
SYSPKGS := fuse3 libfuse3-dev pkg-config rsync
STORE := $(CURDIR)/.dmsfs/store
STATE := $(CURDIR)/.dmsfs/state
MNT := $(CURDIR)/mnt

.PHONY: setup syspkgs run test bench clean

setup: syspkgs $(STAMP)

syspkgs:
	@missing=""; for p in $(SYSPKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

run: setup
	@mkdir -p $(MNT) $(STATE)
	@if mountpoint -q $(MNT); then fusermount3 -u -z $(MNT); fi
	$(VENV)/bin/dmsfsd file://$(STORE) $(MNT) --state $(STATE) --demo --foreground

test: setup
	DMSFS_TEST_REQUIRE=fuse $(VENV)/bin/pytest

bench: setup
	$(VENV)/bin/python -P bench/run.py

clean:
	@if mountpoint -q $(MNT); then fusermount3 -u -z $(MNT); fi
	rm -rf $(VENV) .dmsfs $(MNT) build *.egg-info
