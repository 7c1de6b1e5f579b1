// Command idleconns measures the memory a proxy needs to hold many idle
// keep-alive client connections: it opens -n connections, sends one request
// on each (so each is a real, used keep-alive connection), keeps them all
// open and idle, and prints the proxy's resident memory (VmRSS of -pid)
// before and after.
//
// With -slowloris M it then opens M more connections that each send a
// partial request head (slowloris clients, which the proxy holds until its
// header timeout) and prints the resident memory again. The figures are
// taken within -hold of opening them, so -hold plus the time to open them
// must stay under the proxy's header timeout (godwit: 10 s by default).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18083", "proxy address")
	host := flag.String("host", "bench.local", "Host header")
	path := flag.String("path", "/64", "request path")
	n := flag.Int("n", 10000, "connections to hold")
	pid := flag.Int("pid", 0, "proxy process id (for VmRSS)")
	hold := flag.Duration("hold", 2*time.Second, "how long to hold the idle connections before measuring")
	slowloris := flag.Int("slowloris", 0, "connections holding a partial request head, opened after the idle ones")
	flag.Parse()

	raiseNoFile(uint64(*n+*slowloris) + 1024)
	before := rss(*pid)
	conns := make([]net.Conn, 0, *n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", *path, *host)
	start := time.Now()
	for i := 0; i < *n; i++ {
		c, err := net.DialTimeout("tcp", *addr, 5*time.Second)
		if err != nil {
			fail("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(req)); err != nil {
			fail("write on connection %d: %v", i, err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			fail("response on connection %d: %v", i, err)
		}
		if resp.StatusCode != 200 {
			fail("connection %d: status %d", i, resp.StatusCode)
		}
		resp.Body.Close()
		c.SetDeadline(time.Time{})
		if (i+1)%2000 == 0 {
			fmt.Fprintf(os.Stderr, "  %d connections open (%.1fs)\n", i+1, time.Since(start).Seconds())
		}
	}
	// Let the proxy settle (GC, buffers released by idle connections).
	time.Sleep(*hold)
	after := rss(*pid)
	fmt.Printf("connections=%d rss_before_kib=%d rss_after_kib=%d per_conn_bytes=%.0f\n",
		*n, before, after, float64(after-before)*1024/float64(max(*n, 1)))
	if *slowloris == 0 {
		return
	}
	partial := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nX-Slow: a", *path, *host)
	start = time.Now()
	for i := 0; i < *slowloris; i++ {
		c, err := net.DialTimeout("tcp", *addr, 5*time.Second)
		if err != nil {
			fail("slowloris connection %d: %v", i, err)
		}
		conns = append(conns, c)
		if _, err := c.Write([]byte(partial)); err != nil {
			fail("write on slowloris connection %d: %v", i, err)
		}
	}
	opened := time.Since(start)
	time.Sleep(*hold)
	slow := rss(*pid)
	// Still held? A connection the proxy closed reads EOF at once.
	held := 0
	for _, c := range conns[*n:] {
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err != nil && os.IsTimeout(err) {
			held++
		}
	}
	fmt.Printf("slowloris=%d opened_in_s=%.1f held=%d rss_kib=%d per_slowloris_conn_bytes=%.0f\n",
		*slowloris, opened.Seconds(), held, slow, float64(slow-after)*1024/float64(*slowloris))
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
