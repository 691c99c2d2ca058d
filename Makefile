# noodle: every target sets itself up, so on a fresh machine `make export`
# and `make test` are each the only command needed.
#
#   make export                      sample data -> train -> export -> compare
#   make export DATA=path/to/photos  the same on your photos
#   make test                        ruff + the test suite

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

SAMPLE   := data/sample
DATA_DIR := $(if $(DATA),$(DATA),$(SAMPLE))
RUN      := $(OUT)/$(basename $(notdir $(abspath $(DATA_DIR))))-$(ARCH)
NOODLE   := $(BIN)/noodle

.PHONY: setup edge-env data train export test lint clean help

help:
	@sed -n '2,8p' Makefile

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

lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(OUT) $(SAMPLE) dist
