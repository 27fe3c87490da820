"""`proxy_protocol = true`: behind a load balancer that sends PROXY protocol v2, the bastion
sees, audits and checks the real client address. The "load balancer" here is a relay on
127.0.0.1 that prepends the header (naming 127.0.0.99 as the client) to each connection."""

import socket
import struct
import threading

from fixtures import run_client
from harness import free_port

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


class Relay:
    def __init__(self, upstream_port, client_ip="127.0.0.99", client_port=4444, local=False):
        self.upstream, self.local = upstream_port, local
        self.client_ip, self.client_port = client_ip, client_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def header(self):
        if self.local:
            return SIG + bytes([0x20, 0x00]) + struct.pack("!H", 0)
        block = socket.inet_aton(self.client_ip) + socket.inet_aton("127.0.0.1") \
            + struct.pack("!HH", self.client_port, 22)
        return SIG + bytes([0x21, 0x11]) + struct.pack("!H", len(block)) + block

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.upstream))
            u.sendall(self.header())
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.closed = True
        self.sock.close()


def jump(client, port, target, login="alice", key="alice"):
    return run_client(["ssh", "-F", client(key), "-J", f"{login}@127.0.0.1:{port}", "-p", target.port,
                       "root@127.0.0.1", "echo ok"])


def test_the_real_client_address_is_audited_and_checked(env, bastion, client, sshd_target):
    target = sshd_target()
    b = bastion({"proxy_protocol": True},
                users={"alice": [f'from="127.0.0.99" {env.keys.pub("alice")}'], "bob": [env.keys.pub("bob")]})
    relay = Relay(b.port)
    env.p.cleanups.append(relay.close)
    r = jump(client, relay.port, target)
    assert r.rc == 0 and r.stdout == b"ok\n", r.stderr
    ev = b.wait_for_event(lambda e: e["event"] == "session.start", login="alice")
    assert ev["remote_addr"] == "127.0.0.99:4444", ev

    # The same key from another (proxied) address fails its from= restriction.
    other = Relay(b.port, client_ip="127.0.0.98")
    env.p.cleanups.append(other.close)
    r = jump(client, other.port, target)
    assert r.rc == 255
    ev = b.wait_for_event(lambda e: e["event"] == "auth" and not e["success"], login="alice")
    assert "does not allow 127.0.0.98" in ev["reason"], ev

    # LOCAL headers (the load balancer's own checks) keep the socket's address.
    local = Relay(b.port, local=True)
    env.p.cleanups.append(local.close)
    r = jump(client, local.port, target, login="bob", key="bob")
    assert r.rc == 0, r.stderr
    ev = b.wait_for_event(lambda e: e["event"] == "session.start", login="bob")
    assert ev["remote_addr"].startswith("127.0.0.1:"), ev


def test_a_connection_without_the_header_is_dropped(env, bastion, client, sshd_target):
    target = sshd_target()
    b = bastion({"proxy_protocol": True})
    r = jump(client, b.port, target)
    assert r.rc == 255
    assert "bad PROXY protocol header" in b.stderr_text()
    assert not any(e["event"] == "session.start" for e in b.audit_events())
