# lumen — common tasks. `make help` lists them.
CARGO ?= cargo
STORE ?= out
CATALOG ?= concepts/top50.json
PIPELINE ?= procedural

# The CUDA build has its own output folder so no CPU build overwrites it.
CUDA_TARGET ?= target/cuda
CUDA_BIN = $(CUDA_TARGET)/release/lumen
# 80 = one binary for A100, L4 (8.9), H100/H200 (9.0): candle's and lumen's kernels ship as
# compute_80 PTX, which the driver JIT-compiles for the card at hand.
CUDA_COMPUTE_CAP ?= 80
CUDA_FEATURES ?= cuda,cudnn

.PHONY: help build run test lint lint-cuda bench preflight cuda cuda-run cuda-dist fmt clean-out

help:
	@echo "make build      release build (CPU)"
	@echo "make run        pregenerate $(CATALOG) into $(STORE) (PIPELINE=$(PIPELINE))"
	@echo "make test       the whole test suite (what CI runs)"
	@echo "make lint       cargo fmt --check and clippy -D warnings (CI runs these first)"
	@echo "make lint-cuda  clippy -D warnings over the cuda feature's code (needs the toolkit; not in CI)"
	@echo "make bench      every benchmark suite (slow on CPU: minutes)"
	@echo "make preflight  store, device, catalogue and end-to-end checks"
	@echo "make cuda       CUDA release build into $(CUDA_BIN) (installs a pinned toolkit if needed)"
	@echo "make cuda-run   pregenerate $(CATALOG) on the GPU with the partcrafter pipeline"
	@echo "make cuda-dist  the CUDA binary compressed for a GPU machine (dist/lumen-cuda.xz)"

build:
	$(CARGO) build --release

run: build
	./target/release/lumen pregenerate $(CATALOG) --pipeline $(PIPELINE) --store $(STORE)

# One build profile for tests (dev, with optimised dependencies): no second full build.
test:
	$(CARGO) test --locked --no-fail-fast

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

bench:
	$(CARGO) run --release -- bench

preflight: build
	./target/release/lumen preflight --pipeline $(PIPELINE) --store $(STORE)

cuda:
	@cu="$$(scripts/cuda-toolchain.sh | tail -1)" && [ -x "$$cu/bin/nvcc" ] || \
	  { echo "make cuda: the CUDA toolchain is not installed (scripts/cuda-toolchain.sh failed)" >&2; exit 1; } && \
	  echo "CUDA toolkit: $$cu (compute capability $(CUDA_COMPUTE_CAP), features $(CUDA_FEATURES))" && \
	  CUDA_HOME="$$cu" PATH="$$cu/bin:$$PATH" LIBRARY_PATH="$$cu/lib:$$cu/lib/stubs" \
	  CUDA_COMPUTE_CAP=$(CUDA_COMPUTE_CAP) CARGO_TARGET_DIR=$(CUDA_TARGET) \
	  $(CARGO) build --release --locked --features $(CUDA_FEATURES)
	@echo "built $(CUDA_BIN)"

# The cuda feature's code type-checks only with the toolkit at hand (candle's kernels build
# with nvcc), so CI cannot run this; it shares the CUDA build folder, so it is quick once
# `make cuda` has run.
lint-cuda:
	@cu="$$(scripts/cuda-toolchain.sh | tail -1)" && [ -x "$$cu/bin/nvcc" ] || \
	  { echo "make lint-cuda: the CUDA toolchain is not installed (scripts/cuda-toolchain.sh failed)" >&2; exit 1; } && \
	  CUDA_HOME="$$cu" PATH="$$cu/bin:$$PATH" LIBRARY_PATH="$$cu/lib:$$cu/lib/stubs" \
	  CUDA_COMPUTE_CAP=$(CUDA_COMPUTE_CAP) CARGO_TARGET_DIR=$(CUDA_TARGET) \
	  $(CARGO) clippy --release --locked --features $(CUDA_FEATURES) --all-targets -- -D warnings

cuda-run: cuda
	$(CUDA_BIN) pregenerate $(CATALOG) --pipeline partcrafter --store $(STORE)

cuda-dist: cuda
	mkdir -p dist && xz -9 -T0 -c $(CUDA_BIN) > dist/lumen-cuda.xz && ls -l dist/lumen-cuda.xz

fmt:
	$(CARGO) fmt --all

clean-out:
	rm -rf out/shapes out/manifest.json out/images
