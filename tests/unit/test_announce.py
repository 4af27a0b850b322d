from __future__ import annotations

import socket

from roost_guest.announce import arp_frame


def test_gratuitous_arp_frame() -> None:
    mac, ip = bytes.fromhex("525555571b0e"), socket.inet_aton("192.168.5.15")
    frame = arp_frame(mac, ip)
    assert len(frame) == 60
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == mac and frame[12:14] == b"\x08\x06"
    arp = frame[14:42]
    assert arp[:8] == bytes.fromhex("0001080006040001")  # Ethernet/IPv4, request
    # Gratuitous: the sender and target protocol addresses are both ours.
    assert arp[8:14] == mac and arp[14:18] == ip and arp[18:24] == b"\0" * 6 and arp[24:28] == ip
