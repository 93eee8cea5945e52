# kvarn developer commands. `make demo` and `make test` set everything up themselves.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kvarn-setup-done
MODEL  := models/smollm2-135m
DATA   ?= ../shared/data
DEMO   := demo-runs

# Keep the CPU engine in one process and on both cores; see docs in README "Running on CPU".
export VLLM_ENABLE_V1_MULTIPROCESSING ?= 0
export VLLM_CPU_OMP_THREADS_BIND ?= nobind
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test-model test demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

test-model: $(MODEL)/config.json

$(MODEL)/config.json: $(STAMP)
	bash scripts/fetch_test_model.sh

test: setup test-model
	KVARN_DATA=$(DATA) $(BIN)/python -m pytest -q -p no:cacheprovider

demo: setup test-model
	rm -rf $(DEMO)
	$(BIN)/kvarn plan --model $(MODEL) --kv-cache-memory 64MiB --max-model-len 1024
	$(BIN)/kvarn run sample_jobs/word_problems.jsonl --model $(MODEL) --out $(DEMO)/fp16 \
		--bits 16 --temperature 0 --max-tokens 256 --kv-cache-memory 64MiB --max-model-len 1024
	$(BIN)/kvarn run sample_jobs/word_problems.jsonl --model $(MODEL) --out $(DEMO)/k2v2 \
		--bits 2 --temperature 0 --max-tokens 256 --kv-cache-memory 64MiB --max-model-len 1024 --max-num-seqs 8
	$(BIN)/kvarn score $(DEMO)/fp16
	$(BIN)/kvarn score $(DEMO)/k2v2
	$(BIN)/kvarn compare $(DEMO)/fp16 $(DEMO)/k2v2

clean:
	rm -rf $(DEMO) .pytest_cache
