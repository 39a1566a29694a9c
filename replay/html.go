package replay

import (
	"fmt"
	"html/template"
	"io"
	"math"
	"math/bits"
	"time"
)

// WriteHTML writes one self-contained page: no script, font, style sheet
// or image from elsewhere. Each quantity gets a histogram drawn in inline
// SVG, with the configured cap and the suggestion marked on it; each rule
// its top refused keys. Everything from the log is escaped
// (html/template).
func (rep *Report) WriteHTML(w io.Writer, configName string) error {
	page := htmlPage{Report: rep, Config: configName, Generated: time.Now().UTC().Format(time.RFC3339)}
	if !rep.First.IsZero() {
		page.Span = rep.First.Format(time.RFC3339) + " to " + rep.Last.Format(time.RFC3339)
	}
	for _, q := range rep.Quantities {
		page.Plots = append(page.Plots, plotOf(q))
	}
	return htmlTmpl.Execute(w, page)
}

type htmlPage struct {
	*Report
	Config, Span, Generated string
	Plots                   []plot
}

type plot struct {
	Q           *Quantity
	Bars        []bar
	Ticks       []tick
	Cap, Sug    *marker
	Width, Base int
	Empty       bool
	P50, P90    string
	P99, Max    string
	CapText     string
	SugText     string
}

type bar struct {
	X, Y, W, H int
	Title      string
}

type tick struct {
	X     int
	Label string
}

type marker struct {
	X      int
	Label  string
	Anchor string // text-anchor of the label
}

const (
	plotW, plotH, plotLeft, plotTop = 640, 180, 48, 16
)

// binner puts values in bars: one per value below 16, one per power of
// two above; for bytes one below 1KiB, one per power of two above.
type binner struct{ bytes bool }

func (b binner) bin(v int64) int {
	if b.bytes {
		if v < 1<<10 {
			return 0
		}
		return bits.Len64(uint64(v)) - 10
	}
	if v < 16 {
		return int(max(v, 0))
	}
	return 16 + bits.Len64(uint64(v)) - 5
}

func (b binner) binRange(i int) (lo, hi int64) {
	if b.bytes {
		if i == 0 {
			return 0, 1<<10 - 1
		}
		k := i + 9
		return 1 << k, 1<<(k+1) - 1
	}
	if i < 16 {
		return int64(i), int64(i)
	}
	k := i - 16 + 4 // [2^k, 2^(k+1))
	return 1 << k, 1<<(k+1) - 1
}

func plotOf(q *Quantity) plot {
	p := plot{Q: q, Width: plotW + plotLeft + 16, Base: plotTop + plotH,
		P50: q.format(q.P50), P90: q.format(q.P90), P99: q.format(q.P99), Max: q.format(q.Max),
		CapText: "off", SugText: q.format(q.Suggest)}
	if q.Cap > 0 {
		p.CapText = q.format(q.Cap)
	}
	if q.Count == 0 {
		p.Empty = true
		return p
	}
	bn := binner{bytes: q.Unit == "bytes"}
	bin := bn.bin
	last := bin(q.Max)
	if q.Cap > 0 {
		last = max(last, bin(q.Cap))
	}
	last = max(last, bin(q.Suggest))
	counts := make([]int64, last+1)
	for _, b := range q.Histogram {
		counts[bin(b.LE)] += b.Count
	}
	var top float64
	for _, c := range counts {
		top = math.Max(top, math.Log10(float64(c)+1))
	}
	bw := plotW / (last + 1)
	for i, c := range counts {
		lo, hi := bn.binRange(i)
		x := plotLeft + i*bw
		if c > 0 {
			h := int(math.Round(float64(plotH) * math.Log10(float64(c)+1) / top))
			h = max(h, 2)
			label := q.format(lo)
			if hi != lo {
				label += "–" + q.format(hi)
			}
			p.Bars = append(p.Bars, bar{X: x + 1, Y: p.Base - h, W: max(bw-2, 1), H: h,
				Title: fmt.Sprintf("%s %s: %d %s", label, q.Unit, c, q.Of)})
		}
		if bn.bytes && i%3 == 0 || !bn.bytes && (i < 16 && (i%4 == 0 || i == last) || i >= 16 && (last < 24 || (i-16)%3 == 0)) {
			p.Ticks = append(p.Ticks, tick{X: x + bw/2, Label: q.format(lo)})
		}
	}
	if q.Cap > 0 {
		p.Cap = &marker{X: plotLeft + bin(q.Cap)*bw + bw/2, Label: "cap " + q.format(q.Cap)}
	}
	p.Sug = &marker{X: plotLeft + bin(q.Suggest)*bw + bw/2, Label: "suggest " + q.format(q.Suggest), Anchor: "start"}
	if p.Sug.X > plotLeft+plotW*3/4 {
		p.Sug.Anchor = "end"
	}
	return p
}

