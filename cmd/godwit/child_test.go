//go:build linux

package main

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/godwit/godwit/config"
)

// The tests here run the real binary as child processes: buildGodwit
// builds it, writeFleetConfigs writes the configs of a fleet on loopback,
// startChildEdge runs one edge and waits until it is up.

// godwitBuild is the one build of the binary per test process, made by
// buildGodwit.
var godwitBuild struct {
	once sync.Once
	dir  string // a temporary directory, removed by TestMain
	bin  string // dir/godwit
	out  []byte // go build's output
	err  error  // go build's error; the build failed if non-nil
}

func TestMain(m *testing.M) {
	code := m.Run()
	if godwitBuild.dir != "" {
		os.RemoveAll(godwitBuild.dir)
	}
	os.Exit(code)
}

// buildGodwit returns the path of the godwit binary built from this
// package. It builds it at its first call in the test process, into a
// temporary directory that TestMain removes; later calls return the same
// binary. A failed build fails every caller with go build's output.
func buildGodwit(t *testing.T) string {
	t.Helper()
	b := &godwitBuild
	b.once.Do(func() {
		b.dir, b.err = os.MkdirTemp("", "godwit-test-bin-")
		if b.err != nil {
			return
		}
		b.bin = filepath.Join(b.dir, "godwit")
		b.out, b.err = exec.Command("go", "build", "-o", b.bin, ".").CombinedOutput()
	})
	if b.err != nil {
		t.Fatalf("go build: %v\n%s", b.err, b.out)
	}
	return b.bin
}

// fleetEdge is one edge of a test fleet: its node name and region, the
// loopback address it binds every listener to, and the id of the machine
// of app web it owns (empty: none).
type fleetEdge struct{ name, region, ip, machine string }

// fleetConfig describes the configs writeFleetConfigs writes.
type fleetConfig struct {
	edges    []fleetEdge
	machines map[string]string // machine id → address, for the edges' machine
	httpPort int               // every edge's [listen] http port; 0: one of the kernel's choosing
	// backhaulProtocol is every edge's backhaul.protocol; empty: the
	// default.
	backhaulProtocol string
	// extra is TOML added to every edge's config after its [backhaul]
	// table and before [[app]]: whole tables, each with its header.
	extra string
}

