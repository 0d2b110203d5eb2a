# Two commands: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_DIR ?= runs/fmnist

.PHONY: demo test bench data clean

$(VENV)/.installed-%: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$*]'
	touch $@

# Debian's real Fashion-MNIST IDX files: the offline default dataset.
data: $(FASHION_MNIST)
$(FASHION_MNIST):
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist

demo: $(VENV)/.installed-test data
	$(PY) train.py --config configs/fashion_mnist.py --workdir $(DEMO_DIR)
	$(PY) sample.py --workdir $(DEMO_DIR) --num_samples 36 --trajectory

test: $(VENV)/.installed-test data
	$(PY) -m pytest -q --durations=15 || { rc=$$?; [ $$rc -eq 5 ] && echo "pytest collected no tests"; exit $$rc; }

bench: $(VENV)/.installed-test
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) runs .pytest_cache
