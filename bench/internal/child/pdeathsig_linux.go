package child

import (
	"os/exec"
	"syscall"
)

// setPdeathsig makes the kernel SIGKILL the child when the bench dies, even
// by SIGKILL, so that no child outlives it.
func setPdeathsig(c *exec.Cmd) {
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
