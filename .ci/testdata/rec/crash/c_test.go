package crash

import (
	"os"
	"testing"
)

func TestExits(t *testing.T) { t.Log("about to exit"); os.Exit(3) }
