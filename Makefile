# ecapture build entry points (see README.md).
#   make                 release build with CO-RE and non-CO-RE BPF objects -> bin/ecapture
#   make nocore          release build whose BPF objects need no kernel BTF
#   CROSS_ARCH=arm64 make   aarch64 build from an x86_64 host
#   make test            unit and end-to-end tests (root; installs what they need)
#   make bench           throughput, latency, CPU and completeness against no tracer and bpftrace
#   make soak            mixed traffic for SOAK_SECONDS (default 300): RSS over time, nothing lost
#   make fuzz            each fuzz target for FUZZ_SECONDS (default 60) under libFuzzer (nightly)
#   make bench-quick     the same, under two minutes
#                        (BENCH_ARGS="--sizes 64 --paths --configs ecapture-text" picks a subset)
#   make run ARGS="tls --pid 123"
#   make clean

CARGO ?= cargo
CROSS_ARCH ?=

ifeq ($(CROSS_ARCH),arm64)
  RUST_TARGET := aarch64-unknown-linux-gnu
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER := aarch64-linux-gnu-gcc
  export CC_aarch64_unknown_linux_gnu := aarch64-linux-gnu-gcc
  export PKG_CONFIG_ALLOW_CROSS := 1
  export PKG_CONFIG_LIBDIR := /usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig
  DEPS := cross
else ifeq ($(CROSS_ARCH),)
  RUST_TARGET :=
  DEPS := build
else
  $(error CROSS_ARCH=$(CROSS_ARCH) is not supported; use CROSS_ARCH=arm64)
endif

TARGET_FLAG := $(if $(RUST_TARGET),--target $(RUST_TARGET))
RELEASE_DIR := target/$(if $(RUST_TARGET),$(RUST_TARGET)/)release

FUZZ_TARGETS := http1 records pcap_filter elf audit postgres mysql http2 hpack
FUZZ_SECONDS ?= 60

SOAK_SECONDS ?= 300

.PHONY: all nocore deps test run clean lint bench bench-quick fuzz soak

all: deps
	$(CARGO) build --release $(TARGET_FLAG)
	install -D -m 0755 $(RELEASE_DIR)/ecapture bin/ecapture

nocore: deps
	ECAPTURE_BPF_FLAVORS=nocore $(CARGO) build --release $(TARGET_FLAG)
	install -D -m 0755 $(RELEASE_DIR)/ecapture bin/ecapture

deps:
	@scripts/install-deps.sh $(DEPS)

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

test: all
	@scripts/install-deps.sh test
	$(CARGO) test --release --lib --bins
	$(CARGO) test --release --test e2e -- --test-threads=1
	# Once more with the programs kernels before 5.13 get (perf buffers, no bpf_loop).
	ECAPTURE_LEGACY_BPF=1 $(CARGO) test --release --test e2e -- --test-threads=1

bench: all
	@scripts/install-deps.sh test
	python3 bench/run.py $(BENCH_ARGS)

bench-quick: all
	@scripts/install-deps.sh test
	python3 bench/run.py --quick $(BENCH_ARGS)

soak: all
	@scripts/install-deps.sh test
	python3 bench/soak.py --seconds $(SOAK_SECONDS)

# New inputs go to target/fuzz-corpus; fuzz/corpus (replayed by `make
# test`) only seeds it. A crash lands in fuzz/artifacts/TARGET/.
fuzz: deps
	@scripts/install-deps.sh fuzz
	for target in $(FUZZ_TARGETS); do \
	  mkdir -p target/fuzz-corpus/$$target && \
	  (cd fuzz && cargo +nightly fuzz run $$target ../target/fuzz-corpus/$$target corpus/$$target -- \
	    -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048) || exit 1; \
	done

run: all
	bin/ecapture $(ARGS)

clean:
	$(CARGO) clean
	rm -rf bin
