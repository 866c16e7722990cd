package proxy

// BlockingLoops is the number of event loops of the process holding a
// processor of their own.
func BlockingLoops() int { return int(blockingLoops.Load()) }
