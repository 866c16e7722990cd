package main

import (
	"os"
	"runtime"
)

// procsFor is the GOMAXPROCS tenantguard runs with. configured > 0 wins;
// then GOMAXPROCS from the environment (envSet: current is that value);
// then a limit Go already applied (a container's CPU quota or the affinity
// mask: current < numCPU). Otherwise tenantguard takes half the machine's
// CPUs, at least one: a sidecar shares the machine with the application and
// often the database, and on a 2-core machine one processor measured
// 0.80 -> 0.82 (prepared) and 0.74 -> 0.87 (simple) of PgBouncer's lookup
// throughput, with less latency added (a 3-round A/B of make bench's lookup
// with GOMAXPROCS=2 and 1, figures in the README's Benchmarks section; the
// raw runs are not kept): idle processors cost a proxy thread wake-ups on
// every round trip.
func procsFor(configured, current, numCPU int, envSet bool) int {
	switch {
	case configured > 0:
		return configured
	case envSet, current < numCPU:
		return current
	default:
		return max(1, numCPU/2)
	}
}

// setProcs applies procsFor and returns the value in force.
func setProcs(configured int) int {
	_, envSet := os.LookupEnv("GOMAXPROCS")
	cur := runtime.GOMAXPROCS(0)
	n := procsFor(configured, cur, runtime.NumCPU(), envSet)
	if n != cur {
		runtime.GOMAXPROCS(n)
	}
	return n
}
