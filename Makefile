# propbench: `make run` and `make test` install what is missing into .venv first.
# Any Python 3.10-3.13: `make run PYTHON=python3.12`; its pins are constraints/py3.12.txt.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYVER  := $(or $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null),unknown)
CONSTRAINTS := constraints/py$(PYVER).txt

.PHONY: install run test test-all test-oldest figures experiments bench gpu-wheels gpu-check clean lock check-install

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[test]'
	touch $(STAMP)

constraints/py%.txt:
	@echo "propbench: no pinned versions for Python '$*' ($(PYTHON)); it supports 3.10-3.13: make ... PYTHON=python3.12" >&2; exit 2

install: $(STAMP)  ## create .venv with the pinned versions of constraints/py<X.Y>.txt

run: install  ## the main job: a 50-block PReLU MLP with the PReLU-aware Kaiming init
	$(PY) -m propbench depth=50 init=kaiming act=prelu

test: install  ## the quick suite (a few minutes on 2 CPU cores)
	$(PY) -m pytest -q

test-all: install  ## everything, the slow physics and end-to-end tests included
	$(PY) -m pytest -q -m "slow or not slow"

figures: install  ## regenerate the figures the README shows
	$(PY) -m propbench depth=50 init=kaiming act=prelu trials=4 hydra.run.dir=results/figures/prelu_kaiming_d50
	cp results/figures/prelu_kaiming_d50/propagation.png results/figures/prelu_kaiming_d50.png
	$(PY) -m propbench depth=50 init=default act=relu hydra.run.dir=results/figures/relu_default_d50
	cp results/figures/relu_default_d50/propagation.png results/figures/relu_default_d50.png
	$(PY) -m propbench model=custom model._target_=transformers.GPT2Model \
	  model.config._target_=transformers.GPT2Config model.config.n_layer=12 model.config.n_embd=256 \
	  model.config.n_head=8 input.shape=[64] input.kind=tokens input.vocab_size=50257 batch_size=8 \
	  trials=4 hydra.run.dir=results/figures/gpt2_blocks
	cp results/figures/gpt2_blocks/propagation.png results/figures/gpt2_blocks.png
	$(PY) -m propbench depth=16 width=128 act=relu init=kaiming trials=2 spectrum=true hydra.run.dir=results/figures/relu_spectrum_d16
	cp results/figures/relu_spectrum_d16/spectrum.png results/figures/relu_spectrum_d16.png

EXPERIMENTS := default_init prelu_gain selu_lecun conv_fan_mode activation_zoo edge_of_chaos \
               dynamical_isometry residual_scaling bn_resnet nf_resnet rank_collapse layernorm_position

experiments: install  ## run the twelve experiments; figures and summaries land in results/experiments/
	for name in $(EXPERIMENTS); do \
	  rm -rf results/experiments/$$name; \
	  $(PY) -m propbench +experiment=$$name || exit 1; \
	done

bench: install  ## probe vs bare vs naive hooks, start-up, sweeps; results/bench/<device>.csv
	$(PY) -m propbench.bench

# A GPU machine with its own torch but no index: bring the pure-Python packages it lacks.
GPU_WHEELS := hydra-core==1.3.8 omegaconf==2.3.1 hydra-joblib-launcher==1.2.0
gpu-wheels: install  ## fetch into .wheels/ what a CUDA machine with torch lacks (for gpu-check)
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: -d .wheels $(GPU_WHEELS)
	$(PY) -m pip wheel --quiet --no-deps -w .wheels antlr4-python3-runtime==4.9.3

GPU_OUT ?= results/gpu-check
gpu-check:  ## on a CUDA machine (no .venv needed): CUDA tests, GPU benchmark, CLI vs CPU; < 8 min
	bash .ci/gpu-check $(GPU_OUT)

OLDEST_PYTHON ?= python3.10
test-oldest:  ## the quick suite at pyproject.toml's floors (constraints/oldest.txt), in .venv-oldest
	rm -rf .venv-oldest
	$(OLDEST_PYTHON) -m venv .venv-oldest
	.venv-oldest/bin/python -m pip install --quiet -c constraints/oldest.txt -e '.[test]'
	.venv-oldest/bin/python -m pytest -q

lock:  ## re-resolve constraints/py<X.Y>.txt for $(PYTHON) from the public index (torch stays)
	tools/lock.sh $(PYTHON) $(wildcard $(CONSTRAINTS))

PYTHONS ?= python3.10 python3.11 python3.12 python3.13
check-install:  ## per interpreter: fresh clone, fresh venv, `make run` and `make test`; a table row each
	tools/check_install.sh $(PYTHONS)

clean:
	rm -rf $(VENV) .venv-oldest build *.egg-info .pytest_cache
