// Package broadcast is the pure core of abcast's Abortable Broadcast: the
// protocol decisions with no goroutines, no clock, no network and no logging.
//
// A channel has one Sender and one Receiver per node. Each takes events as
// method calls (publish, abort, peer up/down, update received, fetch
// request done or failed, consumer took a delivery, tick) and returns the
// resulting work as Effect values (send this update, cancel that
// transmission, request this part of an artifact from that peer, deliver,
// withdraw, call Tick at). The caller — an actor in package actors, or the
// simulator in broadcasttest — performs the effects and reports their
// outcomes back. Time enters only as arguments and randomness only through
// ReceiverConfig.Seed; the cores never read a clock.
//
// # Time
//
// Both cores ask for at most one timer (RetryAt): the caller keeps one per
// core at the earliest deadline announced and calls Tick when it fires;
// each Tick announces the next deadline. Timeouts of transmissions and
// fetch requests travel on the effects that start them (SendUpdate.Timeout,
// FetchAttempt.Timeout): the caller gives up when they pass and reports a
// failure.
//
// # Sender contract
//
// Publish puts an artifact in the lowest free slot and bumps the commit id;
// Abort frees the slot and bumps it again. For every peer the sender keeps
// which state of each slot the peer acknowledged, and sends only the newest
// state of a slot: a slot changed twice before it was sent yields one
// update, and a change while an older update is in flight yields a
// CancelSend for that transmission. Only Acked counts as delivered; Failed
// keeps the slot pending and makes the peer back off (RetryAt, then Tick).
// A newer connection (PeerUp) makes every slot the peer may hold pending at
// once; when all of them are acknowledged on that connection the sender
// sends a Sync update, after which the receiver drops entries it still keeps
// from the sender's earlier connections (or an earlier incarnation).
// Aborted artifacts are sent as cleared updates only to peers that may hold
// them.
//
// # Receiver contract
//
// Per peer the receiver mirrors the peer's slot table, at most SlotLimit
// entries. An update replaces an entry only when its (ConnID, CommitID) is
// greater; older ones are refused with ErrStale. Each advertised id has an
// advertiser set of exact (peer, slot) pairs. A new id goes to the
// admission function: Fetch starts a download (or delivers a pushed copy),
// Later waits for Reevaluate, Drop never fetches. When an id's advertiser
// set becomes empty its fetch is cancelled or, if delivered, it is
// withdrawn, and the id is forgotten: advertised again later, it is
// delivered again. A fetch starts only while fetches and undelivered
// artifacts together stay below DeliveryCredits (a peer's first download
// needs only the undelivered ones below it, so peers that never serve
// cannot starve the rest); a push is delivered while fewer than
// DeliveryCredits deliveries wait, whatever fetches run. Consumed returns
// a credit, so a slow consumer pauses fetching. Deliveries waiting never
// exceed DeliveryCredits + MaxActiveFetches + the number of peers.
//
// # Fetching
//
// An advert names the digest of the artifact's Manifest (its chunk
// hashes). The receiver decides every request (fetch.go): the manifest
// from one advertiser of the digest, then the missing chunks from all of
// them at once, each checked against its hash before it is kept, so a
// transfer resumes wherever it stopped. The caller performs FetchAttempt
// effects and reports each with FetchDone (what arrived and how long it
// took), FetchFailed or FetchInvalid; CancelFetch and CancelAttempt end
// requests no longer wanted.
//
// Errors returned for peer input (ErrStale, ErrSlotLimit, ErrInvalid) are
// the peer's fault, are counted in PeerStats, and leave the state
// unchanged; ErrMismatch (wrong bytes pushed or fetched) is counted too,
// and the fetch goes on elsewhere. Both cores have CheckInvariants, which
// tests call after every step.
package broadcast
