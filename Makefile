# Everything a fresh machine needs: `make demo` (the main job on the built-in default, no downloads) and
# `make test` (the whole test suite, including a real ComfyUI server). Both set up .venv on first use.
PY := .venv/bin/python
HOST := .cache/comfyui-host
# CI machines may have little disk: a pip cache would hold a second copy of torch's CUDA libraries (gigabytes).
export PIP_NO_CACHE_DIR := 1

.PHONY: demo test bench setup setup-host

demo: setup
	$(PY) -m srrl_core.demo --out output/demo

test: setup setup-host
	$(PY) -m ruff check .
	SRRL_REQUIRE_HOST=1 SRRL_COMFYUI_DIR=$(HOST) $(PY) -m pytest

# Every benchmark in a seconds-long smoke run (exit non-zero if one fails); FULL=1 for the full measurements.
bench: setup setup-host
	SRRL_COMFYUI_DIR=$(HOST) $(PY) bench/run_all.py $(if $(FULL),,--quick) $(BENCH_ARGS)

setup: .venv/.srrl-setup

# torch is pinned to the CUDA build that lies on this machine's disk (it also runs on the CPU); torchvision must
# match it. requirements.txt itself never lists torch: ComfyUI users bring their own.
.venv/.srrl-setup: requirements.txt requirements-dev.txt
	python3 -m venv .venv
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

setup-host: setup
	PYTHON=$(PY) bash tests/host/install_host.sh $(HOST)
