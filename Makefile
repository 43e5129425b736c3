# propbench: `make run` and `make test` install what is missing into .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test test-all figures experiments bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv with the pinned versions

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

EXPERIMENTS := default_init prelu_gain selu_lecun conv_fan_mode activation_zoo edge_of_chaos \
               residual_scaling bn_resnet nf_resnet rank_collapse layernorm_position

experiments: install  ## run the experiments; figures and summaries land in results/experiments/
	for name in $(EXPERIMENTS); do \
	  rm -rf results/experiments/$$name; \
	  $(PY) -m propbench +experiment=$$name || exit 1; \
	done

bench: install  ## probe vs bare vs naive hooks, start-up, sweeps; results/bench/<device>.csv
	$(PY) -m propbench.bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
