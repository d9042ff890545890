package daemon

import (
	"net/netip"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestDesiredRoutes(t *testing.T) {
	node := func(name, cidr string, addrs ...corev1.NodeAddress) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.NodeSpec{PodCIDR: cidr}, Status: corev1.NodeStatus{Addresses: addrs}}
	}
	internal := func(ip string) corev1.NodeAddress {
		return corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip}
	}
	got := desiredRoutes([]*corev1.Node{
		node("self", "10.244.0.0/24", internal("172.31.0.2")),
		node("b", "10.244.1.0/24", corev1.NodeAddress{Type: corev1.NodeHostName, Address: "b"}, internal("172.31.0.3")),
		node("no-cidr", "", internal("172.31.0.4")),
		node("no-ip", "10.244.3.0/24", corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "192.0.2.9"}),
		node("v6-only", "10.244.5.0/24", internal("fd00::5")),
	}, "self")
	want := []NodeRoute{{PodCIDR: netip.MustParsePrefix("10.244.1.0/24"), NodeIP: netip.MustParseAddr("172.31.0.3")}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("desiredRoutes = %v, want %v", got, want)
	}
}
