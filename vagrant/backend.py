#!/usr/bin/env python3
"""Keystone lab backend for the Vagrant VMs (the protocol of tests' ks-backend):
HTTP on [::]:PORT (dual-stack, keep-alive) answers 200 with body "<name>\\n"; every
UDP datagram on PORT is answered with "<name>", from the address it was sent to
(so DSR, where that is the VIP on lo, works)."""

import argparse
import http.server
import socket
import struct
import threading

# IP_PKTINFO exists only from Python 3.12 on; 8 on Linux.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)


def udp_loop(sock, family, name):
    level = socket.IPPROTO_IP if family == socket.AF_INET else socket.IPPROTO_IPV6
    kind = IP_PKTINFO if family == socket.AF_INET else socket.IPV6_PKTINFO
    while True:
        data, anc, _flags, peer = sock.recvmsg(2048, socket.CMSG_SPACE(64))
        reply_anc = []
        for lvl, typ, raw in anc:
            if lvl == level and typ == kind:
                if family == socket.AF_INET:
                    # struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
                    _ifindex, _spec, addr = struct.unpack("i4s4s", raw[:12])
                    reply_anc = [(level, kind, struct.pack("i4s4s", 0, addr, b"\0" * 4))]
                else:
                    # struct in6_pktinfo { in6_addr addr; int ifindex; }
                    reply_anc = [(level, kind, raw[:16] + struct.pack("i", 0))]
        sock.sendmsg([name.encode()], reply_anc, 0, peer)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", type=int, default=8080)
    args = ap.parse_args()
    body = (args.name + "\n").encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Backend", args.name)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6
        daemon_threads = True

        def server_bind(self):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

    u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u4.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    u4.bind(("0.0.0.0", args.port))
    u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    u6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    u6.bind(("::", args.port))
    for sock, fam in ((u4, socket.AF_INET), (u6, socket.AF_INET6)):
        threading.Thread(target=udp_loop, args=(sock, fam, args.name), daemon=True).start()

    print(f"backend {args.name} listening on [::]:{args.port} (tcp, udp)", flush=True)
    Server(("::", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
