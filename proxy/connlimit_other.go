//go:build !unix

package proxy

// openFileLimit returns 0: the open-file limit is a Unix notion.
func openFileLimit() uint64 { return 0 }
