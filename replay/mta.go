package replay

import (
	"net/netip"
	"strconv"
	"strings"
)

// What the lines of Postfix and Sendmail tell, as replay rebuilds sessions
// from them. Every parser below takes the message part of a line (after
// "prog[pid]: ") and never fails: a line it does not know is reported as
// such and counted.

// lineKind is what one MTA line is to the replay.
type lineKind int

const (
	kindOther      lineKind = iota // a line of a program replay reads that says nothing it uses
	kindConnect                    // a session starts: ip
	kindDisconnect                 // the session ended
	kindClient                     // Postfix: the transaction got queue id qid (first accepted RCPT): user
	kindMTAReject                  // the MTA rejected recipient rcpt (its own checks): sender
	kindMilterMail                 // the milter refused MAIL: sender
	kindMilterRcpt                 // the milter refused recipient rcpt: sender
	kindMilterEOM                  // the milter refused the message at its end
	kindMessage                    // the message was received: sender, size, nrcpt (Sendmail: ip)
	kindDelivery                   // recipients of a received message: rcpts
	kindRemoved                    // Postfix: the queue file is gone
	kindAuth                       // Sendmail: the session authenticated as user
	kindUnplaced                   // a line of a program replay reads, in a shape it does not know
)

type mtaLine struct {
	kind   lineKind
	qid    string
	ip     netip.Addr
	user   string
	sender string
	rcpt   string
	rcpts  []string
	size   int64
	nrcpt  int
}

// progKind tells which MTA and role a syslog tag is.
type progKind int

const (
	progNone progKind = iota
	progSmtpd
	progPostfixQueue // cleanup, qmgr
	progPostfixDelivery
	progSendmail
)

// classify tells what a syslog tag is, and the name of its queue (the
// Postfix instance: "postfix" for postfix/submission/smtpd, "postfix-out"
// for postfix-out/qmgr; "sendmail" for Sendmail).
func classify(prog string) (progKind, string) {
	switch prog {
	case "sm-mta", "sendmail":
		return progSendmail, "sendmail"
	}
	i := strings.IndexByte(prog, '/')
	if i <= 0 || !strings.HasPrefix(prog, "postfix") {
		return progNone, ""
	}
	inst, role := prog[:i], prog[strings.LastIndexByte(prog, '/')+1:]
	switch role {
	case "smtpd":
		return progSmtpd, inst
	case "cleanup", "qmgr":
		return progPostfixQueue, inst
	case "smtp", "lmtp", "local", "virtual", "pipe", "error", "discard", "relay", "retry":
		return progPostfixDelivery, inst
	}
	return progNone, ""
}

// splitQID splits "QUEUEID: rest"; qid is "" for NOQUEUE and for a line
// with no queue id.
func splitQID(msg string) (qid, rest string) {
	i := strings.Index(msg, ": ")
	if i <= 0 || i > 32 {
		return "", msg
	}
	id := msg[:i]
	for j := 0; j < len(id); j++ {
		c := id[j]
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z') {
			return "", msg
		}
	}
	if id == "NOQUEUE" {
		return "", msg[i+2:]
	}
	return id, msg[i+2:]
}

