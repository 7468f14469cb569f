// Package poll is the repository's one polling loop for tests: wait for a
// condition with a deadline instead of sleeping for an event. The public
// test kit re-exports it as abcasttest.Eventually; packages the kit
// depends on (membership, the transport, actorkit) use it from here in
// their own tests.
package poll

import (
	"fmt"
	"testing"
	"time"
)

// Interval is how often a condition is checked.
const Interval = 10 * time.Millisecond

// Eventually calls cond every Interval until it returns nil or within has
// passed, and returns its last error (nil on success). Inside a
// testing/synctest bubble the polling and the deadline are in virtual
// time.
func Eventually(within time.Duration, cond func() error) error {
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil || !time.Now().Before(deadline) {
			if err != nil {
				return fmt.Errorf("not within %v: %w", within, err)
			}
			return nil
		}
		time.Sleep(Interval) // the polling interval, not a wait for an event
	}
}

// Until is Eventually for a yes-or-no condition, failing t if it does
// not hold within the deadline; what names it in the failure.
func Until(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	if err := Eventually(within, func() error {
		if !cond() {
			return fmt.Errorf("waiting for %s", what)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
