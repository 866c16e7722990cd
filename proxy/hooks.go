package proxy

// Message is one protocol message seen by a hook: its type byte and its body
// without the 5-byte header. Body aliases the relay's reused buffer and is
// valid only during the hook call: copy what you keep. For backend messages
// the relay streams without reading (Interest Notify), Body is nil and Len
// still tells the body's size.
type Message struct {
	Type byte
	Body []byte
	Len  int
}

// Verdict tells the relay what to do with an intercepted message.
type Verdict struct {
	// Replace, when non-nil, is sent instead of the message: zero or more
	// complete encoded messages (header included), e.g. a Query with
	// rewritten text or a Bind with one more parameter. An empty non-nil
	// slice drops the message.
	Replace []byte
	// Reply, when non-nil, is sent back the way the message came (to the
	// client for frontend messages, to the upstream for backend messages):
	// complete encoded messages, e.g. an ErrorResponse. It is written
	// before Replace is forwarded.
	//
	// The relay writes or copies Replace and Reply before it calls the
	// hook again, so a hook may reuse their memory for its next verdict.
	Reply []byte
}

// Interest says how much of a backend message type a hook wants to see.
type Interest uint8

const (
	// Ignore relays the type without calling the hook (the default).
	Ignore Interest = iota
	// Notify calls OnBackend with the type and length only; the body is
	// streamed to the client without being read into memory (DataRow
	// counting). A Verdict with a non-nil Replace drops the message unread
	// and sends Replace instead (the row guard cutting a result).
	// ReadyForQuery, ErrorResponse and BackendKeyData, which the relay reads
	// anyway, are shown whole.
	Notify
	// Inspect reads the whole body and calls OnBackend with it, so the hook
	// may replace it (ParameterDescription, RowDescription, CommandComplete).
	Inspect
)

// SetBackendInterest changes the session's interest in backend messages of
// type typ from the next message on: a hook that needs a type only in some
// state (the row guard dropping the replies of a cut cycle) is not called
// for it otherwise. Call it only from OnBackend or OnRows, which run where
// the upstream's messages are relayed; the relay reads the interest there.
// It changes nothing for DataRow (whose interest decides at startup how
// rows are counted) or for ReadyForQuery, ErrorResponse and BackendKeyData,
// which the relay reads anyway and the hooks' bookkeeping relies on.
func (s *Session) SetBackendInterest(typ byte, in Interest) {
	switch typ {
	case MsgDataRow, MsgReadyForQuery, MsgErrorResponse, MsgBackendKeyData:
		return
	}
	s.interest[typ] = in
}

// BackendInterest reports the session's interest in a backend message
// type: the hooks' BackendInterest at startup, as SetBackendInterest
// changed it since. Like SetBackendInterest, call it only where the
// upstream's messages are relayed (a hook's OnBackend or OnRows, or a test
// that relays them itself).
func (s *Session) BackendInterest(typ byte) Interest { return s.interest[typ] }

// RowCounter may be implemented by Hooks whose interest in DataRow is
// Notify. The event loop then shows it a run of consecutive DataRows it
// holds whole in one call, instead of one OnBackend per row (a page of 20
// rows cost 20 calls, locks and writes).
type RowCounter interface {
	// OnRows sees n consecutive DataRows, as n OnBackend calls of type
	// DataRow would. The first pass of them go to the client as they are;
	// when pass < n, v.Replace (if non-nil) goes after them and the other
	// rows are dropped. v.Reply and err are handled as OnBackend's.
	OnRows(s *Session, n int) (pass int, v Verdict, err error)
}

// Hooks intercept a session's traffic; the enforcement layer implements
// them. OnFrontend runs on the session's client-reading goroutine and
// OnBackend on its upstream-reading goroutine, so they may run concurrently
// for one session: state shared between them needs synchronisation. While
// an event loop relays the session, both run on the loop's goroutine, one
// at a time, between other sessions' messages: they must not block.
// A returned error ends the session with a FATAL ErrorResponse to the
// client (a *ClientError's response is sent as is).
type Hooks interface {
	// OnStartup sees the client's startup parameters before the upstream is
	// dialled; it may change s.Params (forwarded upstream afterwards) or
	// refuse the session.
	OnStartup(s *Session) error
	// OnFrontend sees every client message after authentication.
	OnFrontend(s *Session, m Message) (Verdict, error)
	// BackendInterest is asked once per session and backend type; the
	// hooks may change a session's interest later (SetBackendInterest).
	BackendInterest(typ byte) Interest
	// OnBackend sees backend messages of the types BackendInterest selects,
	// after authentication.
	OnBackend(s *Session, m Message) (Verdict, error)
	// OnEnd is called once when the session has ended.
	OnEnd(s *Session)
}
