package containerd

import (
	"os"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

func TestConfig(t *testing.T) {
	dir := t.TempDir()
	c := &Config{Root: dir + "/root", State: dir + "/state", CNIConfDir: "/etc/cni/net.d", CNIBinDirs: []string{"/opt/cni/bin", `/a "quoted" dir`}}
	if err := c.WriteConfig(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(c.configFile())
	if err != nil {
		t.Fatal(err)
	}
	var parsed map[string]any
	if err := toml.Unmarshal(data, &parsed); err != nil {
		t.Fatalf("not TOML: %v\n%s", err, data)
	}
	plugins := parsed["plugins"].(map[string]any)
	rt := plugins["io.containerd.cri.v1.runtime"].(map[string]any)
	if rt["restrict_oom_score_adj"] != true || rt["netns_mounts_under_state_dir"] != true {
		t.Fatalf("runtime settings %v", rt)
	}
	cni := rt["cni"].(map[string]any)
	if bins := cni["bin_dirs"].([]any); len(bins) != 2 || bins[1] != `/a "quoted" dir` {
		t.Fatalf("bin_dirs %v", bins)
	}
	if plugins["io.containerd.nri.v1.nri"].(map[string]any)["disable"] != true {
		t.Fatal("NRI is on: its host-wide socket would clash between nodes")
	}
	if parsed["grpc"].(map[string]any)["address"] != c.Socket() || !strings.HasPrefix(c.Socket(), c.State) {
		t.Fatalf("socket %v", parsed["grpc"])
	}
}

// A shim's socket is <dir>/<64 hex>: the directory must leave room under the
// 107-byte limit of a unix socket path, whatever the state dir.
func TestShimSocketDir(t *testing.T) {
	long := "/tmp/" + strings.Repeat("x", 200) + "/containerd"
	if d := ShimSocketDir(long); len(d)+1+64 > 107 {
		t.Fatalf("shim socket dir %s too long", d)
	}
	if ShimSocketDir("/run/capstan/a") == ShimSocketDir("/run/capstan/b") {
		t.Fatal("two nodes share a shim socket dir")
	}
}
