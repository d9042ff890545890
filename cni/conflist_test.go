package cni

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteConfList(t *testing.T) {
	c := ConfList{ConfDir: t.TempDir(), PodCIDRs: []string{"10.244.1.0/24"}, IPAMDir: "/x/ipam", EndpointsDir: "/x/ep", MTU: 1450}
	if changed, err := WriteConfList(c); err != nil || !changed {
		t.Fatalf("first write: %v %v", changed, err)
	}
	if changed, _ := WriteConfList(c); changed {
		t.Fatal("an unchanged configuration was rewritten (containerd would reload it)")
	}
	data, _ := os.ReadFile(filepath.Join(c.ConfDir, ConfListName))
	if !strings.Contains(string(data), `"mtu": 1450`) || !strings.Contains(string(data), `"10.244.1.0/24"`) {
		t.Fatalf("conflist %s", data)
	}
	if strings.Contains(string(data), "portmap") {
		t.Fatalf("portmap chained without Portmap: %s", data)
	}
	c.Portmap = "capstan-portmap"
	if changed, err := WriteConfList(c); err != nil || !changed {
		t.Fatalf("write with hostPorts: %v %v", changed, err)
	}
	data, _ = os.ReadFile(filepath.Join(c.ConfDir, ConfListName))
	if !strings.Contains(string(data), `"type": "capstan-portmap"`) || !strings.Contains(string(data), `"portMappings": true`) {
		t.Fatalf("conflist without portmap: %s", data)
	}
	if _, err := WriteConfList(ConfList{ConfDir: c.ConfDir}); err == nil {
		t.Fatal("a configuration without pod CIDR was written")
	}
}
