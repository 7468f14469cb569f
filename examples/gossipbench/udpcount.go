package main

import (
	"net"
	"sync/atomic"
)

// countingConn counts the UDP payload bytes a socket sends. It embeds the
// *net.UDPConn so it still satisfies quic-go's OOBCapablePacketConn
// (SyscallConn, ReadMsgUDP, WriteMsgUDP): quic-go keeps segmentation
// offload (GSO) and ECN on it. With GSO one WriteMsgUDP carries several
// datagrams; n is their total payload, which is what we count. A plain
// net.PacketConn wrapper would instead make quic-go fall back to one
// WriteTo per packet, halving bulk throughput.
type countingConn struct {
	*net.UDPConn
	sent *atomic.Uint64
}

func (c countingConn) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (int, int, error) {
	n, oobn, err := c.UDPConn.WriteMsgUDP(b, oob, addr)
	c.sent.Add(uint64(n))
	return n, oobn, err
}

func (c countingConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	n, err := c.UDPConn.WriteTo(b, addr)
	c.sent.Add(uint64(n))
	return n, err
}

func (c countingConn) WriteToUDP(b []byte, addr *net.UDPAddr) (int, error) {
	n, err := c.UDPConn.WriteToUDP(b, addr)
	c.sent.Add(uint64(n))
	return n, err
}

func (c countingConn) Write(b []byte) (int, error) {
	n, err := c.UDPConn.Write(b)
	c.sent.Add(uint64(n))
	return n, err
}

func listenCounting(sent *atomic.Uint64) (countingConn, error) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return countingConn{}, err
	}
	return countingConn{UDPConn: pc, sent: sent}, nil
}
