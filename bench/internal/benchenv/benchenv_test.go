package benchenv

import (
	"net"
	"os"
	"strconv"
	"testing"
)

func TestFreePorts(t *testing.T) {
	ports, err := FreePorts(3)
	if err != nil {
		t.Fatalf("FreePorts(3): %v", err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Errorf("FreePorts(3) = %v: %d twice", ports, p)
		}
		seen[p] = true
		addr := "127.0.0.1:" + strconv.Itoa(p)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("port %d not free for TCP: %v", p, err)
			continue
		}
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			t.Errorf("port %d not free for UDP: %v", p, err)
		} else {
			pc.Close()
		}
		ln.Close()
	}
}

func TestProcessTicks(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	if _, err := ProcessTicks(os.Getpid()); err != nil {
		t.Errorf("ProcessTicks(own pid): %v", err)
	}
	if _, err := ProcessTicks(-1); err == nil {
		t.Errorf("ProcessTicks(-1): no error, want one")
	}
}
