//go:build !linux

package main

import "os/exec"

// setPdeathsig does nothing outside Linux: killAll is the only clean-up.
func setPdeathsig(*exec.Cmd) {}
