package main

import (
	"sort"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/quicremote/transport"
)

// collector exports the node's counters to Prometheus. Counters the
// library keeps (ch.Stats(), node.Stats()) are read at scrape time, so
// they never drift from the library's view; connection counts are polled,
// since the transport reports only the current connection per peer; the
// histograms are fed by the consumer as deliveries happen.
type collector struct {
	node  *actors.Node
	chans []*actors.Channel

	latency *prometheus.HistogramVec
	sizes   *prometheus.HistogramVec
}

var (
	descSlotUpdates   = prometheus.NewDesc("abcast_slot_updates_total", "Incoming slot updates by result: accepted, stale (an older state than held), over_limit (beyond SlotLimit), invalid, mismatch.", []string{"channel", "peer", "result"}, nil)
	descUpdatesRef    = prometheus.NewDesc("abcast_updates_refused_total", "Incoming slot updates refused before reaching the core (undecodable, over the wire limits).", []string{"channel"}, nil)
	descUpdatesOut    = prometheus.NewDesc("abcast_updates_sent_total", "Outgoing slot updates by outcome: sent, acked, failed, cancelled (superseded or aborted while in flight).", []string{"channel", "outcome"}, nil)
	descFetchStarted  = prometheus.NewDesc("abcast_fetches_started_total", "Downloads of advertised artifacts started.", []string{"channel"}, nil)
	descFetchOK       = prometheus.NewDesc("abcast_fetches_succeeded_total", "Downloads that delivered their artifact.", []string{"channel"}, nil)
	descFetchFailed   = prometheus.NewDesc("abcast_fetch_attempts_failed_total", "Fetch attempts that failed (timeout, not found, refused); the download retries.", []string{"channel"}, nil)
	descFetchAttempts = prometheus.NewDesc("abcast_fetch_attempts_total", "Fetch requests sent.", []string{"channel"}, nil)
	descFetchCancel   = prometheus.NewDesc("abcast_fetches_cancelled_total", "Downloads cancelled because no peer advertised the artifact any more.", []string{"channel"}, nil)
	descBadFetch      = prometheus.NewDesc("abcast_bad_fetch_responses_total", "Fetch responses that failed decoding or verification.", []string{"channel"}, nil)
	descPublished     = prometheus.NewDesc("abcast_published_total", "Artifacts this node published.", []string{"channel"}, nil)
	descAborted       = prometheus.NewDesc("abcast_aborted_total", "Artifacts this node aborted.", []string{"channel"}, nil)
	descPubRefused    = prometheus.NewDesc("abcast_publish_refused_total", "Publishes the sender core refused: duplicate id or live-slot limit.", []string{"channel", "reason"}, nil)
	descDelivered     = prometheus.NewDesc("abcast_deliveries_total", "Artifacts of other nodes delivered to the consumer.", []string{"channel"}, nil)
	descPushed        = prometheus.NewDesc("abcast_deliveries_pushed_total", "Deliveries whose artifact came whole with its slot update (no fetch).", []string{"channel"}, nil)
	descWithdrawn     = prometheus.NewDesc("abcast_withdrawals_total", "Delivered artifacts withdrawn because no peer advertises them any more.", []string{"channel"}, nil)
	descBytes         = prometheus.NewDesc("abcast_sent_bytes_total", "Bytes sent by kind: updates (slot updates, pushed artifacts included) and fetches_served.", []string{"channel", "kind"}, nil)
	descLive          = prometheus.NewDesc("abcast_live_artifacts", "Artifacts this node publishes that are live.", []string{"channel"}, nil)
	descActive        = prometheus.NewDesc("abcast_active_fetches", "Downloads running.", []string{"channel"}, nil)
	descAdvertised    = prometheus.NewDesc("abcast_advertised_ids", "Distinct artifact ids peers advertise to this node.", []string{"channel"}, nil)
	descPanics        = prometheus.NewDesc("abcast_consumer_panics_total", "Panics of the consumer function (recovered).", []string{"channel"}, nil)
	descPeerUp        = prometheus.NewDesc("abcast_peer_up", "1 while the peer is a member and a connection to it is up.", []string{"peer"}, nil)
	descChanFailed    = prometheus.NewDesc("abcast_channel_failed", "1 once the channel's supervisor gave up on it (its actors kept crashing); it no longer delivers.", []string{"channel"}, nil)
	descUnconfirmed   = prometheus.NewDesc("abcast_consumer_unconfirmed", "Events waiting for the consumer or handed to it and not yet confirmed.", []string{"channel"}, nil)
	descRedelivered   = prometheus.NewDesc("abcast_consumer_redeliveries_total", "Events handed to the consumer again because they were not confirmed.", []string{"channel"}, nil)
	descPeerMember    = prometheus.NewDesc("abcast_peer_member", "1 while the registry lists the peer.", []string{"peer"}, nil)
	descPeerBytes     = prometheus.NewDesc("abcast_peer_sent_bytes_total", "Bytes sent to one peer by kind: updates and fetches_served.", []string{"channel", "peer", "kind"}, nil)
	descConnEvents    = prometheus.NewDesc("abcast_connection_events_total", "Transport connection events (up, down) seen by the node, all peers together.", []string{"event"}, nil)
	descConnections   = prometheus.NewDesc("abcast_connections_total", "Connections to the peer that came up (every transport PeerUp event).", []string{"peer"}, nil)
	descReconnects    = prometheus.NewDesc("abcast_reconnects_total", "Connections to the peer after the first one.", []string{"peer"}, nil)
	descStreams       = prometheus.NewDesc("abcast_transport_peer_errors_total", "Transport refusals per peer: garbage and oversized frames, refused streams.", []string{"peer", "kind"}, nil)
	descRestarts      = prometheus.NewDesc("abcast_actor_restarts_total", "Actor crashes a supervisor restarted.", nil, nil)
	descDeadLetters   = prometheus.NewDesc("abcast_dead_letters_total", "Messages that reached no actor (mailbox refusals included).", nil, nil)
	descRefusals      = prometheus.NewDesc("abcast_mailbox_overflows_total", "Messages refused by full bounded mailboxes.", nil, nil)
)

