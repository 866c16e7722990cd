//go:build !linux

package proxy

import "go.uber.org/zap"

// eventLoopsAvailable: no event loop outside Linux; every session is
// relayed by its own goroutines.
const eventLoopsAvailable = false

type loopConn struct {
	loop     *eventLoop
	handback chan struct{}
	active   bool
	leave    bool
	end      bool
	endErr   error
}

type eventLoop struct{}

func newEventLoops(int, bool, *zap.Logger) []*eventLoop { return nil }

func (l *eventLoop) request(*Session, bool) bool { return false }

func (s *Session) enterLoop() bool { return false }

func (s *Session) leaveLoop() bool { return true }

func (l *eventLoop) sessions() int { return 0 }

func (l *eventLoop) quietParks() uint64 { return 0 }
