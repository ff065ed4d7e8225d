# Two commands on a fresh machine: `make demo` (the main job on a sample catalog) and `make test`.
.PHONY: demo test test-fast mutate bench bench-gpu clean

.venv/.installed: pyproject.toml scripts/bootstrap.sh
	./scripts/bootstrap.sh

demo: .venv/.installed
	./scripts/demo.sh

test: .venv/.installed
	.venv/bin/python -m pytest -q -n auto --dist loadfile  # a worker per core, each test file on one

test-fast: .venv/.installed
	.venv/bin/python -m pytest -q -m "not slow" -n auto --dist loadfile

# mutation testing of the core modules (scripts/mutate.py lists them); the last line: RESULT mutation_score_min=...
mutate: .venv/.installed
	.venv/bin/python scripts/mutate.py

bench: .venv/.installed
	.venv/bin/python bench/extraction.py
	.venv/bin/python bench/finish.py
	.venv/bin/python bench/generation.py
	.venv/bin/python bench/gil.py
	.venv/bin/python bench/probe.py

bench-gpu: .venv/.installed
	bash bench/gpu.sh

clean:
	rm -rf .gvmgen
