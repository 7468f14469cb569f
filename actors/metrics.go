package actors

// MailboxRefusals counts messages that full bounded mailboxes (peer links,
// fetches) refused instead of blocking. Each is also counted in
// Stats().DeadLetters; this separates "a mailbox overflowed" from other
// dead letters (messages to actors that already stopped).
func (n *Node) MailboxRefusals() uint64 { return n.refused.Load() }
