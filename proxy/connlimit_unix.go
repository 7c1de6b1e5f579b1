//go:build unix

package proxy

import "golang.org/x/sys/unix"

// openFileLimit returns the process's open-file limit (the soft
// RLIMIT_NOFILE), or 0 if it cannot be read.
func openFileLimit() uint64 {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	return uint64(rl.Cur)
}
