package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/capstan-net/capstan/internal/atomicfile"
)

// Endpoint is the record ADD leaves in the node's endpoints directory, at
// <endpointsDir>/<containerID>_<ifName>.json, for the node's dataplane daemon to attach its
// programs to. The file appears whole (written to a ".tmp-" name and renamed), so a watcher
// should react to *.json files being created or renamed into place and ignore dot files.
// DEL and GC remove it.
type Endpoint struct {
	ContainerID string       `json:"containerID"`
	IfName      string       `json:"ifName"`
	HostIfName  string       `json:"hostIfName"`
	HostIfIndex int          `json:"hostIfIndex"`
	HostMAC     string       `json:"hostMAC,omitempty"`
	PodMAC      string       `json:"podMAC,omitempty"`
	PodIPs      []netip.Addr `json:"podIPs"`
	Netns       string       `json:"netns"`
	// NetnsCookie is the kernel's cookie of the pod's network namespace (SO_NETNS_COOKIE), what
	// the socket load balancer sees of the pod's sockets; 0 when the kernel has none.
	NetnsCookie uint64 `json:"netnsCookie,omitempty"`
	// From CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID) when the runtime sets them.
	PodNamespace string `json:"podNamespace,omitempty"`
	PodName      string `json:"podName,omitempty"`
	PodUID       string `json:"podUID,omitempty"`
}

// EndpointFileName is the record's name inside the endpoints directory.
func EndpointFileName(containerID, ifName string) string {
	return containerID + "_" + ifName + ".json"
}

// ReadEndpoint reads one endpoint record.
func ReadEndpoint(path string) (*Endpoint, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	ep := &Endpoint{}
	if err := json.Unmarshal(data, ep); err != nil {
		return nil, fmt.Errorf("decode endpoint %s: %w", path, err)
	}
	return ep, nil
}

// ListEndpoints reads every record in dir. A missing directory holds none. Unreadable files are
// reported in the joined error while the readable ones are still returned, keyed by file path.
func ListEndpoints(dir string) (map[string]*Endpoint, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read endpoints dir: %w", err)
	}
	out := map[string]*Endpoint{}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".json") {
			continue
		}
		path := filepath.Join(dir, name)
		ep, err := ReadEndpoint(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out[path] = ep
	}
	return out, errors.Join(errs...)
}

func writeEndpoint(dir string, ep *Endpoint) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create endpoints dir: %w", err)
	}
	data, err := json.MarshalIndent(ep, "", "  ")
	if err != nil {
		return err
	}
	name := EndpointFileName(ep.ContainerID, ep.IfName)
	if err := atomicfile.Write(filepath.Join(dir, name), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write endpoint: %w", err)
	}
	return nil
}

func removeEndpoint(dir, containerID, ifName string) error {
	err := os.Remove(filepath.Join(dir, EndpointFileName(containerID, ifName)))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove endpoint record: %w", err)
	}
	return nil
}
