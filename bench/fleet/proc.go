package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/godwit/godwit/bench/internal/child"
)

// edge is one `godwit run` child. Its JSON log goes to a file in the temp
// dir; the bound addresses are read from it as it is written.
type edge struct {
	name, region string
	cfgPath      string
	cpu          int
	logPath      string

	cmd         *exec.Cmd
	done        chan struct{} // closed once the process exited and was reaped
	http, admin string        // bound addresses, from the log
}

// start runs the edge and waits until it serves and has joined gossip
// (its "godwit edge running" and "fleet joined" log lines), or fails.
func (e *edge) start(ctx context.Context) error {
	lf, err := os.OpenFile(e.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	e.cmd = child.Command(e.cpu, godwitBin, "run", "--config", e.cfgPath)
	e.cmd.Stdout = lf
	stderr, err := e.cmd.StderrPipe()
	if err != nil {
		lf.Close()
		return err
	}
	if err := e.cmd.Start(); err != nil {
		lf.Close()
		return fmt.Errorf("start %s: %w", e.name, err)
	}
	child.Track(e.cmd)
	e.done = make(chan struct{})
	type addrs struct{ http, admin string }
	running := make(chan addrs, 1)
	joined := make(chan struct{}, 1)
	go func() {
		defer close(e.done)
		defer lf.Close()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			lf.Write(append(line, '\n'))
			if !strings.Contains(string(line), `"msg":"godwit edge running"`) && !strings.Contains(string(line), `"msg":"fleet joined"`) {
				continue
			}
			var rec map[string]any
			if json.Unmarshal(line, &rec) != nil {
				continue
			}
			switch rec["msg"] {
			case "godwit edge running":
				running <- addrs{fmt.Sprint(rec["http"]), fmt.Sprint(rec["admin"])}
			case "fleet joined":
				joined <- struct{}{}
			}
		}
		io.Copy(io.Discard, stderr)
		e.cmd.Wait()
		child.Untrack(e.cmd)
	}()
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	gotJoin := false
	e.http = ""
	for e.http == "" || !gotJoin {
		select {
		case a := <-running:
			e.http, e.admin = a.http, a.admin
		case <-joined:
			gotJoin = true
		case <-e.done:
			return fmt.Errorf("%s exited before it was up; its log: %s\n%s", e.name, e.logPath, child.Tail(e.logPath, 15))
		case <-timeout.C:
			e.kill()
			return fmt.Errorf("%s: not up within 30s; its log: %s\n%s", e.name, e.logPath, child.Tail(e.logPath, 15))
		case <-ctx.Done():
			e.kill()
			return ctx.Err()
		}
	}
	return nil
}

// kill SIGKILLs the edge and waits until it is reaped.
func (e *edge) kill() {
	if e.cmd == nil || e.cmd.Process == nil {
		return
	}
	e.cmd.Process.Signal(syscall.SIGKILL)
	<-e.done
}

// stop ends the edge: SIGTERM (a graceful leave and drain), SIGKILL after
// 10 s.
func (e *edge) stop() {
	if e.cmd == nil || e.cmd.Process == nil {
		return
	}
	select {
	case <-e.done:
		return
	default:
	}
	e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.done:
	case <-time.After(10 * time.Second):
		e.kill()
	}
}

func (e *edge) pid() int { return e.cmd.Process.Pid }

// clkTck is the kernel's clock tick rate for /proc/PID/stat times.
var clkTck = func() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil && v > 0 {
			return v
		}
	}
	return 100
}()

// cpuTicks returns utime+stime of a process (all its threads) in clock
// ticks.
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("bad /proc stat")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st, nil
}

// coreTicks returns busy and total ticks of one CPU from /proc/stat.
func coreTicks(cpu int) (busy, total int64) {
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
