# noodle: every target sets itself up, so on a fresh machine `make export`
# and `make test` are each the only command needed.
#
#   make export                      sample data -> train -> export -> compare
#   make export DATA=path/to/photos  the same on your photos
#   make test                        ruff + the test suite
#   make bundle [MODEL=int8]         dist/noodle-edge-<version>.tar.gz for a Raspberry Pi
#   make pi-check                    run that bundle on Debian 12 arm64 (qemu), labels vs x86
#   make bench [REPEATS=3]           BENCHMARKS.md: the noodle clock, edge vs Keras (minutes)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Photos to train on; empty means the embedded default, generated into data/sample.
DATA   ?=
# noodle (small, int8-friendly, the default) or seed (the classic recipe).
ARCH   ?= noodle
# Upper bound on epochs; empty lets noodle pick (early stopping decides).
EPOCHS ?=
# Where run folders go: $(OUT)/<data name>-<arch>/.
OUT    ?= runs
# The variant `make bundle` ships: int8 is a quarter of float32's size and
# runs on the Pi's integer kernels.
MODEL  ?= int8

SAMPLE   := data/sample
DATA_DIR := $(if $(DATA),$(DATA),$(SAMPLE))
RUN      := $(OUT)/$(basename $(notdir $(abspath $(DATA_DIR))))-$(ARCH)
NOODLE   := $(BIN)/noodle

.PHONY: setup edge-env data train export bundle pi-check pi-tools bench test lint clean help

help:
	@sed -n '2,9p' Makefile

# The virtual environment, rebuilt when pyproject.toml changes.
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[train,litert,camera,dev]'
	touch $@

# The device's environment: the edge package and its interpreter only, no
# TensorFlow. On Python <= 3.11 that is tflite-runtime 2.14 with numpy < 2,
# what Raspberry Pi OS Bookworm runs; the exporter validates every model in it.
EDGE_VENV ?= .venv-edge
edge-env: $(EDGE_VENV)/.installed
$(EDGE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(EDGE_VENV)
	$(EDGE_VENV)/bin/pip install --quiet --upgrade pip
	$(EDGE_VENV)/bin/pip install --quiet -e '.[edge]'
	touch $@

# The embedded default dataset (only made when DATA is not given).
data: $(if $(DATA),,$(SAMPLE)/.complete)
$(SAMPLE)/.complete: | $(VENV)/.installed
	$(NOODLE) data sample $(SAMPLE)
	touch $@

# `make train` always trains; `make export` trains only when the run folder
# for this DATA and ARCH has no model yet.
train: setup data
	$(NOODLE) train $(DATA_DIR) --arch $(ARCH) --out $(RUN) $(if $(EPOCHS),--epochs $(EPOCHS))

$(RUN)/manifest.json: | $(VENV)/.installed $(if $(DATA),,$(SAMPLE)/.complete)
	$(NOODLE) train $(DATA_DIR) --arch $(ARCH) --out $(RUN) $(if $(EPOCHS),--epochs $(EPOCHS))

# Convert and validate (ai-edge-litert here, tflite-runtime 2.14 in the device
# environment), then compare, which ends by printing the table. When only some
# variant failed (exit 1) the table is still printed, then make fails.
export: setup data edge-env $(RUN)/manifest.json
	status=0; $(NOODLE) export $(RUN) || status=$$?; \
	if [ $$status -le 1 ]; then $(NOODLE) compare $(RUN) || exit $$?; fi; exit $$status

# An exported run, made once for `make bundle`; `make export` redoes it. Exit 1
# means some variant failed: bundling the chosen one still says whether it exists.
$(RUN)/export/manifest.json: | $(VENV)/.installed $(EDGE_VENV)/.installed $(RUN)/manifest.json
	$(NOODLE) export $(RUN) || [ $$? -eq 1 ]

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
BUNDLE  := dist/noodle-edge-$(VERSION).tar.gz
bundle: setup $(RUN)/export/manifest.json
	$(NOODLE) bundle $(RUN) --model $(MODEL) --out dist

# The bundle on the Pi's platform: a Debian 12 bookworm arm64 root (cached in
# PI_ROOT) runs it under qemu-aarch64-static; its labels must equal x86's.
# Photos: the shared test photos when they are beside the checkout, else the data's.
PI_ROOT ?= .cache/pi-root
PHOTOS  ?= $(firstword $(wildcard ../shared/data/cats-vs-dogs/test $(DATA_DIR)/test) $(DATA_DIR))
SUDO    := $(if $(filter 0,$(shell id -u)),,sudo)
pi-check: bundle edge-env pi-tools
	$(BIN)/python -m export.pi_check $(BUNDLE) $(PHOTOS) --root $(PI_ROOT)

pi-tools:
	@command -v debootstrap >/dev/null && command -v qemu-aarch64-static >/dev/null || \
	{ $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap qemu-user-static; }

# Not part of `make test`: it trains twice (the embedded default and, when
# present, ../shared/data/cats-vs-dogs) under runs/bench/ to time each stage,
# then times the edge runner (.venv-edge's tflite-runtime and ai-edge-litert)
# against the seed's Keras loop. Writes BENCHMARKS.md and bench.json.
REPEATS ?= 3
bench: setup edge-env
	$(NOODLE) bench --repeats $(REPEATS)

lint: setup
	$(BIN)/ruff check .

# edge-env: the export tests run every model under tflite-runtime 2.14 in it.
test: setup lint edge-env
	$(BIN)/python -m pytest

clean:
	rm -rf $(OUT) $(SAMPLE) dist
