package guard

import (
	"encoding/binary"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// binaryArray encodes an int4 array header with the given dimensions.
func binaryArray(dims ...int32) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(dims)))
	b = binary.BigEndian.AppendUint32(b, 0)  // flags
	b = binary.BigEndian.AppendUint32(b, 23) // int4
	for _, d := range dims {
		b = binary.BigEndian.AppendUint32(b, uint32(d))
		b = binary.BigEndian.AppendUint32(b, 1)
	}
	return b
}

func TestArrayParamLen(t *testing.T) {
	cases := []struct {
		v      []byte
		binary bool
		n      int64
		ok     bool
	}{
		{[]byte("{1,2,3}"), false, 3, true},
		{[]byte(" {1, 2} "), false, 2, true},
		{[]byte("{}"), false, 0, true},
		{[]byte("{a}"), false, 1, true},
		{[]byte(`{"a,b",c}`), false, 2, true},
		{[]byte(`{"a\"b,c",d}`), false, 2, true},
		{[]byte(`{a\,b,c}`), false, 2, true},
		{[]byte("[1:3]={1,2,3}"), false, 3, true},
		{[]byte("{{1,2},{3,4}}"), false, 0, false},
		{[]byte(`{"a}`), false, 0, false},
		{[]byte("1,2"), false, 0, false},
		{[]byte("{"), false, 0, false},
		{nil, false, 0, true}, // NULL
		{binaryArray(), true, 0, true},
		{binaryArray(3), true, 3, true},
		{binaryArray(2, 5), true, 10, true},
		{binaryArray(-1), true, 0, false},
		{binaryArray(3)[:10], true, 0, false},
		{binaryArray(1, 1, 1, 1, 1, 1, 1), true, 0, false},
	}
	for _, tc := range cases {
		b := &pgproto3.Bind{Parameters: [][]byte{tc.v}}
		if tc.binary {
			b.ParameterFormatCodes = []int16{1}
		}
		n, ok := arrayParamLen(b, 1)
		if ok != tc.ok || (ok && n != tc.n) {
			t.Errorf("%q (binary %v): %d, %v; want %d, %v", tc.v, tc.binary, n, ok, tc.n, tc.ok)
		}
	}
	if _, ok := arrayParamLen(&pgproto3.Bind{}, 1); ok {
		t.Error("a missing parameter was read")
	}
}

func FuzzArrayParamLen(f *testing.F) {
	f.Add([]byte("{1,2}"), false)
	f.Add(binaryArray(2, 3), true)
	f.Fuzz(func(t *testing.T, v []byte, bin bool) {
		b := &pgproto3.Bind{Parameters: [][]byte{v}}
		if bin {
			b.ParameterFormatCodes = []int16{1}
		}
		if n, ok := arrayParamLen(b, 1); ok && n < 0 {
			t.Fatalf("%q: negative length %d", v, n)
		}
	})
}
