package main

import "testing"

func TestProcsFor(t *testing.T) {
	for _, c := range []struct {
		name                              string
		configured, current, numCPU, want int
		envSet                            bool
	}{
		{"configured wins", 3, 8, 8, 3, true},
		{"environment wins", 0, 8, 8, 8, true},
		{"container limit kept", 0, 2, 16, 2, false},
		{"unlimited: half the CPUs and one", 0, 16, 16, 9, false},
		{"two CPUs: two", 0, 2, 2, 2, false},
		{"one CPU: one", 0, 1, 1, 1, false},
		{"odd count rounds down", 0, 3, 3, 2, false},
	} {
		if got := procsFor(c.configured, c.current, c.numCPU, c.envSet); got != c.want {
			t.Errorf("%s: procsFor(%d, %d, %d, %v) = %d, want %d", c.name, c.configured, c.current, c.numCPU, c.envSet, got, c.want)
		}
	}
}
