// Package abcasttest runs abcast subnets inside a test, the way
// net/http/httptest runs servers: every node is a real actors.Node (actors,
// supervision, QUIC with mutual TLS, the protocol cores) on a simulated
// network, so faults can be injected and time can be virtual.
//
// Use it inside testing/synctest.Test: connection timeouts, fetch backoffs,
// link latency and the assertions' deadlines then run in virtual time, so
// a minute-long partition takes milliseconds and the outcome does not
// depend on the machine's load.
//
//	synctest.Test(t, func(t *testing.T) {
//		s := abcasttest.NewSubnet(t, 4, abcasttest.Options{Latency: 50 * time.Millisecond})
//		s.StartAll()
//		ch := s.OpenChannel("blocks", abcasttest.ChannelOptions{})
//		ch.Publish(0, broadcast.Artifact{ID: "b1", Payload: payload})
//		s.Isolate(3)          // node 3 hears nobody
//		time.Sleep(30 * time.Second)
//		s.HealAll()
//		ch.AssertDelivered(t, time.Minute)
//	})
//
// Controls: Cut, Heal, Isolate and HealAll for links; SetLoss and
// SetLatency (and per link, through Network); Stop, Start and Restart for
// nodes (a restarted node republishes what its application had live);
// Remove for membership; Crash and PanicWhen make chosen actors panic
// through actors.Hooks, so you can check that your supervision tree (and
// ours) recovers. Your own replica code plugs in as the channel consumer
// (ChannelOptions.Consume) or as actors spawned in Node(i).System().
//
// Assertions: Channel.CheckDelivered / AssertDelivered check that every
// node holds every live artifact of the others, exactly once, with the
// published payload, and nothing aborted; Subnet.CheckBounds /
// AssertBounds check the nodes' state against their configured bounds.
//
// Raw starts a bare transport as a member instead of a node, for tests
// that speak the wire protocol themselves.
package abcasttest
