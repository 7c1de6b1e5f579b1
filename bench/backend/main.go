// Command backend is the origin server for the benchmark harness in bench/.
//
// It serves GET /64 (a 64-byte body) and GET /4k (a 4096-byte body) with
// keep-alive. Bodies and header values are built once at start, so a request
// allocates nothing beyond what net/http itself does. Any other path gets 404.
package main

import (
	"bytes"
	"flag"
	"log"
	"net/http"
	"strconv"
	"time"
)

// reply is one precomputed response.
type reply struct {
	body []byte
	clen []string // Content-Length header value
}

func newReply(n int) reply {
	return reply{
		body: bytes.Repeat([]byte("x"), n),
		clen: []string{strconv.Itoa(n)},
	}
}

var ctype = []string{"application/octet-stream"}

func main() {
	addr := flag.String("addr", "127.0.0.1:18000", "listen address (host:port)")
	flag.Parse()

	r64, r4k := newReply(64), newReply(4096)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var rp *reply
		switch r.URL.Path {
		case "/64":
			rp = &r64
		case "/4k":
			rp = &r4k
		default:
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		hdr := w.Header()
		// Assign the canonical keys directly: no per-request slice or string.
		hdr["Content-Type"] = ctype
		hdr["Content-Length"] = rp.clen
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			w.Write(rp.body) //nolint:errcheck // client went away; nothing to do
		}
	})

	srv := &http.Server{
		Addr:              *addr,
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
	}
	srv.SetKeepAlivesEnabled(true)
	log.Printf("backend listening on %s", *addr)
	log.Fatal(srv.ListenAndServe())
}
