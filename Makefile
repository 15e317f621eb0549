# bwv — two commands for a newcomer: `make run` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: setup run test bench clean firmware reliability

$(STAMP): pyproject.toml Makefile scripts/system-deps.sh
	bash scripts/system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	# picamera2 (pure Python) for the Pi camera driver's contract tests; its binary
	# hardware modules (libcamera, pykms) are stood in by tests/drivers/pi_standins.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
		picamera2==0.3.38 videodev2==0.0.4 piexif==1.1.3
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

# chronyd for the GPS → chrony refclock test, unpacked (not installed) from Debian.
CHRONYD := .cache/chrony/usr/sbin/chronyd
$(CHRONYD):
	bash scripts/fetch-chronyd.sh .cache/chrony

## The main job: a shift on simulated hardware, then verify and export the clip.
run: setup
	bash scripts/demo.sh $(BIN)

test: setup $(CHRONYD)
	BWV_CHRONYD=$(CURDIR)/$(CHRONYD) $(BIN)/python -m pytest -q

## A firmware bundle of this tree (wheel + default config + manifest): out/firmware/.
## Publish it with `bwv release add` (docs/FORMAT.md, "Firmware bundle and update metadata").
firmware: setup
	$(BIN)/bwv bundle --out out/firmware

bench: setup
	$(BIN)/python bench/bench.py

## Issue #7's fault campaigns (power cuts, I/O errors, fuzzing, 30k-segment recovery), one
## table at the end; fails if anything was lost or /dev/fuse is missing. docs/RELIABILITY.md
reliability: setup
	$(BIN)/python -m hw_sim.reliability

clean:
	rm -rf out .pytest_cache
