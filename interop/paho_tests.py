#!/usr/bin/env python3
"""Interop tests for the Apiary MQTT broker using paho-mqtt 2.x.

    python3 interop/paho_tests.py HOST PORT [NAME_SUBSTRING]

Prints "PASS name" or "FAIL name: reason" per test and a summary line; exits 1 if any failed.
Every wait is bounded: callbacks record into a Condition and tests wait with a timeout
(no sleeps decide pass/fail). Topics and client ids are unique per test and per run.
"""
import sys
import threading
import traceback
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 1883
ONLY = sys.argv[3] if len(sys.argv) > 3 else ""
RUN = uuid.uuid4().hex[:8]
TIMEOUT = 10.0  # seconds for any single expected event

V31, V311, V5 = mqtt.MQTTv31, mqtt.MQTTv311, mqtt.MQTTv5
VNAME = {V31: "v31", V311: "v311", V5: "v5"}


class TestFailure(Exception):
    pass


def topic(test):
    return f"apiary-interop/paho/{RUN}/{test}"


def client_id(test):
    # MQTT 3.1 limits client ids to 23 characters; keep all ids short.
    return f"{test[:10]}-{uuid.uuid4().hex[:10]}"


def props(packet_type, **values):
    p = Properties(packet_type)
    for k, v in values.items():
        setattr(p, k, v)
    return p


