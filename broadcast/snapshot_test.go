package broadcast

import (
	"fmt"
	"strings"
)

// Snapshots describe a core's state deterministically, counters aside, so
// that tests can check that a refused input changed nothing.

// snapshot describes the receiver's tables: entries, advertiser sets,
// phases, queues, charges and credits, without the fetch attempts' state.
func (r *Receiver) snapshot() string {
	var b strings.Builder
	fmt.Fprintf(&b, "fetching %d queued %d waiting %d rr %d order %v\n", r.fetching, r.queued, r.waiting, r.rr, r.order)
	for _, pid := range sortedKeys(r.peers) {
		p := r.peers[pid]
		fmt.Fprintf(&b, "peer %s conn %d active %d queue %v\n", pid, p.conn, p.active, p.queue[p.head:])
		for _, slot := range sortedSlots(p.slots) {
			e := p.slots[slot]
			fmt.Fprintf(&b, "  slot %d: %+v\n", slot, *e)
		}
		for _, id := range sortedKeys(p.legacy) {
			fmt.Fprintf(&b, "  legacy %x: %+v\n", []byte(id), p.legacy[id])
		}
	}
	for _, id := range sortedIDs(r.ids) {
		st := r.ids[id]
		var pairs []string
		for _, pid := range st.peerList() {
			pairs = append(pairs, fmt.Sprintf("%s×%d", pid, st.adv.peerCount(pid)))
		}
		fmt.Fprintf(&b, "id %x: attr %x decision %v phase %d charged %q adv %v (%d)\n", []byte(id), st.attr, st.decision, st.phase, st.charged, pairs, st.adv.len())
	}
	return b.String()
}

// runsSnapshot describes the fetch attempts' state.
func (r *Receiver) runsSnapshot() string {
	var b strings.Builder
	fmt.Fprintf(&b, "next token %d announced %v rng %d attempts %v pausing %v\n", r.nextToken, r.announced, r.rng, r.attempts, sortedKeys(r.pausing))
	for _, id := range sortedIDs(r.ids) {
		if f := r.ids[id].run; f != nil {
			fmt.Fprintf(&b, "run %x: %+v\n", []byte(id), *f)
		}
	}
	return b.String()
}

// snapshot describes the sender's slot table and per-peer transmission
// state.
func (s *Sender) snapshot() string {
	var b strings.Builder
	fmt.Fprintf(&b, "commit %d live %d next token %d free %v\n", s.commit, s.live, s.nextToken, s.free)
	for i, st := range s.slots {
		fmt.Fprintf(&b, "slot %d: live %v commit %d id %x update %v/%d\n", i, st.live, st.commit, []byte(st.art.ID), st.update.Kind, st.update.Commit)
	}
	for _, id := range sortedKeys(s.byID) {
		fmt.Fprintf(&b, "id %x -> %d\n", []byte(id), s.byID[id])
	}
	for _, pid := range s.sortedPeers() {
		p := s.peers[pid]
		fmt.Fprintf(&b, "peer %s up %v conn %d queue %v inflight %v sync %d/%v resync %d waiting %v %v backoff %v\n",
			pid, p.up, p.conn, p.queue[p.head:], p.inflight, p.syncToken, p.needSync, p.resyncLeft, p.waiting, p.waitUntil, p.backoff)
		for i, ps := range p.slots {
			fmt.Fprintf(&b, "  slot %d: %+v\n", i, ps)
		}
	}
	return b.String()
}