func newCollector(node *actors.Node, chans []*actors.Channel) *collector {
	return &collector{
		node: node, chans: chans,
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "abcast_delivery_latency_seconds",
			Help:    "Publish-to-delivery time of artifacts whose attribute carries their publish time (those published through this program's HTTP API); clocks of different machines must agree.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16), // 0.5 ms .. 16 s
		}, []string{"channel"}),
		sizes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "abcast_delivered_payload_bytes",
			Help:    "Payload sizes of delivered artifacts.",
			Buckets: prometheus.ExponentialBuckets(256, 4, 11), // 256 B .. 256 MiB
		}, []string{"channel"}),
	}
}

// Describe sends the descriptors.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSlotUpdates, descUpdatesRef, descUpdatesOut, descFetchStarted, descFetchOK, descFetchFailed,
		descFetchAttempts, descFetchCancel, descBadFetch, descPublished, descAborted, descPubRefused, descDelivered, descPushed,
		descWithdrawn, descBytes, descLive, descActive, descAdvertised, descPanics, descChanFailed, descUnconfirmed, descRedelivered, descPeerUp, descPeerMember, descConnections, descReconnects,
		descStreams, descRestarts, descDeadLetters, descRefusals, descPeerBytes, descConnEvents} {
		ch <- d
	}
	c.latency.Describe(ch)
	c.sizes.Describe(ch)
}

// peerStatser is what *transport.Transport offers beyond transport.RPC.
type peerStatser interface {
	Stats(peer membership.NodeID) transport.PeerStats
}

