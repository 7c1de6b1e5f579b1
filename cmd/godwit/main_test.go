package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe to write from the node's goroutines
// while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(good, []byte(`
[[app]]
name = "web"
hosts = ["web.example.com"]

[[machine]]
id = "m1"
app = "web"
address = "127.0.0.1:3001"
`), 0o644)
	os.WriteFile(bad, []byte(`
[[app]]
name = "web"
hosts = ["web.example.com"]
  [app.http_service.concurrency]
  soft_limit = 30
  hard_limit = 10

[[machine]]
id = "m1"
app = "nope"
addres = "127.0.0.1:3001"
`), 0o644)

	tests := []struct {
		name     string
		file     string
		wantCode int
		wantOut  []string // substrings of stdout+stderr
	}{
		{"valid", good, 0, []string{"ok (1 apps, 1 machines)"}},
		{"errors with lines", bad, 1, []string{"bad.toml:7:", "bad.toml:11:", "bad.toml:12:", "did you mean \"address\"", "error(s) in"}},
		{"missing file", filepath.Join(dir, "none.toml"), 1, []string{"none.toml"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			code := run(t.Context(), []string{"config", "check", tt.file}, &out, &out)
			if code != tt.wantCode {
				t.Errorf("exit code: got %d, want %d; output:\n%s", code, tt.wantCode, out.String())
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			if strings.Contains(out.String(), "goroutine ") {
				t.Errorf("output has a stack trace:\n%s", out.String())
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{nil, {"frobnicate"}, {"config"}, {"config", "check"}} {
		var out bytes.Buffer
		if code := run(t.Context(), args, &out, &out); code != 2 {
			t.Errorf("godwit %v: exit code got %d, want 2", args, code)
		}
		if !strings.Contains(out.String(), "usage") && !strings.Contains(out.String(), "Usage") {
			t.Errorf("godwit %v: no usage text in %q", args, out.String())
		}
	}
}

// TestDemoCurlLineWorks runs the demo as a user would and follows the curl
// line it prints.
func TestDemoCurlLineWorks(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"demo", "-http", "127.0.0.1:0", "-admin", "127.0.0.1:0"}, &stdout, &stderr)
	}()

	curlLine := regexp.MustCompile(`curl -i (http://\S+)`)
	var url string
	deadline := time.Now().Add(10 * time.Second)
	for url == "" {
		if m := curlLine.FindStringSubmatch(stdout.String()); m != nil {
			url = m[1]
			break
		}
		select {
		case code := <-done:
			t.Fatalf("demo exited with %d before printing a curl line; stderr:\n%s", code, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no curl line within 10s; stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
		}
	}

	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s (the printed curl line): %v", url, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "Hello from machine hello-") {
		t.Errorf("GET %s: got %d %q, want 200 and a hello from a machine", url, resp.StatusCode, body)
	}
	if id := resp.Header.Get("Fly-Request-Id"); !strings.HasSuffix(id, "-iad") {
		t.Errorf("Fly-Request-Id: got %q, want <ULID>-iad", id)
	}

	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("demo exit code after Ctrl-C: got %d, want 0; stderr:\n%s", code, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("demo did not exit within 15s of cancellation")
	}
}

// TestKeygen: godwit keygen prints a key that gossip.secret_key_file
// accepts (base64 of 32 bytes), a new one each time.
func TestKeygen(t *testing.T) {
	keys := map[string]bool{}
	for range 2 {
		var out bytes.Buffer
		if code := run(t.Context(), []string{"keygen"}, &out, &out); code != 0 {
			t.Fatalf("godwit keygen: exit %d: %s", code, out.String())
		}
		k := strings.TrimSpace(out.String())
		if b, err := base64.StdEncoding.DecodeString(k); err != nil || len(b) != 32 {
			t.Fatalf("godwit keygen printed %q: want base64 of 32 bytes (%v)", k, err)
		}
		keys[k] = true
	}
	if len(keys) != 2 {
		t.Errorf("two runs of godwit keygen printed the same key")
	}
}
