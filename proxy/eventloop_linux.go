//go:build linux

package proxy

import (
	"encoding/binary"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"go.uber.org/zap"
)

// The event loop relays established plain-socket sessions from one
// goroutine per loop, waiting on one epoll set, instead of two goroutines
// per session parked on the runtime's poller.
//
// Why: under a request/response load the goroutine relay parks and wakes
// two goroutines per round trip, and each park needs a read that fails
// with EAGAIN first. Measured under pgbench (prepared lookups): 5.8–6.2
// system calls per transaction with the goroutine relay, 4.5–5.1 with the
// loop (PgBouncer 4.2–4.3), and 1–2 µs less CPU per transaction. The loop waits on
// every socket at once (level-triggered), reads what is there, runs the
// same message handlers as the relay goroutines (hooks included) and
// writes without blocking.
//
// The loop only runs the common case. Anything else hands the session back
// to its own goroutine, which rebuilds net.Conns on the same sockets and
// continues with the goroutine relay, where every case is handled, until
// both relay goroutines can stop between two messages at a ReadyForQuery
// (relay.go, stopForLoop: at once after the first hand-back, then after a
// growing wait) and the session enters the loop again:
//   - a message over 64 KiB (loopMaxMessage), or malformed, or Terminate;
//   - a peer that does not take what is written (EAGAIN, or an error): what
//     was not written is kept and goes out first after the hand-back, each
//     direction from its own relay goroutine (the peer may be waiting for
//     us to read before it reads);
//   - end of stream or a read error (read again by the relay goroutines);
//   - a hook ending the session, a drain, a terminate from elsewhere.
//
// The loop owns a session's sockets while it holds it: their net.Conns are
// closed (after dup, which takes the sockets off the runtime's poller) and
// nothing else reads, writes or closes them. terminate called meanwhile is
// deferred (Session.deferTerminate).

// eventLoopsAvailable: this platform has epoll.
const eventLoopsAvailable = true

// loopConn is a session's state in the event loop.
type loopConn struct {
	loop     *eventLoop
	cfd, ufd int        // the duplicated sockets
	cout     loopSocket // writes to the client
	uout     loopSocket // writes to the upstream
	handback chan struct{}

	// Loop goroutine only while active; the handback channel publishes
	// them to the session's goroutine.
	active bool // in the loop
	leave  bool // hand back after the current message
	end    bool // ... and terminate the session with endErr
	endErr error
}

// loopSocket writes to a socket without blocking. What the socket does not
// take is kept in over and the session is handed back.
type loopSocket struct {
	lc   *loopConn
	fd   int
	over []byte
}

func (w *loopSocket) Write(p []byte) (int, error) {
	n := len(p)
	if len(w.over) == 0 {
		for len(p) > 0 {
			r, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, uintptr(w.fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), syscall.MSG_NOSIGNAL, 0, 0)
			if e == syscall.EINTR {
				continue
			}
			if e != 0 {
				break // EAGAIN or an error: the relay goroutines write the rest, or see the error
			}
			p = p[r:]
		}
		if len(p) == 0 {
			return n, nil
		}
	}
	w.over = append(w.over, p...)
	w.lc.leave = true
	return n, nil
}

// eventLoop is one epoll loop. Its goroutine runs while it holds sessions.
type eventLoop struct {
	log   *zap.Logger
	block bool          // waits in epoll_pwait on its thread (see loopWaiter)
	quiet atomic.Uint64 // times a blocking loop went quiet and parked (tests)

	mu      sync.Mutex
	running bool
	epf     *os.File // the epoll instance, on the runtime's poller
	epfd    int      // its descriptor; set by start, before the goroutine that uses it
	wakeR   int      // pipe: a byte written to wakeW wakes the loop for queue
	wakeW   int
	woken   bool
	failed  bool // epoll_pwait failed: no more sessions are added
	count   int  // sessions added and not yet handed back
	queue   []loopRequest

	fds fdTable // loop goroutine only
}

// fdTable maps a loop's socket descriptors to their sessions: a slice
// indexed by descriptor, read for every event (a map lookup cost ~0.1 µs a
// transaction). The kernel hands out the lowest free numbers, so the slice
// is as long as the highest descriptor the process has had open.
type fdTable []*Session

