package hang

import (
	"testing"
	"time"
)

// TestHangs outlives the recording's -timeout.
func TestHangs(t *testing.T) { time.Sleep(time.Minute) }
