"""One way to rewrite an MXNet symbol through its JSON graph, shared by every graph pass.

A symbol's JSON holds ``nodes`` (each ``{'op', 'name', 'attrs', 'inputs'}``, an input being an
entry ``[node index, output index, version]``), the indices of its variables (``arg_nodes``)
and its outputs (``heads``). A pass reads the old nodes, appends the new graph's nodes in
topological order with :meth:`Graph.add` (or copies an old one with :meth:`Graph.keep`), maps
old indices to new ones in :attr:`Graph.index`, and builds the result with
:meth:`Graph.to_symbol`.
"""
from __future__ import annotations

import json
from typing import Any

import mxnet as mx

__all__ = ['Graph', 'strip_amp_casts']

Entry = list  # [node index, output index, version]


class Graph:
    """The old graph of a symbol (read-only) and a new graph being built from it.

    Attributes:
        nodes: The old nodes.
        heads: The old output entries.
        consumers: Old node index -> indices of the nodes reading it (-1 for a graph output).
        new_nodes: The new graph's nodes so far.
        index: Old node index -> the index of the node that replaces it in the new graph.
    """

    def __init__(self, symbol: mx.sym.Symbol) -> None:
        graph = json.loads(symbol.tojson())
        self.nodes: list[dict[str, Any]] = graph['nodes']
        self.heads: list[Entry] = graph['heads']
        self._attrs = graph.get('attrs', {})
        self.consumers: dict[int, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for entry in node['inputs']:
                self.consumers.setdefault(entry[0], []).append(i)
        for entry in self.heads:
            self.consumers.setdefault(entry[0], []).append(-1)
        self.new_nodes: list[dict[str, Any]] = []
        self.index: dict[int, int] = {}
        self._aliases: dict[tuple[int, int], Entry] = {}

    def op(self, i: int) -> str:
        """Operator of old node ``i`` (``'null'`` for a variable)."""
        return self.nodes[i]['op']

    def attrs(self, i: int) -> dict[str, str]:
        """Attributes of old node ``i`` (strings, as MXNet writes them)."""
        return self.nodes[i].get('attrs', {})

    def add(self, node: dict[str, Any]) -> int:
        """Append a node to the new graph; its new index."""
        self.new_nodes.append(node)
        return len(self.new_nodes) - 1

    def variable(self, name: str) -> Entry:
        """Append a new variable (a weight); the entry that reads it."""
        return [self.add({'op': 'null', 'name': name, 'inputs': []}), 0, 0]

    def remap(self, entry: Entry) -> Entry:
        """An old entry as an entry of the new graph."""
        alias = self._aliases.get((entry[0], entry[1]))
        if alias is not None:
            return list(alias)
        return [self.index[entry[0]], entry[1], entry[2]]

    def drop(self, i: int, outputs: list[Entry]) -> None:
        """Leave old node ``i`` out: its output ``k`` is read from new entry ``outputs[k]``."""
        for k, entry in enumerate(outputs):
            self._aliases[(i, k)] = entry

    def keep(self, i: int) -> int:
        """Copy old node ``i`` unchanged (inputs remapped) into the new graph; its new index."""
        node = self.nodes[i]
        self.index[i] = self.add(dict(node, inputs=[self.remap(e) for e in node['inputs']]))
        return self.index[i]

    def to_symbol(self) -> mx.sym.Symbol:
        """The new graph, its outputs being the old heads remapped."""
        graph = {'nodes': self.new_nodes,
                 'arg_nodes': [i for i, n in enumerate(self.new_nodes) if n['op'] == 'null'],
                 'heads': [self.remap(e) for e in self.heads],
                 'attrs': self._attrs}
        return mx.sym.load_json(json.dumps(graph))


def strip_amp_casts(symbol: mx.sym.Symbol) -> mx.sym.Symbol:
    """``symbol`` without the casts MXNet AMP inserted (``amp_cast``, ``amp_multicast``).

    A network traced while AMP is on computes in float16/bfloat16; its parameters stay float32.
    Without the casts every operator reads and writes float32 again: the FP32 model.
    """
    graph = Graph(symbol)
    for i, node in enumerate(graph.nodes):
        if node['op'] in ('amp_cast', 'amp_multicast'):
            # amp_cast has one input; amp_multicast's output k is its input k, cast.
            graph.drop(i, [graph.remap(entry) for entry in node['inputs']])
        else:
            graph.keep(i)
    return graph.to_symbol()
