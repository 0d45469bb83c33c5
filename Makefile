# finesearch: the two quick-start commands are `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test lint demo demo-model clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV) dev
	touch $@

test: install
	bash scripts/install-system.sh
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/finesearch demo

# The committed demo bundle's recipe: `finesearch train` with its defaults, no tuning flags (seeded;
# ~40 min on 2 CPU cores). Writes models/demo.
DEMO_DATA ?= data/synth
DEMO_RECIPE ?=
demo-model: install
	test -f $(DEMO_DATA)/dataset.json || $(VENV)/bin/finesearch synth --out $(DEMO_DATA) --seed 0
	$(VENV)/bin/finesearch train --data $(DEMO_DATA)/dataset.json --images $(DEMO_DATA)/images --format karpathy \
	  --out models/demo --backbone finesearch-tiny --from-scratch $(DEMO_RECIPE)

lint: install
	$(VENV)/bin/ruff check training indexer service tests bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
