# prunekit: `make demo` runs the main job on the offline default model; `make test` runs the tests.
# Both set up the environment first (idempotent: a second run only checks).
VENV ?= .venv
PY := $(VENV)/bin/python
PRUNEKIT := $(VENV)/bin/prunekit
RUNS ?= runs
# What `make artifacts` builds (the 20% cut, distilled): serve, bench-serve and optimum-check read it.
ART ?= artifacts/SmolLM2-135M-Instruct-pruned-20-recovered
CUT ?= artifacts/.work/SmolLM2-135M-Instruct-pruned-20-recovered/pruned

.PHONY: setup demo test lint format test-fast compare clean artifacts serve bench bench-speed bench-serve bench-quick lmeval-check \
	bench-compress optimum-check quantize-check bench-frontier bench-genai

setup:
	@scripts/setup.sh

# The main job: the default model pruned by 20% (uniform, stock Llama layout) with the default mix.
demo: setup
	$(PRUNEKIT) compress --model default --calib default --ratio 0.2 --out $(RUNS)/demo/pruned-20 --force

test: setup lint
	$(PY) -m pytest

# ruff: lint and format check (pyproject.toml [tool.ruff]); `make format` rewrites the tree.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The unit tier only (tiny models, the tiny tokenizer and mix kept in tests/): under a minute.
test-fast: setup
	$(PY) -m pytest -m unit

# Side-by-side method comparison at 20% and 40% on the default model, same calibration budget for
# every method (32 x 256 tokens); about 40 minutes on 2 AVX2 cores in fp32.
compare: setup
	$(PRUNEKIT) compare --ratios 0.2,0.4 --rounds 2 --samples 32 --seq-len 256 --threads 2 \
	  --variants ours,ours-oneshot,ours-c4only,ours-nocomp,ours-perlayer,magnitude,wanda-sp,flap,taylor,block-influence \
	  --out $(RUNS)/compare

clean:
	rm -rf $(RUNS) .pytest_cache

# The CI job that produces deployable artifacts: compress (the 20% cut, then 196,608 tokens of distillation)
# -> export -> verify -> summary, into $(ART) (resumable: a re-run reuses every complete step). The
# retraining-free cut alone: add --recover-tokens 0.
artifacts: setup
	$(PRUNEKIT) artifacts --model default --ratio 0.2 --out artifacts

# Serve the artifact that `make artifacts` built (vLLM OpenAI server on 127.0.0.1:8000).
serve: setup
	$(PRUNEKIT) serve $(ART)

# The server under load: 64 streaming clients for 5 minutes on the 20% artifact, then malformed requests and
# clients that drop mid-stream; memory per minute (about 8 min after `make artifacts`).
bench-serve: artifacts
	$(PY) -m prunekit.bench.soak $(ART) --clients 64 --minutes 5 \
	  --out $(RUNS)/soak

# Quality and speed of dense vs pruned on every stock runtime, one run; report in bench/results/.
bench: setup
	$(PRUNEKIT) bench --preset full
	$(MAKE) bench-speed
	$(MAKE) bench-frontier
	$(MAKE) bench-genai

# Quality vs speed of dense, 20% and 40% (the artifacts defaults), each unquantized, int8 and int4: WikiText-2, held-out
# geomean, bytes on disk, onnxruntime decode timed in turn against dense fp32, vLLM paired with dense bf16; report
# and plot in bench/results/<date>-<machine>-frontier/ (about 70 minutes on 2 cores with WIKITEXT=64).
WIKITEXT ?=
bench-frontier: setup
	$(PY) -m prunekit.bench.frontier --threads 2 $(if $(WIKITEXT),--wikitext-limit $(WIKITEXT))

# Our ONNX graph (the default, in-place cache) against onnxruntime-genai's graph of the same
# artifact (export --genai): decode at batch 1 and 8, fresh processes alternating, each alone with onnxruntime's
# default thread spinning (genai's session spins: it cannot share a process with a timed one), the default model's
# dense and 20% cut, then Qwen2.5-0.5B's shape dense and 20% (random weights); about 25 minutes on 2 cores after
# `make artifacts`.
bench-genai: artifacts
	$(PRUNEKIT) export default --out bench/work/genai/dense --genai --force
	$(PRUNEKIT) export $(CUT) --out bench/work/genai/cut-20 --genai --force
	$(PY) -m prunekit.bench.genai_compare bench/work/genai/dense bench/work/genai/cut-20 --repeats 6 \
	  --shape qwen2.5-0.5b --cuts 'dense,20%' --out bench/results/$$(date +%F)-genai

