"""``spiffed-agent`` with spiffed's Watch stream switched off: the baseline of
``bench_propagation`` (``python -m bench._polling_agent run -config ...``).

The agent has no configuration key for this, so this wrapper runs the agent's own command
line with one change: every :class:`~spiffed.agent.manager.Manager` it builds gets
``use_watch = False``. Everything else (attestation, ``experimental.sync_interval`` polling,
SyncAuthorizedEntries, BatchNewX509SVID, the Workload API) is the stock agent's code, so the
agent behaves as SPIRE's does: it learns of a new entry at its next poll.
"""

from __future__ import annotations

from typing import Any

import spiffed.agent.run as agent_run
from spiffed.agent.manager import Manager
from spiffed.cli.agent import main

_build = agent_run.build_manager


def _polling_manager(*args: Any, **kwargs: Any) -> Manager:
    manager = _build(*args, **kwargs)
    manager.use_watch = False
    return manager


if __name__ == "__main__":
    agent_run.build_manager = _polling_manager
    main()