// Collect reads every counter.
func (c *collector) Collect(out chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		out <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		out <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, ch := range c.chans {
		name := ch.Name()
		s := ch.Stats()
		peers := make([]string, 0, len(s.PeerStats))
		for p := range s.PeerStats {
			peers = append(peers, p)
		}
		sort.Strings(peers)
		for _, p := range peers {
			ps, short := s.PeerStats[p], shortPeer(p)
			counter(descSlotUpdates, ps.Accepted, name, short, "accepted")
			counter(descSlotUpdates, ps.Stale, name, short, "stale")
			counter(descSlotUpdates, ps.OverLimit, name, short, "over_limit")
			counter(descSlotUpdates, ps.Invalid, name, short, "invalid")
			counter(descSlotUpdates, ps.Mismatch, name, short, "mismatch")
		}
		counter(descUpdatesRef, s.UpdatesRefused, name)
		counter(descUpdatesOut, s.Sender.UpdatesSent, name, "sent")
		counter(descUpdatesOut, s.Sender.UpdatesAcked, name, "acked")
		counter(descUpdatesOut, s.Sender.UpdatesFailed, name, "failed")
		counter(descUpdatesOut, s.Sender.UpdatesCancelled, name, "cancelled")
		counter(descFetchStarted, s.Receiver.FetchesStarted, name)
		counter(descFetchOK, s.FetchesSucceeded, name)
		counter(descFetchFailed, s.FetchFailures, name)
		counter(descFetchAttempts, s.FetchAttempts, name)
		counter(descFetchCancel, s.Receiver.FetchesCancelled, name)
		counter(descBadFetch, s.BadFetchResponses, name)
		counter(descPublished, s.Sender.Published, name)
		counter(descAborted, s.Sender.Aborted, name)
		counter(descPubRefused, s.Sender.DuplicatePublish, name, "duplicate")
		counter(descPubRefused, s.Sender.RefusedFull, name, "full")
		counter(descDelivered, s.Delivered, name)
		counter(descPushed, s.Receiver.DeliveredFromPush, name)
		counter(descWithdrawn, s.Withdrawn, name)
		counter(descBytes, s.UpdateBytesSent, name, "updates")
		counter(descBytes, s.FetchBytesServed, name, "fetches_served")
		for _, p := range sortedKeys(s.BytesSentTo) {
			counter(descPeerBytes, s.BytesSentTo[p], name, shortPeer(p), "updates")
		}
		for _, p := range sortedKeys(s.BytesServedTo) {
			counter(descPeerBytes, s.BytesServedTo[p], name, shortPeer(p), "fetches_served")
		}
		counter(descPanics, s.ConsumerPanics, name)
		counter(descRedelivered, s.Redeliveries, name)
		gauge(descUnconfirmed, float64(s.Unconfirmed), name)
		failed := 0.0
		if s.Failed {
			failed = 1
		}
		gauge(descChanFailed, failed, name)
		gauge(descLive, float64(s.Live), name)
		gauge(descActive, float64(s.ActiveFetches), name)
		gauge(descAdvertised, float64(s.AdvertisedIDs), name)
	}
	statser, _ := c.node.Transport().(peerStatser)
	bool01 := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	for _, p := range c.node.Peers() {
		short := p.ID.Short()
		gauge(descPeerUp, bool01(p.Up), short)
		gauge(descPeerMember, bool01(p.Member), short)
		counter(descConnections, p.Connections, short)
		counter(descReconnects, max(p.Connections, 1)-1, short)
		if statser != nil {
			ts := statser.Stats(p.ID)
			counter(descStreams, ts.GarbageFrames, short, "garbage_frames")
			counter(descStreams, ts.OversizedFrames, short, "oversized_frames")
			counter(descStreams, ts.RefusedStreams, short, "refused_streams")
		}
	}
	ns := c.node.Stats()
	counter(descRestarts, ns.Restarts)
	counter(descDeadLetters, ns.DeadLetters)
	counter(descRefusals, ns.MailboxRefusals)
	counter(descConnEvents, ns.ConnectionsUp, "up")
	counter(descConnEvents, ns.ConnectionsDown, "down")
	c.latency.Collect(out)
	c.sizes.Collect(out)
}

// shortPeer shortens a core peer id (a NodeID in hex) to NodeID.Short's
// ten hex digits, enough to tell members apart in a dashboard.
func shortPeer(p string) string {
	if id, err := membership.ParseNodeID(p); err == nil {
		return id.Short()
	}
	return p
}

func sortedKeys(m map[string]uint64) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
