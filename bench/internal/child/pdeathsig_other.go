//go:build !linux

package child

import "os/exec"

// setPdeathsig: only Linux has it; the bench's own clean-up still runs.
func setPdeathsig(*exec.Cmd) {}
