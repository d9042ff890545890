package registry

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	api "k8s.io/kubernetes/pkg/apis/core"
)

// Allocator hands out Service ClusterIPs and NodePorts. Each allocated
// value is its own etcd key created in a transaction, so two concurrent
// creates (or two servers) can never take the same value, and allocations
// survive restarts. Keys: /registry/allocations/{serviceips,nodeports}/<v>.
type Allocator struct {
	client         *clientv3.Client
	cidr           *net.IPNet
	base           uint32
	size           uint32 // usable addresses, network and broadcast excluded
	portLo, portHi int
}

const (
	ipPrefix   = "/registry/allocations/serviceips/"
	portPrefix = "/registry/allocations/nodeports/"
)

// NewAllocator parses the service CIDR (IPv4) and the NodePort range "lo-hi".
func NewAllocator(client *clientv3.Client, cidr, portRange string) (*Allocator, error) {
	_, ipnet, err := net.ParseCIDR(cidr)
	if err != nil || ipnet.IP.To4() == nil {
		return nil, fmt.Errorf("service CIDR %q is not an IPv4 CIDR", cidr)
	}
	ones, bits := ipnet.Mask.Size()
	if bits-ones < 2 || bits-ones > 24 {
		return nil, fmt.Errorf("service CIDR %q must be between /8 and /30", cidr)
	}
	lo, hi, err := parseRange(portRange)
	if err != nil {
		return nil, err
	}
	return &Allocator{
		client: client, cidr: ipnet,
		base: binary.BigEndian.Uint32(ipnet.IP.To4()), size: (1 << uint(bits-ones)) - 2,
		portLo: lo, portHi: hi,
	}, nil
}

func parseRange(s string) (int, int, error) {
	a, b, ok := strings.Cut(s, "-")
	lo, err1 := strconv.Atoi(a)
	hi, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || lo < 1 || hi > 65535 || lo > hi {
		return 0, 0, fmt.Errorf("node port range %q is not lo-hi", s)
	}
	return lo, hi, nil
}

// FirstServiceIP is the address of the kubernetes Service.
func FirstServiceIP(cidr string) (net.IP, error) {
	_, ipnet, err := net.ParseCIDR(cidr)
	if err != nil || ipnet.IP.To4() == nil {
		return nil, fmt.Errorf("service CIDR %q is not an IPv4 CIDR", cidr)
	}
	return indexIP(binary.BigEndian.Uint32(ipnet.IP.To4()), 1), nil
}

func indexIP(base, i uint32) net.IP {
	ip := make(net.IP, 4)
	binary.BigEndian.PutUint32(ip, base+i)
	return ip
}

// CIDR is the service range.
func (a *Allocator) CIDR() *net.IPNet { return a.cidr }

// claim creates key for owner. held is false if someone else holds it;
// fresh is true only if this call took it: a value owner already held
// (a retried request, or a create refused because the object exists) must
// not be released when the request fails.
func (a *Allocator) claim(ctx context.Context, key, owner string) (held, fresh bool, err error) {
	resp, err := a.client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, owner)).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return false, false, err
	}
	if resp.Succeeded {
		return true, true, nil
	}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 && string(kvs[0].Value) == owner {
		return true, false, nil
	}
	return false, false, nil
}

func (a *Allocator) release(ctx context.Context, key string) {
	a.client.Delete(ctx, key)
}

func randUint(n uint32) uint32 {
	v, _ := rand.Int(rand.Reader, big.NewInt(int64(n)))
	return uint32(v.Int64())
}

// AllocateIP claims ip (or any free address if ip is nil) for owner.
func (a *Allocator) AllocateIP(ctx context.Context, ip net.IP, owner string) (net.IP, error) {
	got, _, err := a.allocateIP(ctx, ip, owner)
	return got, err
}