func (t fdTable) get(fd int32) *Session {
	if fd < 0 || int(fd) >= len(t) {
		return nil
	}
	return t[fd]
}

func (t *fdTable) set(fd int, s *Session) {
	if fd >= len(*t) {
		*t = append(*t, make([]*Session, fd+1-len(*t))...)
	}
	(*t)[fd] = s
}

func (t fdTable) del(fd int) {
	if fd >= 0 && fd < len(t) {
		t[fd] = nil
	}
}

type loopRequest struct {
	s   *Session
	add bool // add the session; otherwise hand it back
}

func newEventLoops(n int, block bool, log *zap.Logger) []*eventLoop {
	loops := make([]*eventLoop, n)
	for i := range loops {
		loops[i] = &eventLoop{log: log, block: block}
	}
	return loops
}

// request queues an add or a hand-back and wakes the loop, starting it if
// needed. It reports false when the loop cannot run (no file descriptors).
func (l *eventLoop) request(s *Session, add bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if add {
		if l.failed {
			return false
		}
		if !l.running {
			if err := l.start(); err != nil {
				l.log.Warn("event loop unavailable, relaying with goroutines", zap.Error(err))
				return false
			}
		}
		l.count++
	}
	if !l.running {
		return false // failed: its sessions were all handed back
	}
	l.queue = append(l.queue, loopRequest{s: s, add: add})
	if !l.woken {
		l.woken = true
		var b = [1]byte{1}
		for {
			_, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(l.wakeW), uintptr(unsafe.Pointer(&b[0])), 1)
			if e != syscall.EINTR {
				break
			}
		}
	}
	return true
}

// start creates the epoll instance and the wake pipe and starts the
// goroutine; l.mu is held. A loop that may block takes a blocking slot
// (acquireBlocking) if one is free; otherwise it parks, and its epoll
// descriptor is put on the runtime's poller (non-blocking).
func (l *eventLoop) start() error {
	block := l.block && acquireBlocking()
	started := false
	defer func() {
		if block && !started {
			blockingLoops.Add(-1)
		}
	}()
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return os.NewSyscallError("epoll_create1", err)
	}
	if err := syscall.SetNonblock(epfd, !block); err != nil {
		syscall.Close(epfd)
		return os.NewSyscallError("fcntl", err)
	}
	epf := os.NewFile(uintptr(epfd), "epoll")
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_NONBLOCK|syscall.O_CLOEXEC); err != nil {
		epf.Close()
		return os.NewSyscallError("pipe2", err)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(p[0])}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, p[0], &ev); err != nil {
		epf.Close()
		syscall.Close(p[0])
		syscall.Close(p[1])
		return os.NewSyscallError("epoll_ctl", err)
	}
	l.epf, l.epfd, l.wakeR, l.wakeW = epf, epfd, p[0], p[1]
	l.running, l.woken = true, false
	started = true
	go l.run(epf, epfd, p[0], block)
	return nil
}

func (l *eventLoop) run(epf *os.File, epfd, wakeR int, block bool) {
	w := loopWaiter{log: l.log, epfd: epfd, pollable: !block, block: block, quiet: &l.quiet, events: make([]syscall.EpollEvent, 64)}
	if block {
		// One thread: a preempted loop resumes where its sockets' data and
		// its own state are in cache, instead of on whichever thread the
		// scheduler finds (measured: the loop spread over three threads).
		runtime.LockOSThread()
	}
	defer w.unblock()
	if !block {
		rc, err := epf.SyscallConn()
		if err != nil {
			l.fail(epfd, wakeR, err)
			return
		}
		w.rc = rc
	}
	for {
		n, err := w.wait()
		if err != nil {
			l.fail(epfd, wakeR, err)
			return
		}
		events := w.events[:n]
		wake, left := false, false
		for i := range events {
			fd := events[i].Fd
			if int(fd) == wakeR {
				wake = true
				continue
			}
			s := l.fds.get(fd)
			if s == nil || !s.lc.active {
				continue // handed back earlier in this batch
			}
			if int(fd) == s.lc.cfd {
				s.loopRead(s.cr, s.lc.cfd, s.loopFrontend)
			} else {
				s.loopRead(s.ur, s.lc.ufd, s.loopBackend)
			}
			if s.lc.leave {
				l.handBack(s)
				left = true
			}
		}
		if wake {
			// Requests last: a session added now may reuse a descriptor
			// number seen above.
			l.serveQueue(epfd, wakeR)
		}
		if (wake || left) && l.stopIfEmpty(epfd, wakeR) {
			return
		}
	}
}

