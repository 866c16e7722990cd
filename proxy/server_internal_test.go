package proxy

import "testing"

// GODEBUG's asyncpreemptoff is read as the runtime reads it: the last
// setting wins, and any non-zero number turns async preemption off (an
// unreadable value is taken as off too: a blocking loop then parks, which
// is always safe).
func TestAsyncPreemptionSetting(t *testing.T) {
	for godebug, want := range map[string]bool{
		"":                                    true,
		"gctrace=1":                           true,
		"asyncpreemptoff=0":                   true,
		"asyncpreemptoff=1":                   false,
		"asyncpreemptoff=2":                   false,
		"asyncpreemptoff=-1":                  false,
		"asyncpreemptoff=01":                  false,
		"asyncpreemptoff=yes":                 false,
		"gctrace=1, asyncpreemptoff=1":        false,
		"asyncpreemptoff=1,asyncpreemptoff=0": true,
		"asyncpreemptoff=0,asyncpreemptoff=1": false,
		"xasyncpreemptoff=1":                  true,
	} {
		if got := asyncPreemption(godebug); got != want {
			t.Errorf("asyncPreemption(%q) = %v, want %v", godebug, got, want)
		}
	}
}

// Blocking loops leave one processor to everything else, and from four on
// one more per dedicated mark worker the collector may run.
func TestSpareProcs(t *testing.T) {
	for procs, want := range map[int]int{1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 7: 3, 8: 3, 16: 5} {
		if got := spareProcs(procs); got != want {
			t.Errorf("spareProcs(%d) = %d, want %d", procs, got, want)
		}
	}
}
