package broadcast

// Waiting returns the deliveries handed out and not yet Consumed: the
// delivery credits the consumer holds.
func (r *Receiver) Waiting() int { return r.waiting }
