package audit

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

// refAppendString is the reference for appendString: the escaping of
// appendEscaped as it was at commit 2c8ede9 (checked byte for byte against
// zap's encoder), run over the whole string byte by byte with no fast path
// and no shared helper, so that the differential tests compare the fast
// paths with something they cannot share a fault with.
func refAppendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				dst = append(dst, `\ufffd`...)
			} else {
				dst = append(dst, s[i:i+size]...)
			}
			i += size
			continue
		}
		switch {
		case c == '\\' || c == '"':
			dst = append(dst, '\\', c)
		case c == '\n':
			dst = append(dst, '\\', 'n')
		case c == '\r':
			dst = append(dst, '\\', 'r')
		case c == '\t':
			dst = append(dst, '\\', 't')
		case c < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
		default:
			dst = append(dst, c)
		}
		i++
	}
	return append(dst, '"')
}

// appendStringAllWays runs appendString on s appended to an empty buffer,
// to a buffer with a prefix and no spare room (so that it grows), and to
// one with spare room full of junk, and fails unless each result is the
// prefix followed by refAppendString's bytes.
func appendStringAllWays(t testing.TB, s string) {
	t.Helper()
	want := string(refAppendString(nil, s))
	if got := string(appendString(nil, s)); got != want {
		t.Fatalf("appendString(%q) = %s, want %s", s, got, want)
	}
	prefix := []byte("prefix")
	if got := string(appendString(prefix[:len(prefix):len(prefix)], s)); got != "prefix"+want {
		t.Fatalf("appendString(prefix, %q) = %s, want prefix%s", s, got, want)
	}
	junk := bytes.Repeat([]byte{'#'}, 6+len(s)*6+64)
	copy(junk, "prefix")
	if got := string(appendString(junk[:6], s)); got != "prefix"+want {
		t.Fatalf("appendString(prefix+spare, %q) = %s, want prefix%s", s, got, want)
	}
	if !bytes.Equal(prefix, []byte("prefix")) {
		t.Fatalf("appendString(%q) wrote into its full input", s)
	}
}

// TestAppendStringMatchesReference compares appendString with the plain
// reference on strings of every length up to 40 with each byte that needs
// care at each position (the four-, eight- and sixteen-byte paths, the
// overlapping tails and the byte loop all meet it), and on a million random
// strings.
func TestAppendStringMatchesReference(t *testing.T) {
	for _, s := range nasty {
		appendStringAllWays(t, s)
	}
	specials := []string{
		"\"", "\\", "\n", "\r", "\t", "\x00", "\x1f", " ", "\x7f", "é", "\xff", "\x80", "\u2028", "\xe2\x80",
		"\xed\xa0\x80", "🐘", "<", "&", "\ufffd",
	}
	for n := 0; n <= 40; n++ {
		for pos := 0; pos <= n; pos++ {
			for _, sp := range specials {
				appendStringAllWays(t, strings.Repeat("a", pos)+sp+strings.Repeat("b", n-pos))
			}
		}
		appendStringAllWays(t, strings.Repeat("c", n))
	}
	// Two of them anywhere in a plain string: the runs between and after
	// escapes are skipped a word at a time.
	pair := []string{"\n", "\"", "\x01", "é", "\xff", "\xe2\x80"}
	for n := 0; n <= 30; n++ {
		for p := 0; p <= n; p++ {
			for q := p; q <= n; q++ {
				for _, a := range pair {
					for _, b := range pair {
						base := strings.Repeat("x", n)
						appendStringAllWays(t, base[:p]+a+base[p:q]+b+base[q:])
					}
				}
			}
		}
	}
	// Every byte value, alone and in every place of a 4-, 8- and 16-byte
	// plain string.
	for c := 0; c < 256; c++ {
		for _, n := range []int{1, 4, 5, 7, 8, 9, 15, 16, 17} {
			for pos := 0; pos < n; pos++ {
				b := bytes.Repeat([]byte{'z'}, n)
				b[pos] = byte(c)
				appendStringAllWays(t, string(b))
			}
		}
	}
	r := rand.New(rand.NewPCG(5, 6))
	alphabet := []string{"a", "Z", "0", " ", "$", "\"", "\\", "\n", "\x01", "\x7f", "é", "日", "\xff", "\xc3", "\u2029"}
	for i := 0; i < 200_000; i++ {
		var sb strings.Builder
		n := r.IntN(48)
		for j := 0; j < n; j++ {
			switch k := r.IntN(40); {
			case k < len(alphabet):
				sb.WriteString(alphabet[k])
			case k < 38:
				sb.WriteByte(byte('a' + r.IntN(26)))
			default:
				sb.WriteByte(byte(r.IntN(256)))
			}
		}
		appendStringAllWays(t, sb.String())
	}
}

// FuzzAppendString compares appendString with refAppendString on any
// string, appended to an empty buffer, a full one and one with spare room.
func FuzzAppendString(f *testing.F) {
	for _, s := range nasty {
		f.Add(s)
	}
	f.Add("SELECT abalance FROM pgbench_accounts WHERE aid = $1")
	f.Add("9f1c2b3a4d5e6f70")
	f.Add("app_user")
	f.Add("clinic")
	f.Fuzz(func(t *testing.T, s string) {
		appendStringAllWays(t, s)
	})
}
