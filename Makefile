# anonlab: every target sets itself up (uv, then `uv sync --frozen`) on a machine with python3.
SHELL := /bin/bash
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .tools/venv/bin/uv)
export UV_PYTHON_DOWNLOADS := never
RUN := $(UV) run --frozen

.PHONY: setup demo test lint format config benchmarks clean

.tools/venv/bin/uv:
	python3 -m venv .tools/venv
	.tools/venv/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode
	touch $@

setup: .venv/.synced

## demo: the whole pipeline on the built-in synthetic data under the demo's gate (params.yaml
## composed with evaluate=demo validate=demo: NOT the release gate; `make config` restores the
## committed composition), then the exported anonymizer (the Mask R-CNN and the Keypoint R-CNN
## run as one: classes from the Mask R-CNN, head regions from the Keypoint R-CNN's keypoints)
## anonymizes the holdout reference images into artifacts/blurred/holdout/ (--allow-demo: it
## is not a release), and the independent detectors audit what it wrote (--audit)
demo: setup
	$(RUN) anonlab config evaluate=demo validate=demo
	$(RUN) dvc repro
	$(RUN) anonlab blur --allow-demo --model artifacts/serving/anonymizer-* \
		--out artifacts/blurred/holdout --sidecar --audit centerface,haar \
		$$($(RUN) python -c 'import json; d = json.load(open("artifacts/prepared/refs/holdout.json")); print(" ".join("artifacts/prepared/" + i["file_name"] for i in d["images"]))')


## test: lint, format check, and the test suite
test: setup lint
	$(RUN) pytest

lint: setup
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format: setup
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

## config: rewrite params.yaml from conf/
config: setup
	$(RUN) anonlab config

benchmarks: setup
	$(RUN) python benchmarks/review_throughput.py
	$(RUN) python benchmarks/loader_throughput.py
	$(RUN) python benchmarks/train_step.py
	$(RUN) python benchmarks/score_speed.py
	$(RUN) python benchmarks/blur_speed.py
	$(RUN) python benchmarks/blur_ray.py
	$(RUN) python benchmarks/serve_load.py
	$(RUN) python benchmarks/erase_speed.py

clean:
	rm -rf artifacts .pytest_cache .ruff_cache