// loopWaiter collects a loop's epoll events, in one of two ways.
//
// A parking loop (the runtime has no processor to spare for it) collects
// with a non-blocking epoll_pwait and, when there is nothing, parks like any
// goroutine until the runtime's poller sees its epoll descriptor readable.
// Every sleep then costs two more epoll calls and a pass through the
// scheduler (park, find work, poll, wake), and leaves every processor idle,
// which keeps the runtime's monitor thread waking.
//
// A blocking loop (GOMAXPROCS leaves processors for everything else, see
// acquireBlocking) waits in epoll_pwait on its thread, as PgBouncer does:
// the runtime sees a running goroutine and the loop keeps its processor.
// Measured under pgbench (one loop, paired rounds against the parking
// loop): 4.4 system calls per prepared lookup against 4.7 (PgBouncer 4.3),
// and tenantguard's CPU per transaction 0.7 µs lower (prepared, median of 4
// rounds) to 1–2 µs lower (simple, 3 rounds). The runtime stops or
// preempts a goroutine by signalling its thread, which interrupts the wait
// (EINTR); the loop yields then. After loopIdleWaits waits without an event
// the loop is quiet: it parks on the runtime's poller until the next event,
// through a duplicate of its epoll descriptor that is on the poller only
// for that wait (kept there, the poller's thread would wake for every event
// the loop takes itself). An idle proxy therefore does not wake 100 times a
// second; a lightly used one costs more wake-ups than a parking loop (see
// loopIdleWaits).
type loopWaiter struct {
	log      *zap.Logger
	epfd     int             // the epoll instance
	pollable bool            // epf is on the runtime's poller (a parking loop)
	rc       syscall.RawConn // epf's, when pollable
	block    bool            // holds a blocking slot (acquireBlocking) and its thread
	events   []syscall.EpollEvent
	empty    int  // blocking: waits in a row without an event
	waits    int  // blocking: waits so far
	busy     int  // parking: collections in a row that found events at once
	dupErr   bool // a duplicate for a quiet wait failed (logged once)
	quiet    *atomic.Uint64
}

// loopWaitMillis is a blocking loop's epoll_pwait timeout, and
// loopIdleWaits how many waits in a row without an event (timeouts, or
// signals, each followed by a yield) make it quiet: at most ~80 ms without
// traffic. A loop that parked at every pause would pay more: each time a
// processor turns busy after all were idle, the runtime's monitor thread
// polls every 20 µs for a millisecond and more (with a query every 40 ms
// and a park after each: ~1,300 context switches a second, against ~700).
const (
	loopWaitMillis = 10
	loopIdleWaits  = 8
)

// blockingLoops is the number of event loops, in all the servers of the
// process, that hold a processor of their own.
var blockingLoops atomic.Int32