// allocateIP is AllocateIP that also reports whether the address was
// newly taken (see claim).
func (a *Allocator) allocateIP(ctx context.Context, ip net.IP, owner string) (net.IP, bool, error) {
	if ip != nil {
		if !a.cidr.Contains(ip) || ip.To4() == nil {
			return nil, false, fmt.Errorf("the provided IP (%s) is not in the valid range. The range of valid IPs is %s", ip, a.cidr)
		}
		idx := binary.BigEndian.Uint32(ip.To4()) - a.base
		if idx == 0 || idx > a.size {
			return nil, false, fmt.Errorf("the provided IP (%s) is not in the valid range. The range of valid IPs is %s", ip, a.cidr)
		}
		ok, fresh, err := a.claim(ctx, ipPrefix+ip.String(), owner)
		if err != nil {
			return nil, false, err
		}
		if !ok {
			return nil, false, fmt.Errorf("provided IP is already allocated")
		}
		return ip, fresh, nil
	}
	// Random probing spreads concurrent allocations; a full scan follows.
	start := randUint(a.size)
	for i := uint32(0); i < a.size; i++ {
		idx := (start+i)%a.size + 1
		if idx == 1 && owner != "default/kubernetes" {
			continue // .1 is the kubernetes Service's, as upstream
		}
		cand := indexIP(a.base, idx)
		ok, fresh, err := a.claim(ctx, ipPrefix+cand.String(), owner)
		if err != nil {
			return nil, false, err
		}
		if ok {
			return cand, fresh, nil
		}
		if i > 64 {
			// Skip ahead past held addresses by reading them in one go.
			return a.scanIP(ctx, owner)
		}
	}
	return nil, false, errors.New("range is full")
}

func (a *Allocator) scanIP(ctx context.Context, owner string) (net.IP, bool, error) {
	resp, err := a.client.Get(ctx, ipPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, false, err
	}
	held := map[string]bool{}
	for _, kv := range resp.Kvs {
		held[strings.TrimPrefix(string(kv.Key), ipPrefix)] = true
	}
	for idx := uint32(2); idx <= a.size; idx++ {
		cand := indexIP(a.base, idx)
		if held[cand.String()] {
			continue
		}
		ok, fresh, err := a.claim(ctx, ipPrefix+cand.String(), owner)
		if err != nil {
			return nil, false, err
		}
		if ok {
			return cand, fresh, nil
		}
	}
	return nil, false, errors.New("range is full")
}

// AllocatePort claims port (or any free one if 0) for owner.
func (a *Allocator) AllocatePort(ctx context.Context, port int, owner string) (int, error) {
	got, _, err := a.allocatePort(ctx, port, owner)
	return got, err
}

// allocatePort is AllocatePort that also reports whether the port was
// newly taken (see claim).
func (a *Allocator) allocatePort(ctx context.Context, port int, owner string) (int, bool, error) {
	if port != 0 {
		if port < a.portLo || port > a.portHi {
			return 0, false, fmt.Errorf("provided port is not in the valid range. The range of valid ports is %d-%d", a.portLo, a.portHi)
		}
		ok, fresh, err := a.claim(ctx, portPrefix+strconv.Itoa(port), owner)
		if err != nil {
			return 0, false, err
		}
		if !ok {
			return 0, false, errors.New("provided port is already allocated")
		}
		return port, fresh, nil
	}
	n := uint32(a.portHi - a.portLo + 1)
	start := randUint(n)
	for i := uint32(0); i < n; i++ {
		p := a.portLo + int((start+i)%n)
		ok, fresh, err := a.claim(ctx, portPrefix+strconv.Itoa(p), owner)
		if err != nil {
			return 0, false, err
		}
		if ok {
			return p, fresh, nil
		}
	}
	return 0, false, errors.New("range is full")
}

// ReleaseIP frees an address.
func (a *Allocator) ReleaseIP(ctx context.Context, ip string) { a.release(ctx, ipPrefix+ip) }

// ReleasePort frees a node port.
func (a *Allocator) ReleasePort(ctx context.Context, port int) {
	a.release(ctx, portPrefix+strconv.Itoa(port))
}

// --- hooks for the API server ---

func owner(svc *api.Service) string { return svc.Namespace + "/" + svc.Name }

func needsClusterIP(svc *api.Service) bool {
	return svc.Spec.Type != api.ServiceTypeExternalName && svc.Spec.ClusterIP != api.ClusterIPNone
}

func needsNodePorts(svc *api.Service) bool {
	if svc.Spec.Type == api.ServiceTypeNodePort {
		return true
	}
	return svc.Spec.Type == api.ServiceTypeLoadBalancer &&
		(svc.Spec.AllocateLoadBalancerNodePorts == nil || *svc.Spec.AllocateLoadBalancerNodePorts)
}

