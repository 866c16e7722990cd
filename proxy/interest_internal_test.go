package proxy

import "testing"

// TestSetBackendInterestKeepsWhatTheRelayNeeds: hooks change the interest
// of the types they may skip, never of DataRow (counted as chosen at
// startup) or of the messages the relay and the hooks' cycle bookkeeping
// rely on.
func TestSetBackendInterestKeepsWhatTheRelayNeeds(t *testing.T) {
	s := &Session{}
	for _, typ := range []byte{MsgDataRow, MsgReadyForQuery, MsgErrorResponse, MsgBackendKeyData} {
		s.interest[typ] = Inspect
		s.SetBackendInterest(typ, Ignore)
		if s.interest[typ] != Inspect {
			t.Errorf("interest in %q changed to %v", typ, s.interest[typ])
		}
	}
	for _, typ := range []byte{'2', 'T', 'n', 't', 'H'} {
		s.SetBackendInterest(typ, Notify)
		if s.interest[typ] != Notify {
			t.Errorf("interest in %q is %v, want Notify", typ, s.interest[typ])
		}
		s.SetBackendInterest(typ, Ignore)
		if s.interest[typ] != Ignore {
			t.Errorf("interest in %q is %v, want Ignore", typ, s.interest[typ])
		}
	}
}
