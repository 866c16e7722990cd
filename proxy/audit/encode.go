package audit

import (
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// AppendJSON appends the event as one audit line to dst and returns the
// extended buffer: a JSON object with "ts" (t in RFC 3339 with nanoseconds,
// omitted when t is zero) followed by the stable keys of SPEC §1, and a
// trailing newline.
//
// The bytes are those zap's JSON encoder wrote for this trail before (same
// key order, number and time formats, and string escaping: control
// characters escaped, invalid UTF-8 replaced by \ufffd, everything else
// copied as is), so readers of the trail see no change. It allocates only
// when dst must grow.
func (e *Event) AppendJSON(dst []byte, t time.Time) []byte {
	if t.IsZero() {
		dst = append(dst, `{"event":`...)
	} else {
		dst = append(dst, `{"ts":"`...)
		dst = t.AppendFormat(dst, time.RFC3339Nano)
		dst = append(dst, `","event":`...)
	}
	dst = appendString(dst, e.Event)
	if e.ConnID != 0 {
		dst = append(dst, `,"conn_id":`...)
		dst = strconv.AppendUint(dst, e.ConnID, 10)
	}
	dst = appendStringKey(dst, `,"client":`, e.Client)
	dst = appendStringKey(dst, `,"user":`, e.User)
	dst = appendStringKey(dst, `,"database":`, e.Database)
	dst = appendStringKey(dst, `,"application_name":`, e.ApplicationName)
	dst = appendStringKey(dst, `,"tenant":`, e.Tenant)
	dst = appendStringKey(dst, `,"kind":`, e.Kind)
	if len(e.Relations) > 0 {
		dst = append(dst, `,"relations":[`...)
		for i, r := range e.Relations {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, r)
		}
		dst = append(dst, ']')
	}
	dst = appendStringKey(dst, `,"decision":`, e.Decision)
	dst = appendStringKey(dst, `,"reason":`, e.Reason)
	dst = appendStringKey(dst, `,"sqlstate":`, e.SQLState)
	dst = appendStringKey(dst, `,"fingerprint":`, e.Fingerprint)
	dst = appendStringKey(dst, `,"statement":`, e.Statement)
	dst = appendStringKey(dst, `,"protocol":`, e.Protocol)
	if e.Event == EventStatement {
		if e.Rows >= 0 {
			dst = append(dst, `,"rows":`...)
			dst = strconv.AppendInt(dst, e.Rows, 10)
		}
		dst = append(dst, `,"duration_ms":`...)
		dst = appendMillis(dst, e.Duration)
		dst = append(dst, `,"injected":`...)
		dst = strconv.AppendBool(dst, e.Injected)
	}
	if e.TLS != nil {
		dst = append(dst, `,"tls":`...)
		dst = strconv.AppendBool(dst, *e.TLS)
	}
	dst = appendStringKey(dst, `,"auth_method":`, e.AuthMethod)
	if e.Event == EventDisconnect {
		dst = append(dst, `,"statements":`...)
		dst = strconv.AppendInt(dst, e.Statements, 10)
		dst = append(dst, `,"rejected":`...)
		dst = strconv.AppendInt(dst, e.Rejected, 10)
		dst = append(dst, `,"duration_ms":`...)
		dst = appendMillis(dst, e.Duration)
	}
	dst = appendStringKey(dst, `,"result":`, e.Result)
	dst = appendStringKey(dst, `,"error":`, e.Error)
	return append(dst, "}\n"...)
}

// appendStringKey appends key (with its leading comma and trailing colon)
// and the quoted value, unless the value is empty.
func appendStringKey(dst []byte, key, v string) []byte {
	if v == "" {
		return dst
	}
	return appendString(append(dst, key...), v)
}

// appendMillis appends d in milliseconds with microsecond precision, as
// zap's AddFloat64 wrote float64(d.Microseconds())/1000.
func appendMillis(dst []byte, d time.Duration) []byte {
	f := float64(d.Microseconds()) / 1000
	switch {
	case math.IsNaN(f):
		return append(dst, `"NaN"`...)
	case math.IsInf(f, 1):
		return append(dst, `"+Inf"`...)
	case math.IsInf(f, -1):
		return append(dst, `"-Inf"`...)
	}
	return strconv.AppendFloat(dst, f, 'f', -1, 64)
}

// hexDigits are the digits of \u00XX escapes (lower case, as zap).
const hexDigits = "0123456789abcdef"

// appendString appends s as a quoted JSON string with zap's escaping:
// '"' and '\\' backslash-escaped, \n \r \t by name, other bytes below 0x20
// as \u00XX, each byte of invalid UTF-8 as \ufffd, and everything else
// (DEL, U+2028, U+2029, '<', '>', '&') copied unchanged.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	last := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '\\' && c != '"' {
				i++
				continue
			}
			dst = append(dst, s[last:i]...)
			switch c {
			case '\\', '"':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			last = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[last:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			last = i
			continue
		}
		i += size
	}
	dst = append(dst, s[last:]...)
	return append(dst, '"')
}
