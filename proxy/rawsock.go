package proxy

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// rawSocket reads and writes a plain (non-TLS) socket with raw system calls
// on the runtime's poller.
//
// The sockets are non-blocking: recvfrom(2) and sendto(2) return at once,
// with data or EAGAIN, and the goroutine then parks on the poller exactly as
// net.Conn does (deadlines and Close work the same). What differs is the
// system call itself. recvfrom and sendto skip the file layer that read and
// write go through (tenantguard's CPU per prepared lookup 0.3–0.7 µs lower
// in 3 of 4 paired runs). net.Conn's goes through the scheduler's syscall
// entry, and on a loaded machine a write that wakes the peer (PostgreSQL, the
// client) is often preempted by the kernel right there; the runtime's
// monitor then sees the processor "blocked in a system call", hands it to
// another thread and keeps polling every 20 µs — thread wake-ups and
// context switches that cost more than the relaying itself (measured under
// pgbench: sysmon and scheduler hand-offs were a fifth of tenantguard's
// CPU). A non-blocking call never blocks, so it needs none of that.
type rawSocket struct {
	conn net.Conn
	raw  syscall.RawConn

	// State of the read in progress (one reader at a time) and of the
	// write in progress (writers are serialized by the session's locks).
	// The callbacks are method values made once, so that a read or write
	// allocates nothing.
	rbuf     []byte
	rn       int
	rerrno   syscall.Errno
	rfirst   bool // readBorrowed: the first call only peeks
	wbuf     []byte
	wdone    int
	werrno   syscall.Errno
	readFn   func(uintptr) bool
	borrowFn func(uintptr) bool
	writeFn  func(uintptr) bool
	peek     [1]byte // MSG_PEEK target of readBorrowed
}

// newSocketIO returns the reader/writer the relay uses for conn: a rawSocket
// for TCP and Unix sockets, conn itself for anything else (TLS).
func newSocketIO(conn net.Conn) io.ReadWriter {
	if sc, ok := conn.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			s := &rawSocket{conn: conn, raw: raw}
			s.readFn, s.borrowFn, s.writeFn = s.sysRead, s.doBorrowedRead, s.doWrite
			return s
		}
	}
	return conn
}

// sysRead reads into s.rbuf: false on EAGAIN.
func (s *rawSocket) sysRead(fd uintptr) bool {
	for {
		r, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&s.rbuf[0])), uintptr(len(s.rbuf)), 0, 0, 0)
		if e == syscall.EINTR {
			continue
		}
		s.rn, s.rerrno = int(r), e
		return e != syscall.EAGAIN
	}
}

func (s *rawSocket) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.rbuf, s.rn, s.rerrno = p, 0, 0
	err := s.raw.Read(s.readFn)
	s.rbuf = nil
	return s.readResult(err)
}

func (s *rawSocket) readResult(err error) (int, error) {
	switch {
	case err != nil: // deadline, closed by us: the runtime's own errors
		return 0, err
	case s.rerrno != 0:
		return 0, s.opError("read", s.rerrno)
	case s.rn == 0:
		return 0, io.EOF
	}
	return s.rn, nil
}

func (s *rawSocket) doWrite(fd uintptr) bool {
	for s.wdone < len(s.wbuf) {
		r, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&s.wbuf[s.wdone])), uintptr(len(s.wbuf)-s.wdone), syscall.MSG_NOSIGNAL, 0, 0)
		switch e {
		case 0:
			s.wdone += int(r)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false // socket buffer full: wait until writable
		default:
			s.werrno = e
			return true
		}
	}
	return true
}

func (s *rawSocket) Write(p []byte) (int, error) {
	s.wbuf, s.wdone, s.werrno = p, 0, 0
	err := s.raw.Write(s.writeFn)
	done, errno := s.wdone, s.werrno
	s.wbuf = nil
	if err != nil {
		return done, err
	}
	if errno != 0 {
		return done, s.opError("write", errno)
	}
	return done, nil
}

func (s *rawSocket) opError(op string, errno syscall.Errno) error {
	return &net.OpError{Op: op, Net: s.conn.LocalAddr().Network(), Source: s.conn.LocalAddr(),
		Addr: s.conn.RemoteAddr(), Err: os.NewSyscallError(op, errno)}
}

func (s *rawSocket) doBorrowedRead(fd uintptr) bool {
	if s.rfirst {
		s.rfirst = false
		for {
			_, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&s.peek[0])), 1,
				syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
			if e == syscall.EINTR {
				continue
			}
			if e == syscall.EAGAIN {
				return false // nothing yet: park with no buffer
			}
			break // data, EOF or an error: the read below tells
		}
	}
	if s.rbuf == nil {
		s.rbuf = getBuf()
	}
	if !s.sysRead(fd) {
		putBuf(s.rbuf)
		s.rbuf = nil
		return false
	}
	return true
}

// readBorrowed waits until the socket has data (or an error or EOF) without
// holding a buffer, then borrows one from the pool and reads into it. On
// EAGAIN after a wake-up the buffer goes back before waiting again. It
// returns the buffer (nil when none is held) and the bytes read.
func (s *rawSocket) readBorrowed() ([]byte, int, error) {
	s.rbuf, s.rn, s.rerrno, s.rfirst = nil, 0, 0, true
	err := s.raw.Read(s.borrowFn)
	buf := s.rbuf
	s.rbuf = nil
	n, rerr := s.readResult(err)
	return buf, n, rerr
}
