package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/godwit/godwit/bench/internal/child"
)

// appStopGrace is how long the test app has to exit after SIGTERM (it
// exits at once) before SIGKILL.
const appStopGrace = 5 * time.Second

// startApp execs the test app (the baseline, without godwit) with PORT
// set, its output discarded; the caller times from just before this call.
func startApp(argv []string, cpu int, port int) (*child.Proc, error) {
	c := child.Command(cpu, argv...)
	c.Env = append(os.Environ(), "PORT="+strconv.Itoa(port), "FLY_MACHINE_ID=baseline")
	return child.Start(c, "test app", "", nil)
}

// waitState polls /proc until process pid is in state st ('T': stopped),
// for at most timeout.
func waitState(pid int, st byte, timeout time.Duration) error {
	end := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return err
		}
		if i := strings.LastIndexByte(string(b), ')'); i >= 0 && i+2 < len(b) && b[i+2] == st {
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("process %d not in state %c within %v", pid, st, timeout)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// edge is the `godwit run` child. Its JSON log goes to a file; the bound
// addresses are read from its "godwit edge running" line.
type edge struct {
	p           *child.Proc
	http, admin string
}

// edgeStopGrace is how long godwit has to drain and stop its machine after
// SIGTERM before SIGKILL.
const edgeStopGrace = 15 * time.Second

// startEdge runs godwit and returns once its log says it serves.
func startEdge(ctx context.Context, bin, cfgPath, logPath string, cpu int) (*edge, error) {
	up := make(chan struct{})
	e := &edge{}
	running := false
	p, err := child.Start(child.Command(cpu, bin, "run", "--config", cfgPath), "godwit", logPath, func(line string) {
		if running || !strings.Contains(line, `"msg":"godwit edge running"`) {
			return
		}
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil {
			running, e.http, e.admin = true, fmt.Sprint(rec["http"]), fmt.Sprint(rec["admin"])
			close(up)
		}
	})
	if err != nil {
		return nil, err
	}
	e.p = p
	if err := p.Await(ctx, up, 30*time.Second); err != nil {
		return nil, err
	}
	return e, nil
}

// stop ends godwit: SIGTERM (it drains and stops its machines), SIGKILL
// after edgeStopGrace.
func (e *edge) stop() { e.p.Stop(edgeStopGrace) }

// killStray SIGKILLs every pid in pids that still runs exe (machines that
// godwit started and did not stop, if it died first).
func killStray(pids map[int]bool, exe string) {
	for pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !strings.Contains(string(b), exe) {
			continue
		}
		syscall.Kill(pid, syscall.SIGCONT)
		syscall.Kill(pid, syscall.SIGKILL)
	}
}
