//go:build race

package actors_test

// raceEnabled: the race detector slows protoactor's crash handling about
// twenty-fold, so the heaviest tests run smaller under it.
const raceEnabled = true
