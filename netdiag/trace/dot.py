"""The route as a Graphviz DOT graph (``python -m netdiag.trace --dot host | dot -Tsvg``).

Pure text generation, no Graphviz dependency: each responder at each TTL is a node (address,
name, lowest RTT, how many flows met it; the destination drawn double), each link a flow was
seen to take from TTL ``k`` to ``k + 1`` an edge labelled with its flow count, and the nodes of
one TTL share a rank, so the picture reads left to right as the route does. Hops where some
probes went unanswered get a ``*`` node, joined to its neighbours by the flows that crossed it.
"""

from __future__ import annotations

from .results import TraceResult

__all__ = ["to_dot"]


def _q(s: str) -> str:
    """A DOT string: quotes and backslashes escaped, line breaks as DOT's ``\\n``."""
    s = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + s + '"'


def _id(ttl: int, who: object) -> str:
    return _q(f"{ttl}/{who if who is not None else '*'}")


def to_dot(result: TraceResult, *, name: str = "route") -> str:
    """DOT source of ``result``'s graph (see the module docstring)."""
    lines = [
        f"digraph {_q(name)} {{",
        "  rankdir=LR;",
        '  node [shape=box, fontname="monospace", fontsize=10];',
        '  edge [fontname="monospace", fontsize=9];',
        f"  label={_q(f'{result.protocol} to {result.target}: {result.sent} probes')};",
        '  src [label="src", shape=circle];',
    ]
    for h in result.hops:
        ids: list[str] = []
        for r in h.responders:
            label = [str(r.addr)]
            if r.name:
                label.append(r.name)
            if r.rtts:
                label.append(f"{min(r.rtts) * 1000:.3f} ms")
            n = len(r.flows)
            label.append(
                f"{n} flow{'s' if n != 1 else ''}" + (", reached" if r.destination else "")
            )
            if r.mark:
                label.append(r.mark)
            shape = ", peripheries=2" if r.destination else ""
            lines.append(f"  {_id(h.ttl, r.addr)} [label={_q(chr(10).join(label))}{shape}];")
            ids.append(_id(h.ttl, r.addr))
        if h.timeouts:
            lines.append(f'  {_id(h.ttl, None)} [label="*  ({h.timeouts})", shape=plaintext];')
            ids.append(_id(h.ttl, None))
        lines.append(f"  {{rank=same; {'; '.join(ids)}; {_q(f'TTL {h.ttl}')} }}")
        lines.append(f"  {_q(f'TTL {h.ttl}')} [shape=plaintext];")
    first = result.hops[0].ttl if result.hops else 1
    edges: dict[tuple[str, str], set[int]] = {}
    for flow, path in result.paths.items():
        prev = "src" if first in path else None
        for ttl in sorted(path):
            here = _id(ttl, path[ttl])
            if prev is not None:
                edges.setdefault((prev, here), set()).add(flow)
            prev = here if ttl + 1 in path else None
    for (a, b), flows in edges.items():
        lines.append(f"  {a} -> {b} [label={_q(str(len(flows)))}];")
    for h, g in zip(result.hops, result.hops[1:], strict=False):  # keep TTL labels in order
        lines.append(f"  {_q(f'TTL {h.ttl}')} -> {_q(f'TTL {g.ttl}')} [style=invis];")
    lines.append("}")
    return "\n".join(lines) + "\n"
