package main

import (
	"bytes"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

// The backend's two answers. bench/backend serves 64 bytes and 4 KiB
// only; this bench needs a small body and a 1 MiB one, so the bench binary
// plays the backend itself (-internal-backend), as a child process of its
// own, pinned like any other.
const (
	smallPath = "/small"
	largePath = "/1m"
	largeSize = 1 << 20
)

// smallBody is the small answer: 13 bytes.
var smallBody = []byte("Hello, world!")

// sizes maps a -sizes name to its path and body length.
var sizes = map[string]struct {
	path  string
	bytes int64
}{
	"small": {smallPath, int64(len(smallBody))},
	"1m":    {largePath, largeSize},
}

// sizeLabel is how the report names a size.
func sizeLabel(size string) string {
	if size == "1m" {
		return "1 MiB"
	}
	return fmt.Sprintf("%d B", len(smallBody))
}

// internalBackend is the backend child: an HTTP/1.1 server on -addr that
// answers GET /small with 13 bytes and GET /1m with 1 MiB, precomputed,
// with Content-Length and keep-alive; 404 for anything else. It runs until
// it is killed.
func internalBackend(args []string) {
	fs := flag.NewFlagSet("backend", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	fs.Parse(args)

	type reply struct {
		body []byte
		clen []string
	}
	small := reply{smallBody, []string{strconv.Itoa(len(smallBody))}}
	large := reply{bytes.Repeat([]byte("x"), largeSize), []string{strconv.Itoa(largeSize)}}
	ctype := []string{"application/octet-stream"}

	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var rp *reply
		switch r.URL.Path {
		case smallPath:
			rp = &small
		case largePath:
			rp = &large
		default:
			http.NotFound(w, r)
			return
		}
		hdr := w.Header()
		hdr["Content-Type"] = ctype
		hdr["Content-Length"] = rp.clen
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			w.Write(rp.body) //nolint:errcheck // client went away
		}
	})
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		os.Exit(1)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
	}
	fmt.Fprintln(os.Stderr, "backend listening on", ln.Addr())
	fmt.Fprintln(os.Stderr, "backend:", srv.Serve(ln))
	os.Exit(1)
}
