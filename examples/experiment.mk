# A Makefile-driven distillation experiment: each stage is a file, rebuilt only when its inputs
# change; `still -o` writes atomically, so an interrupted stage never leaves a half file that make
# would take as done.
#
#   make -f examples/experiment.mk RAW=demo-out/raw.jsonl BENCH=demo-out/bench.jsonl OUT=exp
#
# the venv's still when run from the repository (after make demo), else the one on PATH
STILL ?= $(if $(wildcard .venv/bin/still),.venv/bin/still,still)
RAW ?= raw.jsonl
BENCH ?= bench.jsonl
OUT ?= exp
SEED ?= 1
WORKERS ?= 2

all: $(OUT)/train.jsonl

$(OUT)/bench-index/manifest.json: $(BENCH)
	@mkdir -p $(OUT)
	$(STILL) decontam index build --against $(BENCH) -o $(OUT)/bench-index

$(OUT)/unique.jsonl: $(RAW)
	@mkdir -p $(OUT)
	$(STILL) dedup --key query --max-per-key 4 --clusters $(OUT)/clusters.jsonl $< -o $@

$(OUT)/clean.jsonl: $(OUT)/unique.jsonl $(OUT)/bench-index/manifest.json
	$(STILL) decontam --index $(OUT)/bench-index --report $(OUT)/contamination.json $< -o $@

$(OUT)/verified.jsonl: $(OUT)/clean.jsonl
	$(STILL) verify --workers $(WORKERS) --stats $(OUT)/verify-stats.json $< -o $@

$(OUT)/train.jsonl: $(OUT)/verified.jsonl
	$(STILL) sample --passing --per-query 1 --length-top 0.5 --seed $(SEED) --stats $(OUT)/sample-stats.json $< -o $@

clean:
	rm -rf $(OUT)

.PHONY: all clean
