package main

import (
	"io"
	"net"
	"net/http"
	"sync/atomic"
)

// machine is an app machine served by the bench process: it answers its id
// on every path, and GET /health with 200 while healthy, 503 otherwise.
type machine struct {
	id      string
	addr    string
	healthy atomic.Bool
	srv     *http.Server
}

func startMachine(id string) (*machine, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	m := &machine{id: id, addr: ln.Addr().String()}
	m.healthy.Store(true)
	m.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/health" && !m.healthy.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, m.id)
	})}
	go m.srv.Serve(ln)
	return m, nil
}

func (m *machine) close() { m.srv.Close() }
