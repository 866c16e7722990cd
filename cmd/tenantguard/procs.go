package main

import (
	"os"
	"runtime"
)

// procsFor is the GOMAXPROCS tenantguard runs with. configured > 0 wins;
// then GOMAXPROCS from the environment (envSet: current is that value);
// then a limit Go already applied (a container's CPU quota or the affinity
// mask: current < numCPU). Otherwise tenantguard takes half the machine's
// CPUs plus one, one on a one-CPU machine: a sidecar shares the machine
// with the application and often the database. The event loops get what
// the spare processors leave (new sessions, TLS sessions, the admin server
// and the garbage collector run there: proxy's spareProcs), one on a 2-CPU
// machine, and each waits on a thread of its own, as PgBouncer does,
// instead of parking on the runtime's poller; on a 2-core machine that
// measured 0.7–2 µs less CPU per transaction under load (README,
// Benchmarks).
func procsFor(configured, current, numCPU int, envSet bool) int {
	switch {
	case configured > 0:
		return configured
	case envSet, current < numCPU:
		return current
	case numCPU <= 1:
		return 1
	default:
		return numCPU/2 + 1
	}
}

// setProcs applies procsFor and returns the value in force. It always sets
// GOMAXPROCS, which stops the runtime from changing it later (when a
// container's CPU limit changes): the event loops are sized by it once.
func setProcs(configured int) int {
	_, envSet := os.LookupEnv("GOMAXPROCS")
	n := procsFor(configured, runtime.GOMAXPROCS(0), runtime.NumCPU(), envSet)
	runtime.GOMAXPROCS(n)
	return n
}
