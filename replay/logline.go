package replay

import (
	"strings"
	"time"
)

// Line is one syslog line split into the parts replay uses.
type Line struct {
	Time time.Time
	Host string // "" when the line has none (a raw datagram from /dev/log)
	Prog string // the syslog tag without the pid: postfix/smtpd, postfix-out/qmgr, sm-mta
	PID  string
	Msg  string
}

// clock turns the timestamps of lines into times. Classic syslog
// timestamps ("Dec  3 23:16:29") have no year and no zone: they are read
// in Loc, in the year that puts them at or before Ref (plus a day of
// slack), or in Year when it is set, rolling over to the next year when
// the month goes back from December to January.
type clock struct {
	Loc       *time.Location
	Year      int       // 0: from Ref
	Ref       time.Time // the file's modification time
	lastMonth time.Month
}

var months = map[string]time.Month{
	"Jan": 1, "Feb": 2, "Mar": 3, "Apr": 4, "May": 5, "Jun": 6,
	"Jul": 7, "Aug": 8, "Sep": 9, "Oct": 10, "Nov": 11, "Dec": 12,
}

// parseLine splits s. It reports false for a line that is not a syslog
// line with a program tag (garbage, journalctl's "-- Boot" markers, a line
// cut before the tag).
func (c *clock) parseLine(s string) (Line, bool) {
	var l Line
	s = strings.TrimRight(s, "\r\n")
	if len(s) > 0 && s[0] == '<' { // a raw syslog datagram: <PRI>
		if i := strings.IndexByte(s, '>'); i > 0 && i <= 4 {
			s = s[i+1:]
		}
	}
	var rest string
	var ok bool
	if len(s) >= 19 && s[4] == '-' && s[10] == 'T' {
		l.Time, rest, ok = parseISO(s)
	} else {
		l.Time, rest, ok = c.parseClassic(s)
	}
	if !ok {
		return l, false
	}
	// [host] prog[pid]: msg
	tok, after, found := strings.Cut(rest, " ")
	if !found {
		return l, false
	}
	if !strings.HasSuffix(tok, ":") {
		l.Host = tok
		if tok, after, found = strings.Cut(after, " "); !found && !strings.HasSuffix(tok, ":") {
			return l, false
		}
	}
	tag := strings.TrimSuffix(tok, ":")
	if len(tag) == len(tok) {
		return l, false
	}
	if i := strings.IndexByte(tag, '['); i > 0 && strings.HasSuffix(tag, "]") {
		l.Prog, l.PID = tag[:i], tag[i+1:len(tag)-1]
	} else {
		l.Prog = tag
	}
	if l.Prog == "" {
		return l, false
	}
	l.Msg = after
	return l, true
}

// parseISO reads RFC 3339 (rsyslog) and journalctl's short-iso
// (+0000 offsets) timestamps, with or without fractions.
func parseISO(s string) (time.Time, string, bool) {
	ts, rest, ok := strings.Cut(s, " ")
	if !ok {
		return time.Time{}, "", false
	}
	for _, layout := range [...]string{time.RFC3339Nano, "2006-01-02T15:04:05Z0700"} {
		if t, err := time.Parse(layout, ts); err == nil {
			return t, strings.TrimLeft(rest, " "), true
		}
	}
	return time.Time{}, "", false
}

// parseClassic reads "Dec  3 23:16:29", "Dec 03 23:16:29" and journalctl's
// short-precise "Dec 03 23:16:29.123456".
func (c *clock) parseClassic(s string) (time.Time, string, bool) {
	if len(s) < 15 {
		return time.Time{}, "", false
	}
	mon, ok := months[s[:3]]
	if !ok || s[3] != ' ' {
		return time.Time{}, "", false
	}
	i := 4
	for i < len(s) && s[i] == ' ' {
		i++
	}
	day := 0
	for n := 0; i < len(s) && s[i] >= '0' && s[i] <= '9' && n < 2; i, n = i+1, n+1 {
		day = day*10 + int(s[i]-'0')
	}
	if day < 1 || day > 31 || i+9 > len(s) || s[i] != ' ' {
		return time.Time{}, "", false
	}
	i++
	hms := s[i : i+8]
	if hms[2] != ':' || hms[5] != ':' {
		return time.Time{}, "", false
	}
	h, ok1 := two(hms[0:2])
	m, ok2 := two(hms[3:5])
	sec, ok3 := two(hms[6:8])
	if !ok1 || !ok2 || !ok3 || h > 23 || m > 59 || sec > 60 {
		return time.Time{}, "", false
	}
	i += 8
	nsec := 0
	if i < len(s) && s[i] == '.' {
		i++
		scale := 100000000
		for ; i < len(s) && s[i] >= '0' && s[i] <= '9'; i++ {
			nsec += int(s[i]-'0') * scale
			scale /= 10
		}
	}
	if i >= len(s) || s[i] != ' ' {
		return time.Time{}, "", false
	}
	loc := c.Loc
	if loc == nil {
		loc = time.Local
	}
	var t time.Time
	if c.Year != 0 {
		if c.lastMonth == time.December && mon == time.January {
			c.Year++
		}
		t = time.Date(c.Year, mon, day, h, m, sec, nsec, loc)
	} else {
		ref := c.Ref
		if ref.IsZero() {
			ref = time.Now()
		}
		t = time.Date(ref.In(loc).Year(), mon, day, h, m, sec, nsec, loc)
		if t.After(ref.Add(24 * time.Hour)) { // December's lines in a file written in January
			t = t.AddDate(-1, 0, 0)
		}
	}
	c.lastMonth = mon
	return t, strings.TrimLeft(s[i:], " "), true
}

func two(s string) (int, bool) {
	if s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9' {
		return 0, false
	}
	return int(s[0]-'0')*10 + int(s[1]-'0'), true
}
