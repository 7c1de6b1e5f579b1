package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/godwit/godwit/config"
)

// lockedBuffer collects log output written from the node's goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// requestLines returns the access-log records (msg "request") so far.
func (b *lockedBuffer) requestLines(t *testing.T) []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(b.buf.String(), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", line, err)
		}
		if rec["msg"] == "request" {
			out = append(out, rec)
		}
	}
	return out
}

// startLoggedProxy runs a node whose JSON log goes to the returned buffer.
func startLoggedProxy(t *testing.T, access bool, machineAddr string) (*lockedBuffer, string) {
	t.Helper()
	text := proxyConfig(oneApp("", []string{machineAddr}))
	if access {
		text = strings.Replace(text, "access = false", "access = true", 1)
	}
	cfg, err := config.Parse([]byte(text), t.Name()+".toml")
	if err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	srv, err := New(cfg, slog.New(slog.NewJSONHandler(logs, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: got %v, want nil", err)
			}
		case <-time.After(time.Minute):
			t.Error("Run did not return within a minute")
		}
	})
	return logs, srv.Addr("http")
}

func get(t *testing.T, url, host string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Host = host
	resp, err := adminClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s (Host %s): %v", url, host, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func TestAccessLog(t *testing.T) {
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hi") }, nil)

	t.Run("one line per request", func(t *testing.T) {
		logs, addr := startLoggedProxy(t, true, m.addr)
		resp := get(t, "http://"+addr+"/some/path", webHost)
		get(t, "http://"+addr+"/", "nobody.example")
		var lines []map[string]any
		eventually(t, 10*time.Second, "two access-log lines", func() bool {
			lines = logs.requestLines(t)
			return len(lines) == 2
		})
		want := map[string]any{
			"request_id": resp.Header.Get("Fly-Request-Id"), "app": "web", "machine": "m1",
			"method": "GET", "path": "/some/path", "host": webHost, "status": float64(200), "bytes": float64(2),
		}
		// The two handlers may finish logging in either order.
		ok, unknown := lines[0], lines[1]
		if ok["request_id"] != want["request_id"] {
			ok, unknown = unknown, ok
		}
		for k, v := range want {
			if ok[k] != v {
				t.Errorf("access line %q: got %v, want %v (line %v)", k, ok[k], v, ok)
			}
		}
		if unknown["code"] != "PH01" || unknown["status"] != float64(404) {
			t.Errorf("unknown-host line: got code %v status %v, want PH01 404", unknown["code"], unknown["status"])
		}
	})

	t.Run("access = false logs only proxy errors", func(t *testing.T) {
		logs, addr := startLoggedProxy(t, false, m.addr)
		for range 3 {
			get(t, "http://"+addr+"/", webHost)
		}
		get(t, "http://"+addr+"/", "nobody.example")
		var lines []map[string]any
		eventually(t, 10*time.Second, "the error line", func() bool {
			lines = logs.requestLines(t)
			return len(lines) >= 1
		})
		if len(lines) != 1 || lines[0]["code"] != "PH01" {
			t.Errorf("with access = false: got %d request lines %v, want only the PH01 one", len(lines), lines)
		}
	})
}