// acquireBlocking takes a blocking slot if GOMAXPROCS, as it is now, leaves
// the spare processors after it; release gives it back.
func acquireBlocking() bool {
	limit := int32(blockingProcs(runtime.GOMAXPROCS(0)))
	for {
		n := blockingLoops.Load()
		if n >= limit {
			return false
		}
		if blockingLoops.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// unblock gives a blocking loop's slot and thread back; the loop goes on
// parking (through its quiet path, for every wait) until it stops.
func (w *loopWaiter) unblock() {
	if w.block {
		w.block = false
		blockingLoops.Add(-1)
		runtime.UnlockOSThread()
	}
}

// checkProcs gives the blocking slot back if GOMAXPROCS has been lowered
// since it was taken and no longer leaves the spare processors: the loop
// then keeps no processor from the rest.
func (w *loopWaiter) checkProcs() {
	if int(blockingLoops.Load()) > blockingProcs(runtime.GOMAXPROCS(0)) {
		w.unblock()
	}
}

// wait returns the number of events collected into w.events.
func (w *loopWaiter) wait() (int, error) {
	if w.pollable {
		return w.park(w.rc)
	}
	if w.block {
		// A loop that is never quiet looks at GOMAXPROCS now and then too.
		if w.waits++; w.waits%64 == 0 {
			w.checkProcs()
		}
	}
	if w.block { // checkProcs may have unblocked it
		for w.empty < loopIdleWaits {
			n, e := epollWait(w.epfd, w.events, loopWaitMillis)
			if e == 0 && n > 0 {
				w.empty = 0
				return n, nil
			}
			if e == syscall.EINTR {
				// A signal: most likely the runtime asking this goroutine
				// to stop (a stop-the-world, a stack scan, a long-running
				// goroutine's preemption), which it can only do at a call
				// like this one: the system call wrapper is not a
				// preemption point, and the runtime interrupts a wait it
				// cannot preempt every 10 ms or sooner.
				runtime.Gosched()
			} else if e != 0 {
				return 0, os.NewSyscallError("epoll_pwait", e)
			}
			w.empty++
		}
		w.empty = 0
		w.checkProcs()
	}
	return w.parkQuiet()
}

// parkQuiet parks on the runtime's poller through a duplicate of the epoll
// descriptor. Without a descriptor to spare (EMFILE) it waits once more in
// epoll_pwait instead, holding the processor for at most loopWaitMillis:
// the loop goes on.
func (w *loopWaiter) parkQuiet() (int, error) {
	fd, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(w.epfd), syscall.F_DUPFD_CLOEXEC, 0)
	var err error
	if e != 0 {
		err = os.NewSyscallError("fcntl", e)
	} else if err = syscall.SetNonblock(int(fd), true); err != nil {
		// Non-blocking for the poller; epoll_pwait ignores the flag, which
		// the original shares.
		syscall.Close(int(fd))
	} else {
		f := os.NewFile(fd, "epoll")
		rc, perr := f.SyscallConn()
		var n int
		if perr == nil {
			w.quiet.Add(1)
			n, perr = w.park(rc)
		}
		f.Close()
		if perr == nil {
			return n, nil
		}
		err = perr // the poller refused it, most likely: wait below, where a broken epoll shows
	}
	if !w.dupErr {
		w.dupErr = true
		w.log.Warn("event loop: cannot park on the runtime's poller, waiting in epoll_pwait instead", zap.Error(err))
	}
	n, e := epollWait(w.epfd, w.events, loopWaitMillis)
	runtime.Gosched()
	switch {
	case e == syscall.EINTR:
		return 0, nil
	case e != 0:
		return 0, os.NewSyscallError("epoll_pwait", e)
	}
	return n, nil
}

// epollWait is epoll_pwait on epfd into events for at most msec
// milliseconds (0: do not wait), as a raw system call: the runtime does not
// see it.
func epollWait(epfd int, events []syscall.EpollEvent, msec int) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(msec), 0, 0)
	return int(r), e
}

// park collects events through rc, an epoll descriptor on the runtime's
// poller, and parks until it is readable when there are none.
func (w *loopWaiter) park(rc syscall.RawConn) (int, error) {
	var n, calls int
	var errno syscall.Errno
	err := rc.Read(func(fd uintptr) bool {
		calls++
		for {
			r, e := epollWait(int(fd), w.events, 0)
			if e == syscall.EINTR {
				continue
			}
			n, errno = r, e
			return e != 0 || r > 0 // false: park until readable
		}
	})
	if err == nil && errno != 0 {
		err = os.NewSyscallError("epoll_pwait", errno)
	}
	// A loop that always finds work never parks: let the processor's
	// other goroutines (new sessions, the audit writer) run now and then.
	if calls == 1 {
		if w.busy++; w.busy == 64 {
			w.busy = 0
			runtime.Gosched()
		}
	} else {
		w.busy = 0
	}
	if err != nil {
		return 0, err
	}
	return n, nil
}

