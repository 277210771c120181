# Two commands do all the set-up on a fresh machine (Python 3.11, pip):
#   make demo   install into .venv, then run the main job offline
#   make test   install into .venv, then run the test suite
PY := .venv/bin/python

.venv/.installed: pyproject.toml constraints.txt
	python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,onnx,lap,cluster,mqtt,serve]'
	touch $@

install: .venv/.installed

demo: .venv/.installed
	.venv/bin/streamseg demo -o out/demo

test: .venv/.installed
	$(PY) -m pytest -q

bench: .venv/.installed
	$(PY) bench/bench_pipeline.py

.PHONY: install demo test bench
