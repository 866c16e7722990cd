package proxy

import (
	"encoding/binary"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
)

// Session buffers are borrowed, not owned.
//
// An idle session waits for its client with no read buffer and no write
// buffer: it borrows one from a shared pool when bytes arrive or a message is
// written, and gives it back when everything read was consumed and the
// socket was drained, or when a flush emptied it. A thousand idle
// connections then cost their goroutines and sockets, not 24 KiB of buffers
// each; a busy session keeps its buffers between reads, so a streamed
// result does not go back to the pool at every message.

// bufSize is the size of every pooled buffer: large enough that a result
// set moves in few system calls.
const bufSize = 8192

// bigBufSize is the size of the pooled buffers the event loop holds a
// message over bufSize in (loopMaxMessage).
const bigBufSize = 64 << 10

var (
	bufPool    = sync.Pool{New: func() any { return new([bufSize]byte) }}
	bigBufPool = sync.Pool{New: func() any { return new([bigBufSize]byte) }}
	// borrowed counts the pooled buffers in use (tests check idle sessions).
	borrowed atomic.Int64
)

func getBuf() []byte {
	borrowed.Add(1)
	return bufPool.Get().(*[bufSize]byte)[:]
}

// putBuf returns a buffer from getBuf (its array pointer: no allocation).
func putBuf(b []byte) {
	borrowed.Add(-1)
	bufPool.Put((*[bufSize]byte)(b[:bufSize]))
}

func getBigBuf() []byte {
	borrowed.Add(1)
	return bigBufPool.Get().(*[bigBufSize]byte)[:]
}

func putBigBuf(b []byte) {
	borrowed.Add(-1)
	bigBufPool.Put((*[bigBufSize]byte)(b[:bigBufSize]))
}

// connReader is a buffered reader (the part of bufio.Reader the relay uses)
// whose buffer is released while the connection has nothing to read.
type connReader struct {
	src  io.Reader
	raw  *rawSocket // non-nil: wait for data before borrowing a buffer
	size int
	buf  []byte // nil while released
	r, w int
	// drained: the last read returned less than it asked for, so the
	// socket had nothing more; the next fill waits without a buffer.
	drained bool
	err     error
	// Where buf comes from: pooled (getBuf), big (getBigBuf: the event
	// loop holding a message over bufSize), or neither (owned, for TLS and
	// tests). want is the size of the message at the buffer's head the
	// event loop is waiting for.
	pooled bool
	big    bool
	want   int
}

func newConnReader(src io.Reader) *connReader {
	return newConnReaderSize(src, bufSize)
}

// newConnReaderSize is for tests: sizes other than bufSize are not pooled.
func newConnReaderSize(src io.Reader, size int) *connReader {
	cr := &connReader{src: src, size: size}
	if rs, ok := src.(*rawSocket); ok && size == bufSize {
		cr.raw = rs
	}
	return cr
}

// Size is the buffer size: the most Peek can return.
func (cr *connReader) Size() int { return cr.size }

// Buffered is the number of bytes read and not yet consumed.
func (cr *connReader) Buffered() int { return cr.w - cr.r }

// wholeMessageBuffered reports whether the buffer holds the whole next
// protocol message. The relay flushes what it wrote to the other side
// unless one does: a client may wait for the answer to what it sent first
// before it sends the rest of a message.
func (cr *connReader) wholeMessageBuffered() bool {
	b := cr.buf[cr.r:cr.w]
	return len(b) >= 5 && int64(len(b)) >= 1+int64(binary.BigEndian.Uint32(b[1:5]))
}

func (cr *connReader) take() {
	if cr.buf != nil {
		return
	}
	if cr.raw != nil {
		cr.buf, cr.pooled = getBuf(), true
	} else {
		// TLS (whose conn keeps buffers of its own) and tests: owned.
		cr.buf = make([]byte, cr.size)
	}
}

// release gives the buffer back when it holds nothing.
func (cr *connReader) release() {
	if cr.buf == nil || cr.r != cr.w {
		return
	}
	switch {
	case cr.big:
		putBigBuf(cr.buf)
	case cr.pooled:
		putBuf(cr.buf)
	default:
		return // owned: kept
	}
	cr.buf, cr.r, cr.w, cr.pooled, cr.big = nil, 0, 0, false, false
}

// fill reads once more into the buffer.
func (cr *connReader) fill() {
	if cr.err != nil {
		return
	}
	if cr.r == cr.w && cr.raw != nil && (cr.drained || cr.buf == nil) {
		// Nothing buffered and nothing in the socket: wait without a buffer.
		cr.release()
		buf, n, err := cr.raw.readBorrowed()
		cr.buf, cr.r, cr.w, cr.pooled = buf, 0, n, buf != nil
		cr.drained = n < cr.size
		if err != nil {
			cr.err = err
			cr.release()
		}
		return
	}
	cr.take()
	if cr.r > 0 {
		copy(cr.buf, cr.buf[cr.r:cr.w])
		cr.w -= cr.r
		cr.r = 0
	}
	n, err := cr.src.Read(cr.buf[cr.w:])
	if n < 0 {
		n = 0
	}
	cr.drained = n < len(cr.buf)-cr.w
	cr.w += n
	if err != nil {
		cr.err = err
	} else if n == 0 {
		cr.err = io.ErrNoProgress
	}
}

