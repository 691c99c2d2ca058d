# noodle: every target sets itself up, so on a fresh machine `make export`
# and `make test` are each the only command needed.
#
#   make export                      sample data -> train -> export -> compare
#   make export DATA=path/to/photos  the same on your photos
#   make export MAX_DROP=1 [TEST=dir] [QUANTIZER=litert]  gate: fail when a variant surely loses > 1 pp
#   make test                        ruff + the test suite
#   make bundle [MODEL=int8] [FORCE=1]  the last export's run, for a Raspberry Pi: dist/noodle-edge-*.tar.gz
#   make pi-check                    install it offline on Pi OS Bookworm and Trixie (qemu), labels vs x86
#   make bench [REPEATS=3] [ONLY=growth,teach]  BENCHMARKS.md: the noodle clock, edge vs Keras, growth
#   make host-check                  make export + make test on a fresh Debian 13 host (chroot)

# Pythons TensorFlow 2.21 (the train extra) has wheels for. .venv is made by the
# first of python3, python3.13, python3.12, python3.11, python3.10 that runs one
# (PYTHON=... to choose); with none, `make setup` says so before installing anything.
TF_PYTHONS := 3.10 3.11 3.12 3.13
PY_VERSION := -c 'import sys; print("%d.%d" % sys.version_info[:2])'
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11 python3.10; do \
	case " $(TF_PYTHONS) " in (*" $$($$p $(PY_VERSION) 2>/dev/null) "*) echo $$p; exit;; esac; done; echo python3)
CHECK_PYTHON = v=$$($(PYTHON) $(PY_VERSION) 2>/dev/null) || v="not runnable"; case " $(TF_PYTHONS) " in \
	*" $$v "*) ;; *) echo "error: $(PYTHON) is Python $$v, and TensorFlow 2.21 has wheels for Python \
	$(TF_PYTHONS) only: install one of those (a python3.13 on PATH is picked), or make PYTHON=python3.12" >&2; \
	exit 2;; esac
VENV   ?= .venv
BIN    := $(VENV)/bin
# Photos to train on; empty means the embedded default, generated into data/sample.
DATA   ?=
# An architecture of train.config.ARCHITECTURES (lite0, allconv, seed); empty: its
# first row, the default (`noodle train --help` lists them).
ARCH   ?=
# Epochs; empty: the architecture's own (train.config.ARCHITECTURES: allconv runs a cosine schedule to
# the end, the seed stops early when validation stops improving; lite0's head is solved, with no
# epochs, so they are ignored there unless --fine-tune trains blocks of its backbone).
EPOCHS ?=
# Leave out classes with fewer training photos than this (`noodle train --min-photos`); empty: keep all.
MIN_PHOTOS ?=
# Where run folders go: $(OUT)/<data name>-<arch>-<8 hex>/, the hex from the
# data's file list and the settings, so other data never reuses a model.
OUT    ?= runs
# The variant `make bundle` ships: int8 is a quarter of float32's size and
# runs on the Pi's integer kernels.
MODEL  ?= int8
# The gate (export/gate.py): `make export` exits 1 when a variant's accuracy is surely (95 % CI) more
# than this many points below float32's, 3 when too few photos decide; either leaves an export that
# `make bundle` refuses without FORCE=1. Empty: report only.
MAX_DROP ?=
FORCE ?=
# A labelled folder or CSV nobody trained on, to score the variants on
# instead of the data's test split.
TEST   ?=
# Its classes named otherwise than the model's labels: wolves=dog,... (cats for
# cat and Dog for dogs are matched without it).
TEST_MAP ?=
# litert: also int8 by the LiteRT Quantizer (int8-litert.tflite), side by side.
QUANTIZER ?=
EXPORT_FLAGS = $(if $(MAX_DROP),--max-drop $(MAX_DROP)) $(if $(TEST),--test $(TEST)) \
	$(if $(TEST_MAP),--test-map $(TEST_MAP)) \
	$(if $(QUANTIZER),--quantizer $(QUANTIZER))

SAMPLE   := data/sample
DATA_DIR := $(if $(DATA),$(DATA),$(SAMPLE))
NOODLE   := $(BIN)/noodle
# The settings that name the run folder, given alike to every `noodle train` below.
MODEL_FLAGS = $(if $(ARCH),--arch $(ARCH)) $(if $(EPOCHS),--epochs $(EPOCHS)) \
	$(if $(MIN_PHOTOS),--min-photos $(MIN_PHOTOS))
