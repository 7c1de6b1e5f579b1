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
// For the nginx peer of bench/replay.sh (bench/nginx-replay.conf) it plays an
// upstream that answers X-Accel-Redirect, nginx's analogue of fly-replay: a
// request whose Host is -accel-host (default accel.local, with or without a
// port) gets 204 with an empty body and "X-Accel-Redirect: /t/64" for GET /64
// ("/t/4k" for /4k; 404 for any other path), whatever its method, and nginx
// sends it on to the backend again as /64 with Host target.local. Under that
// Host, /_accel-redirects answers (text/plain) how many such redirects the
// backend has sent since it started, so that replay.sh can check that each
// request through nginx took two backend requests.
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
	"sync/atomic"
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

var (
	ctype     = []string{"application/octet-stream"}
	textPlain = []string{"text/plain; charset=utf-8"}
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18000", "listen address (host:port)")
	srcHost := flag.String("src-host", "src.local", "Host of the source app, answered with fly-replay (\"\": never)")
	replayTo := flag.String("replay", "app=target", "fly-replay header value sent for -src-host")
	cachePat := flag.String("replay-cache", "/c/*", "Fly-Replay-Cache value sent for -src-host paths under /c/")
	cacheTTL := flag.Int("replay-cache-ttl", 3600, "Fly-Replay-Cache-Ttl-Secs value sent with -replay-cache")
	accelHost := flag.String("accel-host", "accel.local", "Host answered with X-Accel-Redirect (\"\": never)")
	accelPrefix := flag.String("accel-prefix", "/t", "X-Accel-Redirect value: this prefix + the request path")
	flag.Parse()

	r64, r4k := newReply(64), newReply(4096)
	src := *srcHost
	srcPort := src + ":" // Host with a port
	flyReplay := []string{*replayTo}
	flyCache := []string{*cachePat}
	flyCacheTTL := []string{strconv.Itoa(*cacheTTL)}
	accel := *accelHost
	accelPort := accel + ":"
	accel64 := []string{*accelPrefix + "/64"}
	accel4k := []string{*accelPrefix + "/4k"}
	var accelSent atomic.Int64 // X-Accel-Redirect answers sent

	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The X-Accel-Redirect upstream (nginx peer): as cheap a test as the
		// source app's for every other request.
		if accel != "" && (r.Host == accel || strings.HasPrefix(r.Host, accelPort)) {
			var to []string
			switch r.URL.Path {
			case "/64":
				to = accel64
			case "/4k":
				to = accel4k
			case "/_accel-redirects":
				w.Header()["Content-Type"] = textPlain
				w.Write(strconv.AppendInt(nil, accelSent.Load(), 10)) //nolint:errcheck // client went away
				return
			default:
				http.NotFound(w, r)
				return
			}
			accelSent.Add(1)
			w.Header()["X-Accel-Redirect"] = to
			w.WriteHeader(http.StatusNoContent)
			return
		}
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
