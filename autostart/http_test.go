package autostart

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeAPI is a Machines API on loopback. It answers 401 unless the
// Authorization header is want; it records every call as "METHOD path"
// (with "?state=..." for waits), the stop bodies and the wait timeouts;
// it keeps each machine's state, a start taking startDelay, and answers a
// wait once the state is reached, or 408 after the wait's timeout.
type fakeAPI struct {
	*httptest.Server
	want string        // the Authorization header it accepts
	done chan struct{} // closed at the end of the test: waits end

	mu         sync.Mutex
	log        []string
	stopBodies []string
	stopTypes  []string // Content-Type of the stops
	timeouts   []int    // of the waits, in seconds
	state      map[string]string
	readyAt    map[string]time.Time // when a starting machine is started
	startDelay time.Duration
	answers    map[string]fakeAnswer // by operation: answer this instead
	waits408   int                   // the next n waits answer 408 at once
}

type fakeAnswer struct {
	status int
	body   string
}

// newFakeAPI returns a fake API that accepts the token as a bearer token,
// or as it is if it starts with "FlyV1 ".
func newFakeAPI(t *testing.T, token string) *fakeAPI {
	f := &fakeAPI{want: authorization(token), done: make(chan struct{}),
		state: make(map[string]string), readyAt: make(map[string]time.Time), answers: make(map[string]fakeAnswer)}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/apps/{app}/machines/{id}/{op}", f.operation)
	mux.HandleFunc("GET /v1/apps/{app}/machines/{id}/wait", f.wait)
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		call := r.Method + " " + r.URL.Path
		if st := r.URL.Query().Get("state"); st != "" {
			call += "?state=" + st
		}
		f.log = append(f.log, call)
		f.mu.Unlock()
		if r.Header.Get("Authorization") != f.want {
			answer(w, http.StatusUnauthorized, `{"error":"unauthorized"}`)
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		close(f.done)
		f.Close()
	})
	return f
}

func answer(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	io.WriteString(w, body)
}

func (f *fakeAPI) calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.log...)
}

func (f *fakeAPI) set(fn func(f *fakeAPI)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeAPI) operation(w http.ResponseWriter, r *http.Request) {
	op, id := r.PathValue("op"), r.PathValue("id")
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	defer f.mu.Unlock()
	if a, ok := f.answers[op]; ok {
		answer(w, a.status, a.body)
		return
	}
	switch op {
	case "start":
		f.state[id], f.readyAt[id] = "starting", time.Now().Add(f.startDelay)
		answer(w, http.StatusOK, `{"previous_state":"stopped","migrated":false,"new_host":""}`)
	case "stop":
		f.stopBodies = append(f.stopBodies, string(body))
		f.stopTypes = append(f.stopTypes, r.Header.Get("Content-Type"))
		f.state[id] = "stopped"
		answer(w, http.StatusOK, `{"ok":true}`)
	case "suspend":
		f.state[id] = "suspended"
		answer(w, http.StatusOK, `{"ok":true}`)
	default:
		answer(w, http.StatusNotFound, `{"error":"not found"}`)
	}
}

func (f *fakeAPI) wait(w http.ResponseWriter, r *http.Request) {
	id, want := r.PathValue("id"), r.URL.Query().Get("state")
	secs, err := strconv.Atoi(r.URL.Query().Get("timeout"))
	if err != nil || secs < 1 || secs > 60 {
		answer(w, http.StatusBadRequest, `{"error":"timeout must be 1 to 60 seconds"}`)
		return
	}
	f.mu.Lock()
	f.timeouts = append(f.timeouts, secs)
	if a, ok := f.answers["wait"]; ok {
		f.mu.Unlock()
		answer(w, a.status, a.body)
		return
	}
	if f.waits408 > 0 {
		f.waits408--
		f.mu.Unlock()
		answer(w, http.StatusRequestTimeout, `{"error":"deadline_exceeded: machine did not reach the state"}`)
		return
	}
	state, readyAt := f.state[id], f.readyAt[id]
	f.mu.Unlock()
	switch {
	case state == want:
		answer(w, http.StatusOK, `{"ok":true}`)
		return
	case state == "starting" && want == "started":
	default:
		readyAt = time.Now().Add(time.Hour) // not in this wait
	}
	ready := time.NewTimer(time.Until(readyAt))
	timeout := time.NewTimer(time.Duration(secs) * time.Second)
	defer ready.Stop()
	defer timeout.Stop()
	select {
	case <-ready.C:
		answer(w, http.StatusOK, `{"ok":true}`)
	case <-timeout.C:
		answer(w, http.StatusRequestTimeout, `{"error":"deadline_exceeded"}`)
	case <-r.Context().Done():
	case <-f.done:
	}
}

