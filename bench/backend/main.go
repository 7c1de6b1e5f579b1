// Command backend is the origin server for the benchmark harnesses in bench/.
//
// It serves GET /64 (a 64-byte body) and GET /4k (a 4096-byte body) with
// keep-alive; /c/64 and /c/4k serve the same bodies. Any other path gets 404.
//
// For bench/replay.sh it also plays the source app of a fly-replay: a request
// whose Host is -src-host (default src.local) and that carries neither
// Fly-Replay-Src (set by the proxy on a replayed request) nor
// Fly-Replay-Cache-Status (set by the proxy on a request its replay cache
// routed) gets 204 with an empty body and "Fly-Replay: app=target", whatever
// its path. When the path starts with /c/ the answer also asks the proxy to
// cache the replay: "Fly-Replay-Cache: /c/*" and
// "Fly-Replay-Cache-Ttl-Secs: 3600". Every other request, including a
// replayed one that still has Host src.local, is served as above.
//
// Bodies and header values are built once at start, so a request allocates
// nothing beyond what net/http itself does.
package main

import (
	"bytes"
	"flag"
	"log"
	"net/http"
	"strconv"
	"strings"
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
	srcHost := flag.String("src-host", "src.local", "Host of the source app, answered with fly-replay (\"\": never)")
	replayTo := flag.String("replay", "app=target", "fly-replay header value sent for -src-host")
	cachePat := flag.String("replay-cache", "/c/*", "Fly-Replay-Cache value sent for -src-host paths under /c/")
	cacheTTL := flag.Int("replay-cache-ttl", 3600, "Fly-Replay-Cache-Ttl-Secs value sent with -replay-cache")
	flag.Parse()

	r64, r4k := newReply(64), newReply(4096)
	src := *srcHost
	srcPort := src + ":" // Host with a port
	flyReplay := []string{*replayTo}
	flyCache := []string{*cachePat}
	flyCacheTTL := []string{strconv.Itoa(*cacheTTL)}

	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The source app: one string comparison for every other request.
		if src != "" && (r.Host == src || strings.HasPrefix(r.Host, srcPort)) &&
			r.Header["Fly-Replay-Src"] == nil && r.Header["Fly-Replay-Cache-Status"] == nil {
			hdr := w.Header()
			hdr["Fly-Replay"] = flyReplay
			if strings.HasPrefix(r.URL.Path, "/c/") {
				hdr["Fly-Replay-Cache"] = flyCache
				hdr["Fly-Replay-Cache-Ttl-Secs"] = flyCacheTTL
			}
			w.WriteHeader(http.StatusNoContent)
			return
		}
		var rp *reply
		switch r.URL.Path {
		case "/64", "/c/64":
			rp = &r64
		case "/4k", "/c/4k":
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