// fail stops a loop whose epoll_pwait failed: every session it holds or
// was asked to add goes back to its goroutine, and no session is added to
// it again.
func (l *eventLoop) fail(epfd, wakeR int, err error) {
	l.log.Error("event loop failed, handing its sessions back", zap.Error(err))
	l.mu.Lock()
	l.failed = true
	queue := l.queue
	l.queue = nil
	l.mu.Unlock()
	for _, s := range l.fds {
		if s != nil && s.lc.active {
			l.handBack(s)
		}
	}
	for _, r := range queue {
		if r.add {
			l.handBack(r.s) // counted, never added
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.running = false
	l.epf.Close()
	syscall.Close(wakeR)
	syscall.Close(l.wakeW)
}

// serveQueue serves the queued requests.
func (l *eventLoop) serveQueue(epfd, wakeR int) {
	var b [64]byte
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(wakeR), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		if e == syscall.EINTR || (e == 0 && r == uintptr(len(b))) {
			continue
		}
		break
	}
	l.mu.Lock()
	queue := l.queue
	l.queue, l.woken = nil, false
	l.mu.Unlock()
	for _, r := range queue {
		s := r.s
		switch {
		case r.add:
			l.add(epfd, s)
		case s.lc.active:
			l.handBack(s)
		}
	}
}

// stopIfEmpty stops the loop when it holds no session and nothing is
// queued: it closes its descriptors and reports true (the goroutine ends;
// the next session starts a new one).
func (l *eventLoop) stopIfEmpty(epfd, wakeR int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.count > 0 || len(l.queue) > 0 {
		return false
	}
	l.running = false
	l.epf.Close()
	syscall.Close(wakeR)
	syscall.Close(l.wakeW)
	return true
}

// add registers a session's sockets and relays what it already buffered.
func (l *eventLoop) add(epfd int, s *Session) {
	lc := s.lc
	lc.active = true
	l.fds.set(lc.cfd, s)
	l.fds.set(lc.ufd, s)
	for _, fd := range [2]int{lc.cfd, lc.ufd} {
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(fd)}
		if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
			s.log.Warn("event loop: cannot watch a socket, relaying with goroutines", zap.Error(err))
			lc.leave = true
		}
	}
	if !lc.leave {
		s.loopFrontend()
	}
	if !lc.leave {
		s.loopBackend()
	}
	if lc.leave {
		l.handBack(s)
	}
}

// handBack takes a session out of the loop and wakes its goroutine.
func (l *eventLoop) handBack(s *Session) {
	lc := s.lc
	for _, fd := range [2]int{lc.cfd, lc.ufd} {
		_ = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, fd, nil)
		l.fds.del(fd)
	}
	lc.active = false
	// The session's goroutine closes the descriptors; a stray write must
	// not reach a reused number.
	lc.cout.fd, lc.uout.fd = -1, -1
	s.mu.Lock()
	s.loopHeld = handedBack
	s.mu.Unlock()
	s.srv.handBacks.Add(1) // before the count: whoever sees one sees the other
	l.mu.Lock()
	l.count--
	l.mu.Unlock()
	lc.handback <- struct{}{}
}

// loopRead reads what the socket has into cr and runs the handler; the end
// of the stream, an error or a full buffer hands the session back.
func (s *Session) loopRead(cr *connReader, fd int, handle func()) {
	n, errno := cr.loopFill(fd)
	switch {
	case errno == syscall.EAGAIN:
		return // nothing after all
	case errno != 0 || n == 0:
		s.lc.leave = true // the relay goroutines read it again and see the end
		return
	}
	handle()
}

// loopMaxMessage is the largest message the event loop relays itself, in
// a buffer of that size while it arrives; a larger one hands the session
// back (the relay goroutines stream large results without holding them).
const loopMaxMessage = bigBufSize

// loopFill reads once, without blocking, into the buffer, growing it first
// when the message at its head needs more room.
func (cr *connReader) loopFill(fd int) (int, syscall.Errno) {
	cr.take()
	if cr.r > 0 {
		copy(cr.buf, cr.buf[cr.r:cr.w])
		cr.w -= cr.r
		cr.r = 0
	}
	if cr.want > len(cr.buf) && !cr.big {
		// Kept until it is empty: it takes the next messages too.
		big := getBigBuf()
		copy(big, cr.buf[:cr.w])
		if cr.pooled {
			putBuf(cr.buf)
		}
		cr.buf, cr.pooled, cr.big = big, false, true
	}
	if cr.w == len(cr.buf) {
		// Not reached (a whole message is consumed before the next read,
		// and the buffer grows for a partial one), but a read into no
		// room would index past the buffer: hand the session back.
		return 0, syscall.ENOBUFS
	}
	for {
		r, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&cr.buf[cr.w])), uintptr(len(cr.buf)-cr.w), 0, 0, 0)
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			cr.release()
			return 0, e
		}
		cr.w += int(r)
		cr.release()
		return int(r), 0
	}
}