var htmlTmpl = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>sessioncap replay report</title>
<style>
body { font: 14px/1.4 sans-serif; margin: 2em; color: #222; max-width: 60em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #ccc; padding: .2em .6em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.plot { margin: 1em 0 2em; }
.bar { fill: #4a78b5; } .cap { stroke: #c0392b; stroke-width: 2; } .sug { stroke: #27ae60; stroke-width: 2; stroke-dasharray: 5 3; }
.axis { stroke: #444; } .tick { font-size: 10px; fill: #444; } .mlabel { font-size: 11px; }
.reason { color: #555; }
</style>
</head>
<body>
<h1>sessioncap replay report</h1>
<p>Configuration <code>{{.Config}}</code> (mode {{.Mode}}), log {{if .Span}}{{.Span}}{{else}}without lines{{end}}.
{{.Lines}} lines: {{.Used}} used, {{.Ignored}} of other programs or saying nothing a rule uses, {{.Unplaced}} unplaced, {{.Unparsed}} not syslog lines.
{{.Sessions}} sessions, {{.Messages}} transactions, at most {{.OpenPeak}} sessions open at once.</p>

<h2 id="refusals">What the rules would have refused</h2>
{{if .Rules}}<table>
<tr><th>rule</th><th>mode</th><th>refusals</th><th>sessions</th><th>transactions</th><th>clients</th><th>top refused keys</th></tr>
{{range .Rules}}<tr class="rule"><td>{{.Name}}</td><td>{{.Mode}}</td><td class="n">{{.Refusals}}</td><td class="n">{{.Sessions}}</td><td class="n">{{.Messages}}</td><td class="n">{{.Clients}}</td>
<td>{{range $i, $k := .Top}}{{if $i}}, {{end}}<code>{{$k.Key}}</code> ({{$k.Count}}){{end}}</td></tr>
{{end}}</table>
{{if .Bans}}<p>{{len .Bans}} bans started.</p>{{end}}
{{else}}<p>No rule would have refused anything.</p>{{end}}

<h2 id="quantities">What the limits cap</h2>
<p>Each histogram counts the sessions, networks or keys of the log by the quantity a limit caps (bars on a log scale of counts; one bar per value below 16, one per power of two above; for bytes one bar below 1KiB, one per power of two above).
The red line is the configured cap, the dashed green line the suggestion.</p>
{{range .Plots}}<div class="plot" data-quantity="{{.Q.Name}}">
<h3>{{.Q.Name}} <small>({{.Q.ConfigKey}})</small></h3>
{{if .Empty}}<p>Nothing in the log.</p>{{else}}
<svg xmlns="http://www.w3.org/2000/svg" width="{{.Width}}" height="230" viewBox="0 0 {{.Width}} 230" role="img" aria-label="histogram of {{.Q.Name}}">
<line class="axis" x1="48" y1="{{.Base}}" x2="{{.Width}}" y2="{{.Base}}"/>
{{range .Bars}}<rect class="bar" x="{{.X}}" y="{{.Y}}" width="{{.W}}" height="{{.H}}"><title>{{.Title}}</title></rect>
{{end}}{{range .Ticks}}<text class="tick" x="{{.X}}" y="212" text-anchor="middle">{{.Label}}</text>
{{end}}{{with .Cap}}<line class="cap" x1="{{.X}}" y1="10" x2="{{.X}}" y2="196"/><text class="mlabel" x="{{.X}}" y="226" fill="#c0392b" text-anchor="middle">{{.Label}}</text>
{{end}}{{with .Sug}}<line class="sug" x1="{{.X}}" y1="10" x2="{{.X}}" y2="196"/><text class="mlabel" x="{{.X}}" y="10" fill="#27ae60" text-anchor="{{.Anchor}}">{{.Label}}</text>
{{end}}</svg>
<table><tr><th>{{.Q.Of}}</th><th>p50</th><th>p90</th><th>p99</th><th>max</th><th>cap</th><th>above cap</th><th>suggest</th></tr>
<tr><td class="n">{{.Q.Count}}</td><td class="n">{{.P50}}</td><td class="n">{{.P90}}</td><td class="n">{{.P99}}</td><td class="n">{{.Max}}</td><td class="n">{{.CapText}}</td><td class="n">{{.Q.AboveCap}}</td><td class="n">{{.SugText}}</td></tr></table>
<p class="reason">{{.Q.Reason}}</p>{{end}}
</div>
{{end}}
<p><small>Written by sessioncap replay at {{.Generated}}.</small></p>
</body>
</html>
`))
