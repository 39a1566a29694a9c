package packaging

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestOverridesHaveReasons: every lintian override shipped in the deb and
// every rpmlint filter names one tag on one file (no blanket silence) and
// has a comment right above it (or above its group) that says why the finding is right for
// this package.
func TestOverridesHaveReasons(t *testing.T) {
	for _, tc := range []struct {
		file string
		rule *regexp.Regexp // what an override line must look like
	}{
		{"lintian/sessioncap", regexp.MustCompile(`^sessioncap: [a-z0-9-]+ (\S.*)?\[[^]]+\]$`)},
		{"sessioncap.rpmlintrc", regexp.MustCompile(`^addFilter\(r"sessioncap\\\.\\S\+: [EW]: [a-z0-9-]+( \S+)*\$"\)$`)},
	} {
		data, err := os.ReadFile(tc.file)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		n := 0
		for i, line := range lines {
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			n++
			if !tc.rule.MatchString(line) {
				t.Errorf("%s:%d: %q is not one tag on one file of this package", tc.file, i+1, line)
			}
			j := i - 1 // over the overrides of one group, to their comment
			for j >= 0 && tc.rule.MatchString(lines[j]) {
				j--
			}
			if j < 0 || !strings.HasPrefix(lines[j], "# ") {
				t.Errorf("%s:%d: %q has no reason in a comment right above it", tc.file, i+1, line)
			}
		}
		if n == 0 {
			t.Errorf("%s: no overrides", tc.file)
		}
	}
}
