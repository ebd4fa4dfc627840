# make run        builds ./run and generates text with the bundled model (models/tiny)
# make deps       installs the packages that make run and make test need (deps.sh; they run it
#                 first); WITH_TORCH=1 adds python3-torch for the torch.save tests (CI)
# make            builds ./run (CPU)
# make runcuda    builds ./runcuda (NVIDIA GPU, needs the CUDA Toolkit; CUDA_ARCH=sm_90 by default)
# make test       runs the test suite (pytest)
# make bench      measures prefill and decode speed on this machine
# make fuzz       builds the libFuzzer harnesses of tests/fuzz/ (clang, ASan + UBSan) under build/fuzz/
# make fuzz-ci    runs each of them 15 s from its corpus (tests/fuzz/corpus_*: seeds and past crashes)
# make fuzz-seeds rewrites the generated seeds of corpus_model and corpus_state
CC ?= gcc
CXX ?= g++
NVCC ?= $(shell command -v nvcc || echo /usr/local/cuda/bin/nvcc)
PYTHON ?= /usr/bin/python3
CUDA_ARCH ?= sm_90
CFLAGS ?= -O3 -march=native
CFLAGS += -std=gnu11 -Wall -Wextra -Wno-unused-parameter -fopenmp -D_GNU_SOURCE
LDLIBS = -lm

# The builds and the tests first check their packages (deps.sh: installs what is missing, or prints
# the command to run and stops; silent when all are there). It runs here, while the Makefile is
# read, so that the pkg-config calls below see what it installed; not under make -n.
BUILD_GOALS = all run run-san run-portable run-avx2 runcuda build/batch_engines
TEST_GOALS = deps test test-san test-portable test-avx2 bench
FUZZ_GOALS = fuzz fuzz-ci fuzz-seeds
GOALS = $(or $(MAKECMDGOALS),all)
ifneq ($(filter $(BUILD_GOALS) $(TEST_GOALS),$(GOALS)),)
ifeq ($(findstring n,$(firstword -$(MAKEFLAGS))),)
DEPS_OUT := $(shell $(SHELL) deps.sh $(if $(filter $(TEST_GOALS),$(GOALS)),test) $(if $(WITH_TORCH),torch) $(if $(filter $(FUZZ_GOALS),$(GOALS)),fuzz) >&2)
ifneq ($(.SHELLSTATUS),0)
$(error deps.sh: packages missing (above))
endif
endif
endif

# Shared by run and runcuda: the file format, the tokenizer, the sampler, batch mode and the command line.
SHARED_SRC = model.c tokenizer.c util.c feed.c sampler.c jsonl.c state_file.c state.c benchmark.c batch.c chat.c cli.c
SHARED_HDR = model.h tokenizer.h engine.h util.h feed.h sampler.h jsonl.h state_file.h state.h batch.h chat.h

# cJSON reads the JSON lines of batch mode.
CFLAGS += $(shell pkg-config --cflags libcjson)
LDLIBS += $(shell pkg-config --libs libcjson)

# xxHash (XXH64) fingerprints the model and checksums a saved state (state_file.c).
CFLAGS += $(shell pkg-config --cflags libxxhash)
LDLIBS += $(shell pkg-config --libs libxxhash)

# utf8proc does NFC and the Unicode categories of the pre-tokenizer.
CFLAGS += $(shell pkg-config --cflags libutf8proc)
LDLIBS += $(shell pkg-config --libs libutf8proc)

# SentencePiece models need the SentencePiece library; without it BPE models still work.
HAVE_SPM := $(shell pkg-config --exists sentencepiece && echo 1)
ifeq ($(HAVE_SPM),1)
SPM_OBJ = sentencepiece_shim.o
CFLAGS += -DHAVE_SENTENCEPIECE
LDLIBS += $(shell pkg-config --libs sentencepiece) -lstdc++
endif

.PHONY: all deps test test-san test-portable test-avx2 bench fuzz fuzz-ci fuzz-seeds clean
all: run

deps:
	@:

sentencepiece_shim.o: sentencepiece_shim.cc sentencepiece_shim.h
	$(CXX) -O2 -std=c++17 -c $< -o $@ $(shell pkg-config --cflags sentencepiece)

# ./run: the CPU program. `make run` (the first command to try on a fresh clone) builds it and then
# generates text with the bundled model, models/tiny.
define build_run
	$(CC) $(CFLAGS) -o run run.c $(SHARED_SRC) $(SPM_OBJ) $(LDLIBS)
