"""HTTP Registry Discovery, an Apiary cluster discovery extension written in Python.

The node list is a text file served over HTTP: one ``host:port`` (the node's cluster port) per
line, IPv6 as ``[fd00::7]:7800``, ``#`` starts a comment, blank lines are ignored. Every reload
GETs ``url`` (from ``conf/config.properties``) through the broker's ``http`` import, which only
reaches the hosts the operator allows with ``http.allow`` in ``conf/sandbox.properties``.

Anything wrong (no response, a status other than 200, a line that is not ``host:port``) is an
error result: the broker logs it and keeps the previous node list, so a registry that is down or
half-written never empties the cluster.

Built into a WebAssembly component with componentize-py (see README.md and build.sh); the
``wit_world`` modules are the bindings componentize-py generates from ../../wit (world
``discovery``).
"""

from typing import List, Optional, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config, http, log
from wit_world.imports.types import DiscoveryInput, DiscoveryOutput, NodeAddress

USER_AGENT = "apiary-http-discovery-py/1.0.0"

# Kept between calls (the broker keeps one instance from init to destroy): the last list
# returned, so that only changes are logged.
_last_list: Optional[List[str]] = None


class ClusterDiscovery(exports.ClusterDiscovery):
    """The exported ``cluster-discovery`` interface."""

    def init(self, input: DiscoveryInput) -> DiscoveryOutput:
        address = input.own_address
        log.log(
            log.Level.INFO,
            f"HTTP registry discovery for node {input.own_cluster_id} at {address.host}:{address.port}",
        )
        return self.reload(input)

    def reload(self, input: DiscoveryInput) -> DiscoveryOutput:
        try:
            return _reload()
        except Err:
            raise
        except Exception as e:  # a bug here must be an error result, not a trap
            raise Err(f"unexpected error: {e!r}")

    def destroy(self, input: DiscoveryInput) -> None:
        log.log(log.Level.DEBUG, "HTTP registry discovery stopped")


def _reload() -> DiscoveryOutput:
    global _last_list
    url = _required("url")
    if not (url.startswith("http://") or url.startswith("https://")):
        raise Err(f"url: expected an http:// or https:// URL, got {url!r}")
    interval = _reload_interval()

    request = http.Request(method="GET", url=url, headers=_headers(), body=b"")
    try:
        response = http.send(request)
    except Err as e:
        raise Err(f"GET {url}: {e.value}")
    if response.status != 200:
        raise Err(f"GET {url}: HTTP status {response.status}, expected 200")
    try:
        # "utf-8-sig" would need an encodings module componentize-py does not bundle.
        text = response.body.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise Err(f"GET {url}: the body is not UTF-8 text ({e.reason} at byte {e.start})")

    nodes = parse_nodes(text)
    shown = [_show(node) for node in nodes]
    if shown != _last_list:
        if shown:
            log.log(log.Level.INFO, f"node list from {url} ({len(shown)}): {', '.join(shown)}")
        else:
            log.log(log.Level.WARN, f"node list from {url} is empty")
        _last_list = shown
    return DiscoveryOutput(nodes=nodes, reload_interval_secs=interval)


def parse_nodes(text: str) -> List[NodeAddress]:
    """One ``host:port`` per line; ``#`` comments and blank lines are skipped. A line that does
    not parse is an error naming the line (the broker then keeps its previous list)."""
    nodes = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        host, port = _parse_node(line, number)
        nodes.append(NodeAddress(host=host, port=port))
    return nodes


def _parse_node(line: str, number: int) -> Tuple[str, int]:
    where = f"line {number}: {line!r}"
    if line.startswith("["):
        end = line.find("]")
        if end < 0 or not line[end + 1 :].startswith(":"):
            raise Err(f"{where}: expected [ipv6]:port")
        host, port_text = line[1:end], line[end + 2 :]
    else:
        if ":" not in line:
            raise Err(f"{where}: expected host:port")
        host, port_text = line.rsplit(":", 1)
        if ":" in host:
            raise Err(f"{where}: an IPv6 address needs brackets, as in [fd00::7]:7800")
    if not host or any(c.isspace() or c in "/[]@" for c in host):
        raise Err(f"{where}: bad host")
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise Err(f"{where}: bad port, expected 1-65535")
    return host, int(port_text)


def _show(node: NodeAddress) -> str:
    return f"[{node.host}]:{node.port}" if ":" in node.host else f"{node.host}:{node.port}"


def _required(key: str) -> str:
    value = config.get(key)
    if value is None or not value.strip():
        raise Err(f"`{key}` is not set in conf/config.properties")
    return value.strip()


def _reload_interval() -> Optional[int]:
    """``reload-interval`` in seconds, or None to keep the broker's."""
    text = config.get("reload-interval")
    if text is None or not text.strip():
        return None
    text = text.strip()
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 0xFFFF_FFFF:
        raise Err(f"reload-interval: expected a number of seconds (at least 1), got {text!r}")
    return int(text)


def _headers() -> List[Tuple[str, str]]:
    """``header.<name>=<value>`` entries of the config are sent with the request (for example an
    ``Authorization`` token); the user agent names this extension."""
    headers = [("user-agent", USER_AGENT), ("accept", "text/plain")]
    for key, value in config.entries():
        if key.startswith("header.") and len(key) > len("header."):
            headers.append((key[len("header.") :], value.strip()))
    return headers
