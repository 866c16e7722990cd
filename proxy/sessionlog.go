package proxy

import (
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// sessionLog is a session's logger, built on first use: zap's With encodes
// the session field up front into a buffer of its own (about 1 KiB per
// session), and most sessions never log past their first line.
type sessionLog struct {
	base *zap.Logger
	id   uint64
	l    atomic.Pointer[zap.Logger]
}

func (sl *sessionLog) logger() *zap.Logger {
	if l := sl.l.Load(); l != nil {
		return l
	}
	sl.l.CompareAndSwap(nil, sl.base.With(zap.Uint64("session", sl.id)).WithOptions(zap.AddCallerSkip(2)))
	return sl.l.Load()
}

func (sl *sessionLog) log(level zapcore.Level, msg string, fields []zap.Field) {
	if !sl.base.Core().Enabled(level) {
		return
	}
	if ce := sl.logger().Check(level, msg); ce != nil {
		ce.Write(fields...)
	}
}

func (sl *sessionLog) Debug(msg string, fields ...zap.Field) { sl.log(zapcore.DebugLevel, msg, fields) }
func (sl *sessionLog) Info(msg string, fields ...zap.Field)  { sl.log(zapcore.InfoLevel, msg, fields) }
func (sl *sessionLog) Warn(msg string, fields ...zap.Field)  { sl.log(zapcore.WarnLevel, msg, fields) }
