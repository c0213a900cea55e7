# schedlab: `make train` and `make test` set everything up themselves on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install train test test-fast lint format clean lecture lecture-curves thumbnails bench budgets

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install schedlab with its dev tools

train: $(STAMP) ## train the default job (MLP on the bundled digits, cosine lr); ARGS="..." adds overrides
	$(BIN)/python -m runner $(ARGS)

test: $(STAMP) ## run the test suite (in parallel on all cores; prints the 15 slowest, to see where its ~8-9 minutes go)
	$(BIN)/python -m pytest -n auto --durations=15 $(ARGS)

# tests.reach fails the tier if a module of runner/, schedulers/ or hydra_plugins/ ran no function
test-fast: $(STAMP) ## the tests a change can wait for (~1.5 min): all but those marked slow, every module run
	$(BIN)/python -m pytest -n auto -m "not slow" -p tests.reach $(ARGS)

lecture: $(STAMP) ## reproduce the whole lecture -> outputs/lecture/<time>/index.html (ARGS="fresh=true")
	WANDB_SILENT=true $(BIN)/python -m runner.lecture $(ARGS)

lecture-curves: $(STAMP) ## the lecture's six lr curves on its toy problem -> outputs/lecture_curves/
	$(BIN)/python -m schedulers.lecture --out outputs/lecture_curves

thumbnails: $(STAMP) ## regenerate the README's schedule thumbnails in docs/schedules/
	$(BIN)/python -m runner.preview --small --quiet --out docs/schedules epochs=30 \
	  scheduler=$$(ls conf/scheduler | grep -v '^target' | sed 's/\.yaml$$//' | paste -sd, -)
	rm -f docs/schedules/compare.png

bench: $(STAMP) ## benchmarks (not part of test): overhead vs hand loop/Lightning, streamed data, start-up, fused sweeps, budget sweeps by branches, a GPT vs a nanoGPT-style loop, GPU
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	WANDB_SILENT=true $(BIN)/python benchmarks/bench_overhead.py
	WANDB_SILENT=true $(BIN)/python benchmarks/bench_stream.py
	$(BIN)/python benchmarks/bench_startup.py
	WANDB_SILENT=true $(BIN)/python benchmarks/bench_fused.py
	WANDB_SILENT=true $(BIN)/python benchmarks/bench_fused_gpt.py
	WANDB_SILENT=true $(BIN)/python benchmarks/bench_budgets.py
	WANDB_SILENT=true $(BIN)/python benchmarks/bench_lm.py
	$(BIN)/python benchmarks/bench_gpu.py

budgets: $(STAMP) ## how long to train? +experiment=mnist1d_budgets: cosine reruns vs a WSD trunk + cooldowns vs schedule-free and EMA, 15/30/60 epochs, 3 seeds -> outputs/budgets/
	WANDB_SILENT=true $(BIN)/python -m runner -m +experiment=mnist1d_budgets logger=none \
	  trainer.progress=line 'hydra.sweep.dir=outputs/budgets/$${now:%Y-%m-%d_%H-%M-%S}' $(ARGS)

lint: $(STAMP) ## ruff check + format check + the import layers (import-linter, pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: ## remove the venv and all run outputs (everything under outputs/ but its README)
	rm -rf $(VENV) .pytest_cache .ruff_cache
	find outputs -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
