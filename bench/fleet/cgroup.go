package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// cpuCap is a cgroup of one process whose CPU time can be capped: it gives
// each edge of the backhaul benchmark a capacity of its own, equal for all,
// as edges on separate machines have, although they share a core here.
// cgroup v2 (cpu.max) or v1 (the cpu controller's CFS quota).
type cpuCap struct {
	dir string
	v2  bool
}

const capPeriodUS = 100000

// newCPUCap makes a cgroup named name and moves pid into it, uncapped.
func newCPUCap(name string, pid int) (*cpuCap, error) {
	c := &cpuCap{}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		c.v2 = true
		// The cpu controller must be on for the root's children.
		if err := os.WriteFile("/sys/fs/cgroup/cgroup.subtree_control", []byte("+cpu"), 0o644); err != nil {
			return nil, fmt.Errorf("enable the cpu controller: %w", err)
		}
		c.dir = filepath.Join("/sys/fs/cgroup", name)
	} else {
		c.dir = filepath.Join("/sys/fs/cgroup/cpu", name)
	}
	if err := os.Mkdir(c.dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(c.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		c.remove()
		return nil, fmt.Errorf("move process %d into %s: %w", pid, c.dir, err)
	}
	return c, c.set(0)
}

// set caps the group at fraction of one core; 0 removes the cap.
func (c *cpuCap) set(fraction float64) error {
	quota := -1
	if fraction > 0 {
		quota = int(fraction * capPeriodUS)
	}
	if c.v2 {
		v := "max " + strconv.Itoa(capPeriodUS)
		if quota > 0 {
			v = fmt.Sprintf("%d %d", quota, capPeriodUS)
		}
		return os.WriteFile(filepath.Join(c.dir, "cpu.max"), []byte(v), 0o644)
	}
	if err := os.WriteFile(filepath.Join(c.dir, "cpu.cfs_period_us"), []byte(strconv.Itoa(capPeriodUS)), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(c.dir, "cpu.cfs_quota_us"), []byte(strconv.Itoa(quota)), 0o644)
}

// throttled is the time the group spent throttled so far, in µs (cpu.stat).
func (c *cpuCap) throttled() float64 {
	b, err := os.ReadFile(filepath.Join(c.dir, "cpu.stat"))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		n, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "throttled_usec": // v2
			return n
		case "throttled_time": // v1, ns
			return n / 1000
		}
	}
	return 0
}

// remove deletes the group once its process has exited (or moves nothing
// and fails quietly while it runs: the kernel refuses to remove a group
// with members).
func (c *cpuCap) remove() { os.Remove(c.dir) }
