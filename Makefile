# make            builds ./run (CPU)
# make runcuda    builds ./runcuda (NVIDIA GPU, needs the CUDA Toolkit; CUDA_ARCH=sm_90 by default)
# make test       runs the test suite (pytest)
# make bench      measures prefill and decode speed on this machine
CC ?= gcc
CXX ?= g++
NVCC ?= nvcc
PYTHON ?= /usr/bin/python3
CUDA_ARCH ?= sm_90
CFLAGS ?= -O3 -march=native
CFLAGS += -std=gnu11 -Wall -Wextra -Wno-unused-parameter -fopenmp -D_GNU_SOURCE
LDLIBS = -lm

# Shared by run and runcuda: the file format, the tokenizer, the sampler and the command line.
SHARED_SRC = model.c tokenizer.c cli.c
SHARED_HDR = model.h tokenizer.h engine.h

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

.PHONY: all test bench clean
all: run

sentencepiece_shim.o: sentencepiece_shim.cc sentencepiece_shim.h
	$(CXX) -O2 -std=c++17 -c $< -o $@ $(shell pkg-config --cflags sentencepiece)

run: run.c $(SHARED_SRC) $(SHARED_HDR) $(SPM_OBJ)
	$(CC) $(CFLAGS) -o $@ run.c $(SHARED_SRC) $(SPM_OBJ) $(LDLIBS)

test: run
	$(PYTHON) -m pytest -q tests

clean:
	rm -f run runcuda *.o
