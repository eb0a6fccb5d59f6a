# Keel build and test entry points. `make run` and `make test` are the two
# commands in the README; both set up what is missing first (scripts/setup.sh).
SHELL := /bin/bash
BUILD := build
CC ?= cc
PY := .venv/bin/python
SWIFT_FLAGS ?=

ABI_SRC  := $(wildcard Sources/CKeelABI/*.c)
CORE_SRC := $(ABI_SRC) $(wildcard Sources/CKeelCore/*.c Sources/CKeelCore/Generated/*.c)
CORE_HDR := $(wildcard Sources/CKeelABI/include/*.h Sources/CKeelCore/include/*.h Sources/CKeelCore/*.h Sources/CKeelCore/Generated/*.h)
PLUGIN_SRC := $(ABI_SRC) $(wildcard Sources/KeelLinearBackend/*.c)
PLUGIN_HDR := $(wildcard Sources/KeelLinearBackend/include/*.h)
CTEST_SRC := $(wildcard Tests/CKeelCoreTests/*.c)
INCLUDES := -ISources/CKeelABI/include -ISources/CKeelCore/include -ISources/CKeelCore/Generated
CFLAGS_COMMON := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter $(INCLUDES)
LIBS := -lopenblas -lprotobuf-c -lm -ldl
SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1

.PHONY: all setup lib plugin c-tests test test-c test-python test-swift build release run bench bench-core models clean

all: lib plugin

setup:
	@bash scripts/setup.sh

# Shared library of the C core, for the Python conformance tests and benchmarks (ctypes).
lib: $(BUILD)/libkeelcore.so
$(BUILD)/libkeelcore.so: $(CORE_SRC) $(CORE_HDR)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) -O3 -fPIC -shared -o $@ $(CORE_SRC) $(LIBS)

# The example plugin backend, built outside SwiftPM for the C tests.
plugin: $(BUILD)/libkeel_linear_backend.so
$(BUILD)/libkeel_linear_backend.so: $(PLUGIN_SRC) $(PLUGIN_HDR) $(CORE_HDR)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) -O2 -fPIC -shared -o $@ $(PLUGIN_SRC) -lm

# C unit tests and the malformed-file checker, under AddressSanitizer + UBSan.
c-tests: $(BUILD)/asan/keel_c_tests $(BUILD)/asan/keel_corpus_check
$(BUILD)/asan/keel_c_tests: $(CORE_SRC) $(CORE_HDR) Tests/CKeelCoreTests/test_core.c Tests/CKeelCoreTests/testlib.h
	@mkdir -p $(BUILD)/asan
	$(CC) $(CFLAGS_COMMON) $(SAN) -o $@ Tests/CKeelCoreTests/test_core.c $(CORE_SRC) $(LIBS)
$(BUILD)/asan/keel_corpus_check: $(CORE_SRC) $(CORE_HDR) Tests/CKeelCoreTests/corpus_check.c
	@mkdir -p $(BUILD)/asan
	$(CC) $(CFLAGS_COMMON) $(SAN) -o $@ Tests/CKeelCoreTests/corpus_check.c $(CORE_SRC) $(LIBS)

# Broken plugins for the host's ABI version checks.
FAKES := $(BUILD)/libkeel_fake_major.so $(BUILD)/libkeel_fake_minor.so $(BUILD)/libkeel_fake_null.so $(BUILD)/libkeel_fake_noentry.so
$(BUILD)/libkeel_fake_%.so: Tests/CKeelCoreTests/fake_plugin.c $(ABI_SRC) $(CORE_HDR)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) -fPIC -shared -DFAKE_MODE=$(if $(filter major,$*),1,$(if $(filter minor,$*),2,$(if $(filter null,$*),3,4))) -o $@ $< $(ABI_SRC)

# Zero-allocation proof: malloc interposed and counted (no sanitizers).
$(BUILD)/keel_alloc_test: $(CORE_SRC) $(CORE_HDR) Tests/CKeelCoreTests/alloc_test.c Tests/CKeelCoreTests/testlib.h
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) -O2 -o $@ Tests/CKeelCoreTests/alloc_test.c $(CORE_SRC) $(LIBS)

test-c: c-tests plugin $(FAKES) $(BUILD)/keel_alloc_test
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  $(BUILD)/asan/keel_c_tests $(BUILD)
	$(BUILD)/keel_alloc_test

# KEEL_BIN: the keel binary the server end-to-end tests start (built by test-swift;
# those tests skip, saying so, when it is missing).
KEEL_BIN ?= $(CURDIR)/.build/debug/keel
test-python: lib plugin c-tests
	KEEL_LIB=$(BUILD)/libkeelcore.so KEEL_CORPUS_CHECK=$(BUILD)/asan/keel_corpus_check KEEL_BIN=$(KEEL_BIN) \
	  $(PY) -m pytest -q Tests/python

# One build with tests (it also builds the keel executable the CLI tests run).
# Serial: several suites measure real time (load generator, deadlines, hot swap),
# and on 2 cores parallel suites starve each other's timers.
test-swift:
	swift build $(SWIFT_FLAGS) --product KeelLinearBackend
	swift build --build-tests $(SWIFT_FLAGS)
	swift test --skip-build --no-parallel $(SWIFT_FLAGS)

# The README's test command: everything, from a fresh machine.
test: setup
	$(MAKE) test-c
	$(MAKE) test-swift
	$(MAKE) test-python

build:
	swift build $(SWIFT_FLAGS)

release:
	swift build -c release $(SWIFT_FLAGS)

# The README's main command: set up, build in release, run the server with the
# shipped models (gRPC :50051, framed TCP :50052, metrics :9090). Ctrl-C stops it.
run: setup release
	.build/release/keel model check models/policy/1/model.onnx
	.build/release/keel serve --models models --audit-db ./keel-audit.sqlite

bench: setup lib
	KEEL_LIB=$(BUILD)/libkeelcore.so $(PY) benchmarks/bench_core_vs_ort.py
bench-core: setup $(BUILD)/bench_core
	$(PY) benchmarks/bench_core_vs_ort.py --write-model $(BUILD)/bench_policy.onnx
	$(BUILD)/bench_core $(BUILD)/bench_policy.onnx
$(BUILD)/bench_core: $(CORE_SRC) $(CORE_HDR) benchmarks/bench_core.c
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) -O3 -o $@ benchmarks/bench_core.c $(CORE_SRC) $(LIBS)

# Regenerate the shipped initial policy model (seeded, deterministic).
models: setup
	$(PY) scripts/make_initial_policy.py

clean:
	rm -rf $(BUILD) .build
