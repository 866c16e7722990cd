package proxy

// BuffersBorrowed is the number of pooled session buffers in use.
func BuffersBorrowed() int64 { return borrowed.Load() }

// LoopQuietParks is how many times the server's blocking event loops went
// quiet and parked on the runtime's poller.
func (s *Server) LoopQuietParks() uint64 {
	var n uint64
	for _, l := range s.loops {
		n += l.quietParks()
	}
	return n
}

// AsyncPreemption is asyncPreemption, for the tests.
var AsyncPreemption = asyncPreemption
