# lumen — common tasks. `make help` lists them.
CARGO ?= cargo
STORE ?= out
CATALOG ?= concepts/top50.json
PIPELINE ?= procedural

.PHONY: help build run test bench preflight cuda fmt clean-out

help:
	@echo "make build      release build (CPU)"
	@echo "make run        pregenerate $(CATALOG) into $(STORE) (PIPELINE=$(PIPELINE))"
	@echo "make test       the whole test suite (what CI runs)"
	@echo "make bench      every benchmark suite (slow on CPU: minutes)"
	@echo "make preflight  store, device, catalogue and end-to-end checks"
	@echo "make cuda       release build with CUDA (see README: needs nvcc, CUDA_COMPUTE_CAP)"

build:
	$(CARGO) build --release

run: build
	./target/release/lumen pregenerate $(CATALOG) --pipeline $(PIPELINE) --store $(STORE)

# One build profile for tests (dev, with optimised dependencies): no second full build.
test:
	$(CARGO) test --locked --no-fail-fast

bench:
	$(CARGO) run --release -- bench

preflight: build
	./target/release/lumen preflight --pipeline $(PIPELINE) --store $(STORE)

cuda:
	$(CARGO) build --release --features cuda

fmt:
	$(CARGO) fmt --all

clean-out:
	rm -rf out/shapes out/manifest.json out/images
