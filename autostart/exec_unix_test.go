//go:build unix

package autostart

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	testAppOnce sync.Once
	testAppPath string
	testAppErr  error
)

// testApp returns the path of the test machine (internal/testapp), built
// once per test binary. The binary is kept in a directory under
// os.TempDir named by a hash of the app's source and the Go version, so a
// later run reuses it and a changed app is built anew; go build's cache
// makes a rebuild cheap, and this skips even the link.
func testApp(t testing.TB) string {
	t.Helper()
	testAppOnce.Do(func() { testAppPath, testAppErr = buildTestApp() })
	if testAppErr != nil {
		t.Fatalf("building the test app: %v", testAppErr)
	}
	return testAppPath
}

func buildTestApp() (string, error) {
	src, err := os.ReadFile(filepath.Join("internal", "testapp", "main.go"))
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(append(src, runtime.Version()+runtime.GOOS+runtime.GOARCH...))
	dir := filepath.Join(os.TempDir(), "godwit-autostart-testapp-"+hex.EncodeToString(sum[:8]))
	bin := filepath.Join(dir, "testapp")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp := fmt.Sprintf("%s.%d", bin, os.Getpid())
	out, err := exec.Command("go", "build", "-o", tmp, "./internal/testapp").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, os.Rename(tmp, bin) // atomic: a concurrent run sees the whole binary or none
}

// execTest is one Exec driver, its output, and an HTTP client without
// keep-alive (no connection outlives a request).
type execTest struct {
	t   *testing.T
	e   *Exec
	out *syncBuffer
	hc  *http.Client
}

func newExecTest(t *testing.T) *execTest {
	driverNoLeaks(t)
	out := &syncBuffer{}
	e := NewExec(ExecOptions{Output: out, Log: discardLog()})
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return &execTest{t: t, e: e, out: out, hc: &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: true},
	}}
}

// spec is a machine of app "web" in region "ams" running the test app
// with args.
func (x *execTest) spec(id string, args ...string) *Spec {
	return &Spec{ID: id, App: "web", Region: "ams", PrimaryRegion: "fra", Addr: freeAddr(x.t), Kind: "exec",
		Command: append([]string{testApp(x.t)}, args...), KillTimeout: 10 * time.Second}
}

func (x *execTest) start(s *Spec) {
	x.t.Helper()
	if err := x.e.Start(context.Background(), s); err != nil {
		x.t.Fatalf("Start: %v", err)
	}
}