// loopFrontend relays the whole client messages in the read buffer.
func (s *Session) loopFrontend() {
	cr, lc := s.cr, s.lc
	limit := min(s.srv.cfg.MaxMessageSize, loopMaxMessage)
	for !lc.leave && cr.w-cr.r >= 5 {
		b := cr.buf[cr.r:cr.w]
		typ := b[0]
		n := int64(binary.BigEndian.Uint32(b[1:5]))
		if n < 4 || n+1 > int64(limit) || !knownFrontend(typ) || typ == MsgTerminate {
			lc.leave = true // the relay goroutines handle (or refuse) it
			break
		}
		if int64(len(b)) < n+1 {
			cr.want = int(n) + 1 // the rest is still on its way
			break
		}
		cr.want = 0
		cr.r += int(n) + 1
		if !s.frontendMessage(typ, b[5:n+1]) {
			lc.leave = true
		}
	}
	cr.release()
}

// loopBackend relays the whole upstream messages in the read buffer.
func (s *Session) loopBackend() {
	ur, lc := s.ur, s.lc
	for !lc.leave && ur.w-ur.r >= 5 {
		b := ur.buf[ur.r:ur.w]
		typ := b[0]
		n := int64(binary.BigEndian.Uint32(b[1:5]))
		if n < 4 || n+1 > loopMaxMessage {
			lc.leave = true
			break
		}
		if int64(len(b)) < n+1 {
			ur.want = int(n) + 1
			break
		}
		ur.want = 0
		if typ == MsgDataRow && s.rows != nil {
			if !s.loopRows() {
				lc.leave = true
			}
			continue
		}
		ur.r += int(n) + 1
		if !s.backendMessage(typ, b[5:n+1], s.interest[typ]) {
			lc.leave = true
		}
	}
	ur.release()
}

// loopRows relays the run of whole DataRows at the head of the upstream
// buffer (at least one) through RowCounter.OnRows: one call and one write
// for the run. It reports false when the session is over.
func (s *Session) loopRows() bool {
	ur := s.ur
	start, end, k := ur.r, ur.r, 0
	for ur.w-end >= 5 && ur.buf[end] == MsgDataRow {
		n := int(binary.BigEndian.Uint32(ur.buf[end+1 : end+5]))
		if n < 4 || ur.w-end < n+1 {
			break
		}
		end += n + 1
		k++
	}
	ur.r = end
	pass, v, err := s.rows.OnRows(s, k)
	if !s.applyBackendVerdict(v, err) {
		return false
	}
	if pass == k {
		return s.writeClientOrGone(ur.buf[start:end], nil, MsgDataRow, false)
	}
	// Rare: the row guard cut the result (or the cycle's replies are being
	// dropped): the rows before the cut, then its reply.
	passEnd := start
	for i := 0; i < pass; i++ {
		passEnd += 1 + int(binary.BigEndian.Uint32(ur.buf[passEnd+1:passEnd+5]))
	}
	if passEnd > start && !s.writeClientOrGone(ur.buf[start:passEnd], nil, MsgDataRow, false) {
		return false
	}
	return len(v.Replace) == 0 || s.writeClientOrGone(v.Replace, nil, MsgDataRow, false)
}

// enterLoop moves an authenticated plain-socket session into its event
// loop; it reports false when the session stays with the relay goroutines.
func (s *Session) enterLoop() bool {
	loops := s.srv.loops
	if len(loops) == 0 || s.cr.raw == nil || s.ur.raw == nil {
		return false
	}
	cfd, err := dupSocket(s.client)
	if err != nil {
		return false
	}
	ufd, err := dupSocket(s.upstream)
	if err != nil {
		syscall.Close(cfd)
		return false
	}
	lc := &loopConn{loop: loops[s.ID%uint64(len(loops))], cfd: cfd, ufd: ufd, handback: make(chan struct{}, 1)}
	lc.cout = loopSocket{lc: lc, fd: cfd}
	lc.uout = loopSocket{lc: lc, fd: ufd}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing || s.termPending {
		syscall.Close(cfd)
		syscall.Close(ufd)
		return false
	}
	s.lc = lc
	// Off the runtime's poller: closing the net.Conns removes the sockets
	// from its epoll set; the duplicates keep them open.
	s.client.Close()
	s.upstream.Close()
	s.cwMu.Lock()
	s.cw.dst = &lc.cout
	s.cwMu.Unlock()
	s.uwMu.Lock()
	s.uw.dst = &lc.uout
	s.uwMu.Unlock()
	s.loopHeld = heldByLoop
	reentry := s.loopLeft > 0
	if reentry {
		s.srv.reentries.Add(1) // before the loop counts it (tests read both)
	}
	if !lc.loop.request(s, true) {
		if reentry {
			s.srv.reentries.Add(^uint64(0)) // it did not go back after all
		}
		s.loopHeld = handedBack
		lc.handback <- struct{}{}
	}
	return true
}

