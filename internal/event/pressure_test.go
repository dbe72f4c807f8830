package event

import (
	"slices"
	"testing"
)

func TestThresholdsValue(t *testing.T) {
	tests := []struct {
		in   string
		want []float64 // nil: an error
	}{
		{"50,80,95,100", []float64{0.5, 0.8, 0.95, 1}},
		{"60%, 90%", []float64{0.6, 0.9}},
		{"99.5", []float64{0.995}},
		{"", nil},
		{"0", nil},
		{"101", nil},
		{"80,50", nil},
		{"50,50", nil},
		{"half", nil},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var got []float64
			err := ThresholdsValue{&got}.Set(tt.in)
			switch {
			case tt.want == nil && err == nil:
				t.Errorf("Set(%q) = %v, want an error", tt.in, got)
			case tt.want != nil && (err != nil || !slices.Equal(got, tt.want)):
				t.Errorf("Set(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
	if s := (ThresholdsValue{&DefaultThresholds}).String(); s != "50,80,95,100" {
		t.Errorf("String() = %q", s)
	}
}

func TestMechanismNames(t *testing.T) {
	for m, want := range map[Mechanism]string{MechanismPerDestination: "per_destination", MechanismBindPool: "bind_pool", MechanismUDP: "udp", 0: "unknown"} {
		if m.String() != want {
			t.Errorf("%d: %q, want %q", m, m.String(), want)
		}
	}
	if KindPressure.String() != "pressure" {
		t.Errorf("KindPressure is %q", KindPressure)
	}
}