// get answers GET path of the machine, or an error.
func (x *execTest) get(s *Spec, path string, timeout time.Duration) (string, error) {
	c := *x.hc
	c.Timeout = timeout
	resp, err := c.Get("http://" + s.Addr + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// ready waits until the machine answers.
func (x *execTest) ready(s *Spec) {
	x.t.Helper()
	pollUntil(x.t, 10*time.Second, "machine "+s.ID+" answers", func() bool {
		_, err := x.get(s, "/", time.Second)
		return err == nil
	})
}

// listening reports whether anything accepts connections on the
// machine's address.
func listening(s *Spec) bool {
	c, err := net.DialTimeout("tcp", s.Addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// noExit fails if the driver reported an exit.
func (x *execTest) noExit() {
	x.t.Helper()
	select {
	case id := <-x.e.Exits():
		x.t.Errorf("Exits: got %q, want no exit reported", id)
	default:
	}
}

func TestExecEnvironment(t *testing.T) {
	x := newExecTest(t)
	t.Setenv("GODWIT_TEST_PARENT", "from godwit")
	t.Setenv("FLY_REGION", "the parent's, overridden")
	s := x.spec("m-env")
	s.Env = []string{"GODWIT_TEST_EXTRA=from the spec", "PRIMARY_REGION=lhr"}
	x.start(s)
	x.ready(s)
	body, err := x.get(s, "/env", 2*time.Second)
	if err != nil {
		t.Fatalf("GET /env: %v", err)
	}
	var env map[string]string
	if err := json.Unmarshal([]byte(body), &env); err != nil {
		t.Fatalf("GET /env: %v in %q", err, body)
	}
	_, port, _ := net.SplitHostPort(s.Addr)
	for k, want := range map[string]string{
		"FLY_REGION":         "ams",
		"FLY_MACHINE_ID":     "m-env",
		"FLY_APP_NAME":       "web",
		"PRIMARY_REGION":     "lhr", // Spec.Env comes last and wins
		"PORT":               port,
		"GODWIT_TEST_PARENT": "from godwit",
		"GODWIT_TEST_EXTRA":  "from the spec",
	} {
		if got := env[k]; got != want {
			t.Errorf("%s: got %q, want %q", k, got, want)
		}
	}
}

func TestExecStop(t *testing.T) {
	tests := []struct {
		name        string
		args        []string
		signal      string
		killTimeout time.Duration
		ctxTimeout  time.Duration // 0: none
		minTook     time.Duration // Stop must not return before this
		maxTook     time.Duration // nor after this
		wantOutput  string        // in the machine's output, after Stop
		notOutput   string
	}{
		{"graceful SIGINT", []string{"-exit-delay=200ms"}, "", 20 * time.Second, 0,
			200 * time.Millisecond, 10 * time.Second, "[m-stop] testapp: exiting on SIGINT\n", ""},
		{"app's kill signal", []string{"-on-sigint=ignore"}, "SIGTERM", 20 * time.Second, 0,
			0, 10 * time.Second, "[m-stop] testapp: exiting on SIGTERM\n", ""},
		{"ignored: SIGKILL after kill timeout", []string{"-on-sigint=ignore"}, "SIGINT", 500 * time.Millisecond, 0,
			500 * time.Millisecond, 10 * time.Second, "[m-stop] testapp: ignoring interrupt\n", "exiting"},
		{"slower than kill timeout: SIGKILL", []string{"-exit-delay=1m"}, "SIGINT", 300 * time.Millisecond, 0,
			300 * time.Millisecond, 10 * time.Second, "", "exiting"},
		{"canceled: SIGKILL at once", []string{"-on-sigint=ignore"}, "SIGINT", time.Minute, 300 * time.Millisecond,
			300 * time.Millisecond, 10 * time.Second, "", "exiting"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := newExecTest(t)
			s := x.spec("m-stop", tt.args...)
			s.KillSignal, s.KillTimeout = tt.signal, tt.killTimeout
			x.start(s)
			x.ready(s)
			ctx := context.Background()
			if tt.ctxTimeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.ctxTimeout)
				defer cancel()
			}
			began := time.Now()
			if err := x.e.Stop(ctx, s); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			took := time.Since(began)
			if took < tt.minTook || took > tt.maxTook {
				t.Errorf("Stop took %v, want %v to %v", took, tt.minTook, tt.maxTook)
			}
			if listening(s) {
				t.Errorf("after Stop: %s still accepts connections, want nothing there", s.Addr)
			}
			out := x.out.String()
			if !strings.Contains(out, tt.wantOutput) {
				t.Errorf("output: got %q, want it to hold %q", out, tt.wantOutput)
			}
			if tt.notOutput != "" && strings.Contains(out, tt.notOutput) {
				t.Errorf("output: got %q, want no %q", out, tt.notOutput)
			}
			x.noExit()
			if err := x.e.Stop(context.Background(), s); err != nil {
				t.Errorf("second Stop: got %v, want nil (stopped already)", err)
			}
		})
	}
}

// TestExecProcessGroup: a shell wrapper's children stop with it, even one
// that ignores the kill signal and outlives the shell.
func TestExecProcessGroup(t *testing.T) {
	x := newExecTest(t)
	s := x.spec("m-sh")
	s.Command = []string{"/bin/sh", "-c", testApp(t) + " -on-sigint=ignore & wait"}
	s.KillTimeout = 500 * time.Millisecond
	x.start(s)
	x.ready(s)
	if err := x.e.Stop(context.Background(), s); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if listening(s) {
		t.Errorf("after Stop: the shell's child still accepts connections on %s, want it killed with the group", s.Addr)
	}
	x.noExit()
}

func TestExecSuspendResume(t *testing.T) {
	x := newExecTest(t)
	s := x.spec("m-sus")
	x.start(s)
	x.ready(s)
	pid, err := x.get(s, "/pid", 2*time.Second)
	if err != nil {
		t.Fatalf("GET /pid: %v", err)
	}

	if err := x.e.Suspend(context.Background(), s); err != nil {
		t.Fatalf("Suspend: %v", err)
	}
	if body, err := x.get(s, "/", 300*time.Millisecond); err == nil {
		t.Fatalf("suspended machine answered %q, want no answer", body)
	}
	if err := x.e.Suspend(context.Background(), s); err != nil {
		t.Errorf("second Suspend: got %v, want nil", err)
	}

	if err := x.e.Start(context.Background(), s); err != nil {
		t.Fatalf("Start (resume): %v", err)
	}
	got, err := x.get(s, "/pid", 2*time.Second)
	if err != nil {
		t.Fatalf("resumed machine: GET /pid: %v", err)
	}
	if got != pid {
		t.Errorf("resumed machine: pid %q, want the same process %q", strings.TrimSpace(got), strings.TrimSpace(pid))
	}

	// A suspended machine still stops gracefully: it is woken to act on
	// the signal, not killed after the kill timeout.
	if err := x.e.Suspend(context.Background(), s); err != nil {
		t.Fatalf("Suspend: %v", err)
	}
	began := time.Now()
	if err := x.e.Stop(context.Background(), s); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("Stop of a suspended machine took %v, want well under its kill timeout %v", took, s.KillTimeout)
	}
	if out := x.out.String(); !strings.Contains(out, "exiting on SIGINT") {
		t.Errorf("output: got %q, want a graceful exit", out)
	}
	if err := x.e.Suspend(context.Background(), s); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Suspend of a stopped machine: got %v, want ErrNotRunning", err)
	}
	x.noExit()
}