endef
ifeq ($(MAKECMDGOALS),run)
.PHONY: run
run: run.c vec.h $(SHARED_SRC) $(SHARED_HDR) $(SPM_OBJ)
	$(build_run)
	./run models/tiny/model.bin -i "The old man" -n 120 -t 0.8 -p 0.95
else
run: run.c vec.h $(SHARED_SRC) $(SHARED_HDR) $(SPM_OBJ)
	$(build_run)
endif

test: run
	$(PYTHON) -m pytest -q tests

# The same tests against a build with AddressSanitizer and UndefinedBehaviorSanitizer.
run-san: run.c vec.h $(SHARED_SRC) $(SHARED_HDR) $(SPM_OBJ)
	$(CC) $(CFLAGS) -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer \
		-o $@ run.c $(SHARED_SRC) $(SPM_OBJ) $(LDLIBS)

test-san: run-san
	RUN=./run-san ASAN_OPTIONS=detect_leaks=1 $(PYTHON) -m pytest -q -m "not slow" tests

# The engine as an x86-64 machine without AVX runs it (4-lane vectors, fp16 widened without F16C;
# see vec.h), against the golden logits and the command-line tests: the host's own width is what
# `make test` covers.
run-portable: run.c vec.h $(SHARED_SRC) $(SHARED_HDR) $(SPM_OBJ)
	$(CC) $(filter-out -march=%,$(CFLAGS)) -march=x86-64 -o $@ run.c $(SHARED_SRC) $(SPM_OBJ) $(LDLIBS)

test-portable: run-portable
	RUN=./run-portable $(PYTHON) -m pytest -q tests/test_golden.py tests/test_run.py tests/test_quant.py

# The engine as an AVX2 machine without AVX-512 or VNNI runs it (8-lane vectors; the quantized
# matrices' integer dot products through maddubs rather than vpdpbusd), against the golden logits and
# the quantized-weight tests.
run-avx2: run.c vec.h $(SHARED_SRC) $(SHARED_HDR) $(SPM_OBJ)
	$(CC) $(filter-out -march=%,$(CFLAGS)) -march=haswell -o $@ run.c $(SHARED_SRC) $(SPM_OBJ) $(LDLIBS)

test-avx2: run-avx2
	RUN=./run-avx2 $(PYTHON) -m pytest -q tests/test_golden.py tests/test_quant.py

# Batch mode on several CPU engines at once, as ./runcuda --gpus runs it (tests/test_batch_engines.py).
build/batch_engines: tests/batch_engines.c run.c vec.h $(filter-out cli.c,$(SHARED_SRC)) $(SHARED_HDR) $(SPM_OBJ)
	@mkdir -p build
	$(CC) $(CFLAGS) -I. -o $@ tests/batch_engines.c run.c $(filter-out cli.c,$(SHARED_SRC)) $(SPM_OBJ) $(LDLIBS)

# The GPU program: run.cu with the shared C files, compiled by the host compiler and linked by nvcc.
CUDA_OBJ = $(SHARED_SRC:%.c=build/cuda/%.o)
build/cuda/%.o: %.c $(SHARED_HDR)
	@mkdir -p build/cuda
	$(CC) $(CFLAGS) -c $< -o $@

