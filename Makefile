# Capstan. `make demo` brings a cluster up; `make test` runs every test.
GO       ?= go
BIN      := bin
CAPSTAN  := $(BIN)/capstan
GOFLAGS  ?=
export GOFLAGS
# The embedded kubectl reports this version (it must parse as semver).
KUBE_VERSION := v1.37.2
LDFLAGS  := -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) \
            -X k8s.io/component-base/version.gitMajor=1 \
            -X k8s.io/component-base/version.gitMinor=37 \
            -X k8s.io/component-base/version.gitTreeState=clean

.PHONY: all build containerd e2e test test-unit test-external-etcd generate generate-check lint demo bench clean images

all: build

# capstan, plus the CNI plugin and the per-container log driver beside it.
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(CAPSTAN) ./cmd/capstan
	$(GO) build -o $(dir $(CAPSTAN))capstan-cni ./cmd/capstan-cni
	$(GO) build -o $(dir $(CAPSTAN))capstan-logdriver ./cmd/capstan-logdriver

# The test images (capstan.local/echo:1.0, capstan.local/busybox:1.0) as one OCI
# archive; needs busybox-static. Load: capstan images import bin/images/capstan-test-images.tar
images:
	$(GO) run ./test/images/build -o $(BIN)/images/capstan-test-images.tar

# Everything: lint, regenerate BPF objects (must match the committed ones),
# unit and integration tests (embedded etcd), the API suite again against a
# separately started etcd process, then the end-to-end suite.
test: lint generate-check containerd test-unit test-external-etcd e2e

test-unit:
	$(GO) test -count=1 -timeout 20m ./...

# The project's own containerd (config, state and socket under
# /run/capstan/containerd) for the node agent's tests.
containerd:
	./scripts/containerd.sh start

# The end-to-end suite: fresh 3-node clusters (native/eBPF, VXLAN/eBPF,
# native/iptables) and a table of scenarios; the whole log is in bin/e2e.log,
# and a failure prints its details. CAPSTAN_E2E_CASES=native/ebpf runs one cluster.
e2e: containerd
	@mkdir -p $(BIN); $(GO) test -tags e2e -count=1 -v -timeout 40m -run TestE2E ./test/e2e/ >$(BIN)/e2e.log 2>&1; rc=$$?; \
	  grep -A100 -E '^\s+CLUSTER +SCENARIO' $(BIN)/e2e.log | grep -E '^\s+(CLUSTER|[a-z]+/[a-z]+) '; \
	  if [ $$rc -ne 0 ]; then echo "--- failures (full log: $(BIN)/e2e.log)"; grep -B2 -A40 -E '^\s+[a-z_]+_test\.go:[0-9]+: ' $(BIN)/e2e.log | head -300; fi; \
	  tail -3 $(BIN)/e2e.log; exit $$rc

test-external-etcd:
	./scripts/test-external-etcd.sh

generate:
	$(GO) generate ./...

# CI regenerates the committed BPF objects and fails on any difference.
generate-check: generate
	git diff --exit-code -- bpf dataplane

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^vendor/')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./test/e2e/

demo: build
	./scripts/demo.sh

# API and scheduler figures, then Services in eBPF and iptables mode side by side
# (table on the terminal, results.json and chart.svg under bench-results/).
bench: build images containerd
	$(GO) build -o $(BIN)/capstan-echo ./test/images/echo
	$(CAPSTAN) bench api
	$(CAPSTAN) bench scheduler
	$(CAPSTAN) bench services --echo-binary $(BIN)/capstan-echo --images $(BIN)/images/capstan-test-images.tar

clean:
	rm -rf $(BIN) bench-results
