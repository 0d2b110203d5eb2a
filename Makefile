# Two commands: `make demo` and `make test` (and `make docs`). Each creates .venv and installs what
# it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_DIR ?= runs/fmnist
DEMO_SAMPLES ?= 36
DEMO_START := $(shell date +%s)
DEMO_TRAIN := $(PY) train.py --config configs/fashion_mnist.py --workdir $(DEMO_DIR)
DEMO_SAMPLE := $(PY) sample.py --workdir $(DEMO_DIR) --num_samples $(DEMO_SAMPLES) --trajectory \
  --trajectory_samples 16

CHROMIUM := /usr/bin/chromium

.PHONY: demo test docs bench data browser clean

$(VENV)/.installed-%: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[$*]'
	touch $@

# Debian's real Fashion-MNIST IDX files: the offline default dataset.
data: $(FASHION_MNIST)
$(FASHION_MNIST):
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist

# Debian's Chromium: the suite opens the reverse-process viewer in it, headless, and screenshots it.
browser: $(CHROMIUM)
$(CHROMIUM):
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium

# Trains, samples, then prints where the outputs are and the wall time (setup included).
demo: $(VENV)/.installed-test data
	@set -e; t1=$$(date +%s); \
	echo '$(DEMO_TRAIN)'; $(DEMO_TRAIN); t2=$$(date +%s); \
	echo '$(DEMO_SAMPLE)'; $(DEMO_SAMPLE); t3=$$(date +%s); \
	out='$(abspath $(DEMO_DIR))/samples'; \
	total=$$((t3 - $(DEMO_START))); \
	echo; echo "make demo done in $$((total / 60)) min $$((total % 60)) s (wall time):" \
	  "setup $$((t1 - $(DEMO_START))) s," \
	  "training $$((t2 - t1)) s, sampling $$((t3 - t2)) s. Open:"; \
	echo "  samples (grid):          $$out/samples.png"; \
	echo "  reverse process (GIF):   $$out/reverse_process.gif"; \
	echo "  reverse process (HTML):  file://$$out/reverse_process.html  (all T steps: slider, play)"; \
	echo "  images as numpy:         $$out/samples.npz"

test: $(VENV)/.installed-test data browser
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15 || { rc=$$?; [ $$rc -eq 5 ] && echo "pytest collected no tests"; exit $$rc; }

# The documentation site (docs/): notebooks executed on CPU, warnings are errors, so a failing
# cell or a docstring that does not render fails the build. Offline MathJax from Debian.
MATHJAX := /usr/share/javascript/mathjax/MathJax.js
docs: $(VENV)/.installed-docs data $(MATHJAX)
	rm -rf docs/_build/html docs/api/_autosummary
	$(PY) -m sphinx -b html -W --keep-going -j 1 docs docs/_build/html
	@echo "open file://$(abspath docs/_build/html/index.html)"
$(MATHJAX):
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq libjs-mathjax

# CPU suite with diffusers' UNet2DModel side by side (torch and diffusers: the [bench] extra).
bench: $(VENV)/.installed-bench
	$(PY) benchmarks/run.py --compare diffusers

clean:
	rm -rf $(VENV) runs .pytest_cache
