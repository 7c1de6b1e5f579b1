package main

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/godwit/godwit/bench/internal/child"
)

// pinSelf moves every thread of this process to cpu (taskset -a -p);
// threads made later inherit it. The caller runs it after the builds,
// which use every core, and sets GOMAXPROCS to 1: the load generator gets
// one core, as each proxy does.
func pinSelf(cpu int) error {
	out, err := exec.Command(child.TasksetPath, "-a", "-p", "-c", strconv.Itoa(cpu), strconv.Itoa(os.Getpid())).CombinedOutput()
	if err != nil {
		return fmt.Errorf("taskset -a -p -c %d %d: %w: %s", cpu, os.Getpid(), err, strings.TrimSpace(string(out)))
	}
	return nil
}
