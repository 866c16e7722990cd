// Package audit writes tenantguard's audit trail: one JSON line per statement
// decision and per session or policy event, with the stable keys of SPEC §1
// (ts, event, conn_id, client, user, database, application_name, tenant,
// kind, relations, decision, reason, sqlstate, fingerprint, statement, rows,
// duration_ms).
//
// The trail never carries a literal, parameter or row value: Statement must
// be the normalized text (every constant replaced by a placeholder), and the
// other fields are identifiers and codes. A failed write never fails the
// client's statement: it is counted, and reported once through the error
// callback.
package audit

import (
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Event kinds (the `event` key).
const (
	EventStatement      = "statement"
	EventConnect        = "connect"
	EventDisconnect     = "disconnect"
	EventPolicyReload   = "policy_reload"
	EventCatalogRefresh = "catalog_refresh"
)

// Decisions (the `decision` key of statement events).
const (
	DecisionAllowed   = "allowed"
	DecisionRewritten = "rewritten"
	DecisionRejected  = "rejected"
	DecisionBypassed  = "bypassed"
)

// Event is one audit record. Zero-valued optional fields are omitted.
type Event struct {
	Time            time.Time
	Event           string
	ConnID          uint64
	Client          string
	User            string
	Database        string
	ApplicationName string
	Tenant          string
	Kind            string
	Relations       []string
	Decision        string
	Reason          string
	SQLState        string
	Fingerprint     string
	// Statement is the normalized statement: never the raw text.
	Statement string
	// Rows is the number of rows returned or affected; negative when unknown.
	Rows     int64
	Duration time.Duration
	// Injected says the tenant predicate was added by tenantguard.
	Injected bool
	// Protocol is "simple" or "extended" for statements.
	Protocol string
	// Session events.
	TLS        *bool
	AuthMethod string
	Statements int64 // disconnect: statements decided in the session
	Rejected   int64 // disconnect: statements rejected in the session
	// Result and Error describe policy reloads and catalog refreshes; Error
	// must not carry values (a policy error names file, line and key).
	Result string
	Error  string
}

// Options configures a Logger.
type Options struct {
	// File is the audit file; "" writes to Stdout.
	File string
	// Stdout is where events go without a File (default os.Stdout).
	Stdout io.Writer
	// Sample is the fraction (0..1] of allowed statements logged; rejected,
	// rewritten and bypassed statements and session events are always logged.
	// 0 means 1 (log everything).
	Sample float64
	// Decisions, when non-empty, limits statement events to these decisions.
	Decisions []string
	// OnError is called with the first write error after a run of successes
	// (not once per failed write).
	OnError func(error)
	// OnFailure is called for every failed write (for a metric).
	OnFailure func()
	// FlushInterval, when positive, buffers events and writes them at this
	// interval (and at 64 KiB, Reopen and Close): one write per batch
	// instead of one per statement, at the price of losing at most one
	// interval of events if the process dies. Zero writes every event at once.
	FlushInterval time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Logger writes audit events. It is safe for concurrent use.
type Logger struct {
	sink      *sink
	sample    float64
	decisions map[string]bool
	now       func() time.Time
	failures  atomic.Int64
}

// New opens the audit sink.
func New(opts Options) (*Logger, error) {
	s := &sink{path: opts.File, out: opts.Stdout, onError: opts.OnError, onFailure: opts.OnFailure}
	if s.out == nil {
		s.out = os.Stdout
	}
	if err := s.open(); err != nil {
		return nil, err
	}
	if opts.FlushInterval > 0 {
		s.buffered = true
		s.stop, s.stopped = make(chan struct{}), make(chan struct{})
		go s.flusher(opts.FlushInterval)
	}
	l := &Logger{sink: s, sample: opts.Sample, now: opts.Now}
	s.failures = &l.failures
	if l.sample <= 0 || l.sample > 1 {
		l.sample = 1
	}
	if len(opts.Decisions) > 0 {
		l.decisions = map[string]bool{}
		for _, d := range opts.Decisions {
			l.decisions[d] = true
		}
	}
	if l.now == nil {
		l.now = time.Now
	}
	return l, nil
}

// Log writes one event, subject to sampling for statement events.
func (l *Logger) Log(e *Event) {
	if l == nil {
		return
	}
	if e.Event == EventStatement {
		if l.decisions != nil && !l.decisions[e.Decision] {
			return
		}
		if e.Decision == DecisionAllowed && l.sample < 1 && rand.Float64() >= l.sample {
			return
		}
	}
	t := e.Time
	if t.IsZero() {
		t = l.now()
	}
	s := l.sink
	if s.buffered {
		// Encode straight into the batch: no pooled line to copy.
		s.mu.Lock()
		s.appendLocked(e, t)
		s.mu.Unlock()
		return
	}
	bp := linePool.Get().(*[]byte)
	line := e.AppendJSON((*bp)[:0], t)
	// Write errors are handled (counted, reported) by the sink, which
	// copies the line when it buffers.
	_, _ = s.Write(line)
	if cap(line) <= maxPooledLine {
		*bp = line
		linePool.Put(bp)
	}
}

// linePool holds the buffers Log encodes into without a buffered sink, so
// that a statement event costs no allocation once the pool is warm.
var linePool = sync.Pool{New: func() any {
	b := make([]byte, 0, 1024)
	return &b
}}

// maxPooledLine is the largest buffer returned to linePool: a line for a
// huge statement is encoded once and dropped rather than kept for good.
const maxPooledLine = 64 << 10

// Failures is the number of audit writes that failed.
func (l *Logger) Failures() int64 { return l.failures.Load() }

// Reopen closes and reopens the audit file (SIGHUP, for logrotate).
func (l *Logger) Reopen() error { return l.sink.reopen() }

// Close flushes and closes the audit file.
func (l *Logger) Close() error { return l.sink.close() }

// sink is a reopenable, failure-counting writer of encoded events.
type sink struct {
	mu        sync.Mutex
	path      string
	out       io.Writer
	f         *os.File
	failing   bool
	failures  *atomic.Int64
	onError   func(error)
	onFailure func()

	// Buffering (Options.FlushInterval > 0): events collect in buf and are
	// written by the flusher every interval, when 64 KiB are pending, and on
	// Reopen and Close.
	buffered      bool
	buf           []byte
	pending       int
	stop, stopped chan struct{}
}

// flusher writes the buffer every interval until stop is closed.
func (s *sink) flusher(every time.Duration) {
	defer close(s.stopped)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.mu.Lock()
			s.flushLocked()
			s.mu.Unlock()
		}
	}
}

