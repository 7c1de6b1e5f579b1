package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/godwit/godwit/config"
	"github.com/godwit/godwit/proxy"
)

//go:embed demo.toml
var demoConfig string

// cmdDemo runs one edge with two sample machines served in-process, and
// prints how to talk to it.
func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	httpAddr := fs.String("http", "127.0.0.1:8080", "client listener address")
	adminAddr := fs.String("admin", "127.0.0.1:9090", "admin listener address (/metrics, /v1/machines)")
	verbose := fs.Bool("v", false, "log every request")
	if err := fs.Parse(args); err != nil {
		return 2
	}

	machines, err := startDemoMachines([]demoMachine{{id: "hello-1", region: "iad"}, {id: "hello-2", region: "iad"}})
	if err != nil {
		fmt.Fprintln(stderr, "demo:", err)
		return 1
	}
	defer machines.close()

	text := strings.NewReplacer(
		"{{http}}", *httpAddr, "{{admin}}", *adminAddr,
		"{{m1}}", machines.addrs[0], "{{m2}}", machines.addrs[1],
		"{{access}}", fmt.Sprint(*verbose),
	).Replace(demoConfig)
	cfg, err := config.Parse([]byte(text), "demo.toml")
	if err != nil {
		fmt.Fprintln(stderr, "demo: embedded config:", err)
		return 1
	}
	return serve(ctx, cfg, stderr, func(s *proxy.Server) {
		http := s.Addr("http")
		_, port, _ := net.SplitHostPort(http)
		fmt.Fprintf(stdout, `godwit demo: one edge (region iad) in front of two sample machines.

  edge      http://localhost:%[1]s/   (apps by Host header: "localhost" → app hello)
  admin     http://%[2]s/metrics   http://%[2]s/v1/machines

Try:
  curl -i http://localhost:%[1]s/
  curl -s http://%[2]s/v1/machines

Ctrl-C stops it (in-flight requests finish first).
`, port, s.Addr("admin"))
	})
}

type demoMachine struct{ id, region string }

// demoMachines are sample app machines: plain HTTP servers on loopback that
// say who they are and what the edge told them.
type demoMachines struct {
	addrs   []string
	servers []*http.Server
	wg      sync.WaitGroup
}

func startDemoMachines(ms []demoMachine) (*demoMachines, error) {
	d := &demoMachines{}
	for _, m := range ms {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			d.close()
			return nil, fmt.Errorf("start sample machine %s: %w", m.id, err)
		}
		srv := &http.Server{Handler: demoHandler(m), ReadHeaderTimeout: 10 * time.Second}
		d.addrs = append(d.addrs, ln.Addr().String())
		d.servers = append(d.servers, srv)
		d.wg.Go(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				fmt.Printf("sample machine %s: %v\n", m.id, err)
			}
		})
	}
	return d, nil
}

func (d *demoMachines) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range d.servers {
		s.Shutdown(ctx)
	}
	d.wg.Wait()
}

func demoHandler(m demoMachine) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "Hello from machine %s in region %s\n", m.id, m.region)
		fmt.Fprintf(w, "  you are %s, the edge in %s took your request %s\n",
			r.Header.Get("Fly-Client-IP"), r.Header.Get("Fly-Region"), r.Header.Get("Fly-Request-Id"))
	})
}
