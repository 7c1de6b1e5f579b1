// Package child runs the benchmarks' child processes (godwit, machines,
// load generators): pinned to a core when asked, killed with the bench
// whatever way it exits. A long-running child is a Proc: its output goes to
// a log that its errors quote, and its readiness and its end can be waited
// for.
//
// It does not know what a child is for: reading godwit's log lines, or
// deciding when a child is ready, is its callers' business.
package child

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// procs is every child process the bench started and has not reaped:
// KillAll ends them on exit, whatever the exit.
var procs struct {
	sync.Mutex
	m map[*exec.Cmd]struct{}
}

// Track records a started child for KillAll.
func Track(c *exec.Cmd) {
	procs.Lock()
	defer procs.Unlock()
	if procs.m == nil {
		procs.m = map[*exec.Cmd]struct{}{}
	}
	procs.m[c] = struct{}{}
}

// Untrack forgets a child once it is reaped.
func Untrack(c *exec.Cmd) {
	procs.Lock()
	defer procs.Unlock()
	delete(procs.m, c)
}

// KillAll SIGKILLs every child still running (SIGCONT first, for a
// suspended one). The children are reaped by their own goroutines; the
// caller may exit right after.
func KillAll() {
	procs.Lock()
	defer procs.Unlock()
	for c := range procs.m {
		if c.Process != nil {
			c.Process.Signal(syscall.SIGCONT)
			c.Process.Kill()
		}
	}
}

// Command returns argv as a command, pinned to cpu with taskset when cpu
// >= 0 and taskset exists, set up to die with the bench (setPdeathsig).
func Command(cpu int, argv ...string) *exec.Cmd {
	if cpu >= 0 && TasksetPath != "" {
		argv = append([]string{TasksetPath, "-c", strconv.Itoa(cpu)}, argv...)
	}
	c := exec.Command(argv[0], argv[1:]...)
	setPdeathsig(c)
	return c
}

// TasksetPath is taskset's path, "" when it is missing (nothing is pinned).
var TasksetPath = func() string {
	p, err := exec.LookPath("taskset")
	if err != nil {
		return ""
	}
	return p
}()

// tail returns the last n lines of a file, for an error.
func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
