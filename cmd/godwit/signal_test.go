package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestSIGTERMDrains runs the real binary as a child process: SIGTERM while a
// request is in flight lets that request finish, then the process exits 0.
func TestSIGTERMDrains(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "godwit")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	machine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		io.WriteString(w, "finished after SIGTERM")
	}))
	defer machine.Close()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()

	cfgPath := filepath.Join(t.TempDir(), "godwit.toml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`
[listen]
http  = "127.0.0.1:0"
admin = "127.0.0.1:0"
[log]
format = "json"
[[app]]
name  = "web"
hosts = ["web.test"]
[[machine]]
id      = "m1"
app     = "web"
address = %q
`, machine.Listener.Addr().String())), 0o644)

	cmd := exec.Command(bin, "run", "--config", cfgPath)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	// The log's first line names the bound addresses; the rest is drained
	// so the child never blocks on a full pipe.
	addrs := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == "godwit edge running" {
				addrs <- fmt.Sprint(rec["http"])
			}
		}
		exited <- cmd.Wait()
	}()
	var addr string
	select {
	case addr = <-addrs:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("no 'godwit edge running' log line within 30s")
	}

	type result struct {
		status int
		body   string
		err    error
	}
	got := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		req.Host = "web.test"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			got <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- result{resp.StatusCode, string(b), err}
	}()
	select {
	case <-arrived:
	case <-time.After(30 * time.Second):
		t.Fatal("request did not reach the machine within 30s")
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// New connections are refused once the drain began; poll until so.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := (&http.Client{Timeout: time.Second}).Get("http://" + addr + "/")
		if err != nil {
			break
		}
		c.Body.Close()
		if time.Now().After(deadline) {
			t.Fatal("the listener still accepted 10s after SIGTERM")
		}
	}
	close(release)

	select {
	case r := <-got:
		if r.err != nil || r.status != 200 || r.body != "finished after SIGTERM" {
			t.Errorf("in-flight request across SIGTERM: got %d %q (err %v), want 200 \"finished after SIGTERM\"", r.status, r.body, r.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("in-flight request did not finish within 30s")
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("exit after SIGTERM: got %v, want status 0", err)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("process did not exit within 30s of SIGTERM")
	}
}
