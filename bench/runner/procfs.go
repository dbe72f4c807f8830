package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// clockTicks is USER_HZ. Go has no sysconf; it is 100 on every Linux
// architecture the tracer supports.
const clockTicks = 100

// progStat is the kernel's accounting for one BPF program. run_time_ns and
// run_cnt only advance while kernel.bpf_stats_enabled is 1.
type progStat struct {
	ID        uint32
	Type      int
	RunTimeNs uint64
	RunCnt    uint64
}

// parseFdinfo reads the "key:\tvalue" lines of a /proc/*/fdinfo file.
func parseFdinfo(r io.Reader) map[string]string {
	kv := map[string]string{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		kv[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return kv
}

// progFromFdinfo returns the program stats of a BPF program fd, or ok=false
// for any other kind of fd.
func progFromFdinfo(kv map[string]string) (progStat, bool) {
	if _, isProg := kv["prog_type"]; !isProg {
		return progStat{}, false
	}
	id, err := strconv.ParseUint(kv["prog_id"], 10, 32)
	if err != nil {
		return progStat{}, false
	}
	typ, _ := strconv.Atoi(kv["prog_type"])
	rt, _ := strconv.ParseUint(kv["run_time_ns"], 10, 64)
	rc, _ := strconv.ParseUint(kv["run_cnt"], 10, 64)
	return progStat{ID: uint32(id), Type: typ, RunTimeNs: rt, RunCnt: rc}, true
}

// linkProgID returns the program a bpf_link fd points at. A tracer may close
// its program fds after attaching and keep only links, so links count too.
func linkProgID(kv map[string]string) (uint32, bool) {
	if _, isLink := kv["link_type"]; !isLink {
		return 0, false
	}
	id, err := strconv.ParseUint(kv["prog_id"], 10, 32)
	if err != nil || id == 0 {
		return 0, false
	}
	return uint32(id), true
}

// tracerProgs collects every BPF program a process holds, through program
// fds or link fds, keyed by program id so programs held twice count once.
func tracerProgs(pid int) (map[uint32]progStat, error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list fdinfo: %w", err)
	}
	progs := map[uint32]progStat{}
	var linked []uint32
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // fd closed meanwhile
		}
		kv := parseFdinfo(bytes.NewReader(data))
		if p, ok := progFromFdinfo(kv); ok {
			progs[p.ID] = p
		} else if id, ok := linkProgID(kv); ok {
			linked = append(linked, id)
		}
	}
	for _, id := range linked {
		if _, seen := progs[id]; seen {
			continue
		}
		if p, err := progStatByID(id); err == nil {
			progs[id] = p
		}
	}
	return progs, nil
}

// progStatByID opens a program by id and reads its fdinfo from our own fd
// table, which avoids depending on the kernel's bpf_prog_info layout.
func progStatByID(id uint32) (progStat, error) {
	var attr [16]byte // union bpf_attr, *_GET_FD_BY_ID variant: prog_id first
	*(*uint32)(unsafe.Pointer(&attr[0])) = id
	fd, _, e := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_GET_FD_BY_ID, uintptr(unsafe.Pointer(&attr[0])), unsafe.Sizeof(attr))
	if e != 0 {
		return progStat{}, fmt.Errorf("open bpf prog %d: %w", id, e)
	}
	defer unix.Close(int(fd))
	data, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		return progStat{}, fmt.Errorf("read fdinfo of prog %d: %w", id, err)
	}
	p, ok := progFromFdinfo(parseFdinfo(bytes.NewReader(data)))
	if !ok {
		return progStat{}, fmt.Errorf("fd for prog %d is not a program", id)
	}
	return p, nil
}

// hookCost is what one of the tracer's programs ran during a run.
type hookCost struct {
	Runs      uint64 `json:"runs"`
	RunTimeNs uint64 `json:"run_time_ns"`
}

// hookDeltas is progDelta per program, by the name the kernel keeps for it
// (programs of one name are summed).
func hookDeltas(before, after map[uint32]progStat) map[string]hookCost {
	out := map[string]hookCost{}
	for id, a := range after {
		b := before[id]
		if a.RunCnt <= b.RunCnt {
			continue
		}
		name := fmt.Sprintf("prog %d", id)
		if p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id)); err == nil {
			if info, err := p.Info(); err == nil {
				name = info.Name
			}
			p.Close()
		}
		h := out[name]
		h.Runs += a.RunCnt - b.RunCnt
		if a.RunTimeNs > b.RunTimeNs {
			h.RunTimeNs += a.RunTimeNs - b.RunTimeNs
		}
		out[name] = h
	}
	return out
}

// progDelta sums run time and count over programs between two samples.
// A program first seen in the later sample started from zero.
func progDelta(before, after map[uint32]progStat) (runTimeNs, runCnt uint64) {
	for id, a := range after {
		b := before[id]
		if a.RunTimeNs >= b.RunTimeNs {
			runTimeNs += a.RunTimeNs - b.RunTimeNs
		}
		if a.RunCnt >= b.RunCnt {
			runCnt += a.RunCnt - b.RunCnt
		}
	}
	return runTimeNs, runCnt
}

func sumRunCnt(progs map[uint32]progStat) uint64 {
	var n uint64
	for _, p := range progs {
		n += p.RunCnt
	}
	return n
}

// parseStatCPU returns utime+stime in seconds from /proc/<pid>/stat. The
// command name may contain spaces and parentheses, so fields are counted
// from the last ')'.
func parseStatCPU(data []byte) (float64, error) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, errors.New("malformed stat: no ')'")
	}
	f := strings.Fields(string(data[i+1:]))
	// After the comm: state(3) ... utime(14) stime(15); f[0] is field 3.
	if len(f) < 13 {
		return 0, errors.New("malformed stat: too few fields")
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("malformed stat times: %w", err)
	}
	return float64(ut+st) / clockTicks, nil
}

func procCPU(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read stat: %w", err)
	}
	return parseStatCPU(data)
}

// parseStatusKiB returns a "Name:   123 kB" field of /proc/<pid>/status.
func parseStatusKiB(data []byte, name string) (uint64, bool) {
	for line := range strings.Lines(string(data)) {
		k, v, ok := strings.Cut(line, ":")
		if !ok || k != name {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		return n, err == nil
	}
	return 0, false
}

func procHWMKiB(pid int) (uint64, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	return parseStatusKiB(data, "VmHWM")
}
