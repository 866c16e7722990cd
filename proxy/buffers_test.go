package proxy

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// messages returns n encoded protocol messages of random sizes (some larger
// than a pooled buffer) and their bodies.
func messages(rng *rand.Rand, n int) ([]byte, [][]byte) {
	var stream []byte
	var bodies [][]byte
	for i := 0; i < n; i++ {
		size := rng.IntN(64)
		if rng.IntN(8) == 0 {
			size = rng.IntN(3 * bufSize)
		}
		body := make([]byte, size)
		for j := range body {
			body[j] = byte(rng.IntN(256))
		}
		stream = frame{typ: 'Q', body: body}.encode(stream)
		bodies = append(bodies, body)
	}
	return stream, bodies
}

func TestConnReaderFramesAnyChunking(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	stream, bodies := messages(rng, 300)
	sources := map[string]func() io.Reader{
		"whole":    func() io.Reader { return bytes.NewReader(stream) },
		"one-byte": func() io.Reader { return iotest.OneByteReader(bytes.NewReader(stream)) },
		"half":     func() io.Reader { return iotest.HalfReader(bytes.NewReader(stream)) },
		"data-err": func() io.Reader { return iotest.DataErrReader(bytes.NewReader(stream)) },
	}
	for name, src := range sources {
		for _, size := range []int{16, bufSize} {
			fr := newFrameReader(newConnReaderSize(src(), size), 1<<20)
			for i, want := range bodies {
				typ, body, err := fr.next()
				require.NoError(t, err, "%s/%d: message %d", name, size, i)
				require.Equal(t, byte('Q'), typ)
				require.Equal(t, want, body, "%s/%d: message %d", name, size, i)
			}
			_, _, err := fr.next()
			assert.ErrorIs(t, err, io.EOF, "%s/%d: after the last message", name, size)
		}
	}
}

func TestConnReaderTruncatedMessage(t *testing.T) {
	stream := frame{typ: 'Q', body: []byte("select 1")}.encode(nil)
	fr := newFrameReader(newConnReader(bytes.NewReader(stream[:len(stream)-2])), 1<<20)
	_, _, err := fr.next()
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
	fr = newFrameReader(newConnReader(bytes.NewReader(stream[:3])), 1<<20)
	_, _, err = fr.next()
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
}

type failWriter struct{ n int }

func (f *failWriter) Write(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("broken")
	}
	f.n--
	return len(p), nil
}

func TestConnWriterBatchesAndReleases(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var out bytes.Buffer
	w := newConnWriter(&out)
	var want []byte
	for i := 0; i < 200; i++ {
		p := make([]byte, rng.IntN(2*bufSize))
		for j := range p {
			p[j] = byte(rng.IntN(256))
		}
		n, err := w.Write(p)
		require.NoError(t, err)
		require.Equal(t, len(p), n)
		want = append(want, p...)
		if rng.IntN(4) == 0 {
			require.NoError(t, w.Flush())
			assert.Nil(t, w.buf, "a flush gives the buffer back")
			assert.Equal(t, want, out.Bytes())
		}
	}
	require.NoError(t, w.Flush())
	assert.Equal(t, want, out.Bytes())
	assert.Nil(t, w.buf)

	// Errors are sticky.
	w = newConnWriter(&failWriter{n: 0})
	_, err := w.Write([]byte("abc"))
	require.NoError(t, err)
	require.Error(t, w.Flush())
	_, err = w.Write([]byte("more"))
	require.Error(t, err)
	require.Error(t, w.Flush())
	w.drop()
	assert.Nil(t, w.buf)
}

// TestConnReaderWaitsWithoutBuffer reads a real socket: while the reader
// waits for the peer it holds no pooled buffer, and every message arrives
// whole however the peer splits it.
func TestConnReaderWaitsWithoutBuffer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer peer.Close()
	conn, err := ln.Accept()
	require.NoError(t, err)
	defer conn.Close()

	sock := newSocketIO(conn)
	_, ok := sock.(*rawSocket)
	require.True(t, ok, "a TCP connection is read with raw system calls")
	cr := newConnReader(sock)
	fr := newFrameReader(cr, 1<<20)
	base := borrowed.Load()
	drained, checked := true, 0 // drained: the last read emptied the socket
	rng := rand.New(rand.NewPCG(5, 6))
	for i := 0; i < 30; i++ {
		stream, bodies := messages(rng, 1+rng.IntN(4))
		got := make(chan error, 1)
		go func() {
			for _, want := range bodies {
				_, body, err := fr.next()
				if err == nil && !bytes.Equal(body, want) {
					err = errors.New("message differs")
				}
				if err != nil {
					got <- err
					return
				}
			}
			got <- nil
		}()
		// The reader is parked after a read that drained the socket (or
		// before any read): no buffer of the pool is out. After a read
		// that filled the buffer it reads again at once, holding it.
		if drained {
			deadline := time.Now().Add(5 * time.Second)
			for borrowed.Load() != base && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			require.Equal(t, base, borrowed.Load(), "round %d: a waiting reader holds a pooled buffer", i)
			checked++
		}
		// Sent in two parts, so the reader also waits mid-message.
		cut := rng.IntN(len(stream))
		_, err := peer.Write(stream[:cut])
		require.NoError(t, err)
		_, err = peer.Write(stream[cut:])
		require.NoError(t, err)
		require.NoError(t, <-got)
		drained = cr.drained // the reader goroutine is done: no race
	}
	require.Greater(t, checked, 20, "too few rounds checked the idle wait")
	require.NoError(t, peer.Close())
	_, _, err = fr.next()
	assert.ErrorIs(t, err, io.EOF)
	assert.Equal(t, base, borrowed.Load(), "the buffer goes back when the peer is gone")
}

// After a hand-back the event loop may leave more than bufSize bytes in a
// larger buffer of its own: the relay streams them out exactly.
func TestStreamMessageFromALargerBuffer(t *testing.T) {
	var stream []byte
	for i := 0; i < 3; i++ {
		msg := make([]byte, 5+20_000)
		msg[0] = MsgDataRow
		msg[1], msg[2], msg[3], msg[4] = 0, 0, 0x4e, 0x24 // 20004
		for j := 5; j < len(msg); j++ {
			msg[j] = byte(i + j)
		}
		stream = append(stream, msg...)
	}
	half := len(stream) - 7_000 // the last message only partly read
	ur := newConnReader(bytes.NewReader(stream[half:]))
	before := BuffersBorrowed()
	ur.buf, ur.w, ur.big = getBigBuf(), half, true
	copy(ur.buf, stream[:half])
	var out bytes.Buffer
	s := &Session{ur: ur, cw: newConnWriter(&out)}
	for i := 0; i < 3; i++ {
		hdr, err := ur.Peek(5)
		require.NoError(t, err)
		require.NoError(t, s.streamMessage(int(hdr[1])<<24|int(hdr[2])<<16|int(hdr[3])<<8|int(hdr[4])), "message %d", i)
	}
	require.NoError(t, s.cw.Flush())
	require.Equal(t, stream, out.Bytes())
	ur.release()
	assert.True(t, ur.buf == nil && !ur.big, "an empty larger buffer goes back")
	assert.Equal(t, before, BuffersBorrowed(), "every pooled buffer went back")
}
