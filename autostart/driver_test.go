package autostart

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/godwit/godwit/config"
)

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// driverNoLeaks fails the test if a goroutine started during it outlives
// its cleanups; call it first.
func driverNoLeaks(t *testing.T) {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// pollUntil checks cond every 10ms until it holds or d has passed.
func pollUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		<-tick.C
	}
}

// syncBuffer is an Output that tests read while machines write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestSpecFor(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "fly.token")
	if err := os.WriteFile(tokenFile, []byte("FlyV1 fm2_secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	emptyFile := filepath.Join(dir, "empty.token")
	if err := os.WriteFile(emptyFile, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"FLY_API_TOKEN": "from-env", "BLANK": "  "}
	app := config.App{Name: "web", PrimaryRegion: "fra", KillSignal: "SIGTERM", KillTimeout: 30 * time.Second}
	machine := func(d config.Driver) config.Machine {
		return config.Machine{ID: "m1", App: "web", Region: "ams", Address: "127.0.0.1:3000", State: "stopped", Driver: d}
	}
	base := Spec{ID: "m1", App: "web", Region: "ams", PrimaryRegion: "fra", Addr: "127.0.0.1:3000", KillSignal: "SIGTERM", KillTimeout: 30 * time.Second}
	with := func(f func(s *Spec)) Spec {
		s := base
		f(&s)
		return s
	}
	tests := []struct {
		name    string
		driver  config.Driver
		want    Spec
		wantErr string
	}{
		{"none", config.Driver{Kind: "none"}, with(func(s *Spec) { s.Kind = "none" }), ""},
		{"exec", config.Driver{Kind: "exec", Command: []string{"./web", "-v"}, Env: map[string]string{"B": "2", "A": "1=one"}},
			with(func(s *Spec) { s.Kind, s.Command, s.Env = "exec", []string{"./web", "-v"}, []string{"A=1=one", "B=2"} }), ""},
		{"http, token from the environment", config.Driver{Kind: "http", URL: "https://api.machines.dev", App: "web-prod", TokenEnv: "FLY_API_TOKEN"},
			with(func(s *Spec) {
				s.Kind, s.API = "http", &API{URL: "https://api.machines.dev", App: "web-prod", Token: "from-env"}
			}), ""},
		{"http, token from a file", config.Driver{Kind: "http", URL: "http://orch:4280", App: "web", TokenFile: tokenFile},
			with(func(s *Spec) {
				s.Kind, s.API = "http", &API{URL: "http://orch:4280", App: "web", Token: "FlyV1 fm2_secret"}
			}), ""},
		{"http, variable not set", config.Driver{Kind: "http", URL: "http://orch", App: "web", TokenEnv: "NOPE"}, Spec{},
			"machine m1: driver.token_env: the environment variable NOPE is not set"},
		{"http, variable blank", config.Driver{Kind: "http", URL: "http://orch", App: "web", TokenEnv: "BLANK"}, Spec{},
			"the environment variable BLANK is not set"},
		{"http, no token file", config.Driver{Kind: "http", URL: "http://orch", App: "web", TokenFile: filepath.Join(dir, "nope")}, Spec{},
			"machine m1: driver.token_file: open " + filepath.Join(dir, "nope") + ": no such file"},
		{"http, empty token file", config.Driver{Kind: "http", URL: "http://orch", App: "web", TokenFile: emptyFile}, Spec{},
			"driver.token_file " + emptyFile + " is empty"},
	}
	d := NewDrivers(DriverOptions{Getenv: func(k string) string { return env[k] }})
	t.Cleanup(func() { d.Close() })
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := d.SpecFor(machine(tt.driver), app)
			switch {
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("got error %v, want one with %q", err, tt.wantErr)
			case tt.wantErr == "" && err != nil:
				t.Fatalf("got error %v, want none", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v (API %v)\nwant %+v (API %v)", got, got.API, tt.want, tt.want.API)
			}
			if got.API != nil && got.API.Token != "" && strings.Contains(got.API.String(), got.API.Token) {
				t.Errorf("API.String() = %q shows the token", got.API.String())
			}
		})
	}
}

func TestDriversDispatch(t *testing.T) {
	driverNoLeaks(t)
	api := newFakeAPI(t, "tok")
	d := NewDrivers(DriverOptions{Exec: ExecOptions{Log: discardLog()}, HTTP: HTTPOptions{Log: discardLog()}})
	t.Cleanup(func() { d.Close() })
	ctx := context.Background()

	for _, kind := range []string{"", "none"} {
		s := &Spec{ID: "m-none", Kind: kind}
		for op, f := range map[string]func(context.Context, *Spec) error{"start": d.Start, "stop": d.Stop, "suspend": d.Suspend} {
			err := f(ctx, s)
			if !errors.Is(err, ErrNotManaged) || !errors.Is(err, ErrUnsupported) {
				t.Errorf("kind %q: %s: got %v, want ErrNotManaged (and ErrUnsupported)", kind, op, err)
			}
		}
	}

	s := &Spec{ID: "m-api", Kind: "http", API: &API{URL: api.URL, App: "web", Token: "tok"}}
	if err := d.Start(ctx, s); err != nil {
		t.Fatalf("http: Start: %v", err)
	}
	if got := api.calls(); len(got) == 0 || got[0] != "POST /v1/apps/web/machines/m-api/start" {
		t.Errorf("http: Start: API calls %q, want a start of m-api first", got)
	}

	if err := d.Start(ctx, &Spec{ID: "m-x", Kind: "docker"}); err == nil || !strings.Contains(err.Error(), `unknown driver kind "docker"`) {
		t.Errorf("unknown kind: got %v, want an error naming it", err)
	}
	if _, ok := any(d).(Exits); !ok {
		t.Error("Drivers does not report exits (Exits)")
	}
}