func needsHealthCheckPort(svc *api.Service) bool {
	return svc.Spec.Type == api.ServiceTypeLoadBalancer && svc.Spec.ExternalTrafficPolicy == api.ServiceExternalTrafficPolicyLocal
}

// BeforeCreate allocates a new Service's ClusterIP and NodePorts and sets
// its single-stack IPv4 family fields.
func (a *Allocator) BeforeCreate(ctx context.Context, res *Resource, obj runtime.Object) (func(), error) {
	svc, ok := obj.(*api.Service)
	if !ok || res.Name != "services" {
		return nil, nil
	}
	var undo []func()
	rollback := func() {
		for _, u := range undo {
			u()
		}
	}
	if err := a.assign(ctx, svc, nil, &undo); err != nil {
		rollback()
		return nil, err
	}
	return rollback, nil
}

// BeforeUpdate allocates what a Service's new type needs. What its old
// shape held is freed by AfterUpdate once the write succeeds, so a failed
// or dry-run update keeps the old allocations; we accept leaking a value
// on a crash in between.
func (a *Allocator) BeforeUpdate(ctx context.Context, res *Resource, obj, old runtime.Object) (func(), error) {
	svc, ok := obj.(*api.Service)
	if !ok || res.Name != "services" {
		return nil, nil
	}
	oldSvc := old.(*api.Service)
	var undo []func()
	rollback := func() {
		for _, u := range undo {
			u()
		}
	}
	if err := a.assign(ctx, svc, oldSvc, &undo); err != nil {
		rollback()
		return nil, err
	}
	return rollback, nil
}

// AfterUpdate frees what a stored update's old shape held and the new one
// does not.
func (a *Allocator) AfterUpdate(ctx context.Context, res *Resource, obj, old runtime.Object) {
	svc, ok := obj.(*api.Service)
	if !ok || res.Name != "services" {
		return
	}
	oldSvc := old.(*api.Service)
	ctx = context.WithoutCancel(ctx)
	newIPs := map[string]bool{}
	for _, ip := range svc.Spec.ClusterIPs {
		newIPs[ip] = true
	}
	for _, ip := range oldSvc.Spec.ClusterIPs {
		if ip != api.ClusterIPNone && ip != "" && !newIPs[ip] {
			a.ReleaseIP(ctx, ip)
		}
	}
	newPorts := servicePorts(svc)
	for p := range servicePorts(oldSvc) {
		if !newPorts[p] {
			a.ReleasePort(ctx, p)
		}
	}
}

func servicePorts(svc *api.Service) map[int]bool {
	out := map[int]bool{}
	for _, p := range svc.Spec.Ports {
		if p.NodePort != 0 {
			out[int(p.NodePort)] = true
		}
	}
	if svc.Spec.HealthCheckNodePort != 0 {
		out[int(svc.Spec.HealthCheckNodePort)] = true
	}
	return out
}

