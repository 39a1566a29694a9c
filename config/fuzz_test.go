package config

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse: no file, however broken, panics the parser; it is either
// accepted or refused with at least one located error.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("../testdata/config/*.toml")
	files = append(files, "../packaging/sessioncap.toml")
	for _, name := range files {
		if data, err := os.ReadFile(name); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte("[[override]]\n[[override.session]]\nmax_bytes = 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.toml", data)
		if err == nil {
			if cfg == nil || cfg.Rules.Validate() != nil {
				t.Fatalf("accepted an invalid config: %+v", cfg)
			}
			return
		}
		errs, ok := err.(Errors)
		if !ok || len(errs) == 0 {
			t.Fatalf("error of type %T: %v", err, err)
		}
	})
}
