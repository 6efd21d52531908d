# Transformers and Beyond — the two commands are `make book` and `make test`.
# Every target creates the environment it needs first (`make setup`, a no-op when current).

SHELL        := /bin/bash
.SHELLFLAGS  := -eu -o pipefail -c
PYTHON       ?= python3
VENV         := .venv
BIN          := $(VENV)/bin
STAMP        := $(VENV)/.installed
JOBS         ?= 2
NB           ?= workspace
BUILD_LOG    := _build/book-build.log
# The notebooks are executed before the build (nbexec or the tests) into the execution cache;
# the build itself must find them all cached. Its verbose log is kept for tests/test_book.py.
BUILD_BOOK   = mkdir -p _build && $(BIN)/jupyter-book build . --warningiserror --keep-going -v \
               > $(BUILD_LOG) 2>&1 || { tail -40 $(BUILD_LOG); exit 1; }
PORT         ?= 8000
SUDO         := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PYTHONHASHSEED := 0
# the book and the tests never download a model: Chapter 13 loads real checkpoints only outside them (Colab)
export HF_HUB_OFFLINE := 1

.DEFAULT_GOAL := help
.PHONY: help setup chromium book serve test test-lib test-notebooks test-grading test-book workspace grade grade-class sheets exercises clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(STAMP): requirements.txt pyproject.toml setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

setup: $(STAMP)  ## create .venv with requirements.txt and an editable course_lib (no-op when current)

chromium:  ## install Debian's chromium for the browser test (needs root or sudo)
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

book: setup  ## execute the notebooks (execution cache, both cores) and build _build/html
	$(BIN)/python -m tools.nbexec --jobs $(JOBS) notebooks/*.ipynb
	$(BUILD_BOOK)
	@echo "book: $(CURDIR)/_build/html/index.html (build log: $(BUILD_LOG))"

serve: book  ## serve the built book on http://localhost:$(PORT)
	$(BIN)/python -m http.server $(PORT) --bind 127.0.0.1 --directory _build/html

sheets: setup  ## solutions: nbgrader metadata, exercise ids, the Done cell; chapters: link to their sheet (idempotent)
	$(BIN)/python -m tools.sheets --write

exercises: sheets  ## regenerate exercises/ from solutions/ (never edit exercises/ by hand; students work in workspace/)
	$(BIN)/python -m tools.make_exercises solutions exercises

workspace: setup  ## copy the exercise sheets into workspace/ (ignored by git) to work on; never overwrites a copy
	@mkdir -p workspace
	@for f in exercises/*.ipynb; do \
	  if [ -e "workspace/$${f##*/}" ]; then echo "kept    workspace/$${f##*/} (yours)"; \
	  else cp "$$f" workspace/ && echo "copied  $$f -> workspace/"; fi; done

grade: setup  ## autograde NB=path (a notebook or a folder; default: your workspace/)
	@test -e "$(NB)" || { echo "$(NB): not found (run \`make workspace\` first, or give NB=path)"; exit 2; }
	$(BIN)/course-grade $(NB)

grade-class: setup  ## grade a class: CLASS=folder (a folder per student) -> grades.json, grades.csv, gradebook.csv
	@test -d "$(CLASS)" || { echo "give CLASS=folder of submissions (a folder per student)"; exit 2; }
	$(BIN)/course-grade "$(CLASS)" --json grades.json --csv grades.csv --gradebook gradebook.csv

# The tests, in four targets; `make test` runs them all (it is what .ci/run calls). The pytest
# workers (and the kernels they start) get one torch thread each, since JOBS workers share the cores.
PYTEST = OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -n $(JOBS) --durations=10

test-lib: setup  ## library and exercise checks against torch (no notebooks, no browser; the fast loop)
	$(PYTEST) -m "not notebooks and not grading and not browser" tests

test-notebooks: setup  ## execute every lecture notebook into the book's execution cache, within budget
	$(PYTEST) -m notebooks tests

test-grading: setup  ## grade every solution (full marks) and exercise (zero), tampering, the grader itself
	$(PYTEST) -m grading tests

test-book: setup chromium  ## build the book from the cache with zero warnings; open it in headless Chromium
	$(BIN)/python -m tools.nbexec --jobs $(JOBS) notebooks/*.ipynb
	$(BUILD_BOOK)
	$(BIN)/python -m pytest -m browser tests/test_book.py

test: test-lib test-notebooks test-grading test-book  ## everything: library, notebooks, grading, book build, browser

clean:  ## remove the built book, the execution cache and Python caches (keeps .venv)
	rm -rf _build .hypothesis grading_reports
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
