// Package proxy is tenantguard's PostgreSQL wire relay: it accepts client
// connections speaking protocol 3.0, terminates their TLS when configured,
// connects each client to the upstream server with the client's own startup
// parameters, passes authentication through, and then relays messages in
// both directions.
//
// # Structure
//
// Server accepts connections and owns the process-wide cancel-key registry
// and the drain logic (Shutdown). Each client connection is a Session:
//
//   - startup.go: startup packet (SSLRequest, GSSENCRequest, CancelRequest,
//     protocol version checks), upstream dial with libpq sslmode semantics,
//     and the authentication pass-through (SCRAM-SHA-256-PLUS removed from
//     the mechanism list, since channel binding cannot cross the proxy).
//
//   - relay.go: the two relay loops. frontendLoop frames every client
//     message (frame.go) and forwards it; backendLoop streams upstream
//     messages to the client reading only the 5-byte header of the types
//     nobody inspects (DataRow, CopyData, ...), so result rows are never
//     decoded or copied into a message buffer.
//
//   - eventloop_linux.go: on Linux, an established plain-socket session is
//     relayed by an epoll loop (one goroutine per loop, Config.EventLoops)
//     running the same message handlers as relay.go. Anything the loop does
//     not handle (a message over 64 KiB, a peer not reading,
//     end of stream, drain, terminate) hands the session back to its own
//     goroutine, which carries on with the relay loops until both can stop
//     between two messages at a ReadyForQuery and the session goes back to
//     the loop (relay.go: stopForLoop, answerReentry).
//
//   - rawsock.go, buffers.go: plain TCP and Unix sockets are read and
//     written with raw non-blocking system calls on the runtime's poller
//     (TLS connections through crypto/tls); read and write buffers are
//     borrowed from a shared pool only while a session has data, so an idle
//     session holds none.
//
// Writes are batched and flushed only when the reading side has no more
// buffered input, so a pipelined batch or a result set goes out in few
// syscalls while an interactive round trip is never delayed.
//
// # Where enforcement plugs in
//
// Config.Hooks (hooks.go) is the interception point; with nil Hooks the
// relay is a pure pass-through and pays nothing for it.
//
//   - Replace a Query's text: OnFrontend on MsgQuery returns
//     Verdict{Replace: encoded new Query}.
//   - Replace Parse text and append a parameter at Bind: OnFrontend on
//     MsgParse / MsgBind decodes with DecodeFrontend and returns the
//     re-encoded message in Replace.
//   - Refuse a statement: OnFrontend returns Verdict{Replace: []byte{},
//     Reply: encoded ErrorResponse}; for the extended protocol the hook then
//     discards messages (Replace: []byte{}) until MsgSync, which it answers
//     with a ReadyForQuery in Reply (Session.TxStatus gives the status).
//     Reply goes to the client at once, so it is only in order when nothing
//     is in flight (Session.InFlight); with pipelined requests the hook
//     should instead forward a harmless substitute (e.g. an empty Query, or
//     the Sync) and turn its response into the error in OnBackend.
//   - Strip the appended parameter from ParameterDescription:
//     BackendInterest(MsgParamDescription) = Inspect and OnBackend replaces it.
//   - Count rows for a row guard: BackendInterest(MsgDataRow) = Notify; the
//     hook sees each DataRow's length, never its bytes.
//
// # Known limits
//
// SCRAM with channel binding cannot cross the proxy. SCRAM-SHA-256-PLUS is
// removed from the server's offer, which lets plain clients and TLS clients
// in front of a plain upstream log in with SCRAM-SHA-256. When both legs use
// TLS, a client that could bind (libpq and pgx with channel_binding=prefer,
// their default) sends the GS2 flag "y", which a TLS server must refuse as a
// possible downgrade; such clients need channel_binding=disable, or md5/
// password authentication, or a plain upstream leg. GSSAPI/SSPI exchanges
// are relayed but untested; GSS encryption is declined; replication
// connections are refused.
//
// The relay never logs SQL text, parameters or row values.
package proxy
