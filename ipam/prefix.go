package ipam

import (
	"fmt"
	"math"
	"net/netip"
)

// CheckPrefix reports whether cidr can serve as a pod CIDR: a valid, masked prefix with room for
// the network address, the gateway, at least one pod and (IPv4) the broadcast address.
func CheckPrefix(cidr netip.Prefix) error {
	if !cidr.IsValid() {
		return fmt.Errorf("invalid cidr %q", cidr)
	}
	if cidr.Addr().Is4In6() {
		return fmt.Errorf("cidr %s: use plain IPv4 notation", cidr)
	}
	if cidr.Masked() != cidr {
		return fmt.Errorf("cidr %s has host bits set (network is %s)", cidr, cidr.Masked())
	}
	if cidr.Addr().BitLen()-cidr.Bits() < 2 {
		return fmt.Errorf("cidr %s is too small: no address left after network, gateway and broadcast", cidr)
	}
	return nil
}

// Gateway returns the address the node keeps for itself in cidr: the first one after the network
// address (10.244.1.1 in 10.244.1.0/24).
func Gateway(cidr netip.Prefix) netip.Addr {
	return cidr.Masked().Addr().Next()
}

// usable returns the first and last address that may go to a pod.
func usable(cidr netip.Prefix) (first, last netip.Addr) {
	first = Gateway(cidr).Next()
	last = lastAddr(cidr)
	if last.Is4() {
		last = last.Prev() // broadcast
	}
	return first, last
}

// size is the number of addresses in usable(cidr), saturating at MaxUint64.
func size(cidr netip.Prefix) uint64 {
	host := cidr.Addr().BitLen() - cidr.Bits()
	if host >= 64 {
		return math.MaxUint64
	}
	n := uint64(1)<<host - 2 // network, gateway
	if cidr.Addr().Is4() {
		n-- // broadcast
	}
	return n
}

func lastAddr(cidr netip.Prefix) netip.Addr {
	b := cidr.Masked().Addr().AsSlice()
	for i := cidr.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	addr, _ := netip.AddrFromSlice(b)
	return addr
}

func inside(addr, first, last netip.Addr) bool {
	return addr.BitLen() == first.BitLen() && addr.Compare(first) >= 0 && addr.Compare(last) <= 0
}

func wrapNext(addr, first, last netip.Addr) netip.Addr {
	if addr.Compare(last) >= 0 {
		return first
	}
	return addr.Next()
}
