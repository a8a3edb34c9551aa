# The two commands: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch (a local wheel on the project's machines; PyPI elsewhere).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test lint test-slow test-timm test-cuda timm-env test-hf docs reproduce clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test,onnx]"
	@touch $@

demo: $(STAMP)
	$(BIN)/cpvt demo

# The onnx extra is installed above, so its tests must run: CPVT_REQUIRE turns their skip into a failure.
test: $(STAMP)
	CPVT_REQUIRE=onnx,onnxscript,onnxruntime $(BIN)/python -m pytest -q

# The GPU tests (tests/test_cuda.py): on a machine with CUDA; CPVT_TEST_DEVICE=cpu is their dry run.
test-cuda: $(STAMP)
	$(BIN)/python -m pytest -q -m cuda tests/test_cuda.py

# Static checks (rules in pyproject.toml's [tool.ruff]); CI runs them before the tests.
lint: $(STAMP)
	$(BIN)/ruff check src tests scripts benchmarks

# CPVT's tables at a budget (smoke < 1 min, cpu about 40 h on 2 cores over several sessions, gpu ~25 min on one H200).
# Finished runs are skipped, so an interrupted sweep resumes; the report lands in docs/results/<budget>/.
BUDGET ?= cpu
TABLES ?= all
reproduce: $(STAMP)
	$(BIN)/cpvt reproduce $(TABLES) --budget $(BUDGET) --out docs/results/$(BUDGET)

# The default suite includes ONNX export parity (the onnx extra is installed above).
# Long tests kept out of the default run (every model at 224/384/512, ...).
test-slow: $(STAMP)
	CPVT_REQUIRE=onnx,onnxscript,onnxruntime $(BIN)/python -m pytest -q -m slow

# timm needs the full PyTorch build (with torchvision): a separate environment.
TIMM_VENV ?= .venv-timm
$(TIMM_VENV)/.installed: pyproject.toml
	@test -x $(TIMM_VENV)/bin/python || $(PYTHON) -m venv $(TIMM_VENV)
	$(TIMM_VENV)/bin/python -m pip --isolated install --quiet torch==2.13.0 torchvision==0.28.0 timm safetensors numpy pytest
	$(TIMM_VENV)/bin/python -m pip --isolated install --quiet -e .  # torch is already there; this adds kornia, tqdm, matplotlib
	@touch $@

timm-env: $(TIMM_VENV)/.installed

# CPVT_REQUIRE: a library these tests compare against must be importable; if it is not, they fail instead of skipping.
test-timm: $(TIMM_VENV)/.installed
	CPVT_REQUIRE=timm $(TIMM_VENV)/bin/python -m pytest -q -m timm tests/test_timm_compat.py tests/test_pyramids.py

# The CvT comparison against Hugging Face transformers (randomly initialised models, nothing downloaded):
# transformers added to the default environment, which the default run skips these two tests without.
HF_STAMP := $(VENV)/.installed-hf
$(HF_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet transformers
	@touch $@

test-hf: $(HF_STAMP)
	CPVT_REQUIRE=transformers $(BIN)/python -m pytest -q tests/test_pyramids.py -k against_installed_transformers

# The documentation site (docs/ and an API reference from the docstrings) in strict mode: a broken link or
# reference, or a docstring mkdocstrings cannot read, fails the build. The docs extra is added to .venv.
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	@touch $@

docs: $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) $(TIMM_VENV) .pytest_cache site
