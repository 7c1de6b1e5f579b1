package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// demoMachine is what a sample machine knows of itself: what Fly's
// environment (FLY_MACHINE_ID, FLY_REGION, FLY_APP_NAME, PRIMARY_REGION)
// tells a real one.
type demoMachine struct {
	id, app, region, primary string
	// pid is the machine's own process, 0 when the demo serves it
	// in-process.
	pid     int
	started time.Time
}

// cmdDemoMachine is the hidden `godwit demo-machine`: one sample machine,
// as the demo's exec driver runs it, configured by the environment Fly
// gives its machines. It serves on 127.0.0.1:$PORT until ctx ends (the
// driver's kill signal).
func cmdDemoMachine(ctx context.Context, _ []string, _, stderr io.Writer) int {
	m := demoMachine{
		id: os.Getenv("FLY_MACHINE_ID"), app: os.Getenv("FLY_APP_NAME"),
		region: os.Getenv("FLY_REGION"), primary: os.Getenv("PRIMARY_REGION"),
		pid: os.Getpid(), started: time.Now(),
	}
	port := os.Getenv("PORT")
	if m.id == "" || port == "" {
		fmt.Fprintln(stderr, "godwit demo-machine: run by `godwit demo`, with FLY_MACHINE_ID and PORT set")
		return 2
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", port))
	if err != nil {
		fmt.Fprintln(stderr, "godwit demo-machine:", err)
		return 1
	}
	srv := &http.Server{Handler: demoHandler(m, &todoList{}), ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(stderr, "machine %s (app %s, region %s) started: pid %d, listening on %s\n", m.id, m.app, m.region, m.pid, ln.Addr())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err = <-errc:
	case <-ctx.Done():
		shut, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		err = srv.Shutdown(shut)
		<-errc
		fmt.Fprintf(stderr, "machine %s stopped\n", m.id)
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(stderr, "godwit demo-machine:", err)
		return 1
	}
	return 0
}

// demoHandler is a sample machine of app hello or todo. Both answer
// /healthz (the apps' check).
func demoHandler(m demoMachine, todos *todoList) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	if m.app == "todo" {
		mux.Handle("/", todoHandler(m, todos))
	} else {
		mux.Handle("/", helloHandler(m))
	}
	return mux
}

// helloHandler says which machine answered, in which process.
func helloHandler(m demoMachine) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		where := "served in the demo's own process"
		if m.pid != 0 {
			where = fmt.Sprintf("a process of its own, pid %d, started %v before this request", m.pid, time.Since(m.started).Round(time.Millisecond))
		}
		fmt.Fprintf(w, "Hello from machine %s in region %s (%s)\n", m.id, m.region, where)
		fmt.Fprintf(w, "  the edge in %s took your request %s\n", r.Header.Get("Fly-Region"), r.Header.Get("Fly-Request-Id"))
	})
}

// todoHandler is Fly's classic read-replica app: any machine answers a
// read (here from a list the demo's todo machines share, as if
// replicated); a write reaching a machine outside the primary region is
// answered `fly-replay: region=<primary>`, so that the edge replays it to
// the primary, which writes.
func todoHandler(m demoMachine, todos *todoList) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		edge := fmt.Sprintf("  the edge in %s took your request %s\n", r.Header.Get("Fly-Region"), r.Header.Get("Fly-Request-Id"))
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			total, last := todos.list(5)
			fmt.Fprintf(w, "todo machine %s in region %s read %d todos (reads are answered in the nearest region)\n", m.id, m.region, total)
			for i, t := range last {
				fmt.Fprintf(w, "  #%d %s\n", total-i, t)
			}
			io.WriteString(w, edge)
			return
		}
		if m.region != m.primary {
			w.Header().Set("Fly-Replay", "region="+m.primary)
			w.WriteHeader(http.StatusConflict)
			fmt.Fprintf(w, "writes go to the primary region, %s\n", m.primary)
			return
		}
		b, err := io.ReadAll(io.LimitReader(r.Body, 1<<10))
		if err != nil {
			http.Error(w, "read the todo: "+err.Error(), http.StatusBadRequest)
			return
		}
		io.Copy(io.Discard, r.Body)
		todo := strings.Join(strings.Fields(string(b)), " ")
		if todo == "" {
			todo = "(empty)"
		}
		n := todos.add(todo)
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "todo machine %s in region %s (the primary) wrote todo #%d: %s\n", m.id, m.region, n, todo)
		if src := r.Header.Get("Fly-Replay-Src"); src != "" {
			fmt.Fprintf(w, "  replayed here by the edge: fly-replay-src: %s\n", src)
		} else {
			io.WriteString(w, "  not replayed: the edge sent it to the primary region directly\n")
		}
		io.WriteString(w, edge)
	})
}

// todoList is the todo app's data: the newest todoKeep entries and how
// many were written.
type todoList struct {
	mu    sync.Mutex
	items []string // oldest first
	total int
}

const todoKeep = 100

// add appends a todo and returns its number (from 1).
func (l *todoList) add(t string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.items) == todoKeep {
		l.items = append(l.items[:0], l.items[1:]...)
	}
	l.items = append(l.items, t)
	l.total++
	return l.total
}

// list returns how many todos were written and the newest n of them,
// newest first.
func (l *todoList) list(n int) (int, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]string, 0, n)
	for i := len(l.items) - 1; i >= 0 && len(out) < n; i-- {
		out = append(out, l.items[i])
	}
	return l.total, out
}

// demoMachines are the sample machines the demo serves in-process: plain
// HTTP servers on loopback, closed after the edges have drained.
type demoMachines struct {
	todos *todoList // shared by every todo machine

	mu      sync.Mutex
	servers []*http.Server
	wg      sync.WaitGroup
}

// start serves machine m on a free loopback port and returns its address.
func (d *demoMachines) start(m demoMachineConfig) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	h := demoHandler(demoMachine{id: m.ID, app: m.App, region: m.Region, primary: m.Primary, started: time.Now()}, d.todos)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	d.mu.Lock()
	d.servers = append(d.servers, srv)
	d.mu.Unlock()
	d.wg.Go(func() { srv.Serve(ln) }) // ends with ErrServerClosed at close
	return ln.Addr().String(), nil
}

// close stops every machine (idempotent) and returns once they are gone.
func (d *demoMachines) close() {
	d.mu.Lock()
	servers := d.servers
	d.servers = nil
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		if s.Shutdown(ctx) != nil {
			s.Close()
		}
	}
	d.wg.Wait()
}
