# Two commands: `make run` (set up and start the product), `make test` (set up and run every check).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# What running needs: the package and its dependencies, no test or lint tools. pip's own progress
# shows, because the first install downloads torch and friends (several minutes).
$(BIN)/.installed-run: pyproject.toml | $(BIN)/python
	@echo "Installing fracture-screening into $(VENV) (the first time takes several minutes)"
	$(BIN)/pip install -e .
	touch $@

# The development set-up: the same plus pytest, ruff, mypy, playwright, hypothesis.
$(BIN)/.installed-dev: pyproject.toml | $(BIN)/python
	@echo "Installing fracture-screening and its development tools into $(VENV)"
	$(BIN)/pip install -e '.[dev]'
	touch $@ $(BIN)/.installed-run

install: $(BIN)/.installed-dev

run: $(BIN)/.installed-run
	$(BIN)/fracture up

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Heavy and opt-in, not part of `make test`: builds the images with podman from a debootstrapped
# Debian base (no registry needed; cached by input hash) and runs docker-compose.yml in containers
# through podman's Docker API: 200 radiographs dropped into the inbox volume must end done once
# each, also with a worker added, a worker killed and Redis restarted mid-drop, and after down
# and up again (docs/DEPLOY.md section 9). Needs ../shared (FracAtlas). `deploy-test`: same.
CONTAINER_TOOLS := podman debootstrap catatonit docker-compose
.PHONY: test-containers deploy-test
deploy-test: test-containers
test-containers: install
	@missing=""; for t in $(CONTAINER_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "Installing$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CONTAINER_TOOLS) >/dev/null; \
		else echo "test-containers needs root and:$$missing" >&2; exit 1; fi; \
	fi
	@start=$$(date +%s); \
	FRACTURE_CONTAINER_TESTS=1 $(BIN)/pytest -s -o timeout=3600 tests/containers; rc=$$?; \
	echo "make test-containers: $$(( $$(date +%s) - start )) s"; exit $$rc

# The image viewer's vendored OpenSeadragon (dashboard/static/viewer/), rebuilt from the exact
# version dashboard/viewer_src/package-lock.json pins. Needs node and npm; nothing else here does,
# because the built files are committed (a unit test checks them against the lock). node_modules
# goes afterwards, so no package build picks up its files.
.PHONY: viewer-assets
viewer-assets:
	cd dashboard/viewer_src && npm ci --ignore-scripts --no-audit --no-fund && npm run build
	rm -rf dashboard/viewer_src/node_modules
