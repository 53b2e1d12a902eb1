# tuneloop: `make test` passes the tests, `make demo` runs the main job.
# Both set everything up on a fresh Debian machine as root, and do nothing twice.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
KSERVE := $(VENV)/kserve-client
CHECKOV := $(VENV)/checkov
DATA   ?= ../shared/data/sentiment-labelled-sentences/amazon_cells_labelled.txt
DEMO   ?= .demo

export HF_HUB_OFFLINE := 1
export BENTOML_DO_NOT_TRACK := true
export TOKENIZERS_PARALLELISM := false

.PHONY: test demo bench setup system-packages lock clean

setup: $(STAMP) $(KSERVE)/.installed $(CHECKOV)/.installed system-packages

# torch first, pinned to the CPU build on local disk: any looser request pulls a multi-GB CUDA build.
# constraints.txt pins what was resolved and tested here, so installs skip pip's long backtracking.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# KServe's OIP v2 client, for tests/service/test_kserve_client.py only. kserve pins cloudevents<2 (the event
# log uses 2.x), protobuf<7, psutil<6 and python-dateutil<3, so it stays out of .venv: --no-deps into a folder
# of its own (pip check of .venv never sees it), with the two packages its client modules need that .venv
# lacks or has at another major version. The test runs the client in a child interpreter with that folder
# first on PYTHONPATH; everything else (grpcio, protobuf, httpx, numpy, pandas, pydantic) comes from .venv.
$(KSERVE)/.installed: $(STAMP) Makefile
	rm -rf $(KSERVE)
	$(PIP) install --quiet --no-deps --target $(KSERVE) kserve==0.21.0 cloudevents==1.13.0 orjson==3.13.0
	touch $@

# checkov, for tests/deploy: its pins clash with the project's (and with each other's majors), so it gets a
# virtualenv of its own, rebuilt only when its pin in tests/deploy/checkov-requirements.txt changes.
$(CHECKOV)/.installed: tests/deploy/checkov-requirements.txt
	rm -rf $(CHECKOV)
	$(PYTHON) -m venv $(CHECKOV)
	$(CHECKOV)/bin/pip install --quiet -r tests/deploy/checkov-requirements.txt
	touch $@

system-packages:
	bash scripts/install-debian-packages.sh

test: setup
	$(PY) -m pytest -q

demo: setup
	rm -rf $(DEMO)
	$(VENV)/bin/tuneloop train --data $(DATA) --registry $(DEMO)/registry \
	  --extra-test yelp=../shared/data/sentiment-labelled-sentences/yelp_labelled.txt \
	  --extra-test imdb=../shared/data/sentiment-labelled-sentences/imdb_labelled.txt \
	  --max-length 64 --validation-fraction 0.25 --int8
	$(VENV)/bin/tuneloop models approve v1 --registry $(DEMO)/registry --actor demo --reason "demo approval"
	$(VENV)/bin/tuneloop models promote v1 --registry $(DEMO)/registry --actor demo --reason "first model"
	$(VENV)/bin/tuneloop models list --registry $(DEMO)/registry
	$(PY) scripts/demo_loop.py --registry $(DEMO)/registry --workdir $(DEMO)

# Benchmarks (results in bench/RESULTS.md); wrk drives the HTTP load.
bench: setup
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends wrk)
	$(PY) bench/bench_serving.py
	$(PY) bench/bench_frontend.py
	$(PY) bench/bench_inprocess.py
	$(PY) bench/bench_inprocess.py --model minilm
	$(PY) bench/bench_events.py
	$(PY) bench/bench_logging_overhead.py
	$(PY) bench/bench_drift.py

# Re-pin after changing dependencies in pyproject.toml.
lock:
	$(PIP) freeze --exclude-editable | grep -v '^torch==' > constraints.txt

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
