package tracer

import (
	"errors"
	"regexp"
	"testing"

	"github.com/portlife/portlife/internal/event"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
)

// The kernel side reads a namespace's ip_local_port_range from struct
// local_ports, whose layout changed in Linux 6.8 (bpf/kernel.h). Only one
// layout runs on any one host, so these tests relocate the object against
// kernel types with each layout in turn.

// localPortsLayout is one kernel's struct local_ports, with the byte offsets
// of its bounds.
type localPortsLayout struct {
	name    string
	old     bool // int range[2] behind a seqlock, before 6.8
	members []btf.Member
	size    uint32
	lo, hi  int64 // old: offsets of range[0] and range[1]; new: of the u32
}

var localPortsLayouts = func() []localPortsLayout {
	u32 := &btf.Int{Name: "unsigned int", Size: 4}
	s32 := &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed}
	boolean := &btf.Int{Name: "_Bool", Size: 1, Encoding: btf.Bool}
	seqlock := &btf.Typedef{Name: "seqlock_t", Type: &btf.Struct{Size: 8}}
	return []localPortsLayout{
		{
			name: "6.8 and later: u32 range",
			members: []btf.Member{
				{Name: "range", Type: &btf.Typedef{Name: "u32", Type: u32}},
				{Name: "warned", Type: boolean, Offset: 32},
			},
			size: 8,
			lo:   0, hi: 0,
		},
		{
			name: "before 6.8: seqlock_t lock; int range[2]",
			old:  true,
			members: []btf.Member{
				{Name: "lock", Type: seqlock},
				{Name: "range", Type: &btf.Array{Index: u32, Type: s32, Nelems: 2}, Offset: 64},
				{Name: "warned", Type: boolean, Offset: 128},
			},
			size: 20,
			lo:   8, hi: 12,
		},
	}
}()

// kernelTypes is the running kernel's BTF with struct local_ports replaced
// by l's layout. Nothing else that portlife reads moves.
func (l localPortsLayout) kernelTypes(t *testing.T) *btf.Spec {
	t.Helper()
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatalf("loading the kernel's BTF: %v", err)
	}
	spec := kernel.Copy()
	var lp *btf.Struct
	if err := spec.TypeByName("local_ports", &lp); err != nil {
		t.Fatalf("struct local_ports in the kernel's BTF: %v", err)
	}
	lp.Members = l.members
	lp.Size = l.size
	return spec
}

var localPortsRelo = regexp.MustCompile(`^CORERelocation\((\w+), Struct:"(local_ports\w*)"\[([0-9:]+)\]`)

// Relocated against each layout, every read of the range must pick that
// layout's branch, at its offsets, and poison the other's: the verifier
// accepts a poisoned instruction only where it cannot be reached.
func TestLocalPortsRelocation(t *testing.T) {
	spec, err := loadPortlife()
	if err != nil {
		t.Fatal(err)
	}
	const poisoned = -1
	for _, l := range localPortsLayouts {
		t.Run(l.name, func(t *testing.T) {
			target := l.kernelTypes(t)
			want := map[string]int64{
				"field_exists local_ports___old[0:0]": 0,
				"byte_off local_ports___old[0:0:0]":   poisoned,
				"byte_off local_ports___old[0:0:1]":   poisoned,
				"byte_off local_ports[0:0]":           l.lo,
			}
			if l.old {
				want = map[string]int64{
					"field_exists local_ports___old[0:0]": 1,
					"byte_off local_ports___old[0:0:0]":   l.lo,
					"byte_off local_ports___old[0:0:1]":   l.hi,
					"byte_off local_ports[0:0]":           poisoned,
				}
			}
			seen := map[string]int{}
			for name, prog := range spec.Programs {
				for _, ins := range prog.Instructions {
					relo := btf.CORERelocationMetadata(&ins)
					if relo == nil {
						continue
					}
					m := localPortsRelo.FindStringSubmatch(relo.String())
					if m == nil {
						continue
					}
					key := m[1] + " " + m[2] + "[" + m[3] + "]"
					fixups, err := btf.CORERelocate([]*btf.CORERelocation{relo}, []*btf.Spec{target}, spec.ByteOrder,
						func(btf.Type) (btf.TypeID, error) { return 0, errors.New("no local type IDs here") })
					if err != nil {
						t.Fatalf("%s: relocating %v: %v", name, relo, err)
					}
					if err := fixups[0].Apply(&ins); err != nil {
						t.Fatalf("%s: applying %v to %v: %v", name, fixups[0], relo, err)
					}
					got := ins.Constant
					if ins.OpCode.JumpOp() == asm.Call && ins.Constant == btf.COREBadRelocationSentinel {
						got = poisoned
					}
					w, ok := want[key]
					if !ok {
						t.Errorf("%s: unexpected relocation %v", name, relo)
						continue
					}
					if got != w {
						t.Errorf("%s: %s relocates to %d, want %d (-1: poisoned)", name, key, got, w)
					}
					seen[key]++
				}
			}
			for key := range want {
				if seen[key] == 0 {
					t.Errorf("no %s relocation in any program: did the read of the range change?", key)
				}
			}
		})
	}
}

// The verifier must accept every program relocated for either layout, with
// --ephemeral-only on so that the filter's read is checked too: the branch
// for the other layout is poisoned, and only pruning it as dead code lets
// the object load.
func TestLocalPortsLayoutsLoad(t *testing.T) {
	requireRoot(t)
	for _, l := range localPortsLayouts {
		t.Run(l.name, func(t *testing.T) {
			spec, err := loadPortlife()
			if err != nil {
				t.Fatal(err)
			}
			cfg := DefaultConfig()
			cfg.Filter = event.Filter{EphemeralOnly: true}
			if err := configure(spec, &cfg, runningKernel(t), 0); err != nil {
				t.Fatal(err)
			}
			var objs portlifeObjects
			opts := &ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{KernelTypes: l.kernelTypes(t)}}
			if err := spec.LoadAndAssign(&objs, opts); err != nil {
				var verr *ebpf.VerifierError
				if errors.As(err, &verr) {
					t.Fatalf("loading: %+v", verr)
				}
				t.Fatalf("loading: %v", err)
			}
			objs.Close()
		})
	}
}
