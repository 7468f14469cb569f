package broadcast

// advSet is the advertiser set of one id: exact (peer, slot) pairs. Nearly
// every id has one or a few advertisers, so small sets are a short slice;
// a set that grows past smallAdv pairs (a peer repeating an id in many
// slots, or a large subnet) switches to maps. This halves the receiver's
// memory per entry compared with always using maps.
type advSet struct {
	small []advKey
	big   map[advKey]struct{}
	peers map[PeerID]int // pairs per peer, in map mode only
}

const smallAdv = 8

func (a *advSet) len() int {
	if a.big != nil {
		return len(a.big)
	}
	return len(a.small)
}

func (a *advSet) has(k advKey) bool {
	if a.big != nil {
		_, ok := a.big[k]
		return ok
	}
	for _, x := range a.small {
		if x == k {
			return true
		}
	}
	return false
}

// peerCount returns how many pairs peer has in the set.
func (a *advSet) peerCount(p PeerID) int {
	if a.big != nil {
		return a.peers[p]
	}
	n := 0
	for _, x := range a.small {
		if x.peer == p {
			n++
		}
	}
	return n
}

// add inserts k (absent) and reports whether k.peer had no pair before.
func (a *advSet) add(k advKey) bool {
	if a.big == nil && len(a.small) < smallAdv {
		first := a.peerCount(k.peer) == 0
		a.small = append(a.small, k)
		return first
	}
	if a.big == nil {
		a.big = make(map[advKey]struct{}, 2*smallAdv)
		a.peers = make(map[PeerID]int)
		for _, x := range a.small {
			a.big[x] = struct{}{}
			a.peers[x.peer]++
		}
		a.small = nil
	}
	a.big[k] = struct{}{}
	a.peers[k.peer]++
	return a.peers[k.peer] == 1
}

// remove deletes k (present) and reports whether k.peer has no pair left.
func (a *advSet) remove(k advKey) bool {
	if a.big != nil {
		delete(a.big, k)
		a.peers[k.peer]--
		if a.peers[k.peer] == 0 {
			delete(a.peers, k.peer)
			return true
		}
		return false
	}
	for i, x := range a.small {
		if x == k {
			last := len(a.small) - 1
			a.small[i] = a.small[last]
			a.small[last] = advKey{}
			a.small = a.small[:last]
			break
		}
	}
	return a.peerCount(k.peer) == 0
}

// each calls fn for every pair.
func (a *advSet) each(fn func(advKey)) {
	if a.big != nil {
		for k := range a.big {
			fn(k)
		}
		return
	}
	for _, k := range a.small {
		fn(k)
	}
}

// peerList returns the distinct peers, sorted.
func (a *advSet) peerList() []PeerID {
	var out []PeerID
	if a.big != nil {
		out = make([]PeerID, 0, len(a.peers))
		for p := range a.peers {
			out = append(out, p)
		}
	} else {
		out = make([]PeerID, 0, len(a.small))
		for _, x := range a.small {
			dup := false
			for _, p := range out {
				if p == x.peer {
					dup = true
					break
				}
			}
			if !dup {
				out = append(out, x.peer)
			}
		}
	}
	sortPeers(out)
	return out
}

// check verifies the set's internal consistency.
func (a *advSet) check() bool {
	if a.big == nil {
		return a.peers == nil && len(a.small) <= smallAdv
	}
	n := 0
	for _, c := range a.peers {
		n += c
	}
	return n == len(a.big)
}
