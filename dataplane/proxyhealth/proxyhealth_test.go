package proxyhealth

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

func get(t *testing.T, h http.Handler, path string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	var body map[string]any
	if rec.Code != http.StatusNotFound {
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("%s: body %q: %v", path, rec.Body, err)
		}
	}
	return rec.Code, body
}

func TestHealthFollowsSyncs(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC))
	tr := New(clk, 2*time.Minute)
	if code, _ := get(t, tr, "/healthz"); code != http.StatusServiceUnavailable {
		t.Fatalf("before any sync: %d, want 503", code)
	}
	tr.Queued()
	tr.Updated()
	code, body := get(t, tr, "/healthz")
	if code != http.StatusOK || body["lastUpdated"] != "2026-12-07T12:00:00Z" || body["nodeEligible"] != true {
		t.Fatalf("after a sync: %d %v", code, body)
	}
	// A sync due but not done yet is fine for a while, then not.
	clk.Step(time.Second)
	tr.Queued()
	clk.Step(time.Minute)
	if code, _ := get(t, tr, "/livez"); code != http.StatusOK {
		t.Fatalf("sync due for a minute: %d, want 200", code)
	}
	clk.Step(2 * time.Minute)
	if code, _ := get(t, tr, "/healthz"); code != http.StatusServiceUnavailable {
		t.Fatalf("sync due for 3 minutes: %d, want 503", code)
	}
	tr.Updated()
	if code, _ := get(t, tr, "/healthz"); code != http.StatusOK {
		t.Fatalf("after the sync: %d, want 200", code)
	}
	if code, _ := get(t, tr, "/other"); code != http.StatusNotFound {
		t.Fatalf("/other: %d, want 404", code)
	}
}

func TestModeHandler(t *testing.T) {
	rec := httptest.NewRecorder()
	ModeHandler("ebpf").ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/proxyMode", nil))
	if rec.Code != http.StatusOK || rec.Body.String() != "ebpf" {
		t.Fatalf("/proxyMode: %d %q", rec.Code, rec.Body)
	}
}
