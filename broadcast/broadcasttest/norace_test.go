//go:build !race

package broadcasttest

const raceEnabled = false
