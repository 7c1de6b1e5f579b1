package benchenv

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
)

// TicksPerSecond is the kernel's clock tick rate (getconf CLK_TCK, normally
// 100), the unit of ProcessTicks and CoreTicks. 100 when getconf fails.
func TicksPerSecond() float64 { return ticksPerSecond() }

var ticksPerSecond = sync.OnceValue(func() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil && v > 0 {
			return v
		}
	}
	return 100
})

// ProcessTicks returns the CPU time a process has used, user and system,
// all its threads, in clock ticks (/proc/PID/stat's utime + stime). The
// reports divide the rise over a run by the requests of the run: a proxy's
// CPU cost per request, the figure least moved by a noisy machine. An error
// when it cannot be read (the process is gone).
func ProcessTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st, nil
}

// CoreTicks returns the busy and total clock ticks of one CPU so far
// (/proc/stat; busy is user, nice, system, irq, softirq and steal; total adds
// idle and iowait). Over a run, busy's rise over total's says how busy the
// core was, by anyone: what is not the process measured is other work. 0, 0
// for cpu < 0 (not pinned) or when it cannot be read.
func CoreTicks(cpu int) (busy, total int64) {
	if cpu < 0 {
		return 0, 0
	}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	want := "cpu" + strconv.Itoa(cpu)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || f[0] != want {
			continue
		}
		var v [8]int64
		for i := range v {
			v[i], _ = strconv.ParseInt(f[i+1], 10, 64)
		}
		// user nice system idle iowait irq softirq steal
		busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
		return busy, busy + v[3] + v[4]
	}
	return 0, 0
}