func (s *sink) open() error {
	if s.path == "" {
		return nil
	}
	f, err := os.OpenFile(s.path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("audit: open %s: %w", s.path, err)
	}
	s.f = f
	return nil
}

// Write buffers one encoded event (when buffering) or writes it.
func (s *sink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.buffered {
		s.buf = append(s.buf, p...)
		s.pending++
		if len(s.buf) >= flushSize {
			s.flushLocked()
		}
		return len(p), nil
	}
	return s.writeLocked(p, 1)
}

// appendLocked encodes e at t onto the buffered events, as Write buffers
// an encoded line. Callers hold mu.
func (s *sink) appendLocked(e *Event, t time.Time) {
	s.buf = e.AppendJSON(s.buf, t)
	s.pending++
	if len(s.buf) >= flushSize {
		s.flushLocked()
	}
}

// flushSize is the buffered amount that triggers a write before the timer.
const flushSize = 64 << 10

// flushLocked writes the buffered events. Callers hold mu.
func (s *sink) flushLocked() {
	if len(s.buf) == 0 {
		return
	}
	_, _ = s.writeLocked(s.buf, s.pending)
	s.buf, s.pending = s.buf[:0], 0
	if cap(s.buf) > 4*flushSize {
		s.buf = nil
	}
}

// writeLocked writes p, which holds events events. Callers hold mu.
func (s *sink) writeLocked(p []byte, events int) (int, error) {
	w := s.out
	if s.f != nil {
		w = s.f
	} else if s.path != "" {
		// The file could not be reopened: try again now.
		if err := s.open(); err == nil {
			w = s.f
		} else {
			s.fail(err, events)
			return 0, err
		}
	}
	n, err := w.Write(p)
	if err != nil {
		s.fail(err, events)
		return n, err
	}
	s.failing = false
	return n, nil
}

// fail counts a failed write and reports the first of a run. Callers hold mu.
func (s *sink) fail(err error, events int) {
	if s.failures != nil {
		s.failures.Add(int64(events))
	}
	if s.onFailure != nil {
		for i := 0; i < events; i++ {
			s.onFailure()
		}
	}
	if !s.failing && s.onError != nil {
		s.onError(fmt.Errorf("audit: write: %w", err))
	}
	s.failing = true
}

func (s *sink) reopen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.flushLocked()
	if s.path == "" {
		return nil
	}
	if s.f != nil {
		_ = s.f.Close()
		s.f = nil
	}
	return s.open()
}

func (s *sink) close() error {
	if s.stop != nil {
		close(s.stop)
		<-s.stopped
		s.stop = nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.flushLocked()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	// Events after Close are dropped, not sent to stdout.
	s.path, s.out = "", io.Discard
	return err
}
