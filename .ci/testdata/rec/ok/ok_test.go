package ok

import "testing"

func TestA(t *testing.T) {
	t.Run("sub one", func(t *testing.T) { t.Log("in sub") })
	t.Run("sub two", func(t *testing.T) {})
}

func TestSkip(t *testing.T) { t.Skip("not here") }
