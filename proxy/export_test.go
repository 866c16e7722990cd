package proxy

// BuffersBorrowed is the number of pooled session buffers in use.
func BuffersBorrowed() int64 { return borrowed.Load() }

// LoopSessions is the number of sessions the server's event loops hold.
func (s *Server) LoopSessions() int {
	n := 0
	for _, l := range s.loops {
		n += l.sessions()
	}
	return n
}