# The run folder, named by noodle itself (`noodle train --print-run-dir`). Recursively
# expanded and memoized: only the recipes that use it pay for the look-up,
# once, after `data` has made the sample; `make help` and `make test` never do.
RUN = $(eval RUN := $$(shell $(NOODLE) train $(DATA_DIR) $(MODEL_FLAGS) --runs $(OUT) --print-run-dir))$(RUN)
# What `make bundle` and `make pi-check` ship: the run the last `make export` made,
# which it records in LAST_EXPORT (the run folder, then its DATA), unless DATA, ARCH,
# EPOCHS or RUN is given; then, or with no record, the run of those settings.
LAST_EXPORT := $(OUT)/last-export
TOLD        := $(or $(DATA),$(ARCH),$(EPOCHS),$(MIN_PHOTOS),$(filter command line,$(origin RUN)))
RECORDED    := $(if $(TOLD),,$(shell sed -n 1p $(LAST_EXPORT) 2>/dev/null))
BUNDLE_RUN   = $(or $(RECORDED),$(RUN))
BUNDLE_DATA := $(if $(RECORDED),$(shell sed -n 2p $(LAST_EXPORT)),$(DATA_DIR))

.PHONY: setup edge-env client-envs data train trained exported export bundle bundle-which pi-check host-check pi-tools bench test test-tools lint clean help

help:
	@sed -n '1,11p' Makefile

# The virtual environment, rebuilt when pyproject.toml changes. setuptools' 8-line note on every
# editable install (folders named like the package may shadow it: they are the package here) is silenced.
QUIET_BUILD = PYTHONWARNINGS=ignore::UserWarning:setuptools.command.editable_wheel
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	@$(CHECK_PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(QUIET_BUILD) $(BIN)/pip install --quiet -e '.[train,litert,litert-quantizer,camera,serve,dev]'
	touch $@

# The device's environment: the edge package, its interpreter and serve's extra
# (aiohttp, paho-mqtt), as the Pi bundle installs them; no TensorFlow. On Python
# <= 3.11 the interpreter is tflite-runtime 2.14 with numpy < 2, what Raspberry Pi
# OS Bookworm runs; the exporter validates every model in it.
# So it is made by a python3.11 when one runs here, else by PYTHON; on 3.12+
# `make export` says that Bookworm's runtime was not checked, and how to check it.
EDGE_VENV ?= .venv-edge
EDGE_PYTHON ?= $(shell python3.11 $(PY_VERSION) >/dev/null 2>&1 && echo python3.11 || echo $(PYTHON))
edge-env: $(EDGE_VENV)/.installed
$(EDGE_VENV)/.installed: pyproject.toml
	$(EDGE_PYTHON) -m venv $(EDGE_VENV)
	$(EDGE_VENV)/bin/pip install --quiet --upgrade pip
	$(QUIET_BUILD) $(EDGE_VENV)/bin/pip install --quiet -e '.[edge,serve]'
	touch $@

# The embedded default dataset (only made when DATA is not given).
data: $(if $(DATA),,$(SAMPLE)/.complete)
$(SAMPLE)/.complete: | $(VENV)/.installed
	$(NOODLE) data sample $(SAMPLE)
	touch $@

# `make train` always trains; `make export` trains only when the run folder
# has no model of this DATA with these settings yet (`noodle train --reuse`).
# A training process killed by a signal says so in one line, where make alone
# says only "Aborted": the signal, where its log is, and how to go on.
CRASHED = rc=$$?; [ $$rc -gt 128 ] && echo "error: noodle train died of signal SIG$$(kill -l $$((rc - 128))) \
(exit $$rc); its last lines are above; run the same command again: training resumes from its last \
finished epoch" >&2; exit $$rc
TRAIN = $(NOODLE) train $(DATA_DIR) $(MODEL_FLAGS) --runs $(OUT)
train: setup data
	@echo "$(TRAIN)"; $(TRAIN) || { $(CRASHED); }

trained: setup data
	@echo "$(TRAIN) --reuse"; $(TRAIN) --reuse || { $(CRASHED); }

# Convert and validate (ai-edge-litert here, tflite-runtime 2.14 in the device
# environment), then compare, which ends by printing the table. When only some
# variant failed (exit 1) the table is still printed, then make fails.
# An export that wrote models (exit 0, 1, or 3: the gate undecided) is recorded in LAST_EXPORT,
# atomically, for `make bundle`, which ships it only when it passed (export/gate.py).
export: setup data edge-env trained
	status=0; $(NOODLE) export $(RUN) $(EXPORT_FLAGS) || status=$$?; \
	if [ $$status -le 1 ] || [ $$status -eq 3 ]; then $(RECORD_EXPORT) && \
	  $(NOODLE) compare $(RUN) $(if $(TEST),--test $(TEST)) $(if $(TEST_MAP),--test-map $(TEST_MAP)) \
	    || exit $$?; fi; \
	$(BOOKWORM_NOTE); exit $$status
# Said once, last: an edge environment on Python 3.12+ has ai-edge-litert, not tflite-runtime 2.14.
BOOKWORM_NOTE = v=$$($(EDGE_VENV)/bin/python $(PY_VERSION) 2>/dev/null) && case "$$v" in 3.1[2-9]) echo "note: \
	Bookworm's runtime (tflite-runtime 2.14) was NOT checked: $(EDGE_VENV) is Python $$v, which it has no \
	wheels for; to check it, put a python3.11 on PATH and run rm -rf $(EDGE_VENV) && make export, or make \
	pi-check (Bookworm under qemu)";; esac
