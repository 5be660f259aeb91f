VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-triton test-gpu lint demo clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-composer.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-cache-dir -r requirements.txt  # no second copy of the torch wheels on small disks
	$(PY) -m pip install -q --no-cache-dir --no-deps -r requirements-composer.txt  # past its torch cap (see the file)
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

test: install
	$(PY) -m pytest -q -m "not triton" tests
	$(MAKE) test-triton

# Fused Triton kernels on the CPU (TRITON_INTERPRET=1 must be set before triton is imported); on a GPU machine
# `pytest -m triton` runs the same tests plus the model-shape cases on CUDA.
test-triton: install
	TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES= $(PY) -m pytest -q -m triton -W ignore::DeprecationWarning tests

# On a GPU machine: every entry point as users type it, plus `pytest -m triton` on CUDA (tests/gpu_smoke.sh; one
# line per step, non-zero exit if any fails). `make test-gpu PY=python3` uses another interpreter (no install).
test-gpu: $(if $(filter command line,$(origin PY)),,install)
	PY=$(PY) bash tests/gpu_smoke.sh

# The style pyproject.toml sets (ruff, installed into the venv on first use; not a runtime dependency).
lint: install
	$(PY) -m ruff --version >/dev/null 2>&1 || $(PY) -m pip install -q ruff
	$(PY) -m ruff check .

# Vision demo: a small LION-D trained on the embedded Fashion-MNIST subset (3000 train / 1000 val images), on CPU.
VISION_DEMO_FLAGS := --model lion_tiny_patch16_224 --model-kwargs patch_size=7 depth=4 embed_dim=96 num_heads=3 \
	--input-size 28 --mask_type Decay --epochs 15 --batch-size 64 --lr 1e-3 --unscale-lr --warmup-epochs 0 \
	--no-aug --mixup 0 --cutmix 0 --no-model-ema --drop-path 0 --num_workers 1 --device cpu --print-freq 20 \
	--data-set FMNIST_MINI --data-path data_cache/fmnist_mini --output_dir runs/vision_demo

demo: install
	$(PY) image_classification/main_lion.py $(VISION_DEMO_FLAGS)

clean:
	rm -rf $(VENV) .pytest_cache
