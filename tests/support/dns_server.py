"""A small real DNS server over UDP, for tests of name resolution under a deadline.

It answers A queries for the names it is given (after a delay, or never, or with NXDOMAIN), answers
every AAAA query with no records, and records each query it receives. The C library's resolver
talks to it when /etc/resolv.conf names it: see ``tests/resolver_child.py``, which runs in a mount
namespace where that is so.
"""

import dataclasses
import socket
import struct
import threading
import time

A, AAAA = 1, 28


@dataclasses.dataclass(frozen=True)
class Answer:
    address: str = "127.0.0.1"
    delay: float = 0.0


class Silent:
    """Never answer."""


class NoSuchName:
    """Answer NXDOMAIN at once."""


Rule = Answer | Silent | NoSuchName


class DnsServer:
    def __init__(self, rules: dict[str, Rule], host: str = "127.0.0.1", port: int = 53) -> None:
        self.rules = rules
        self.queries: list[tuple[str, int]] = []  # (name, type) in arrival order
        self._lock = threading.Lock()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((host, port))
        threading.Thread(target=self._serve, daemon=True).start()

    def count(self, name: str, qtype: int = A) -> int:
        with self._lock:
            return self.queries.count((name, qtype))

    def _serve(self) -> None:
        while True:
            packet, client = self._socket.recvfrom(4096)
            name, qtype, question_end = _parse_question(packet)
            with self._lock:
                self.queries.append((name, qtype))
            rule = self.rules.get(name, NoSuchName())
            if isinstance(rule, Silent):
                continue
            if isinstance(rule, NoSuchName):
                self._socket.sendto(_reply(packet, question_end, rcode=3), client)
                continue
            records = [socket.inet_aton(rule.address)] if qtype == A else []
            reply = _reply(packet, question_end, rcode=0, records=records)
            threading.Thread(target=self._send_later, args=(reply, client, rule.delay), daemon=True).start()

    def _send_later(self, reply: bytes, client: tuple[str, int], delay: float) -> None:
        time.sleep(delay)
        self._socket.sendto(reply, client)


def _parse_question(packet: bytes) -> tuple[str, int, int]:
    labels, at = [], 12
    while packet[at]:
        length = packet[at]
        labels.append(packet[at + 1 : at + 1 + length].decode("ascii").lower())
        at += 1 + length
    qtype = struct.unpack("!H", packet[at + 1 : at + 3])[0]
    return ".".join(labels), qtype, at + 5


def _reply(query: bytes, question_end: int, *, rcode: int, records: list[bytes] | None = None) -> bytes:
    records = records or []
    flags = 0x8180 | rcode  # a response, recursion desired and available
    header = query[:2] + struct.pack("!HHHHH", flags, 1, len(records), 0, 0)
    answers = b"".join(
        struct.pack("!HHHIH", 0xC00C, A, 1, 60, len(data)) + data  # the name: a pointer to the question's
        for data in records
    )
    return header + query[12:question_end] + answers