RECORD_EXPORT = mkdir -p $(OUT) && printf '%s\n' '$(RUN)' '$(DATA_DIR)' >$(LAST_EXPORT).$$$$ && mv -f $(LAST_EXPORT).$$$$ $(LAST_EXPORT) && \
	{ said=$$($(BIN)/python -m export.gate $(RUN)) && echo 'recorded in $(LAST_EXPORT): `make bundle` ships $(RUN)' || \
	  echo "recorded in $(LAST_EXPORT), and NOT shippable: $$said; \`make bundle\` refuses it unless FORCE=1"; }

# An exported run, made once for `make bundle`; `make export` redoes it, and so
# does this when an earlier export never finished validating (killed): export/gate.py's
# outcome 4. One that failed or left undecided its gate stays as it is, for bundle to refuse.
# Exit 1 means some variant failed: bundling the chosen one says whether it exists.
exported: trained edge-env
	@$(BIN)/python -m export.gate $(RUN) >/dev/null || [ $$? -ne 4 ] || $(NOODLE) export $(RUN) || [ $$? -eq 1 ]

# WHEELS=1 puts the exact aarch64 wheels for Bookworm and Trixie in the
# tarball (tens of MB, downloaded once into WHEEL_CACHE), so the Pi installs
# offline; WHEELS=0 makes a small one that fetches the same wheels, pinned by
# sha256, from the index on the Pi (so it downloads them once too), named
# ...-<model>-online.tar.gz so that it never replaces the offline one.
WHEELS ?= 1
WHEEL_CACHE ?= .cache/wheels
bundle: bundle-which setup $(if $(RECORDED),,exported)
	$(NOODLE) bundle $(BUNDLE_RUN) --model $(MODEL) --out dist --wheel-cache $(WHEEL_CACHE) $(if $(FORCE),--force) \
	  $(if $(filter 0,$(WHEELS)),--no-wheels)

# Which run and data, said before any work (training the run of DATA, when nothing is recorded).
ifneq ($(RECORDED),)
BUNDLE_WHICH = $(RECORDED), the run the last `make export` made, of DATA=$(BUNDLE_DATA) \
	(DATA=... or RUN=... bundles another)
else ifneq ($(filter command line,$(origin RUN)),)
BUNDLE_WHICH = RUN=$(RUN)
else ifneq ($(TOLD),)
BUNDLE_WHICH = the run of DATA=$(DATA_DIR)$(if $(strip $(MODEL_FLAGS)), $(strip $(MODEL_FLAGS))), as `make export` names it
else
BUNDLE_WHICH = the run of DATA=$(DATA_DIR), the embedded sample: no `make export` is recorded in \
	$(LAST_EXPORT) (`make export DATA=...` first, to bundle yours)
endif
bundle-which:
	@echo 'make bundle: $(BUNDLE_WHICH)'

# The bundle on each Raspberry Pi OS release: a Debian arm64 root per release
# (cached in .cache/pi-root-<release>) runs the bundle's own install.sh,
# offline, and its runner under qemu; the labels must equal x86's. It needs
# root (chroot, namespaces, binfmt_misc): see bench/pi_check.py.
# Photos: the data's own test photos (what the model knows: a photo it cannot
# tell apart sits near a tie, where x86's and aarch64's int8 kernels may round
# to different labels), else the data itself.
PI_RELEASES ?= bookworm trixie
PHOTOS  ?= $(firstword $(wildcard $(BUNDLE_DATA)/test) $(BUNDLE_DATA))
# Photos classified under qemu per release, evenly spaced through each class
# folder (0: all): emulated, the pretrained default takes about a second a photo.
PI_SAMPLE ?= 100
SUDO    := $(if $(filter 0,$(shell id -u)),,sudo)
pi-check: bundle edge-env pi-tools
	$(SUDO) $(BIN)/python -m bench.pi_check $(BUNDLE_RUN) $(PHOTOS) --model $(MODEL) --dist dist \
	  --releases "$(PI_RELEASES)" --cache .cache --sample $(PI_SAMPLE)