runcuda: run.cu $(wildcard cuda/*.cuh) $(CUDA_OBJ) $(SPM_OBJ)
	$(NVCC) -O3 -arch=$(CUDA_ARCH) -o $@ run.cu $(CUDA_OBJ) $(SPM_OBJ) -lcublas $(LDLIBS) -Xcompiler -fopenmp

# Speed on this machine: prefill and decode tok/s and peak memory for a 130m-shaped model, next to
# the floors; the sampler's time a row; then our prefill GEMM against OpenBLAS on the same shapes
# (when libopenblas-dev is there).
bench/bandwidth: bench/bandwidth.c vec.h
	$(CC) $(CFLAGS) -o $@ $<

bench/gemm_bench: bench/gemm_bench.c run.c model.c sampler.c util.c model.h engine.h sampler.h vec.h
	$(CC) $(CFLAGS) -o $@ bench/gemm_bench.c model.c sampler.c util.c -lopenblas $(LDLIBS)

bench/bench_sampler: bench/bench_sampler.c sampler.c sampler.h util.c util.h
	$(CC) $(CFLAGS) -I. -o $@ bench/bench_sampler.c sampler.c util.c $(LDLIBS)

bench: run bench/bandwidth bench/bench_sampler
	$(PYTHON) bench/bench_cpu.py
	./bench/bench_sampler
	@if pkg-config --exists openblas 2>/dev/null || [ -f /usr/include/x86_64-linux-gnu/cblas.h ] || [ -f /usr/include/cblas.h ]; then \
		$(MAKE) -s bench/gemm_bench && OPENBLAS_NUM_THREADS=$$(nproc) ./bench/gemm_bench; \
	else echo "libopenblas-dev not installed: GEMM comparison skipped"; fi

# libFuzzer harnesses: each links only the C files it exercises (no SentencePiece: the library's own
# parser is not ours to fuzz). fuzz-ci copies nothing into tests/fuzz/: new inputs go to build/fuzz/.
FUZZ_CFLAGS = -g -O1 -std=gnu11 -D_GNU_SOURCE -I. -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZERS = build/fuzz/fuzz_jsonl build/fuzz/fuzz_model build/fuzz/fuzz_tokenizer build/fuzz/fuzz_state
build/fuzz/fuzz_jsonl: tests/fuzz/fuzz_jsonl.c jsonl.c util.c jsonl.h util.h
	@mkdir -p build/fuzz
	clang $(FUZZ_CFLAGS) $(shell pkg-config --cflags libcjson) -o $@ $(filter %.c,$^) $(shell pkg-config --libs libcjson)
build/fuzz/fuzz_model: tests/fuzz/fuzz_model.c model.c util.c model.h util.h
	@mkdir -p build/fuzz
	clang $(FUZZ_CFLAGS) -o $@ $(filter %.c,$^) -lm
build/fuzz/fuzz_tokenizer: tests/fuzz/fuzz_tokenizer.c tokenizer.c util.c tokenizer.h util.h
	@mkdir -p build/fuzz
	clang $(FUZZ_CFLAGS) $(shell pkg-config --cflags libutf8proc) -o $@ $(filter %.c,$^) $(shell pkg-config --libs libutf8proc) -lm

# xxHash compiled into the harness (XXH_INLINE_ALL), so that ASan sees its reads too.
STATE_FUZZ_SRC = tests/fuzz/fuzz_state.c state_file.c model.c util.c
build/fuzz/fuzz_state: $(STATE_FUZZ_SRC) state_file.h model.h util.h
	@mkdir -p build/fuzz
	clang $(FUZZ_CFLAGS) -DXXH_INLINE_ALL -o $@ $(STATE_FUZZ_SRC) -lm
# The same file without libFuzzer writes the state seeds (valid files for the harness's model).
build/fuzz/state_seeds: $(STATE_FUZZ_SRC) state_file.h model.h util.h
	@mkdir -p build/fuzz
	clang -g -O1 -std=gnu11 -D_GNU_SOURCE -I. -DSTATE_SEEDS -DXXH_INLINE_ALL -o $@ $(STATE_FUZZ_SRC) -lm

fuzz: $(FUZZERS)

# Rewrites the generated seeds (after a change of the model.bin or the state file format).
fuzz-seeds: build/fuzz/state_seeds
	$(PYTHON) tests/fuzz/make_model_seeds.py tests/fuzz/corpus_model
	@mkdir -p tests/fuzz/corpus_state
	build/fuzz/state_seeds tests/fuzz/corpus_state

fuzz-ci: fuzz
	@for h in jsonl model tokenizer state; do \
		mkdir -p build/fuzz/ci_$$h && \
		echo "fuzz_$$h: 15 s" && \
		build/fuzz/fuzz_$$h -max_total_time=15 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
			-artifact_prefix=build/fuzz/ci_$$h- build/fuzz/ci_$$h tests/fuzz/corpus_$$h > build/fuzz/ci_$$h.log 2>&1; \
		rc=$$?; grep "^stat::number_of_executed_units" build/fuzz/ci_$$h.log; \
		[ $$rc -eq 0 ] || { tail -n 40 build/fuzz/ci_$$h.log; exit 1; }; \
	done

clean:
	rm -rf run run-san run-portable run-avx2 runcuda *.o build bench/bandwidth bench/gemm_bench bench/bench_sampler