func TestExecExit(t *testing.T) {
	x := newExecTest(t)
	s := x.spec("m-exit", "-exit-after=300ms", "-exit-code=7")
	x.start(s)
	select {
	case id := <-x.e.Exits():
		if id != "m-exit" {
			t.Errorf("Exits: got %q, want %q", id, "m-exit")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Exits: nothing within 10s of an exit")
	}
	if listening(s) {
		t.Errorf("after the exit: %s accepts connections", s.Addr)
	}
	if err := x.e.Stop(context.Background(), s); err != nil {
		t.Errorf("Stop after the exit: got %v, want nil", err)
	}

	// It starts again, as a new process, and a stop is not an exit.
	s2 := *s
	s2.Command = []string{testApp(t)}
	x.start(&s2)
	x.ready(&s2)
	if err := x.e.Stop(context.Background(), &s2); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	x.noExit()
}

// TestExecExitKillsChildren: a machine whose process exits on its own
// leaves nothing running.
func TestExecExitKillsChildren(t *testing.T) {
	x := newExecTest(t)
	s := x.spec("m-orphan")
	s.Command = []string{"/bin/sh", "-c", testApp(t) + " & sleep 1; exit 2"}
	x.start(s)
	x.ready(s)
	select {
	case <-x.e.Exits():
	case <-time.After(10 * time.Second):
		t.Fatal("Exits: nothing within 10s of the shell's exit")
	}
	if listening(s) {
		t.Errorf("after the shell exited: its child still accepts connections on %s", s.Addr)
	}
}

func TestExecStartRunning(t *testing.T) {
	x := newExecTest(t)
	s := x.spec("m-twice")
	x.start(s)
	x.ready(s)
	pid, _ := x.get(s, "/pid", 2*time.Second)
	x.start(s)
	got, err := x.get(s, "/pid", 2*time.Second)
	if err != nil || got != pid {
		t.Errorf("after a second Start: pid %q (%v), want the same process %q", got, err, pid)
	}
	x.noExit()
}

func TestExecStartErrors(t *testing.T) {
	x := newExecTest(t)
	tests := []struct {
		name string
		spec Spec
		want string
	}{
		{"no such program", Spec{ID: "m1", Addr: "127.0.0.1:1", Command: []string{"./no-such-program"}}, `start machine m1: fork/exec ./no-such-program: no such file`},
		{"no command", Spec{ID: "m2", Addr: "127.0.0.1:1"}, "start machine m2: no command"},
		{"bad address", Spec{ID: "m3", Addr: "localhost", Command: []string{"true"}}, `start machine m3: address "localhost": want host:port`},
	}
	for _, tt := range tests {
		err := x.e.Start(context.Background(), &tt.spec)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error with %q", tt.name, err, tt.want)
		}
	}
	if err := x.e.Suspend(context.Background(), &Spec{ID: "m1"}); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Suspend of a machine never started: got %v, want ErrNotRunning", err)
	}
}

func TestExecClose(t *testing.T) {
	driverNoLeaks(t)
	x := &execTest{t: t, e: NewExec(ExecOptions{Output: io.Discard, Log: discardLog()})}
	x.hc = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	a := x.spec("m-a", "-exit-delay=100ms")
	b := x.spec("m-b", "-on-sigint=ignore")
	b.KillTimeout = 300 * time.Millisecond
	x.start(a)
	x.start(b)
	x.ready(a)
	x.ready(b)
	if err := x.e.Suspend(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	if err := x.e.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, s := range []*Spec{a, b} {
		if listening(s) {
			t.Errorf("after Close: machine %s still accepts connections", s.ID)
		}
	}
	if _, ok := <-x.e.Exits(); ok {
		t.Error("after Close: Exits is open, want it closed")
	}
	if err := x.e.Start(context.Background(), x.spec("m-c")); !errors.Is(err, ErrDriverClosed) {
		t.Errorf("Start after Close: got %v, want ErrDriverClosed", err)
	}
	if err := x.e.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestExecOutputLines(t *testing.T) {
	x := newExecTest(t)
	s := x.spec("m-out")
	long := strings.Repeat("x", 5000)
	s.Command = []string{"/bin/sh", "-c", "echo one; printf 'two\\nthree'; echo >&2; echo " + long + "; printf tail"}
	x.start(s)
	select {
	case <-x.e.Exits():
	case <-time.After(10 * time.Second):
		t.Fatal("the shell did not exit")
	}
	got := x.out.String()
	if !strings.HasPrefix(got, "[m-out] one\n[m-out] two\n[m-out] three\n") {
		t.Errorf("output: got %q, want each line with the machine's prefix", got)
	}
	for i, line := range strings.Split(strings.TrimSuffix(got, "\n"), "\n") {
		if !strings.HasPrefix(line, "[m-out] ") {
			t.Errorf("output line %d: %q has no prefix", i, line)
		}
	}
	if !strings.HasSuffix(got, "[m-out] tail\n") {
		t.Errorf("output: got %q, want the last line without a newline written whole", got[max(0, len(got)-40):])
	}
	if n := strings.Count(got, "x"); n != len(long) {
		t.Errorf("output: got %d of the long line's %d bytes", n, len(long))
	}
}
