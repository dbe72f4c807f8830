package tracer

import (
	"net/netip"

	"github.com/portlife/portlife/internal/event"
)

// kernelConfig is the filter as the kernel program reads it. The filter was
// validated, so it fits the kernel's tables.
func kernelConfig(f *event.Filter, wakeupBytes uint64) portlifeConfig {
	var c portlifeConfig
	c.MinDurationNs = uint64(f.MinDuration)
	c.WakeupBytes = wakeupBytes
	c.Pid = f.PID
	kinds := f.Kinds
	if len(kinds) == 0 {
		kinds = event.Kinds
	}
	for _, k := range kinds {
		c.Events |= 1 << k
	}
	for i, r := range f.LocalPorts {
		c.Lports[i].Lo, c.Lports[i].Hi = r.Lo, r.Hi
	}
	c.N_lports = uint8(len(f.LocalPorts))
	for i, r := range f.RemotePorts {
		c.Rports[i].Lo, c.Rports[i].Hi = r.Lo, r.Hi
	}
	c.N_rports = uint8(len(f.RemotePorts))
	// Most hooks are attached per protocol; the syscall hooks see both.
	if f.WantsProto(event.ProtoTCP) {
		c.Protos |= uint8(portlifeTracedProtoTRACED_TCP)
	}
	if f.WantsProto(event.ProtoUDP) {
		c.Protos |= uint8(portlifeTracedProtoTRACED_UDP)
	}
	c.Family = uint8(f.Family)
	c.Direction = uint8(f.Direction)
	c.EphemeralOnly = boolByte(f.EphemeralOnly)
	c.MatchRaddr = boolByte(len(f.RemoteNets) > 0)
	if f.Comm != "" {
		c.MatchComm = 1
		for i := 0; i < len(f.Comm); i++ {
			c.Comm[i] = int8(f.Comm[i])
		}
	}
	return c
}

// raddrKey is a --raddr network as the kernel's LPM trie keys it: IPv6,
// with IPv4 networks v4-mapped.
func raddrKey(p netip.Prefix) portlifeRaddrKey {
	p = p.Masked()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	return portlifeRaddrKey{Prefixlen: uint32(bits), Addr: p.Addr().As16()}
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}
