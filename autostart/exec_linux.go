//go:build linux

package autostart

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// cldStopped is siginfo's si_code of a child that stopped (CLD_STOPPED).
const cldStopped = 5

// waitStopped returns once the process pid, a child of godwit, has
// stopped: all its threads, as the kernel tells a parent (waitid
// WSTOPPED, without taking the report: WNOWAIT). kill(SIGSTOP) only asks:
// until then the process may go on answering requests.
func waitStopped(ctx context.Context, pid int, d time.Duration) error {
	deadline := time.Now().Add(d)
	pause := 100 * time.Microsecond
	for {
		var info unix.Siginfo
		if err := unix.Waitid(unix.P_PID, pid, &info, unix.WSTOPPED|unix.WNOWAIT|unix.WNOHANG, nil); err != nil {
			return fmt.Errorf("waitid: %w", err)
		}
		if info.Signo == int32(unix.SIGCHLD) && info.Code == cldStopped {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("process %d not stopped %v after SIGSTOP", pid, d)
		}
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		pause = min(2*pause, 10*time.Millisecond)
	}
}
