// Package abcasttest runs abcast subnets inside a test, the way
// net/http/httptest runs servers: every node is a real actors.Node (actor
// system, remote, supervision, the protocol cores) with a real transport,
// on a network the test controls.
//
// Backends (Options.Backend):
//
//   - Simulated (the default): real QUIC and TLS over the kit's simulated
//     network. Use it inside testing/synctest.Test: connection timeouts,
//     fetch backoffs, link latency and capacity and the assertions'
//     deadlines then run in virtual time, so a minute-long partition takes
//     milliseconds and the outcome does not depend on the machine's load.
//
//   - LoopbackQUIC: real QUIC over real UDP sockets on 127.0.0.1, each
//     behind the same Network, so the fault controls still apply, in real
//     time. Outside synctest bubbles.
//
//   - Memory: transport.MemNetwork, no packets; Cut and Heal disconnect
//     pairs, loss, latency and capacity are refused.
//
//     synctest.Test(t, func(t *testing.T) {
//     s := abcasttest.NewSubnet(t, 4, abcasttest.Options{Latency: 50 * time.Millisecond})
//     s.StartAll()
//     ch := s.OpenChannel("blocks", abcasttest.ChannelOptions{})
//     ch.Publish(0, broadcast.Artifact{ID: "b1", Payload: payload})
//     s.Isolate(3)          // node 3 hears nobody
//     time.Sleep(30 * time.Second)
//     s.HealAll()
//     ch.AssertDelivered(t, time.Minute)
//     })
//
// Network controls: Cut, Heal, Isolate and HealAll for links; SetLoss,
// SetLatency and SetCapacity (and per link, through Network, which also
// has a tap and counters of what it dropped and delivered, so a test can
// assert that its faults happened). Capacity is a serialization delay
// per packet on each directed link with a bounded drop-tail queue: a
// 10 MB payload over a 1 MB/s link takes ten seconds (see Network).
//
// Node controls: Stop (a clean shutdown, peers told at once), Kill (a
// crash: nothing sent on the way out arrives, peers find out by timeout),
// Start and Restart (a restarted node republishes what its application had
// live); Remove for membership; Crash and PanicWhen make chosen actors
// panic through actors.Hooks, so you can check that your supervision tree
// (and ours) recovers. Your own replica code plugs in as the channel
// consumer (ChannelOptions.Consume or ConsumerProps) or as actors spawned
// on Node(i).System() from Options.OnStart, which runs again after every
// restart.
//
// Assertions: Channel.CheckDelivered / AssertDelivered check that every
// node holds every live artifact of the others, exactly once, with the
// published payload, and nothing aborted; the Recorder keeps delivery
// times, per-life counts and redeliveries; Subnet.CheckBounds /
// AssertBounds check the nodes' state against their configured bounds;
// Subnet.Memory reports what each node is known to hold (one process holds
// every node, so there is no per-node heap: see NodeMemory). Eventually is
// the polling loop for conditions of your own.
//
// Raw starts a bare transport as a member instead of a node, for tests
// that speak the wire protocol themselves; Announce makes it announce
// channels as a node would, and the protocol names and encodings
// (UpdateProtocol, EncodeSlotUpdate, EncodeUpdateBatch, DecodeFetchResponse
// and the rest of rawwire.go) are here too, so such tests need no internal
// package.
package abcasttest
