package rules

import (
	"os/exec"
	"syscall"
)

// dieWithTest makes the kernel SIGKILL cmd's process when the test
// process dies, even by a signal that skips the test's cleanup.
func dieWithTest(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