# The README's two commands, `make export` then `make test`, on a fresh Debian host in a
# chroot: a debootstrapped root of this machine's architecture (cached in .cache/host-root-<release>)
# with python3, venv and make, the checkout copied in as a clone holds it. Trixie is Debian 13:
# Python 3.13, so .venv-edge holds ai-edge-litert alone. 9 minutes on two cores from no root (docs/export.md);
# root, as pi-check. Not in .ci/run: CI's machine is the Bookworm host it would repeat.
HOST_RELEASE ?= trixie
host-check: setup pi-tools
	$(SUDO) $(BIN)/python -m bench.host_check --release $(HOST_RELEASE) --cache .cache

pi-tools:
	@command -v debootstrap >/dev/null && command -v qemu-aarch64-static >/dev/null || \
	{ $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap qemu-user-static; }

# OpenCV beside the device environment, not in it (.venv-edge is the Pi's own set): the load
# benchmark's server reads its camera clip with it there. 4.11 is the last release built for
# numpy 1.x, which tflite-runtime 2.14 needs; --no-deps keeps the environment's numpy.
SERVE_OPENCV := .cache/serve-opencv
$(SERVE_OPENCV)/.installed: | edge-env
	$(EDGE_VENV)/bin/pip install --quiet --no-deps --target $(SERVE_OPENCV) 'opencv-python-headless==4.11.0.86'
	touch $@

# Not part of `make test`: it trains twice (the embedded default and, when
# present, ../shared/data/cats-vs-dogs) under runs/bench/ to time each stage,
# then times the edge runner (.venv-edge's tflite-runtime and ai-edge-litert)
# against the seed's Keras loop, and `noodle-edge serve` under load (bench/serve_load.py).
# Writes BENCHMARKS.md and bench.json.
REPEATS ?= 3
# Some sections only (python -m bench --help lists them), the others' figures kept: ONLY=growth,teach
ONLY ?=
bench: setup edge-env $(SERVE_OPENCV)/.installed
	$(BIN)/python -m bench --repeats $(REPEATS) $(if $(ONLY),--only $(ONLY))

lint: setup
	$(BIN)/ruff check .

# The real services the serve tests start: Debian's mosquitto (tests/test_serve_mqtt.py)
# and headless Chromium (tests/test_serve_browser.py).
test-tools:
	@{ command -v mosquitto || [ -x /usr/sbin/mosquitto ]; } >/dev/null && command -v chromium >/dev/null || \
	{ $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto chromium; }

# The real clients the standard-metadata tests load every exported variant with
# (tests/test_standard_metadata.py), each in its own environment: MediaPipe Tasks
# (one wheel for every Python 3) and the TFLite Task Library, tflite-support 0.4.4, whose
# wheels stop at Python 3.11 (made by a python3.11 when one runs). Neither shares TensorFlow's:
# MediaPipe brings opencv-contrib-python, tflite-support protobuf < 4. A host that cannot
# install one records why in its .failed, and the tests of that client skip saying so.
MEDIAPIPE_VENV := .venv-mediapipe
TASKLIB_VENV   := .venv-tasklib
TASKLIB_PYTHON ?= $(shell for p in python3.11 python3.10 python3; do case "$$($$p $(PY_VERSION) 2>/dev/null)" in \
	(3.9|3.10|3.11) echo $$p; exit;; esac; done)
CLIENT_VENV = rm -rf $(1) && { $(2) -m venv $(1) && $(1)/bin/pip install --quiet $(3) && touch $(1)/.installed; } \
	|| { mkdir -p $(1) && echo "$(4)" >$(1)/.failed; echo "note: $(4); its tests will skip" >&2; }
client-envs: $(MEDIAPIPE_VENV)/.installed $(TASKLIB_VENV)/.installed
$(MEDIAPIPE_VENV)/.installed:
	@$(call CLIENT_VENV,$(MEDIAPIPE_VENV),$(PYTHON),'mediapipe==1.2.3',pip could not install mediapipe 1.2.3 for $(PYTHON))
$(TASKLIB_VENV)/.installed:
	@$(if $(TASKLIB_PYTHON),$(call CLIENT_VENV,$(TASKLIB_VENV),$(TASKLIB_PYTHON),'tflite-support==0.4.4',pip could not \
	install tflite-support 0.4.4 for $(TASKLIB_PYTHON)),mkdir -p $(TASKLIB_VENV) && echo "tflite-support 0.4.4 has \
	wheels for Python <= 3.11 and no python3.11 or 3.10 runs here" >$(TASKLIB_VENV)/.failed)

# edge-env: the export tests run every model under tflite-runtime 2.14 in it.
test: setup lint edge-env test-tools client-envs
	$(BIN)/python -m pytest

clean:
	rm -rf $(OUT) $(SAMPLE) dist
