"""The server's authorized-entry index at scale: 100,000 entries, 1,000 agents.

Each agent has 95 entries parented to it directly (95,000 in all). Ten node aliases each
match a tenth of the agents and have 499 entries under them (5,000 with the aliases), so an
agent is authorized for 594 entries. A "round" asks the index for every agent's entries, as
1,000 agent syncs would; it touches no datastore (the index is fed by datastore events).
Prints build time, memory, and the time per round and per agent lookup.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from dataclasses import dataclass

from spiffed.selector import Selector
from spiffed.server.authorized import AuthorizedEntryIndex
from spiffed.spiffeid import SpiffeId, TrustDomain

AGENTS = 1000
DIRECT = 95
ALIASES = 10
PER_ALIAS = 500
TD = TrustDomain("example.org")


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    spiffe_id: SpiffeId
    parent_id: SpiffeId
    selectors: tuple[Selector, ...]


def build() -> tuple[AuthorizedEntryIndex[Entry], list[SpiffeId]]:
    index: AuthorizedEntryIndex[Entry] = AuthorizedEntryIndex(TD)
    server = SpiffeId.from_path(TD, "/spire/server")
    agents = [SpiffeId.from_path(TD, f"/spire/agent/join_token/a{i}") for i in range(AGENTS)]
    n = 0
    for a, agent in enumerate(agents):
        for w in range(DIRECT):
            index.upsert_entry(
                Entry(
                    f"e{n}",
                    SpiffeId.from_path(TD, f"/a{a}/w{w}"),
                    agent,
                    (Selector("unix", f"uid:{1000 + w}"),),
                )
            )
            n += 1
        index.set_agent(agent, [Selector("x509pop", f"group:{a % ALIASES}")])
    for g in range(ALIASES):
        alias = SpiffeId.from_path(TD, f"/group/{g}")
        index.upsert_entry(Entry(f"alias{g}", alias, server, (Selector("x509pop", f"group:{g}"),)))
        for w in range(PER_ALIAS - 1):
            index.upsert_entry(
                Entry(
                    f"e{n}",
                    SpiffeId.from_path(TD, f"/group/{g}/w{w}"),
                    alias,
                    (Selector("unix", f"uid:{2000 + w}"),),
                )
            )
            n += 1
    return index, agents


def main() -> None:
    """Print index figures."""
    gc.collect()
    tracemalloc.start()
    start = time.perf_counter()
    index, agents = build()
    built = time.perf_counter() - start
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"entries: {len(index):,}  agents: {len(agents):,}")
    print(f"build: {built:.2f} s   index memory: {current / 2**20:.1f} MiB")
    rounds = []
    served = 0
    for _ in range(3):
        start = time.perf_counter()
        served = sum(len(index.authorized_entries(a)) for a in agents)
        rounds.append(time.perf_counter() - start)
    best = min(rounds)
    print(
        f"one round (every agent's authorized entries): {best * 1e3:.0f} ms, "
        f"{best / len(agents) * 1e6:.0f} us per agent, {served // len(agents)} entries each"
    )
    print("datastore queries per round: 0 (the index is in memory, fed by change events)")


if __name__ == "__main__":
    main()