func newHTTPTest(t *testing.T) *HTTP {
	driverNoLeaks(t)
	h := NewHTTP(HTTPOptions{Log: discardLog()})
	t.Cleanup(h.Close)
	return h
}

func apiSpec(url, token string) *Spec {
	return &Spec{ID: "m1", App: "web", Kind: "http", API: &API{URL: url, App: "web-prod", Token: token},
		KillSignal: "SIGTERM", KillTimeout: 7 * time.Second}
}

func TestHTTPOperations(t *testing.T) {
	h := newHTTPTest(t)
	api := newFakeAPI(t, "secret-token")
	api.set(func(f *fakeAPI) { f.startDelay = 300 * time.Millisecond })
	s := apiSpec(api.URL, "secret-token")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	began := time.Now()
	if err := h.Start(ctx, s); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if took := time.Since(began); took < 300*time.Millisecond {
		t.Errorf("Start returned after %v, want it to wait until the API says started (300ms)", took)
	}
	if err := h.Suspend(ctx, s); err != nil {
		t.Fatalf("Suspend: %v", err)
	}
	if err := h.Start(ctx, s); err != nil {
		t.Fatalf("Start (resume): %v", err)
	}
	if err := h.Stop(ctx, s); err != nil {
		t.Fatalf("Stop: %v", err)
	}

	const m = "/v1/apps/web-prod/machines/m1/"
	want := []string{
		"POST " + m + "start", "GET " + m + "wait?state=started",
		"POST " + m + "suspend", "GET " + m + "wait?state=suspended",
		"POST " + m + "start", "GET " + m + "wait?state=started",
		"POST " + m + "stop", "GET " + m + "wait?state=stopped",
	}
	if got := api.calls(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("API calls:\ngot  %q\nwant %q", got, want)
	}
	api.set(func(f *fakeAPI) {
		if want := `{"signal":"SIGTERM","timeout":"7s"}`; len(f.stopBodies) != 1 || f.stopBodies[0] != want {
			t.Errorf("stop body: got %q, want [%q]", f.stopBodies, want)
		}
		if len(f.stopTypes) != 1 || f.stopTypes[0] != "application/json" {
			t.Errorf("stop Content-Type: got %q, want application/json", f.stopTypes)
		}
		for _, secs := range f.timeouts {
			if secs < 15 || secs > 20 {
				t.Errorf("wait timeouts: got %v, want what is left of the 20s context, in seconds", f.timeouts)
				break
			}
		}
	})
}

func TestHTTPStopDefaults(t *testing.T) {
	h := newHTTPTest(t)
	api := newFakeAPI(t, "tok")
	s := apiSpec(api.URL, "tok")
	s.KillSignal, s.KillTimeout = "", 0
	if err := h.Stop(context.Background(), s); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	api.set(func(f *fakeAPI) {
		if want := `{"signal":"SIGINT","timeout":"5s"}`; len(f.stopBodies) != 1 || f.stopBodies[0] != want {
			t.Errorf("stop body: got %q, want [%q] (Fly's defaults)", f.stopBodies, want)
		}
		if len(f.timeouts) != 1 || f.timeouts[0] != 60 {
			t.Errorf("wait timeout without a deadline: got %v, want [60] (the API's longest)", f.timeouts)
		}
	})
}

func TestHTTPAuthorization(t *testing.T) {
	tests := []struct {
		name, accepts, sends string
		wantErr              string
	}{
		{"bearer", "secret", "secret", ""},
		{"fly macaroon as it is", "FlyV1 fm2_abc,fm2_def", "FlyV1 fm2_abc,fm2_def", ""},
		{"wrong token", "secret", "guess", "autostart: machines api: start web-prod/m1: 401 Unauthorized: unauthorized"},
		{"no token", "secret", "", "401 Unauthorized"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHTTPTest(t)
			api := newFakeAPI(t, tt.accepts)
			err := h.Start(context.Background(), apiSpec(api.URL, tt.sends))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("got %v, want no error", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("got %v, want an error with %q", err, tt.wantErr)
			}
		})
	}
}