// clearDeadline forgets a read error that was a deadline (the relay's own,
// set to stop a reader for the event loop), so that reading can go on;
// other errors stay.
func (cr *connReader) clearDeadline() {
	if errors.Is(cr.err, os.ErrDeadlineExceeded) {
		cr.err = nil
	}
}

// Peek returns the next n bytes without consuming them; fewer, with the
// read error, when the stream ends first. n must not exceed Size.
func (cr *connReader) Peek(n int) ([]byte, error) {
	if n > cr.size {
		return nil, errors.New("proxy: peek beyond the buffer")
	}
	for cr.w-cr.r < n && cr.err == nil {
		cr.fill()
	}
	if cr.w-cr.r < n {
		return cr.buf[cr.r:cr.w], cr.err
	}
	return cr.buf[cr.r : cr.r+n], nil
}

// Discard skips n bytes.
func (cr *connReader) Discard(n int) (int, error) {
	done := 0
	for done < n {
		if cr.r == cr.w {
			if cr.err != nil {
				return done, cr.err
			}
			cr.fill()
			continue
		}
		k := min(n-done, cr.w-cr.r)
		cr.r += k
		done += k
	}
	return done, nil
}

// Read reads into p (io.Reader, for io.ReadFull).
func (cr *connReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if cr.r == cr.w {
		if cr.err != nil {
			return 0, cr.err
		}
		if len(p) >= cr.size && cr.buf == nil && !cr.drained {
			// A large body: straight into p.
			n, err := cr.src.Read(p)
			if err != nil {
				cr.err = err
			}
			return n, err
		}
		cr.fill()
		if cr.r == cr.w {
			return 0, cr.err
		}
	}
	n := copy(p, cr.buf[cr.r:cr.w])
	cr.r += n
	return n, nil
}

// connWriter is a buffered writer (the part of bufio.Writer the relay uses)
// that borrows its buffer for the span between the first write and the
// flush. Errors are sticky, as with bufio.Writer.
type connWriter struct {
	dst io.Writer
	buf []byte // nil between flushes
	err error
	// pre goes out before anything else: what the event loop could not
	// write when it handed the session back.
	pre []byte
}

func newConnWriter(dst io.Writer) *connWriter { return &connWriter{dst: dst} }

func (cw *connWriter) Write(p []byte) (int, error) {
	if cw.err != nil {
		return 0, cw.err
	}
	if cw.pre != nil {
		if err := cw.writePre(); err != nil {
			return 0, err
		}
	}
	total := len(p)
	for len(p) > 0 {
		if cw.buf == nil {
			if len(p) >= bufSize {
				// Nothing buffered and a large write: no copy.
				if _, err := cw.dst.Write(p); err != nil {
					cw.err = err
					return total - len(p), err
				}
				return total, nil
			}
			cw.buf = getBuf()[:0]
		}
		if len(cw.buf) == cap(cw.buf) {
			if err := cw.writeOut(); err != nil {
				return total - len(p), err
			}
			continue
		}
		k := copy(cw.buf[len(cw.buf):cap(cw.buf)], p)
		cw.buf = cw.buf[:len(cw.buf)+k]
		p = p[k:]
	}
	return total, nil
}

// writeOut writes the buffer and keeps it (empty) for more.
func (cw *connWriter) writeOut() error {
	if _, err := cw.dst.Write(cw.buf); err != nil {
		cw.err = err
		return err
	}
	cw.buf = cw.buf[:0]
	return nil
}

// writePre writes pre.
func (cw *connWriter) writePre() error {
	_, err := cw.dst.Write(cw.pre)
	cw.pre = nil
	if err != nil {
		cw.err = err
	}
	return err
}

// Flush writes what is buffered and gives the buffer back.
func (cw *connWriter) Flush() error {
	if cw.err != nil {
		return cw.err
	}
	if cw.pre != nil {
		if err := cw.writePre(); err != nil {
			return err
		}
	}
	if cw.buf == nil {
		return nil
	}
	if len(cw.buf) > 0 {
		if err := cw.writeOut(); err != nil {
			return err
		}
	}
	putBuf(cw.buf)
	cw.buf = nil
	return nil
}

// drop gives the buffer back whatever it holds: the connection is finished.
func (cr *connReader) drop() {
	if cr == nil {
		return
	}
	cr.r = cr.w // whatever it holds is discarded
	cr.release()
}

// drop gives the buffer back, discarding what was not flushed: the
// connection is finished.
func (cw *connWriter) drop() {
	if cw != nil && cw.buf != nil {
		putBuf(cw.buf)
		cw.buf = nil
	}
}

// dropBuffers returns a finished session's buffers to the pool. Both relay
// loops have returned; the writers' locks keep out a late terminate.
func (s *Session) dropBuffers() {
	s.cr.drop()
	s.ur.drop()
	s.cwMu.Lock()
	s.cw.drop()
	s.cwMu.Unlock()
	s.uwMu.Lock()
	s.uw.drop()
	s.uwMu.Unlock()
}
