# Capstan. `make demo` brings a cluster up; `make test` runs every test.
GO       ?= go
BIN      := bin
CAPSTAN  := $(BIN)/capstan
GOFLAGS  ?=
export GOFLAGS
# The embedded kubectl reports this version (it must parse as semver).
KUBE_VERSION := v1.37.2
# Capstan's version: the chart's appVersion, which names the node image.
VERSION  := $(shell sed -n 's/^appVersion: *"*\([^"]*\)"*/\1/p' deploy/helm/capstan/Chart.yaml)
IMAGE    := capstan.local/capstan:$(VERSION)
LDFLAGS  := -s -w -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) \
            -X k8s.io/component-base/version.gitMajor=1 \
            -X k8s.io/component-base/version.gitMinor=37 \
            -X k8s.io/component-base/version.gitTreeState=clean

# Targets run one at a time even under make -j: the suites bring up
# clusters that share the host's bpffs, cgroups and host-wide directories,
# and the heavy builds share two cores.
.NOTPARALLEL:

.PHONY: all build node-image helm manifests chart-check netpol-installed e2e netpol test test-unit generate generate-check lint demo bench clean images e2e-tools e2e-images kube-proxy conformance sig-network vagrant-check vagrant-netpol

all: build

# capstan, and beside it what every node runs: the CNI plugin, the pause
# program the sandbox image is made of, the upstream containerd v2 with its
# runc shim (tools/containerd), the upstream CoreDNS the cluster DNS image is
# made of (tools/coredns), and the upstream portmap CNI plugin for hostPorts
# (tools/portmap).
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(CAPSTAN) ./cmd/capstan
	$(GO) build -o $(dir $(CAPSTAN))capstan-cni ./cmd/capstan-cni
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(dir $(CAPSTAN))capstan-pause ./cmd/capstan-pause
	./tools/containerd/build.sh $(abspath $(dir $(CAPSTAN)))
	./tools/coredns/build.sh $(abspath $(dir $(CAPSTAN)))
	./tools/portmap/build.sh $(abspath $(dir $(CAPSTAN)))

# The node daemon's image, capstan.local/capstan:$(VERSION), which the Helm
# chart deploys (capstan, capstan-cni, portmap, iptables; Debian's packages
# are cached in bin/debs), and the test images (capstan.local/echo:1.0,
# capstan.local/busybox:1.0; needs busybox-static). Load: capstan images
# import bin/images/capstan.tar, or capstan up --images.
images: node-image
	$(GO) run ./test/images/build -o $(BIN)/images/capstan-test-images.tar

node-image: build
	$(GO) run ./test/images/nodeimage -ref $(IMAGE) -bin $(BIN) -debs $(BIN)/debs -o $(BIN)/images/capstan.tar

# The upstream Helm CLI (tools/helm), for the chart's tests.
helm:
	./tools/helm/build.sh $(BIN)

# The chart: helm lint, its schema refusing bad values, the manifest current.
chart-check:
	@test -x $(BIN)/helm || $(MAKE) helm
	./deploy/helm/check.sh $(BIN)/helm

# deploy/kubernetes/capstan.yaml, the chart rendered with its defaults.
manifests:
	@test -x $(BIN)/helm || $(MAKE) helm
	./deploy/kubernetes/render.sh $(BIN)/helm

# The upstream e2e suite (tools/e2e, its own module): e2e.test, ginkgo, and
# the programs of its test images (agnhost, nnp, regression-issue-74839,
# sample-apiserver, etcd). Heavy: each build holds /tmp/capstan-build.lock.
e2e-tools:
	./tools/e2e/build.sh $(BIN)

# The images the upstream [Conformance] and [sig-network] tests run, under
# their upstream names, as one OCI archive for `capstan up --images`
# (test/images/e2eimages): Debian packages (cached in bin/debs; needs root,
# apt-get and dpkg-deb) and the programs of make build and make e2e-tools,
# which run first when their outputs are missing.
e2e-images:
	@test -x $(BIN)/capstan-pause -a -x $(BIN)/coredns || $(MAKE) build
	@test -x $(BIN)/agnhost -a -x $(BIN)/nnp -a -x $(BIN)/etcd || $(MAKE) e2e-tools
	$(GO) run ./test/images/e2ebuild -o $(BIN)/images/e2e-images.tar -debs $(BIN)/debs \
	  -agnhost $(BIN)/agnhost -coredns $(BIN)/coredns -pause $(BIN)/capstan-pause \
	  -nnp $(BIN)/nnp -regression $(BIN)/regression-issue-74839 -sample-apiserver $(BIN)/sample-apiserver -etcd $(BIN)/etcd

# The upstream kube-proxy (tools/kube-proxy) for --mode none.
kube-proxy:
	./tools/kube-proxy/build.sh

# Kubernetes' conformance suite on a fresh 3-node cluster (eBPF mode): the
# [Conformance] specs without [Serial] in parallel, then [Serial] alone.
# Writes docs/conformance/conformance-ebpf.json and docs/conformance.md.
# Not part of make test (about an hour on 2 cores).
conformance: build e2e-tools e2e-images
	$(GO) run ./test/conformance/run -suite conformance -modes ebpf