// leaveLoop takes the session back from the loop after the hand-back:
// net.Conns on the same sockets, what the loop could not write written
// first. A terminate stays deferred until all of that is done. It reports
// false when the session is over.
func (s *Session) leaveLoop() bool {
	lc := s.lc
	client, cerr := socketConn(lc.cfd) // closes lc.cfd (the conn has a duplicate)
	upstream, uerr := socketConn(lc.ufd)
	var cio, uio io.ReadWriter = closedSocket{}, closedSocket{}
	if client != nil {
		cio = newSocketIO(client)
	}
	if upstream != nil {
		uio = newSocketIO(upstream)
	}
	s.cr.resume(cio)
	s.ur.resume(uio)
	s.cwMu.Lock()
	s.cw.resume(cio, lc.cout.over)
	s.cwMu.Unlock()
	s.uwMu.Lock()
	s.uw.resume(uio, lc.uout.over)
	s.uwMu.Unlock()
	lc.cout.over, lc.uout.over = nil, nil
	s.mu.Lock()
	if client != nil {
		s.client = client
	}
	if upstream != nil {
		s.upstream = upstream
	}
	s.loopHeld = heldByRelay
	pending, perr := s.termPending, s.termErr
	s.mu.Unlock()
	switch {
	case cerr != nil || uerr != nil:
		s.log.Warn("cannot resume the session after the event loop", zap.NamedError("client", cerr), zap.NamedError("upstream", uerr))
		if !pending {
			perr = &ProtocolError{Code: CodeConnectionFailure, Message: "the proxy could not resume the session"}
		}
		if client == nil {
			perr = nil // nobody to tell
		}
		if upstream != nil {
			upstream.Close()
		}
		s.terminate(perr)
		return false
	case pending:
		s.terminate(perr)
		return false
	case lc.end:
		s.terminate(lc.endErr)
		return false
	}
	return true
}

// closedSocket stands for a socket that could not be resumed.
type closedSocket struct{}

func (closedSocket) Read([]byte) (int, error)  { return 0, net.ErrClosed }
func (closedSocket) Write([]byte) (int, error) { return 0, net.ErrClosed }

// resume reads from src again after the event loop.
func (cr *connReader) resume(src io.Reader) {
	cr.src = src
	cr.raw, _ = src.(*rawSocket)
	cr.drained = true
}

// resume writes to dst again after the event loop; over, what the loop
// could not write, goes out first (with the next write or flush: the relay
// goroutine of each direction flushes as it starts, so that neither
// direction waits for the other).
func (cw *connWriter) resume(dst io.Writer, over []byte) {
	cw.dst = dst
	if len(over) > 0 {
		cw.pre = over
	}
}

// dupSocket duplicates a connection's socket (close-on-exec).
func dupSocket(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, syscall.EINVAL
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := raw.Control(func(s uintptr) {
		r, _, e := syscall.Syscall(syscall.SYS_FCNTL, s, syscall.F_DUPFD_CLOEXEC, 0)
		if e != 0 {
			derr = os.NewSyscallError("fcntl", e)
			return
		}
		fd = int(r)
	}); err != nil {
		return -1, err
	}
	return fd, derr
}

// socketConn makes a net.Conn of a socket descriptor, which it closes (the
// conn has a duplicate).
func socketConn(fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "socket")
	defer f.Close()
	return net.FileConn(f)
}

// quietParks is how many times the loop went quiet and parked (tests).
func (l *eventLoop) quietParks() uint64 { return l.quiet.Load() }

// sessions is the number of sessions the loop holds (tests).
func (l *eventLoop) sessions() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.count
}
