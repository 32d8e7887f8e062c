#!/usr/bin/env python3
"""A wire between two tun devices: creates NAME_A and NAME_B (layer 3, no
packet information header), prints "ready", and copies every packet one
reads to the other until killed. Moved into two network namespaces, the
devices link them as a point-to-point IP link, such as WireGuard's."""
import fcntl
import os
import select
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main():
    a, b = open_tun(sys.argv[1]), open_tun(sys.argv[2])
    other = {a: b, b: a}
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select([a, b], [], [])
        for fd in readable:
            packet = os.read(fd, 65536)
            try:
                os.write(other[fd], packet)
            except OSError:
                pass  # the other end is not up yet: the packet is lost, as on a wire



if __name__ == "__main__":
    main()
