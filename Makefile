# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need first,
# idempotently (stamp files under .venv/), then run.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
PILLOW_SIMD_VERSION := 12.1.1.post0
# pillow-simd's speed comes from AVX2; build with it where the CPU has it.
SIMD_CC := cc$(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && echo " -mavx2")
APT_PACKAGES := wordnet-base wordnet-sense-index libjpeg62-turbo-dev libwebp-dev zlib1g-dev gcc
WORDNET_SRC := /usr/share/wordnet
# nltk searches <sys.prefix>/nltk_data by default, so the venv's python finds WordNet with no variable set.
WORDNET_DIR := $(VENV)/nltk_data/corpora/wordnet
DEMO_OUT ?= demo_out
# Optional extras to install with the package (the container images set EXTRAS= to leave out the test tools).
EXTRAS ?= test

# The embedded local Ray binds and talks on 127.0.0.1 only; `in21k prepare` turns its token authentication on and
# gives it a fresh token of its own (docs/security.md), so RAY_AUTH_MODE is left to the user.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: help install system-packages wordnet test test-cluster test-quick demo lint clean

help:
	@echo "make demo    install everything, then run the product end to end on synthetic data"
	@echo "make test    install everything (with test extras), then run the test suite (all but the cluster tests)"
	@echo "make test-cluster   the slowest tests: a multi-node Ray cluster and torchrun agents, kills and outages"
	@echo "make install / make wordnet / make lint / make clean"

system-packages: $(VENV)/.system-packages

# Debian packages: installed when running as root, otherwise the exact command is printed.
$(VENV)/.system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "Missing Debian packages. Run this, then make again:"; \
	    echo "  sudo apt-get update && sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi
	@mkdir -p $(VENV) && touch $@

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Python packages, pinned in pyproject.toml; pillow-simd goes in last (anything installed after it that
# depends on pillow would put plain Pillow back).
$(VENV)/.installed: pyproject.toml $(VENV)/.system-packages | $(VENV)/bin/python
	$(PIP) install -q -e '.$(if $(EXTRAS),[$(EXTRAS)])'
	$(PIP) uninstall -y -q pillow pillow-simd || true
	CC="$(SIMD_CC)" $(PIP) install -q --no-deps --no-cache-dir pillow-simd==$(PILLOW_SIMD_VERSION) || \
	  { echo "WARNING: pillow-simd did not build; falling back to plain Pillow (slower resize)"; \
	    $(PIP) install -q pillow; }
	$(PY) -c "import PIL, PIL.Image; print('Pillow', PIL.__version__, 'at', PIL.__file__)"
	touch $@

# WordNet 3.0 for nltk: Debian's files copied (not linked) plus the lexnames file we commit.
$(WORDNET_DIR)/.complete: $(VENV)/.system-packages third_party/wordnet/lexnames | $(VENV)/bin/python
	rm -rf $(WORDNET_DIR) && mkdir -p $(WORDNET_DIR)
	find -L $(WORDNET_SRC) -maxdepth 1 -type f -exec cp -L {} $(WORDNET_DIR)/ \;
	cp third_party/wordnet/lexnames $(WORDNET_DIR)/lexnames
	touch $@

install: $(VENV)/.installed $(WORDNET_DIR)/.complete

wordnet: $(WORDNET_DIR)/.complete

test: install
	$(PY) -m pytest -q -p no:cacheprovider -m "not cluster"

test-cluster: install
	$(PY) -m pytest -q -p no:cacheprovider -m cluster

test-quick: install
	$(PY) -m pytest -q -p no:cacheprovider -m "not ray and not slow and not s3 and not gcs and not dist and not cluster"

demo: install
	$(VENV)/bin/in21k demo --out $(DEMO_OUT)

lint: install
	$(VENV)/bin/ruff check src tests && $(VENV)/bin/ruff format --check src tests

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
