package proxy

// BuffersBorrowed is the number of pooled session buffers in use.
func BuffersBorrowed() int64 { return borrowed.Load() }
