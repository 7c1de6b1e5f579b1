package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCgroupMemoryLimit(t *testing.T) {
	root := t.TempDir()
	write := func(path, content string) {
		t.Helper()
		f := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// v2: the service's own limit is "max", its slice's is 2 GiB.
	write("memory.max", "max\n")
	write("system.slice/memory.max", "2147483648\n")
	write("system.slice/godwit.service/memory.max", "max\n")
	// v1: a container's limit of 512 MiB, the root's "unlimited".
	write("memory/memory.limit_in_bytes", "9223372036854771712\n")
	write("memory/docker/abc/memory.limit_in_bytes", "536870912\n")
	write("memory/free/memory.limit_in_bytes", "9223372036854771712\n")

	for _, tc := range []struct {
		name, self string
		want       int64
		file       string
	}{
		{"v2, the parent's limit", "0::/system.slice/godwit.service\n", 2 << 30, "system.slice/memory.max"},
		{"v2, none", "0::/\n", 0, ""},
		{"v1, the container's limit", "4:memory:/docker/abc\n3:cpuset:/\n", 512 << 20, "memory/docker/abc/memory.limit_in_bytes"},
		{"v1, unlimited", "12:memory,hugetlb:/free\n", 0, ""},
		{"v1 named with others, unknown path", "7:cpu,memory:/gone\n", 0, ""},
		{"garbage", "nonsense\n", 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, file, ok := cgroupMemoryLimit(root, []byte(tc.self))
			if ok != (tc.want > 0) || got != tc.want || (ok && file != filepath.Join(root, tc.file)) {
				t.Errorf("got %d from %q (ok %v), want %d from %q", got, file, ok, tc.want, tc.file)
			}
		})
	}
}