# Every upstream [sig-network] spec that can apply here, in each service mode
# (ebpf, iptables, none with the upstream kube-proxy), as Cilium's CI runs
# them; one column per mode in docs/conformance.md.
sig-network: build e2e-tools e2e-images kube-proxy
	$(GO) run ./test/conformance/run -suite sig-network -modes ebpf,iptables,none

# Everything: lint, the Vagrant setup's checks, regenerate BPF objects (must
# match the committed ones), unit and integration tests, then the end-to-end
# and NetworkPolicy suites.
test: lint vagrant-check generate-check chart-check test-unit e2e netpol netpol-installed

# Tests that need a control plane or a containerd run the binaries make
# build leaves in bin/.
test-unit: build
	CAPSTAN_BINARY=$(abspath $(CAPSTAN)) $(GO) test -count=1 -timeout 20m ./...

# The end-to-end suite: fresh 3-node clusters (native/eBPF, VXLAN/eBPF,
# native/iptables) and a table of scenarios, the upstream [sig-network]
# [Conformance] specs among them on the full (native/eBPF) cluster; the whole log is in bin/e2e.log,
# and a failure prints its details. CAPSTAN_E2E_CASES=native/ebpf runs one cluster.
e2e: build e2e-tools e2e-images node-image helm
	@mkdir -p $(BIN); CAPSTAN_BIN_DIR=$(abspath $(BIN)) $(GO) test -tags e2e -count=1 -v -timeout 40m -run TestE2E ./test/e2e/ >$(BIN)/e2e.log 2>&1; rc=$$?; \
	  grep -A100 -E '^\s+CLUSTER +SCENARIO' $(BIN)/e2e.log | grep -E '^\s+(CLUSTER|[a-z]+/[a-z]+) '; \
	  if [ $$rc -ne 0 ]; then echo "--- failures (full log: $(BIN)/e2e.log)"; grep -B2 -A40 -E '^\s+[a-z_]+_test\.go:[0-9]+: ' $(BIN)/e2e.log | head -300; fi; \
	  tail -3 $(BIN)/e2e.log; exit $$rc

# The NetworkPolicy reachability suite: a fresh 3-node cluster (native/eBPF),
# the upstream x/y/z model and a table of cases with their convergence times;
# the whole log is in bin/netpol.log, and a failure prints its matrices.
# CAPSTAN_NETPOL_CASES=regexp picks cases; CAPSTAN_NETPOL_KUBECONFIG=path runs
# on a cluster that is already up.
netpol: build
	$(call netpol,,netpol)

# The same suite on a cluster whose network is Capstan's Helm chart,
# installed on a cluster brought up with none.
netpol-installed: build node-image helm
	$(call netpol,CAPSTAN_NETPOL_INSTALL=helm,netpol-installed)

# netpol ENV,LOG: run the suite with ENV, log in $(BIN)/LOG.log.
define netpol
@mkdir -p $(BIN); $(1) CAPSTAN_BIN_DIR=$(abspath $(BIN)) $(GO) test -tags netpol -count=1 -v -timeout 30m -run 'TestExpectations|TestEvaluateBasics|TestNetpol' ./test/netpol/ >$(BIN)/$(2).log 2>&1; rc=$$?; \
  sed -n '/^\s*CASE \+RESULT/,/^\s*netpol: [0-9]* passed/p' $(BIN)/$(2).log; \
  if [ $$rc -ne 0 ]; then echo "--- failures (full log: $(BIN)/$(2).log)"; grep -E -A45 '(probes still differ|no longer Ready|cannot reach its pod|after the case: |persistent connection .*(still works|failed)|hand-written:|evaluate:$$| setup: )' $(BIN)/$(2).log | head -400; fi; \
  tail -3 $(BIN)/$(2).log; exit $$rc
endef

# deploy/vagrant without VMs: vagrant validate, bash -n and shellcheck, the
# provisioning scripts rendered into a temp root and checked, then (as root)
# the rendered server and agent run in network namespaces until the node is Ready.
vagrant-check: build
	./deploy/vagrant/check.sh

# One server VM and two agent VMs (deploy/vagrant; provider from
# VAGRANT_DEFAULT_PROVIDER: libvirt or virtualbox), then the NetworkPolicy
# reachability suite against them from this host. Needs a host that runs VMs;
# the VMs stay up (cd deploy/vagrant && vagrant destroy -f).
vagrant-netpol: build images
	./deploy/vagrant/netpol.sh

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
	$(GO) vet -tags netpol ./test/netpol/

demo: build
	./scripts/demo.sh

# API and scheduler figures, then Services in eBPF and iptables mode side by side, then
# NetworkPolicy of 0, 100 and 1,000 rules (tables on the terminal, results.json and
# chart.svg under bench-results/).
bench: build images
	$(GO) build -o $(BIN)/capstan-echo ./test/images/echo
	$(CAPSTAN) bench api
	$(CAPSTAN) bench scheduler
	$(CAPSTAN) bench services --echo-binary $(BIN)/capstan-echo --images $(BIN)/images/capstan-test-images.tar
	$(CAPSTAN) bench policy --echo-binary $(BIN)/capstan-echo --images $(BIN)/images/capstan-test-images.tar

clean:
	rm -rf $(BIN) bench-results