func TestHTTPErrorAnswers(t *testing.T) {
	tests := []struct {
		name   string
		op     string // answering
		status int
		body   string
		call   func(h *HTTP, s *Spec) error
		want   APIError
	}{
		{"start 500", "start", 500, `{"error":"could not reserve resource for machine: insufficient memory available to fulfill request"}`,
			func(h *HTTP, s *Spec) error { return h.Start(context.Background(), s) },
			APIError{Op: "start", Machine: "web-prod/m1", Status: 500, Message: "could not reserve resource for machine: insufficient memory available to fulfill request"}},
		{"stop 412, not JSON", "stop", 412, "<html>\n  <b>precondition failed</b>\n</html>\n",
			func(h *HTTP, s *Spec) error { return h.Stop(context.Background(), s) },
			APIError{Op: "stop", Machine: "web-prod/m1", Status: 412, Message: "<html> <b>precondition failed</b> </html>"}},
		{"long message cut", "start", 503, `{"error":"` + strings.Repeat("é", 150) + `"}`,
			func(h *HTTP, s *Spec) error { return h.Start(context.Background(), s) },
			APIError{Op: "start", Machine: "web-prod/m1", Status: 503, Message: strings.Repeat("é", 100) + "..."}},
		{"wait 404", "wait", 404, `{"error":"machine not found"}`,
			func(h *HTTP, s *Spec) error { return h.Suspend(context.Background(), s) },
			APIError{Op: "wait for suspended", Machine: "web-prod/m1", Status: 404, Message: "machine not found"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHTTPTest(t)
			api := newFakeAPI(t, "tok")
			api.set(func(f *fakeAPI) { f.answers[tt.op] = fakeAnswer{tt.status, tt.body} })
			err := tt.call(h, apiSpec(api.URL, "tok"))
			var ae *APIError
			if !errors.As(err, &ae) {
				t.Fatalf("got %v (%T), want an *APIError", err, err)
			}
			if *ae != tt.want {
				t.Errorf("got  %+v\nwant %+v", *ae, tt.want)
			}
			if !strings.Contains(err.Error(), strconv.Itoa(tt.status)) || !strings.Contains(err.Error(), tt.want.Message) {
				t.Errorf("message %q: want the status and the API's message in it", err)
			}
		})
	}
}

// TestHTTPUnavailable: an API that is slow, hung or down makes the
// driver return a clear error within its context's deadline.
func TestHTTPUnavailable(t *testing.T) {
	tests := []struct {
		name     string
		setup    func(t *testing.T) string // returns the API's URL
		deadline time.Duration
		maxTook  time.Duration
		want     string
		wantDL   bool // the error is the context's deadline
	}{
		{"slow start", func(t *testing.T) string {
			api := newFakeAPI(t, "tok")
			api.set(func(f *fakeAPI) { f.startDelay = time.Minute })
			return api.URL
		}, 500 * time.Millisecond, 2 * time.Second, "wait for started web-prod/m1", true},
		{"hung", hungAPI, 300 * time.Millisecond, 2 * time.Second, "start web-prod/m1", true},
		{"down", func(t *testing.T) string { return "http://" + freeAddr(t) }, 5 * time.Second, time.Second, "connection refused", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHTTPTest(t)
			url := tt.setup(t)
			ctx, cancel := context.WithTimeout(context.Background(), tt.deadline)
			defer cancel()
			began := time.Now()
			err := h.Start(ctx, apiSpec(url, "tok"))
			took := time.Since(began)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error with %q", err, tt.want)
			}
			if got := errors.Is(err, context.DeadlineExceeded); got != tt.wantDL {
				t.Errorf("errors.Is(err, context.DeadlineExceeded) = %v, want %v (err %v)", got, tt.wantDL, err)
			}
			if took > tt.maxTook {
				t.Errorf("took %v, want at most %v", took, tt.maxTook)
			}
		})
	}
}

// hungAPI is an API that accepts connections and never answers.
func hungAPI(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return "http://" + l.Addr().String()
}

// TestHTTPWaitAgain: the API's own wait timing out (408) is asked again
// while the context lasts, and not in a hot loop.
func TestHTTPWaitAgain(t *testing.T) {
	h := newHTTPTest(t)
	api := newFakeAPI(t, "tok")
	api.set(func(f *fakeAPI) { f.waits408 = 2 })
	if err := h.Start(context.Background(), apiSpec(api.URL, "tok")); err != nil {
		t.Fatalf("Start after two 408 waits: %v", err)
	}
	if got := strings.Count(strings.Join(api.calls(), "\n"), "wait?state=started"); got != 3 {
		t.Errorf("waits: got %d, want 3", got)
	}

	api2 := newFakeAPI(t, "tok")
	api2.set(func(f *fakeAPI) { f.waits408 = 1 << 30 })
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := h.Start(ctx, apiSpec(api2.URL, "tok"))
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusRequestTimeout || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v, want the API's 408 and the context's deadline", err)
	}
	if got := strings.Count(strings.Join(api2.calls(), "\n"), "wait?state=started"); got < 2 || got > 6 {
		t.Errorf("waits in 1s of immediate 408s: got %d, want 2 to 6 (asked again, with a pause)", got)
	}
}

func TestHTTPNoAPI(t *testing.T) {
	h := newHTTPTest(t)
	err := h.Start(context.Background(), &Spec{ID: "m1", Kind: "http"})
	if err == nil || !strings.Contains(err.Error(), "start machine m1: no API url") {
		t.Errorf("got %v, want an error saying the spec has no API", err)
	}
}
