package proxy

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// blackholeAddr returns a loopback address whose connects time out: a
// listening socket with a full accept queue that nobody accepts from, so
// the kernel drops further SYNs.
func blackholeAddr(t *testing.T) string {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("bind: %v", err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatalf("listen: %v", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatalf("getsockname: %v", err)
	}
	addr := (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*unix.SockaddrInet4).Port}).String()
	// Fill the accept queue until a connect hangs.
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return addr
		}
		t.Cleanup(func() { c.Close() })
		if i == 64 {
			t.Skip("cannot fill a listener's accept queue here: connects never time out")
		}
	}
}

func TestConnectTimeout(t *testing.T) {
	p := startProxy(t, oneApp("", []string{blackholeAddr(t)})+"[proxy]\nconnect_timeout = \"100ms\"\nconnect_retries = 0\n")
	c := newClient(t)
	start := time.Now()
	wantProxyError(t, p.get(t, c, webHost, "/"), CodeConnectTimeout)
	if took := time.Since(start); took < 100*time.Millisecond {
		t.Errorf("answered after %v, want at least the 100ms connect_timeout", took)
	}
	if st := p.machineStatus(t, "m1"); st.Health != "failing" {
		t.Errorf("GET /v1/machines m1: got health %q, want \"failing\"", st.Health)
	}
}
