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
// The sockets are non-blocking: read(2) and write(2) return at once, with
// data or EAGAIN, and the goroutine then parks on the poller exactly as
// net.Conn does (deadlines and Close work the same). What differs is the
// system call itself. net.Conn's goes through the scheduler's syscall entry,
// and on a loaded machine a write that wakes the peer (PostgreSQL, the
// client) is often preempted by the kernel right there; the runtime's
// monitor then sees the processor "blocked in a system call", hands it to
// another thread and keeps polling every 20 µs — thread wake-ups and
// context switches that cost more than the relaying itself (measured under
// pgbench: sysmon and scheduler hand-offs were a fifth of tenantguard's
// CPU). A non-blocking call never blocks, so it needs none of that.
type rawSocket struct {
	conn net.Conn
	raw  syscall.RawConn
	peek [1]byte // MSG_PEEK target of readBorrowed
}

// newSocketIO returns the reader/writer the relay uses for conn: a rawSocket
// for TCP and Unix sockets, conn itself for anything else (TLS).
func newSocketIO(conn net.Conn) io.ReadWriter {
	if sc, ok := conn.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			return &rawSocket{conn: conn, raw: raw}
		}
	}
	return conn
}

func (s *rawSocket) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var (
		n     int
		errno syscall.Errno
	)
	err := s.raw.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			if e == syscall.EINTR {
				continue
			}
			n, errno = int(r), e
			return e != syscall.EAGAIN
		}
	})
	switch {
	case err != nil: // deadline, closed by us: the runtime's own errors
		return 0, err
	case errno != 0:
		return 0, s.opError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (s *rawSocket) Write(p []byte) (int, error) {
	var (
		done  int
		errno syscall.Errno
	)
	err := s.raw.Write(func(fd uintptr) bool {
		for done < len(p) {
			r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[done])), uintptr(len(p)-done))
			switch e {
			case 0:
				done += int(r)
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false // socket buffer full: wait until writable
			default:
				errno = e
				return true
			}
		}
		return true
	})
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

// readBorrowed waits until the socket has data (or an error or EOF) without
// holding a buffer, then borrows one from the pool and reads into it. On
// EAGAIN after a wake-up the buffer goes back before waiting again. It
// returns the buffer (nil when none is held) and the bytes read.
func (s *rawSocket) readBorrowed() ([]byte, int, error) {
	var (
		buf   []byte
		n     int
		errno syscall.Errno
		first = true
	)
	err := s.raw.Read(func(fd uintptr) bool {
		if first {
			first = false
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
		if buf == nil {
			buf = getBuf()
		}
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
			if e == syscall.EINTR {
				continue
			}
			if e == syscall.EAGAIN {
				putBuf(buf)
				buf = nil
				return false
			}
			n, errno = int(r), e
			return true
		}
	})
	switch {
	case err != nil:
		return buf, 0, err
	case errno != 0:
		return buf, 0, s.opError("read", errno)
	case n == 0:
		return buf, 0, io.EOF
	}
	return buf, n, nil
}
