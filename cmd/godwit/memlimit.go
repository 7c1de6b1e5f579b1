package main

import (
	"bufio"
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
)

// memoryLimitShare is the part of the cgroup's memory limit given to the Go
// runtime as its soft limit: the rest is for what the runtime does not
// count (the binary, thread stacks outside Go, page cache charged to the
// cgroup).
const memoryLimitShare = 0.9

// setMemoryLimit gives the Go runtime a soft memory limit of
// memoryLimitShare of the process's cgroup memory limit, unless GOMEMLIMIT
// is set or there is no limit.
//
// godwit collects garbage at 4x the live heap (GOGC 400, see serve), which
// costs a few MiB for per-request garbage but scales with the live heap:
// each idle connection is live memory (about 22 KiB over HTTP/1, 56 KiB
// over HTTP/2, 99 KiB over HTTP/3 at GOGC 400, bench/RESULTS.md), so an
// edge holding many of them could grow past a container's limit while
// most of it is garbage. With the runtime told the limit, it collects
// harder as the heap nears it instead of being killed.
func setMemoryLimit(log *slog.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return
	}
	limit, file, ok := cgroupMemoryLimit("/sys/fs/cgroup", self)
	if !ok {
		return
	}
	soft := int64(float64(limit) * memoryLimitShare)
	debug.SetMemoryLimit(soft)
	log.Info("Go memory limit set from the cgroup's (GOMEMLIMIT overrides it)", "soft_limit_mib", soft>>20, "cgroup_limit_mib", limit>>20, "from", file)
}

// cgroupMemoryLimit returns the memory limit that applies to the process
// whose /proc/self/cgroup is self, under the cgroup file systems mounted at
// root: the smallest limit of its cgroup and their ancestors, from cgroup
// v2's memory.max or v1's memory.limit_in_bytes, and the file it came from.
// ok is false when no limit is set.
func cgroupMemoryLimit(root string, self []byte) (limit int64, file string, ok bool) {
	sc := bufio.NewScanner(bytes.NewReader(self))
	for sc.Scan() {
		// hierarchy-id:controllers:path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		var dir, name string
		switch {
		case parts[0] == "0" && parts[1] == "": // v2, the unified hierarchy
			dir, name = root, "memory.max"
		case hasController(parts[1], "memory"): // v1
			dir, name = filepath.Join(root, "memory"), "memory.limit_in_bytes"
		default:
			continue
		}
		for p := filepath.Clean("/" + parts[2]); ; p = filepath.Dir(p) {
			f := filepath.Join(dir, p, name)
			if v, found := readLimit(f); found && (!ok || v < limit) {
				limit, file, ok = v, f, true
			}
			if p == "/" {
				break
			}
		}
	}
	return limit, file, ok
}

func hasController(list, c string) bool {
	for _, s := range strings.Split(list, ",") {
		if s == c {
			return true
		}
	}
	return false
}

// readLimit reads a memory limit file: a number of bytes, or "max" (v2)
// or a value near 2^63 (v1) for none.
func readLimit(file string) (int64, bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || v <= 0 || v >= 1<<62 {
		return 0, false
	}
	return v, true
}
