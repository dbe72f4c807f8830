package sink

import (
	"github.com/portlife/portlife/internal/encode"
	"github.com/portlife/portlife/internal/event"
)

// jsonOf is the NDJSON line a sink should deliver for an event.
type jsonOf struct{ enc encode.JSON }

func (j *jsonOf) of(e *event.Event) string { return string(j.enc.Append(nil, e)) }
