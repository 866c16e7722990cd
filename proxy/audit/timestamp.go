package audit

import (
	"slices"
	"sync/atomic"
	"time"
)

// appendTimestamp appends t as t.AppendFormat(dst, time.RFC3339Nano) does,
// byte for byte, for every t.
//
// RFC3339Nano is the date and time to the second, the fraction (a dot and
// up to nine digits, trailing zeros trimmed, nothing when it is zero) and
// the zone ("Z" when the offset is zero, else ±hh:mm). Only the fraction
// changes within a second, and the logger sees one second after another:
// the rest is formatted once per second and location, by AppendFormat
// itself (so calendars, zones and offsets are the time package's), and
// reused while the second lasts.
//
// Like AppendJSON, whose only caller it is, it may leave junk in dst's
// spare capacity past what it returns (up to 35 bytes from len(dst)): the
// rest of the line overwrites it.
func appendTimestamp(dst []byte, t time.Time) []byte {
	unix, loc := t.Unix(), t.Location()
	s := lastSecond.Load()
	if s == nil || s.unix != unix || s.loc != loc {
		if s = newStampSecond(t, unix, loc); s == nil {
			return t.AppendFormat(dst, time.RFC3339Nano)
		}
		lastSecond.Store(s)
	}
	// Room for the longest text, then fixed-size copies: no memmove call.
	n := len(dst)
	if cap(dst)-n < maxStamp {
		dst = slices.Grow(dst, maxStamp)
	}
	b := dst[n : n+maxStamp]
	*(*[19]byte)(b) = s.clock
	m := 19 + putFraction((*[10]byte)(b[19:29]), t.Nanosecond())
	*(*[6]byte)(b[m : m+6]) = s.zone
	return dst[:n+m+s.zoneLen]
}

// maxStamp is the longest text appendTimestamp writes itself:
// 2006-01-02T15:04:05.999999999-07:00.
const maxStamp = 19 + 10 + 6

// stampSecond is one second formatted in one location: immutable once
// published in lastSecond.
type stampSecond struct {
	unix    int64
	loc     *time.Location
	clock   [19]byte // 2006-01-02T15:04:05
	zone    [6]byte  // Z or -07:00
	zoneLen int
}

// lastSecond is the second appendTimestamp formatted last. Concurrent
// loggers may replace each other's; each entry is correct for its key.
var lastSecond atomic.Pointer[stampSecond]

// newStampSecond formats the second of t (whose Unix time and location are
// unix and loc) with AppendFormat(time.RFC3339), which RFC3339Nano extends
// only by the fraction between the seconds and the zone. It returns nil
// for the times whose text is not four-digit year, 19 bytes to the second
// and a zone of "Z" or ±hh:mm (years before 0 or after 9999): the caller
// formats those with AppendFormat.
func newStampSecond(t time.Time, unix int64, loc *time.Location) *stampSecond {
	var buf [40]byte
	b := t.AppendFormat(buf[:0], time.RFC3339)
	if len(b) < 20 || b[4] != '-' || b[10] != 'T' || b[16] != ':' {
		return nil
	}
	zone := b[19:]
	switch {
	case len(zone) == 1 && zone[0] == 'Z':
	case len(zone) == 6 && (zone[0] == '+' || zone[0] == '-') && zone[3] == ':':
	default:
		return nil
	}
	s := &stampSecond{unix: unix, loc: loc, zoneLen: len(zone)}
	copy(s.clock[:], b[:19])
	copy(s.zone[:], zone)
	return s
}

// putFraction writes the fraction of a second as RFC3339Nano does into
// the start of f and returns its length: nothing for 0, else a dot and the
// nine digits of ns (0 <= ns < 1e9) without their trailing zeros. Bytes of
// f past the length are left with digits.
func putFraction(f *[10]byte, ns int) int {
	if ns == 0 {
		return 0
	}
	// Two digits at a time, in two independent halves.
	u := uint32(ns) % 1e9
	hi, lo := u/1e5, u%1e5 // 4 and 5 digits
	h1, h2 := hi/100, hi%100
	l0, l1 := lo/1e4, lo%1e4
	l2, l3 := l1/100, l1%100
	f[0] = '.'
	f[1], f[2] = digitPairs[2*h1], digitPairs[2*h1+1]
	f[3], f[4] = digitPairs[2*h2], digitPairs[2*h2+1]
	f[5] = byte('0' + l0)
	f[6], f[7] = digitPairs[2*l2], digitPairs[2*l2+1]
	f[8], f[9] = digitPairs[2*l3], digitPairs[2*l3+1]
	n := len(f)
	for f[n-1] == '0' {
		n--
	}
	return n
}

// digitPairs holds the two decimal digits of 0 to 99 at 2*n.
const digitPairs = "00010203040506070809" +
	"10111213141516171819" +
	"20212223242526272829" +
	"30313233343536373839" +
	"40414243444546474849" +
	"50515253545556575859" +
	"60616263646566676869" +
	"70717273747576777879" +
	"80818283848586878889" +
	"90919293949596979899"
