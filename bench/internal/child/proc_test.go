package child

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestProcAwaitAndStop(t *testing.T) {
	log := filepath.Join(t.TempDir(), "child.log")
	up := make(chan struct{})
	p, err := Start(Command(-1, "sh", "-c", "echo out; echo ready >&2; exec sleep 30"), "sh", log, func(line string) {
		if line == "ready" {
			close(up)
		}
	})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := p.Await(context.Background(), up, 10*time.Second); err != nil {
		t.Fatalf("Await: %v", err)
	}
	p.Stop(5 * time.Second)
	if !p.Exited() {
		t.Errorf("Exited() after Stop = false, want true")
	}
	p.Stop(time.Second) // idempotent
	p.Kill()
	b, _ := os.ReadFile(log)
	if got := string(b); !strings.Contains(got, "out\n") || !strings.Contains(got, "ready\n") {
		t.Errorf("log = %q, want stdout and stderr lines", got)
	}
}

func TestProcAwaitFailures(t *testing.T) {
	for _, tc := range []struct {
		name    string
		script  string
		timeout time.Duration
		want    string
	}{
		{"exits first", "echo boom >&2; exit 3", 10 * time.Second, "exited before it was up"},
		{"never up", "exec sleep 30", 50 * time.Millisecond, "not up within"},
	} {
		log := filepath.Join(t.TempDir(), "child.log")
		p, err := Start(Command(-1, "sh", "-c", tc.script), "sh", log, nil)
		if err != nil {
			t.Fatalf("%s: Start: %v", tc.name, err)
		}
		err = p.Await(context.Background(), make(chan struct{}), tc.timeout)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Await = %v, want an error with %q", tc.name, err, tc.want)
		}
		if !p.Exited() {
			t.Errorf("%s: still running after Await failed", tc.name)
			p.Kill()
		}
	}
}
