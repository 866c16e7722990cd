package proxy

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"
)

// SQLSTATE codes the proxy itself reports to clients.
const (
	CodeProtocolViolation   = "08P01" // malformed or oversized message, bad startup
	CodeConnectionFailure   = "08006" // the upstream connection was lost
	CodeCannotConnect       = "08001" // the upstream could not be reached
	CodeFeatureNotSupported = "0A000" // protocol 2, replication connections
	CodeAdminShutdown       = "57P01" // the proxy is draining
	CodeInternalError       = "XX000"
)

// ProtocolError is a wire-level failure the client is told about with a
// FATAL ErrorResponse before its connection is closed. Message never holds
// SQL text or parameter values.
type ProtocolError struct {
	Code    string // SQLSTATE
	Message string
}

// Error implements error.
func (e *ProtocolError) Error() string { return "proxy: " + e.Message + " (SQLSTATE " + e.Code + ")" }

func protocolErrorf(code, format string, args ...any) *ProtocolError {
	return &ProtocolError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ClientError carries an ErrorResponse to send to the client verbatim when
// a hook ends a session with it.
type ClientError struct {
	Response *pgproto3.ErrorResponse
}

// Error implements error; it names the SQLSTATE, never the message text.
func (e *ClientError) Error() string {
	return "proxy: session refused (SQLSTATE " + e.Response.Code + ")"
}

// errorResponse maps an internal error to the ErrorResponse the client sees.
// It is the one place where proxy errors become SQLSTATEs: a *ClientError
// (e.g. from a hook) is sent as is, a *ProtocolError with its code, anything
// else as an internal error without detail.
func errorResponse(err error) *pgproto3.ErrorResponse {
	var ce *ClientError
	if errors.As(err, &ce) && ce.Response != nil {
		return ce.Response
	}
	var pe *ProtocolError
	if errors.As(err, &pe) {
		return &pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: pe.Code, Message: "tenantguard: " + pe.Message}
	}
	return &pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: CodeInternalError, Message: "tenantguard: internal error"}
}

// encodeError appends the wire form of err's ErrorResponse to dst.
func encodeError(dst []byte, err error) []byte {
	out, encErr := errorResponse(err).Encode(dst)
	if encErr != nil {
		// Only an oversized field can fail; fall back to a fixed message.
		out, _ = (&pgproto3.ErrorResponse{Severity: "FATAL", Code: CodeInternalError, Message: "tenantguard: internal error"}).Encode(dst)
	}
	return out
}
