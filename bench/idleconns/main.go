// Command idleconns measures the memory a proxy needs to hold many idle
// keep-alive client connections: it opens -n connections, sends one request
// on each (so each is a real, used keep-alive connection), keeps them all
// open and idle, and prints the proxy's resident memory (VmRSS of -pid)
// before and after.
//
// -proto picks the connections: http1 (the default) is HTTP/1.1 over TCP;
// h2 is HTTP/2 over TLS (ALPN h2) and h3 HTTP/3 over QUIC, one TLS or QUIC
// connection (for h3 also one UDP socket) per client, as real clients
// have. h2 and h3 skip certificate verification, so a proxy serving a
// self-signed development certificate will do, and their line also says
// how many connections were still open when measured (one the proxy
// closed, over its connection cap or idle timeout, makes the figure too
// low). The clients send no pings of their own, so the proxy sees them idle:
// measure well within its idle timeout (godwit: 120 s by default).
//
// With -slowloris M (http1 only) it then opens M more connections that each
// send a partial request head (slowloris clients, which the proxy holds until
// its header timeout) and prints the resident memory again. The figures are
// taken within -hold of opening them, so -hold plus the time to open them
// must stay under the proxy's header timeout (godwit: 10 s by default).
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http2"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18083", "proxy address")
	host := flag.String("host", "bench.local", "Host header")
	path := flag.String("path", "/64", "request path")
	n := flag.Int("n", 10000, "connections to hold")
	pid := flag.Int("pid", 0, "proxy process id (for VmRSS)")
	hold := flag.Duration("hold", 2*time.Second, "how long to hold the idle connections before measuring")
	slowloris := flag.Int("slowloris", 0, "connections holding a partial request head, opened after the idle ones (http1 only)")
	proto := flag.String("proto", "http1", "client protocol: http1, h2 (HTTP/2 over TLS) or h3 (HTTP/3 over QUIC)")
	flag.Parse()

	var open func() (io.Closer, error)
	switch *proto {
	case "http1":
		open = func() (io.Closer, error) { return openHTTP1(*addr, *host, *path) }
	case "h2":
		tr := &http2.Transport{}
		open = func() (io.Closer, error) { return openH2(tr, *addr, *host, *path) }
	case "h3":
		tr := &http3.Transport{}
		open = func() (io.Closer, error) { return openH3(tr, *addr, *host, *path) }
	default:
		fail("-proto %q: want http1, h2 or h3", *proto)
	}
	if *slowloris > 0 && *proto != "http1" {
		fail("-slowloris works with -proto http1 only (a partial HTTP/1.1 request head), not %s", *proto)
	}

	raiseNoFile(uint64(*n+*slowloris) + 1024)
	before := rss(*pid)
	conns := make([]io.Closer, 0, *n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	for i := 0; i < *n; i++ {
		c, err := open()
		if err != nil {
			fail("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		if (i+1)%2000 == 0 {
			fmt.Fprintf(os.Stderr, "  %d connections open (%.1fs)\n", i+1, time.Since(start).Seconds())
		}
	}
	opened := time.Since(start)
	// Let the proxy settle (GC, buffers released by idle connections).
	time.Sleep(*hold)
	after := rss(*pid)
	perConn := float64(after-before) * 1024 / float64(max(*n, 1))
	if *proto == "http1" {
		fmt.Printf("connections=%d rss_before_kib=%d rss_after_kib=%d per_conn_bytes=%.0f\n",
			*n, before, after, perConn)
	} else {
		held := 0
		for _, c := range conns {
			if stillOpen(c) {
				held++
			}
		}
		fmt.Printf("proto=%s connections=%d open=%d opened_in_s=%.1f rss_before_kib=%d rss_after_kib=%d per_conn_bytes=%.0f\n",
			*proto, *n, held, opened.Seconds(), before, after, perConn)
	}
	if *slowloris == 0 {
		return
	}
	slowConns := make([]net.Conn, 0, *slowloris)
	defer func() {
		for _, c := range slowConns {
			c.Close()
		}
	}()
	partial := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nX-Slow: a", *path, *host)
	start = time.Now()
	for i := 0; i < *slowloris; i++ {
		c, err := net.DialTimeout("tcp", *addr, 5*time.Second)
		if err != nil {
			fail("slowloris connection %d: %v", i, err)
		}
		slowConns = append(slowConns, c)
		if _, err := c.Write([]byte(partial)); err != nil {
			fail("write on slowloris connection %d: %v", i, err)
		}
	}
	opened = time.Since(start)
	time.Sleep(*hold)
	slow := rss(*pid)
	// Still held? A connection the proxy closed reads EOF at once.
	held := 0
	for _, c := range slowConns {
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err != nil && os.IsTimeout(err) {
			held++
		}
	}
	fmt.Printf("slowloris=%d opened_in_s=%.1f held=%d rss_kib=%d per_slowloris_conn_bytes=%.0f\n",
		*slowloris, opened.Seconds(), held, slow, float64(slow-after)*1024/float64(*slowloris))
}

// openHTTP1 opens a TCP connection to addr and sends one HTTP/1.1 GET on
// it, reading the answer, so the proxy holds a used keep-alive connection.
func openHTTP1(addr, host, path string) (io.Closer, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host); err != nil {
		c.Close()
		return nil, fmt.Errorf("write: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("response: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		c.Close()
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// openH2 opens a TLS connection to addr with ALPN h2 and sends one HTTP/2
// GET on it. Each client gets its own connection (no pool): the point is
// what the proxy spends per connection, not per stream.
func openH2(tr *http2.Transport, addr, host, path string) (io.Closer, error) {
	d := &net.Dialer{Timeout: 5 * time.Second} // for the TLS handshake too
	tc, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{
		ServerName:         host,
		NextProtos:         []string{"h2"},
		InsecureSkipVerify: true, // a bench against a development certificate
	})
	if err != nil {
		return nil, err
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		tc.Close()
		return nil, fmt.Errorf("ALPN %q, not h2", p)
	}
	// Deprecated in favour of http.Transport.NewClientConn, which dials
	// itself; this one takes our connection as it is.
	cc, err := tr.NewClientConn(tc)
	if err != nil {
		tc.Close()
		return nil, err
	}
	if err := get(cc, host, path); err != nil {
		cc.Close()
		return nil, err
	}
	return cc, nil
}

// openH3 opens a QUIC connection to addr (on a UDP socket of its own, as a
// real client has) and sends one HTTP/3 GET on it.
func openH3(tr *http3.Transport, addr, host, path string) (io.Closer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	qc, err := quic.DialAddr(ctx, addr, &tls.Config{
		ServerName:         host,
		NextProtos:         []string{http3.NextProtoH3},
		InsecureSkipVerify: true, // a bench against a development certificate
	}, &quic.Config{
		HandshakeIdleTimeout: 5 * time.Second,
		// quic-go's client default (30 s) would end the connection before
		// the proxy's idle timeout does; the proxy's must decide. No
		// KeepAlivePeriod: the client stays silent, the proxy sees it idle.
		MaxIdleTimeout: 10 * time.Minute,
	})
	if err != nil {
		return nil, err
	}
	cc := h3Conn{tr.NewClientConn(qc)}
	if err := get(cc, host, path); err != nil {
		cc.Close()
		return nil, err
	}
	return cc, nil
}

// h3Conn closes an HTTP/3 connection with H3_NO_ERROR.
type h3Conn struct{ *http3.ClientConn }

func (c h3Conn) Close() error {
	return c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
}

// get sends GET path on rt and reads the whole answer, which must be 200.
func get(rt http.RoundTripper, host, path string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "https://"+host+path, nil)
	if err != nil {
		return err
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return fmt.Errorf("body: %w", err)
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// stillOpen says whether an h2 or h3 connection is still open: one the
// proxy closed would make the per-connection figure too low.
func stillOpen(c io.Closer) bool {
	switch c := c.(type) {
	case *http2.ClientConn:
		return !c.State().Closed
	case h3Conn:
		return c.Context().Err() == nil
	}
	return true
}

func rss(pid int) int64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		fail("read rss: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			var kib int64
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(line, "VmRSS:")), "%d", &kib)
			return kib
		}
	}
	return 0
}

func raiseNoFile(want uint64) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return
	}
	if l.Cur < want {
		l.Cur = min(want, l.Max)
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "idleconns: "+format+"\n", args...)
	os.Exit(1)
}
