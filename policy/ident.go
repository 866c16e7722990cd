package policy

import (
	"errors"
	"strings"
	"unicode/utf8"
)

// maxIdentLen is NAMEDATALEN-1: Postgres silently truncates longer
// identifiers, so a longer name in the policy could never match what the
// server stores. It is refused instead.
const maxIdentLen = 63

// parseName splits a possibly qualified SQL name ("patients",
// "clinic.patients", `"Mixed Case"`, `"my.schema"."T"`) into its parts, as
// Postgres stores them: unquoted parts folded to lower case (ASCII only, as
// Postgres does in a UTF-8 database), quoted parts kept verbatim with ""
// unescaped. It accepts at most maxParts parts and never panics.
func parseName(s string, maxParts int) ([]string, error) {
	if s == "" {
		return nil, errors.New("is empty")
	}
	if !utf8.ValidString(s) {
		return nil, errors.New("is not valid UTF-8")
	}
	var parts []string
	i := 0
	for {
		part, next, err := parseIdent(s, i)
		if err != nil {
			return nil, err
		}
		parts = append(parts, part)
		i = next
		if i == len(s) {
			break
		}
		if s[i] != '.' {
			return nil, errors.New("is not a valid SQL name (unexpected character; quote it SQL-style, e.g. '\"Name\"')")
		}
		i++
		if i == len(s) {
			return nil, errors.New("is not a valid SQL name (ends with a dot)")
		}
	}
	if len(parts) > maxParts {
		if maxParts == 1 {
			return nil, errors.New("must be a single name, not a qualified one")
		}
		return nil, errors.New("has too many dotted parts (use name or schema.name)")
	}
	return parts, nil
}

// parseIdent reads one identifier starting at s[i] and returns it and the
// index just after it.
func parseIdent(s string, i int) (string, int, error) {
	if s[i] == '"' {
		var b strings.Builder
		j := i + 1
		for {
			if j >= len(s) {
				return "", 0, errors.New("has an unterminated quoted identifier")
			}
			if s[j] == '"' {
				if j+1 < len(s) && s[j+1] == '"' {
					b.WriteByte('"')
					j += 2
					continue
				}
				j++
				break
			}
			if s[j] == 0 {
				return "", 0, errors.New("contains a NUL byte")
			}
			b.WriteByte(s[j])
			j++
		}
		id := b.String()
		if id == "" {
			return "", 0, errors.New("has an empty quoted identifier")
		}
		if len(id) > maxIdentLen {
			return "", 0, errors.New("has an identifier longer than 63 bytes")
		}
		return id, j, nil
	}
	j := i
	for j < len(s) {
		c := s[j]
		isLetter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80
		isRest := c >= '0' && c <= '9' || c == '$'
		if j == i && !isLetter {
			return "", 0, errors.New("is not a valid SQL name (must start with a letter or underscore; quote it SQL-style, e.g. '\"Name\"')")
		}
		if !isLetter && !isRest {
			break
		}
		j++
	}
	id := foldASCII(s[i:j])
	if len(id) > maxIdentLen {
		return "", 0, errors.New("has an identifier longer than 63 bytes")
	}
	return id, j, nil
}

// foldASCII lower-cases A-Z only, as Postgres folds unquoted identifiers in
// a multi-byte encoding.
func foldASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// hasUpperOutsideQuotes reports whether s has an ASCII upper-case letter outside
// SQL double quotes.
func hasUpperOutsideQuotes(s string) bool {
	in := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '"' {
			in = !in
			continue
		}
		if !in && c >= 'A' && c <= 'Z' {
			return true
		}
	}
	return false
}

// parseSetting validates a custom setting name such as app.clinic_id: two or
// more simple identifiers joined by dots (Postgres refuses SET on a
// placeholder without a dot), returned lower-cased as Postgres treats
// setting names case-insensitively.
func parseSetting(s string) (string, error) {
	if s == "" {
		return "", errors.New("is empty")
	}
	parts := strings.Split(s, ".")
	if len(parts) < 2 {
		return "", errors.New("must be a custom setting name with a dot, e.g. app.clinic_id")
	}
	for _, p := range parts {
		if p == "" {
			return "", errors.New("is not a valid setting name (empty part)")
		}
		for k := 0; k < len(p); k++ {
			c := p[k]
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || (k > 0 && (c >= '0' && c <= '9' || c == '$'))
			if !ok {
				return "", errors.New("is not a valid setting name (letters, digits, _ and $ only, e.g. app.clinic_id)")
			}
		}
	}
	if len(s) > maxIdentLen {
		return "", errors.New("is longer than 63 bytes")
	}
	return foldASCII(s), nil
}