func (a *Allocator) assign(ctx context.Context, svc, old *api.Service, undo *[]func()) error {
	own := owner(svc)
	var errs field.ErrorList
	if needsClusterIP(svc) {
		if old != nil && old.Spec.ClusterIP != "" && old.Spec.ClusterIP != api.ClusterIPNone && svc.Spec.ClusterIP == "" {
			svc.Spec.ClusterIP = old.Spec.ClusterIP
		}
		if old == nil || svc.Spec.ClusterIP != old.Spec.ClusterIP {
			var want net.IP
			if svc.Spec.ClusterIP != "" {
				if want = net.ParseIP(svc.Spec.ClusterIP); want == nil {
					errs = append(errs, field.Invalid(field.NewPath("spec", "clusterIPs").Index(0), svc.Spec.ClusterIP, "must be a valid IP address"))
				}
			}
			if len(errs) == 0 {
				ip, fresh, err := a.allocateIP(ctx, want, own)
				if err != nil {
					errs = append(errs, field.Invalid(field.NewPath("spec", "clusterIPs").Index(0), svc.Spec.ClusterIP, fmt.Sprintf("failed to allocate IP %s: %v", svc.Spec.ClusterIP, err)))
				} else {
					if fresh {
						*undo = append(*undo, func() { a.ReleaseIP(context.WithoutCancel(ctx), ip.String()) })
					}
					svc.Spec.ClusterIP = ip.String()
				}
			}
		}
		svc.Spec.ClusterIPs = []string{svc.Spec.ClusterIP}
	} else if svc.Spec.Type != api.ServiceTypeExternalName {
		svc.Spec.ClusterIPs = []string{api.ClusterIPNone}
	}
	if svc.Spec.Type != api.ServiceTypeExternalName {
		if len(svc.Spec.IPFamilies) == 0 {
			svc.Spec.IPFamilies = []api.IPFamily{api.IPv4Protocol}
		}
		if svc.Spec.IPFamilyPolicy == nil {
			p := api.IPFamilyPolicySingleStack
			svc.Spec.IPFamilyPolicy = &p
		}
	}
	oldPorts := map[int]bool{}
	if old != nil {
		oldPorts = servicePorts(old)
	}
	if needsNodePorts(svc) {
		for i := range svc.Spec.Ports {
			p := &svc.Spec.Ports[i]
			if old != nil && p.NodePort == 0 {
				// Keep the node port this port had, matched by port and protocol.
				for _, op := range old.Spec.Ports {
					if op.Port == p.Port && op.Protocol == p.Protocol && op.NodePort != 0 {
						p.NodePort = op.NodePort
					}
				}
			}
			if p.NodePort != 0 && oldPorts[int(p.NodePort)] {
				continue
			}
			if p.NodePort != 0 && sharesNodePort(svc, i) {
				continue // TCP and UDP on one port number share the node port
			}
			got, fresh, err := a.allocatePort(ctx, int(p.NodePort), own)
			if err != nil {
				errs = append(errs, field.Invalid(field.NewPath("spec", "ports").Index(i).Child("nodePort"), p.NodePort, err.Error()))
				continue
			}
			if fresh {
				*undo = append(*undo, func() { a.ReleasePort(context.WithoutCancel(ctx), got) })
			}
			p.NodePort = int32(got)
			// A second protocol on the same port number reuses it.
			for j := i + 1; j < len(svc.Spec.Ports); j++ {
				q := &svc.Spec.Ports[j]
				if q.Port == p.Port && q.Protocol != p.Protocol && q.NodePort == 0 {
					q.NodePort = p.NodePort
				}
			}
		}
	} else if svc.Spec.Type == api.ServiceTypeClusterIP {
		for i := range svc.Spec.Ports {
			svc.Spec.Ports[i].NodePort = 0
		}
	}
	if needsHealthCheckPort(svc) {
		hc := int(svc.Spec.HealthCheckNodePort)
		if hc == 0 || !oldPorts[hc] {
			got, fresh, err := a.allocatePort(ctx, hc, own)
			if err != nil {
				errs = append(errs, field.Invalid(field.NewPath("spec", "healthCheckNodePort"), hc, err.Error()))
			} else {
				if fresh {
					*undo = append(*undo, func() { a.ReleasePort(context.WithoutCancel(ctx), got) })
				}
				svc.Spec.HealthCheckNodePort = int32(got)
			}
		}
	} else {
		svc.Spec.HealthCheckNodePort = 0
	}
	if len(errs) > 0 {
		return apierrors.NewInvalid(api.Kind("Service"), svc.Name, errs)
	}
	return nil
}

func sharesNodePort(svc *api.Service, i int) bool {
	p := svc.Spec.Ports[i]
	for j := 0; j < i; j++ {
		q := svc.Spec.Ports[j]
		if q.NodePort == p.NodePort && q.Protocol != p.Protocol {
			return true
		}
	}
	return false
}

// AfterDelete frees a deleted Service's allocations.
func (a *Allocator) AfterDelete(ctx context.Context, res *Resource, obj runtime.Object) {
	svc, ok := obj.(*api.Service)
	if !ok || res.Name != "services" {
		return
	}
	ctx = context.WithoutCancel(ctx)
	for _, ip := range svc.Spec.ClusterIPs {
		if ip != "" && ip != api.ClusterIPNone {
			a.ReleaseIP(ctx, ip)
		}
	}
	for p := range servicePorts(svc) {
		a.ReleasePort(ctx, p)
	}
}