// writeFleetConfigs writes a config per edge of fc into a temporary
// directory and returns their paths by edge name. Every edge gossips at
// ip:7946 with a shared secret key and joins the others there, listens for
// the backhaul at ip:4433, serves its admin API at ip:0 and logs JSON
// without access lines; all serve app web (host web.test).
func writeFleetConfigs(t *testing.T, fc fleetConfig) map[string]string {
	t.Helper()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "gossip.key")
	key := make([]byte, 32)
	rand.Read(key)
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgs := map[string]string{}
	for _, s := range fc.edges {
		var join []string
		for _, o := range fc.edges {
			if o.name != s.name {
				join = append(join, fmt.Sprintf("%q", o.ip+":7946"))
			}
		}
		cfg := fmt.Sprintf(`
[node]
name   = %q
region = %q

[listen]
http  = "%[3]s:%[4]d"
admin = "%[3]s:0"

[log]
format = "json"
access = false

[gossip]
bind = "%[3]s:7946"
join = [%[5]s]
secret_key_file = %[6]q

[backhaul]
listen = "%[3]s:4433"
`, s.name, s.region, s.ip, fc.httpPort, strings.Join(join, ", "), keyFile)
		if fc.backhaulProtocol != "" {
			cfg += fmt.Sprintf("protocol = %q\n", fc.backhaulProtocol)
		}
		if fc.extra != "" {
			cfg += "\n" + fc.extra
		}
		cfg += `
[[app]]
name  = "web"
hosts = ["web.test"]
`
		if s.machine != "" {
			cfg += fmt.Sprintf("\n[[machine]]\nid = %q\napp = \"web\"\naddress = %q\n", s.machine, fc.machines[s.machine])
		}
		cfgs[s.name] = filepath.Join(dir, s.name+".toml")
		if err := os.WriteFile(cfgs[s.name], []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return cfgs
}

// loopbackSubnet returns "127.x.y." for a random x and y in 1..254. Each
// edge of a test fleet gets an address of its own in it, so that gossip
// and the backhaul can use fixed ports (a restarted edge comes back at the
// same address, as in production) without meeting another run of the test
// or anything else on the machine.
func loopbackSubnet(t *testing.T) string {
	t.Helper()
	n := func() int64 {
		v, err := rand.Int(rand.Reader, big.NewInt(254))
		if err != nil {
			t.Fatal(err)
		}
		return 1 + v.Int64()
	}
	return fmt.Sprintf("127.%d.%d.", n(), n())
}

// childEdge is `godwit run` as a child process. Its log (stdout and
// stderr) is kept for assertions and failure messages; the bound addresses
// are read from it.
type childEdge struct {
	name string
	cmd  *exec.Cmd
	log  *syncBuffer
	// done is closed once the process exited and its log was read to
	// the end; cmd.ProcessState and waitErr are set by then.
	done        chan struct{}
	waitErr     error // cmd.Wait's: nil for exit status 0
	http, admin string
	gossip      string // empty if the edge is in no fleet
	backhaul    string
}

// startChildEdge starts `bin run --config cfg` and waits until the edge
// serves (its "godwit edge running" log line) and, if the config has
// gossip (a [gossip] table with a bind address), until it has joined its
// fleet (its "fleet joined" line). The process is killed when the test
// ends.
func startChildEdge(t *testing.T, bin, name, cfg string) *childEdge {
	t.Helper()
	conf, err := config.Load(cfg)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	inFleet := conf.Gossip.Bind != ""
	e := &childEdge{name: name, log: &syncBuffer{}, done: make(chan struct{})}
	e.cmd = exec.Command(bin, "run", "--config", cfg)
	// Killed with the test process too, should it die first.
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := e.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	e.cmd.Stdout = e.log
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.cmd.Process.Kill()
		<-e.done
	})
	type addrs struct{ http, admin, gossip, backhaul string }
	running, joined := make(chan addrs, 1), make(chan addrs, 1)
	// offer hands a to the wait below without blocking: the log is read
	// to its end whatever it says, so that the child never blocks on a
	// full pipe.
	offer := func(ch chan addrs, a addrs) {
		select {
		case ch <- a:
		default:
		}
	}
	go func() {
		defer close(e.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			e.log.Write(append(sc.Bytes(), '\n'))
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) != nil {
				continue
			}
			switch rec["msg"] {
			case "godwit edge running":
				offer(running, addrs{http: fmt.Sprint(rec["http"]), admin: fmt.Sprint(rec["admin"])})
			case "fleet joined":
				offer(joined, addrs{gossip: fmt.Sprint(rec["gossip"]), backhaul: fmt.Sprint(rec["backhaul"])})
			}
		}
		io.Copy(io.Discard, stderr)
		e.waitErr = e.cmd.Wait()
	}()
	want := `"godwit edge running" log line`
	if inFleet {
		want = `"godwit edge running" and "fleet joined" log lines`
	}
	timeout := time.After(30 * time.Second)
	for e.http == "" || (inFleet && e.gossip == "") {
		select {
		case a := <-running:
			e.http, e.admin = a.http, a.admin
		case a := <-joined:
			e.gossip, e.backhaul = a.gossip, a.backhaul
		case <-e.done:
			t.Fatalf("%s exited before it was up (%v):\n%s", name, e.waitErr, e.log)
		case <-timeout:
			t.Fatalf("%s: no %s within 30s:\n%s", name, want, e.log)
		}
	}
	return e
}

// kill SIGKILLs the edge and waits until it is gone.
func (e *childEdge) kill(t *testing.T) {
	t.Helper()
	if err := e.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s: %v", e.name, err)
	}
	<-e.done
}

var adminClient = &http.Client{Timeout: 2 * time.Second}

// adminJSON decodes GET path of e's admin API into v.
func adminJSON(e *childEdge, path string, v any) error {
	resp, err := adminClient.Get("http://" + e.admin + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// waitForEdges polls cond every 50 ms until it holds, failing the test
// with the edges' logs after timeout.
func waitForEdges(t *testing.T, timeout time.Duration, what any, cond func() bool, edges map[string]*childEdge) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %v\n%s", timeout, what, logsOf(edges))
		}
		time.Sleep(50 * time.Millisecond) // poll interval, within the deadline
	}
}

// logsOf returns the last lines of each edge's log.
func logsOf(edges map[string]*childEdge) string {
	var names []string
	for n := range edges {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		lines := strings.Split(strings.TrimSpace(edges[n].log.String()), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		fmt.Fprintf(&b, "--- %s (last %d log lines)\n%s\n", n, len(lines), strings.Join(lines, "\n"))
	}
	return b.String()
}