# Speed of cuts at real shapes (random weights) on PyTorch, onnxruntime and vLLM, fresh process per run,
# 5 interleaved repeats: the default model's shape with uniform, per-layer (DeciLM and generic layouts) and
# alignment variants (33% is 704 wide at --align 64, 640 at 128; at 256 it is 768, the 30% cut) plus a
# per-token profile and each cut paired with dense in one process on every runtime (their decode steps timed in
# turn: these VMs change speed in phases), then Qwen2.5-0.5B's shape with its profile and 5 pairs (an estimated
# 140 + 130 min on 2 cores; the whole target has not been timed with the pairs).
bench-speed: setup
	$(PRUNEKIT) bench --shapes smollm2-135m --repeats 5 --profile-cut 40% --paired 8 \
	  --cuts 'dense,20%,40%,30%,30% per-layer,30% per-layer generic,33%,33% a128'
	$(PRUNEKIT) bench --shapes qwen2.5-0.5b --repeats 5 --profile-cut 20% --paired 5 \
	  --cuts 'dense,20%,40%,30%,30% per-layer'

# compress at real shapes (random weights, stored bf16): time and peak memory per stage, each setting in a fresh
# process: Qwen2.5-0.5B's shape with the defaults offloaded; then 1 round of 16 samples without offloading,
# offloaded, and on 2 data-parallel ranks (torchrun, gloo); then Llama-3.2-1B's shape (about 60 min on 2 cores).
bench-compress: setup
	$(PY) -m prunekit.bench.compress_scale --shape qwen2.5-0.5b --settings 'offload=on' --threads 2
	$(PY) -m prunekit.bench.compress_scale --shape qwen2.5-0.5b --threads 2 \
	  --settings 'offload=off,rounds=1,samples=16;offload=on,rounds=1,samples=16;offload=on,rounds=1,samples=16,nproc=2' \
	  --tag small
	$(PY) -m prunekit.bench.compress_scale --shape llama-3.2-1b --settings 'offload=on,rounds=1,samples=16' --threads 2

# Small limits, 2 methods at 20%; what CI runs after the tests (about 15 min on 2 cores from scratch,
# most of it two ONNX exports and two vLLM starts). Asserts nothing about absolute times.
bench-quick: setup
	$(PRUNEKIT) bench --preset quick

# Our zero-shot scorer against lm-eval 0.4.13 itself, choice by choice, on the first 200 ARC-Easy docs
# of the dense default model (lm-eval lives in its own venv: its dependencies are not ours).
# optimum's ORTModelForCausalLM loads the 20% cut's ONNX and generates the same greedy tokens as PyTorch
# (bench/optimum_check.py), in its own venv: optimum-onnx 0.1.0 pins transformers < 4.58. optimum runs the graph
# that passes the cache in and out (--onnx-cache concat), not the default in-place one: exported here for it.
OPTIMUM_VENV ?= .venv-optimum
OPTIMUM_ART ?= bench/work/optimum/cut-20
optimum-check: artifacts
	$(PRUNEKIT) export $(CUT) --out $(OPTIMUM_ART) --onnx-cache concat --force
	@[ -x $(OPTIMUM_VENV)/bin/python ] && $(OPTIMUM_VENV)/bin/python -c "import optimum.onnxruntime" 2>/dev/null || \
	  { python3 -m venv $(OPTIMUM_VENV) && $(OPTIMUM_VENV)/bin/pip install -q "optimum-onnx[onnxruntime]==0.1.0" torch==2.13.0; }
	$(OPTIMUM_VENV)/bin/python bench/optimum_check.py $(OPTIMUM_ART)

# Our int4 (GPTQ) against llm-compressor's GPTQ on the same 20% cut, calibration sequences and WikiText-2 windows
# (bench/quantize_check.py), in its own venv: llm-compressor 0.14 pins transformers <= 5.17.
LLMC_VENV ?= .venv-llmc
quantize-check: setup
	@[ -x $(LLMC_VENV)/bin/python ] && $(LLMC_VENV)/bin/python -c "import llmcompressor" 2>/dev/null || \
	  { python3 -m venv $(LLMC_VENV) && $(LLMC_VENV)/bin/pip install -q "llmcompressor==0.14.0.1" torch==2.13.0; }
	$(PRUNEKIT) artifacts --model default --ratio 0.2 --out artifacts --quantize int4
	@mkdir -p $(RUNS)
	$(PY) bench/quantize_check.py --prepare $(CUT) --art $(ART)-int4 --data $(RUNS)/quantize-check.npz
	$(LLMC_VENV)/bin/python bench/quantize_check.py $(CUT) --art $(ART)-int4 --data $(RUNS)/quantize-check.npz \
	  --out $(RUNS)/llmc-int4

LMEVAL_VENV ?= .venv-lmeval
lmeval-check: setup
	@[ -x $(LMEVAL_VENV)/bin/lm_eval ] || { python3 -m venv $(LMEVAL_VENV) && \
	  $(LMEVAL_VENV)/bin/pip install -q "lm-eval[hf]==0.4.13" torch==2.13.0 transformers==5.19.0; }
	@[ -f $(RUNS)/dense-hf/config.json ] || $(PRUNEKIT) export default --out $(RUNS)/dense-hf --no-onnx --force
	$(PY) -m prunekit.bench.lmeval_check --lmeval-python $(LMEVAL_VENV)/bin/python --artifact $(RUNS)/dense-hf \
	  --task arc_easy --limit 200