// bracketIP reads the address in the last [...] of s ("host[1.2.3.4]",
// "host [IPv6:::1]", "unknown[::1]:25").
func bracketIP(s string) netip.Addr {
	j := strings.LastIndexByte(s, ']')
	if j < 0 {
		return netip.Addr{}
	}
	i := strings.LastIndexByte(s[:j], '[')
	if i < 0 {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(strings.TrimPrefix(s[i+1:j], "IPv6:"))
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}

// field returns the value of name= in s up to the next ", " or " "
// (stop), "" and false when absent. Angle brackets are removed.
func field(s, name string, stop string) (string, bool) {
	i := 0
	for {
		j := strings.Index(s[i:], name)
		if j < 0 {
			return "", false
		}
		j += i
		if j == 0 || s[j-1] == ' ' || s[j-1] == ',' || s[j-1] == ';' {
			v := s[j+len(name):]
			if k := strings.Index(v, stop); k >= 0 {
				v = v[:k]
			}
			return strings.TrimSuffix(strings.TrimPrefix(v, "<"), ">"), true
		}
		i = j + len(name)
	}
}

func atoi(s string) (int64, bool) {
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil && n >= 0
}

// parsePostfix reads a line of smtpd, cleanup, qmgr or a delivery agent.
func parsePostfix(pk progKind, msg string) mtaLine {
	if pk == progSmtpd {
		if rest, ok := strings.CutPrefix(msg, "connect from "); ok {
			ip := bracketIP(rest)
			return mtaLine{kind: kindConnect, ip: ip}
		}
		if strings.HasPrefix(msg, "disconnect from ") {
			// "mail=2/3": 2 MAIL commands accepted of 3
			n := -1
			if v, ok := field(msg, "mail=", " "); ok {
				ok, _, _ := strings.Cut(v, "/")
				if x, good := atoi(ok); good {
					n = int(min(x, maxRcpts))
				}
			}
			return mtaLine{kind: kindDisconnect, nrcpt: n}
		}
	}
	qid, body := splitQID(msg)
	switch {
	case pk == progSmtpd && qid != "" && strings.HasPrefix(body, "client="):
		u, _ := field(body, "sasl_username=", ", ")
		return mtaLine{kind: kindClient, qid: qid, user: u}
	case strings.HasPrefix(body, "reject: RCPT from "):
		return rejectLine(kindMTAReject, qid, body)
	case strings.HasPrefix(body, "milter-reject: MAIL from "):
		return rejectLine(kindMilterMail, qid, body)
	case strings.HasPrefix(body, "milter-reject: RCPT from "):
		return rejectLine(kindMilterRcpt, qid, body)
	case strings.HasPrefix(body, "milter-reject: END-OF-MESSAGE from "), strings.HasPrefix(body, "milter-reject: DATA from "):
		if qid == "" {
			return mtaLine{kind: kindOther}
		}
		return mtaLine{kind: kindMilterEOM, qid: qid}
	case pk == progPostfixQueue && qid != "" && strings.HasPrefix(body, "from="):
		s, _ := field(body, "from=", ", ")
		size, ok1 := field(body, "size=", ", ")
		n, ok2 := field(body, "nrcpt=", " ")
		sz, ok3 := atoi(size)
		nr, ok4 := atoi(n)
		if !ok1 || !ok2 || !ok3 || !ok4 {
			return mtaLine{kind: kindUnplaced}
		}
		return mtaLine{kind: kindMessage, qid: qid, sender: s, size: sz, nrcpt: int(nr)}
	case pk == progPostfixQueue && qid != "" && body == "removed":
		return mtaLine{kind: kindRemoved, qid: qid}
	case pk == progPostfixDelivery && qid != "" && strings.HasPrefix(body, "to="):
		r, _ := field(body, "to=", ", ")
		if o, ok := field(body, "orig_to=", ", "); ok && o != "" {
			r = o
		}
		return mtaLine{kind: kindDelivery, qid: qid, rcpts: []string{r}}
	}
	return mtaLine{kind: kindOther}
}

// rejectLine reads "...; from=<s> to=<r> proto=..." of a reject line.
func rejectLine(k lineKind, qid, body string) mtaLine {
	i := strings.LastIndex(body, "; from=<")
	if i < 0 {
		return mtaLine{kind: kindUnplaced}
	}
	tail := body[i+2:]
	s, _ := field(tail, "from=", "> ")
	r, _ := field(tail, "to=", "> ")
	u, _ := field(tail, "sasl_username=", ">") // Postfix adds it for an authenticated client
	if k != kindMilterMail && r == "" && !strings.Contains(tail, "to=<>") {
		return mtaLine{kind: kindUnplaced}
	}
	return mtaLine{kind: k, qid: qid, sender: s, rcpt: r, user: u}
}

// parseSendmail reads a line of sendmail (sm-mta).
func parseSendmail(msg string) mtaLine {
	qid, body := splitQID(msg)
	switch {
	case strings.HasPrefix(body, "connect from "):
		return mtaLine{kind: kindConnect, ip: bracketIP(body)}
	case strings.Contains(body, "did not issue MAIL/EXPN/VRFY/ETRN"), strings.HasPrefix(body, "lost input channel"),
		strings.HasPrefix(body, "Milter: connect: ") && !strings.HasSuffix(body, "continue"):
		return mtaLine{kind: kindDisconnect}
	case strings.HasPrefix(body, "AUTH=server, "):
		u, _ := field(body, "authid=", ", ")
		return mtaLine{kind: kindAuth, user: u}
	case qid == "":
		return mtaLine{kind: kindOther}
	case strings.HasPrefix(body, "from="):
		s, _ := field(body, "from=", ", ")
		size, ok1 := field(body, "size=", ", ")
		n, ok2 := field(body, "nrcpts=", ", ")
		sz, ok3 := atoi(size)
		nr, ok4 := atoi(n)
		relay, _ := field(body, "relay=", "\x00")
		if !ok1 || !ok2 || !ok3 || !ok4 {
			return mtaLine{kind: kindUnplaced}
		}
		return mtaLine{kind: kindMessage, qid: qid, sender: s, size: sz, nrcpt: int(nr), ip: bracketIP(relay)}
	case strings.HasPrefix(body, "Milter: from="):
		s, _ := field(body, "from=", ", ")
		return mtaLine{kind: kindMilterMail, qid: qid, sender: s}
	case strings.HasPrefix(body, "Milter: to="):
		r, _ := field(body, "to=", ", ")
		return mtaLine{kind: kindMilterRcpt, qid: qid, rcpt: r}
	case strings.HasPrefix(body, "Milter: data, reject="), strings.HasPrefix(body, "Milter: reject="):
		return mtaLine{kind: kindMilterEOM, qid: qid}
	case strings.HasPrefix(body, "ruleset=check_rcpt, arg1="):
		r, _ := field(body, "arg1=", ", ")
		if !strings.Contains(body, "reject=") {
			return mtaLine{kind: kindOther}
		}
		return mtaLine{kind: kindMTAReject, qid: qid, rcpt: r}
	case strings.HasPrefix(body, "to=") && strings.Contains(body, "stat="):
		list := body[3:]
		if k := strings.Index(list, ", "); k >= 0 {
			list = list[:k]
		}
		var rs []string
		for _, r := range strings.Split(list, ",") {
			if r = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(r), "<"), ">"); r != "" {
				rs = append(rs, r)
			}
		}
		return mtaLine{kind: kindDelivery, qid: qid, rcpts: rs}
	}
	return mtaLine{kind: kindOther}
}