class TClient:
    """A paho client plus recorded CONNACK/SUBACK/messages/disconnect, waited on with timeouts."""

    def __init__(self, test, proto, clean_session=True, cid=None, will=None):
        self.proto = proto
        self.cid = cid or client_id(test)
        kw = {} if proto == V5 else {"clean_session": clean_session}
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.cid, protocol=proto, **kw)
        if will:
            self.c.will_set(**will)
        self.cond = threading.Condition()
        self.connack = None  # (reason_code, flags, properties)
        self.subacks = {}  # mid -> reason code list
        self.msgs = []
        self.disconnected = None  # reason code once the connection is gone
        self.looping = False
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.c.on_disconnect = self._on_disconnect
        self.c.on_log = self._on_log
        self.log = []  # paho's own log lines (explain e.g. a rejected CONNACK)

    # --- callbacks (network thread) ---
    def _on_connect(self, _c, _u, flags, rc, properties):
        with self.cond:
            self.connack = (rc, flags, properties)
            self.cond.notify_all()

    def _on_subscribe(self, _c, _u, mid, rcs, _properties):
        with self.cond:
            self.subacks[mid] = rcs
            self.cond.notify_all()

    def _on_message(self, _c, _u, msg):
        with self.cond:
            self.msgs.append(msg)
            self.cond.notify_all()

    def _on_disconnect(self, _c, _u, _flags, rc, _properties):
        with self.cond:
            self.disconnected = rc
            self.cond.notify_all()

    def _on_log(self, _c, _u, _level, text):
        if not text.startswith(("Sending", "Received P", "Received S", "Received C")):
            self.log.append(text)

    # --- helpers ---
    def wait(self, pred, what, timeout=TIMEOUT):
        with self.cond:
            if not self.cond.wait_for(pred, timeout):
                why = f"; paho log: {' | '.join(self.log[-3:])}" if self.log else ""
                raise TestFailure(f"{self.cid}: timed out after {timeout:g}s waiting for {what}{why}")

    def connect(self, clean_start=True, session_expiry=None, background=True):
        """Connect and wait for a successful CONNACK; returns the CONNACK flags."""
        kw = {}
        if self.proto == V5:
            kw["clean_start"] = clean_start
            if session_expiry is not None:
                kw["properties"] = props(PacketTypes.CONNECT, SessionExpiryInterval=session_expiry)
        self.c.connect(HOST, PORT, keepalive=30, **kw)
        if background:
            self.c.loop_start()
            self.looping = True
            self.wait(lambda: self.connack is not None or self.disconnected is not None, "CONNACK")
        else:
            # Drive the network by hand (no thread), so the socket can later be closed abruptly.
            for _ in range(int(TIMEOUT / 0.1)):
                self.c.loop(timeout=0.1)
                if self.connack is not None or self.disconnected is not None:
                    break
        if self.connack is None:
            why = f"; paho log: {' | '.join(self.log[-3:])}" if self.log else ""
            raise TestFailure(f"{self.cid}: no CONNACK (connection closed: {self.disconnected}){why}")
        rc, flags, _ = self.connack
        if rc.is_failure:
            raise TestFailure(f"{self.cid}: CONNACK refused: {rc}")
        return flags

    def subscribe(self, t, qos):
        res, mid = self.c.subscribe(t, qos)
        if res != mqtt.MQTT_ERR_SUCCESS:
            raise TestFailure(f"{self.cid}: subscribe({t}) failed locally: {mqtt.error_string(res)}")
        self.wait(lambda: mid in self.subacks, f"SUBACK for {t}")
        rc = self.subacks[mid][0]
        granted = getattr(rc, "value", rc)
        if (hasattr(rc, "is_failure") and rc.is_failure) or granted != qos:
            raise TestFailure(f"{self.cid}: SUBSCRIBE {t} at QoS {qos}: SUBACK returned {rc!s} ({granted}), expected granted QoS {qos}")

    def publish(self, t, payload, qos, retain=False, properties=None):
        info = self.c.publish(t, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise TestFailure(f"{self.cid}: publish to {t!r} failed locally: {mqtt.error_string(info.rc)}")
        info.wait_for_publish(TIMEOUT)
        if not info.is_published():
            raise TestFailure(f"{self.cid}: QoS {qos} publish to {t!r} not acknowledged within {TIMEOUT:g}s")

    def messages(self, n, what):
        self.wait(lambda: len(self.msgs) >= n, f"{n} message(s): {what} (got {len(self.msgs)})")
        with self.cond:
            return list(self.msgs[:n])

    def disconnect(self):
        """Clean DISCONNECT, waiting until paho reports the connection closed."""
        self.c.disconnect()
        self.wait(lambda: self.disconnected is not None, "disconnect")
        self.stop()

    def abort(self):
        """Close the TCP socket without sending DISCONNECT (abrupt loss of the client)."""
        self.stop()
        sock = self.c.socket()
        if sock is not None:
            sock.close()

    def stop(self):
        if self.looping:
            self.c.loop_stop()
            self.looping = False


# ----------------------------------------------------------------------------------------------
# Tests. Each takes (name, clients) and registers every client it makes in `clients` for cleanup.

def describe(msg):
    return f"topic={msg.topic!r} payload={msg.payload!r} qos={msg.qos} retain={int(msg.retain)}"


def expect_msg(msg, t, payload, qos, retain=False, what="message"):
    if (msg.topic, msg.payload, msg.qos, bool(msg.retain)) != (t, payload, qos, retain):
        raise TestFailure(f"{what}: expected topic={t!r} payload={payload!r} qos={qos} retain={int(retain)}, "
                          f"got {describe(msg)}")


def t_pubsub(proto, qos):
    def run(name, clients):
        t, payload = topic(name), f"hello {name}".encode()
        sub = TClient(name, proto); clients.append(sub)
        pub = TClient(name, proto); clients.append(pub)
        sub.connect(); sub.subscribe(t, qos)
        pub.connect(); pub.publish(t, payload, qos)
        expect_msg(sub.messages(1, "published message")[0], t, payload, qos)
    return run


def t_retained(proto, qos):
    def run(name, clients):
        t, payload = topic(name), f"retained {name}".encode()
        pub = TClient(name, proto); clients.append(pub)
        pub.connect()
        pub.publish(t, payload, qos, retain=True)
        # A new subscriber gets the retained message, flagged retain=1.
        s1 = TClient(name, proto); clients.append(s1)
        s1.connect(); s1.subscribe(t, 2)
        expect_msg(s1.messages(1, "retained message")[0], t, payload, qos, retain=True,
                   what="new subscriber after retained publish")
        # Clear it with an empty retained publish. It is also delivered to existing subscribers as a
        # normal message (MQTT 3.1.1 3.3.1.3 / 5.0 3.3.1.3); waiting for that at s1 makes sure the
        # broker has processed the clear before s2 subscribes (QoS 0 has no ack to wait on).
        pub.publish(t, b"", qos, retain=True)
        expect_msg(s1.messages(2, "empty retained message forwarded to the existing subscriber")[1], t, b"", qos,
                   what="existing subscriber, after the empty retained publish")
        # Proof of absence: a new subscriber must see our live marker as its first message.
        s2 = TClient(name, proto); clients.append(s2)
        s2.connect(); s2.subscribe(t, 2)
        pub.publish(t, b"marker", qos)
        expect_msg(s2.messages(1, "marker")[0], t, b"marker", qos,
                   what="after clearing the retained message (empty retained payload), the first message "
                        "to a new subscriber")
    return run


def t_will(proto, qos):
    def run(name, clients):
        t, payload = topic(name), f"will {name}".encode()
        watcher = TClient(name, proto); clients.append(watcher)
        watcher.connect(); watcher.subscribe(t, 2)
        dying = TClient(name, proto, will=dict(topic=t, payload=payload, qos=qos, retain=False))
        dying.connect(background=False)
        dying.abort()  # no DISCONNECT -> broker must publish the will
        expect_msg(watcher.messages(1, f"will of {dying.cid} after abrupt socket close")[0], t, payload, qos,
                   what="will message")
    return run


def t_no_will_on_disconnect(proto):
    def run(name, clients):
        t = topic(name)
        watcher = TClient(name, proto); clients.append(watcher)
        watcher.connect(); watcher.subscribe(t, 1)
        polite = TClient(name, proto, will=dict(topic=t, payload=b"will-should-not-appear", qos=1)); clients.append(polite)
        polite.connect()
        polite.disconnect()  # normal DISCONNECT -> will must be discarded
        pub = TClient(name, proto); clients.append(pub)
        pub.connect(); pub.publish(t, b"marker", 1)
        expect_msg(watcher.messages(1, "marker")[0], t, b"marker", 1,
                   what="after a clean DISCONNECT of a client with a will, the first message on the will topic")
    return run


def t_offline_queue(proto, qos):
    def run(name, clients):
        t = topic(name)
        cid = client_id(name)
        v5 = proto == V5
        # Session 1: persistent session with a subscription, then a clean DISCONNECT.
        s1 = TClient(name, proto, clean_session=False, cid=cid); clients.append(s1)
        s1.connect(clean_start=True, session_expiry=300 if v5 else None)
        s1.subscribe(t, qos)
        s1.disconnect()
        # While it is offline: three messages.
        pub = TClient(name, proto); clients.append(pub)
        pub.connect()
        payloads = [f"queued-{i}".encode() for i in (1, 2, 3)]
        for p in payloads:
            pub.publish(t, p, qos)
        # Session 2: resume; must report session_present and get the three messages in order.
        s2 = TClient(name, proto, clean_session=False, cid=cid); clients.append(s2)
        flags = s2.connect(clean_start=False, session_expiry=300 if v5 else None)
        if not flags.session_present:
            raise TestFailure(f"reconnect of {cid} with {'clean_start' if v5 else 'clean_session'}=False: "
                              "CONNACK session_present=0, expected 1")
        got = s2.messages(3, f"queued messages for {cid}")
        for i, (msg, p) in enumerate(zip(got, payloads)):
            expect_msg(msg, t, p, qos, what=f"queued message #{i + 1} (in publish order)")
    return run


def t_v5_user_properties(name, clients):
    t = topic(name)
    # Order matters and duplicate keys are allowed (MQTT 5 section 3.3.2.3.7).
    user = [("trace-id", name), ("k", "v1"), ("k", "v2"), ("unicode", "h\u00e9llo \u2603")]
    sub = TClient(name, V5); clients.append(sub)
    pub = TClient(name, V5); clients.append(pub)
    sub.connect(); sub.subscribe(t, 1)
    pub.connect(); pub.publish(t, b"{}", 1, properties=props(PacketTypes.PUBLISH, UserProperty=user))
    msg = sub.messages(1, "message with user properties")[0]
    got = getattr(msg.properties, "UserProperty", None) if msg.properties else None
    if got != user:
        raise TestFailure(f"published with UserProperty={user!r}, received UserProperty={got!r}")


def t_v5_content_type(name, clients):
    t = topic(name)
    sub = TClient(name, V5); clients.append(sub)
    pub = TClient(name, V5); clients.append(pub)
    sub.connect(); sub.subscribe(t, 1)
    pub.connect()
    pub.publish(t, b'{"a":1}', 1, properties=props(PacketTypes.PUBLISH, ContentType="application/json",
                                                   PayloadFormatIndicator=1))
    msg = sub.messages(1, "message with content type")[0]
    p = msg.properties
    got = (getattr(p, "ContentType", None), getattr(p, "PayloadFormatIndicator", None))
    if got != ("application/json", 1):
        raise TestFailure(f"published with ContentType='application/json', PayloadFormatIndicator=1; "
                          f"received ContentType={got[0]!r}, PayloadFormatIndicator={got[1]!r}")


def t_v5_response_topic(name, clients):
    t = topic(name)
    sub = TClient(name, V5); clients.append(sub)
    pub = TClient(name, V5); clients.append(pub)
    sub.connect(); sub.subscribe(t, 1)
    pub.connect()
    pub.publish(t, b"req", 1, properties=props(PacketTypes.PUBLISH, ResponseTopic=t + "/reply",
                                               CorrelationData=b"\x00\x01corr\xff"))
    p = sub.messages(1, "request message")[0].properties
    got = (getattr(p, "ResponseTopic", None), getattr(p, "CorrelationData", None))
    if got != (t + "/reply", b"\x00\x01corr\xff"):
        raise TestFailure(f"published with ResponseTopic={t + '/reply'!r}, CorrelationData=b'\\x00\\x01corr\\xff'; "
                          f"received ResponseTopic={got[0]!r}, CorrelationData={got[1]!r}")


def t_v5_topic_alias(name, clients):
    t = topic(name)
    sub = TClient(name, V5); clients.append(sub)
    pub = TClient(name, V5); clients.append(pub)
    sub.connect(); sub.subscribe(t, 1)
    pub.connect()
    connack_props = pub.connack[2]
    alias_max = getattr(connack_props, "TopicAliasMaximum", 0) if connack_props else 0
    if alias_max < 1:
        raise TestFailure(f"CONNACK advertises Topic Alias Maximum {alias_max}; cannot test topic aliases")
    # 1st publish sets alias 1 -> t; the next two use the alias with an empty topic name.
    pub.publish(t, b"alias-1", 1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
    pub.publish("", b"alias-2", 1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
    pub.publish("", b"alias-3", 1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
    got = sub.messages(3, "messages published via topic alias")
    for i, msg in enumerate(got):
        # The subscriber set no Topic Alias Maximum, so it must get the full topic name.
        expect_msg(msg, t, f"alias-{i + 1}".encode(), 1, what=f"message #{i + 1} sent with TopicAlias=1")
    if pub.disconnected is not None:
        raise TestFailure(f"publisher was disconnected: {pub.disconnected}")


def build_tests():
    tests = []
    for q in (0, 1, 2):  # MQTT 3.1 smoke test (Apiary claims 3.1 support)
        tests.append((f"paho_v31_pubsub_qos{q}", t_pubsub(V31, q)))
    for proto in (V311, V5):
        v = VNAME[proto]
        for q in (0, 1, 2):
            tests.append((f"paho_{v}_pubsub_qos{q}", t_pubsub(proto, q)))
        for q in (0, 1, 2):
            tests.append((f"paho_{v}_retained_qos{q}", t_retained(proto, q)))
        for q in (0, 1, 2):
            tests.append((f"paho_{v}_will_qos{q}", t_will(proto, q)))
        tests.append((f"paho_{v}_no_will_on_clean_disconnect", t_no_will_on_disconnect(proto)))
        # QoS 0 offline queueing is optional in MQTT ("MAY"), so only QoS 1 and 2 are required.
        for q in (1, 2):
            tests.append((f"paho_{v}_offline_queue_qos{q}", t_offline_queue(proto, q)))
    tests += [
        ("paho_v5_user_properties", t_v5_user_properties),
        ("paho_v5_content_type", t_v5_content_type),
        ("paho_v5_response_topic_correlation_data", t_v5_response_topic),
        ("paho_v5_topic_alias", t_v5_topic_alias),
    ]
    return [(n, f) for n, f in tests if ONLY in n]


def main():
    passed = failed = 0
    for name, fn in build_tests():
        clients = []
        try:
            fn(name, clients)
            print(f"PASS {name}", flush=True)
            passed += 1
        except TestFailure as e:
            print(f"FAIL {name}: {e}", flush=True)
            failed += 1
        except Exception as e:  # a script or connection error still counts as a failure
            tb = traceback.extract_tb(e.__traceback__)[-1]
            print(f"FAIL {name}: {type(e).__name__}: {e} (at {tb.name}:{tb.lineno})", flush=True)
            failed += 1
        finally:
            for c in clients:
                try:
                    if c.looping and c.disconnected is None:
                        c.c.disconnect()
                    c.stop()
                except Exception:
                    pass
    print(f"paho: {passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
