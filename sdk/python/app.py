"""A cluster discovery extension for Apiary, in Python: start from this file.

As it stands it returns the nodes listed in ``conf/config.properties``
(``nodes=10.0.0.1:7800,10.0.0.2:7800``); replace ``reload`` with your own lookup. ``fetch`` shows
how to reach an HTTP registry through the broker (the operator must allow its host with
``http.allow`` in ``conf/sandbox.properties``).

Rules of the sandbox (see README.md):
- the class must be called ``ClusterDiscovery`` and live in the module you pass to
  ``componentize-py componentize`` (here ``app``);
- ``raise Err("why")`` returns an error result: the broker logs it and keeps its previous list;
- state that must survive between calls goes in module-level variables;
- log with ``log.log`` (``print`` also reaches the broker's log, without a level); there are
  no files and no sockets, and only the environment variables the operator grants.
"""

from typing import List, Optional

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config, http, log
from wit_world.imports.types import DiscoveryInput, DiscoveryOutput, NodeAddress

# Survives between calls: the broker keeps one instance from init to destroy (after a trap or
# timeout it starts a fresh one, and this starts over).
_calls = 0


class ClusterDiscovery(exports.ClusterDiscovery):
    def init(self, input: DiscoveryInput) -> DiscoveryOutput:
        """Called once when the extension starts: register this node in your registry, if any."""
        log.log(log.Level.INFO, f"starting for node {input.own_cluster_id}")
        return self.reload(input)

    def reload(self, input: DiscoveryInput) -> DiscoveryOutput:
        """Called every reload interval: return the complete current node list."""
        global _calls
        _calls += 1
        try:
            nodes = parse_nodes(config.get("nodes") or "")
        except Err:
            raise
        except Exception as e:  # anything else would trap the instance
            raise Err(f"unexpected error: {e!r}")
        # nodes=None would mean "no change"; reload_interval_secs=None keeps the broker's.
        return DiscoveryOutput(nodes=nodes, reload_interval_secs=None)

    def destroy(self, input: DiscoveryInput) -> None:
        """Called when the extension stops: unregister this node from your registry, if any."""
        log.log(log.Level.INFO, f"stopping after {_calls} reloads")


def parse_nodes(text: str) -> List[NodeAddress]:
    """``host:port,host:port`` → addresses; a bad entry is an error (the broker keeps its list)."""
    nodes = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise Err(f"{entry!r}: expected host:port")
        nodes.append(NodeAddress(host=host.strip("[]"), port=int(port)))
    return nodes


def fetch(url: str, token: Optional[str] = None) -> str:
    """GETs ``url`` through the broker and returns the body as text; an error unless status 200."""
    headers = [("accept", "text/plain")]
    if token:
        headers.append(("authorization", f"Bearer {token}"))
    try:
        response = http.send(http.Request(method="GET", url=url, headers=headers, body=b""))
    except Err as e:  # not allowed, no connection, timeout, TLS failure
        raise Err(f"GET {url}: {e.value}")
    if response.status != 200:
        raise Err(f"GET {url}: HTTP status {response.status}")
    return response.body.decode("utf-8")
