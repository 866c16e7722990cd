package audit

import (
	"encoding/binary"
	"slices"
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
		dst = appendTimestamp(dst, t)
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
	us := d.Microseconds()
	if us > -maxExactMicros && us < maxExactMicros {
		return appendMicrosAsMillis(dst, us)
	}
	// An int64 over 1000 is finite: zap's "NaN" and "±Inf" cannot occur.
	return strconv.AppendFloat(dst, float64(us)/1000, 'f', -1, 64)
}

// maxExactMicros bounds the durations appendMicrosAsMillis formats: below
// 10^15 µs (31 years) float64(µs) is exact, the quotient µs/1000 has at
// most 15 significant digits, and no other decimal of at most 15
// significant digits rounds to the same float64 (DBL_DIG is 15). So µs/1000
// is the shortest decimal that round-trips, which is what
// strconv.AppendFloat(f, 'f', -1, 64) writes for f = float64(µs)/1000.
const maxExactMicros = 1_000_000_000_000_000

// appendMicrosAsMillis appends us/1000 in decimal without trailing zeros.
func appendMicrosAsMillis(dst []byte, us int64) []byte {
	if us < 0 {
		dst = append(dst, '-')
		us = -us
	}
	dst = strconv.AppendInt(dst, us/1000, 10)
	frac := us % 1000
	if frac == 0 {
		return dst
	}
	dst = append(dst, '.', byte('0'+frac/100))
	if frac%100 != 0 {
		dst = append(dst, byte('0'+frac/10%10))
		if frac%10 != 0 {
			dst = append(dst, byte('0'+frac%10))
		}
	}
	return dst
}

// hexDigits are the digits of \u00XX escapes (lower case, as zap).
const hexDigits = "0123456789abcdef"

// plainByte marks the bytes appendString copies as they are: ASCII from
// 0x20 on (DEL included) other than '"' and '\\'. Bytes from 0x80 on need
// a UTF-8 check.
var plainByte = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
)

// appendString appends s as a quoted JSON string with zap's escaping:
// '"' and '\\' backslash-escaped, \n \r \t by name, other bytes below 0x20
// as \u00XX, each byte of invalid UTF-8 as \ufffd, and everything else
// (DEL, U+2028, U+2029, '<', '>', '&') copied unchanged.
func appendString(dst []byte, s string) []byte {
	switch {
	case len(s) > 16:
	case len(s) >= 8:
		// Most audit strings (user, decision, protocol, fingerprint,
		// client address) are this long: two overlapping words hold all
		// of s, check them at once and store them as they are.
		w1, w2 := word(s), word(s[len(s)-8:])
		if (unplainBits(w1)|unplainBits(w2))&highs == 0 {
			n := len(dst)
			if cap(dst)-n < 18 {
				dst = slices.Grow(dst, 18)
			}
			out := dst[n : n+18]
			out[0] = '"'
			binary.LittleEndian.PutUint64(out[1:9], w1)
			binary.LittleEndian.PutUint64(out[len(s)-7:len(s)+1], w2)
			out[len(s)+1] = '"'
			return dst[:n+len(s)+2]
		}
	case len(s) >= 4:
		// Likewise two overlapping half words (database, kind, tenant).
		lo, hi := half(s), half(s[len(s)-4:])
		if plainWord(uint64(lo) | uint64(hi)<<32) {
			n := len(dst)
			if cap(dst)-n < 10 {
				dst = slices.Grow(dst, 10)
			}
			out := dst[n : n+10]
			out[0] = '"'
			binary.LittleEndian.PutUint32(out[1:5], lo)
			binary.LittleEndian.PutUint32(out[len(s)-3:len(s)+1], hi)
			out[len(s)+1] = '"'
			return dst[:n+len(s)+2]
		}
	}
	dst = append(dst, '"')
	// Skip the plain prefix, eight bytes at a time while they last: audit
	// strings are mostly ASCII with nothing to escape.
	i := 0
	if len(s) >= 8 {
		for ; i+8 <= len(s); i += 8 {
			if !plainWord(word(s[i:])) {
				break
			}
		}
		// The tail as one word overlapping what is already known plain.
		if i+8 > len(s) && plainWord(word(s[len(s)-8:])) {
			i = len(s)
		}
	}
	for i < len(s) && plainByte[s[i]] {
		i++
	}
	if i < len(s) {
		return appendEscaped(dst, s, i)
	}
	dst = append(dst, s...)
	return append(dst, '"')
}

// word loads the first eight bytes of b (len(b) >= 8), little-endian.
func word(b string) uint64 {
	b = b[:8]
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

// half loads the first four bytes of b (len(b) >= 4), little-endian.
func half(b string) uint32 {
	b = b[:4]
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

// plainWord says whether the eight bytes of w are all plain (see
// plainByte). It is exact: a byte-by-byte check gives the same answer.
func plainWord(w uint64) bool { return unplainBits(w)&highs == 0 }

// unplainBits has a bit under the mask highs exactly when some byte of w
// is not plain (see plainByte). The bits are exact for the word as a
// whole, not byte by byte; the OR of two words' bits is exact for both.
func unplainBits(w uint64) uint64 {
	// A byte with its high bit set is flagged by w itself. When no byte
	// has it, each subtraction sets a high bit exactly when some byte is
	// below the subtrahend: no borrow crosses a byte before the lowest
	// such byte, which wraps to 0xE0 or more.
	return w |
		(w - 0x20*ones) | // some byte < 0x20
		((w ^ '"'*ones) - ones) | // some byte == '"'
		((w ^ '\\'*ones) - ones) // some byte == '\\'
}

// appendEscaped finishes appendString from s[i], the first byte that may
// need escaping, with zap's rules byte by byte (after an escape, plain
// bytes a word at a time), and closes the quote.
func appendEscaped(dst []byte, s string, i int) []byte {
	last := 0
	for i < len(s) {
		c := s[i]
		if c < utf8.RuneSelf {
			if plainByte[c] {
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
			// A line break or a quote is mostly followed by a run of
			// plain text (a formatted statement's next line): skip it a
			// word at a time.
			for i+8 <= len(s) && plainWord(word(s[i:])) {
				i += 8
			}
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
