package poll_test

import (
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/abcast/abcast/internal/poll"
)

func TestEventually(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		calls := 0
		if err := poll.Eventually(time.Second, func() error {
			if calls++; time.Since(start) < 100*time.Millisecond {
				return errors.New("not yet")
			}
			return nil
		}); err != nil || calls != 11 {
			t.Fatalf("err %v after %d calls; want success on the 11th (every 10 ms)", err, calls)
		}
		start = time.Now()
		err := poll.Eventually(time.Second, func() error { return errors.New("never") })
		if err == nil || !strings.Contains(err.Error(), "never") || !strings.Contains(err.Error(), "1s") || time.Since(start) != time.Second {
			t.Fatalf("got %v after %v; want the last error, after exactly the deadline", err, time.Since(start))
		}
		poll.Until(t, time.Second, "a true condition", func() bool { return true })
	})
}
