"""The sync benchmark runs end to end at a tiny size (with a small page size, so the sparse
protocol is used) and yields well-formed figures. No timing thresholds."""

from __future__ import annotations

from bench import bench_sync_agents


async def test_bench_sync_agents_runs_at_tiny_size(capsys) -> None:
    r = await bench_sync_agents.run(
        agents=12, direct=5, aliases=2, per_alias=6, changes=4, tls_agents=3, page_size=4
    )

    assert r.agents == 12
    assert r.entries == 12 * 5 + 2 * 6
    names = [rd.name for rd in r.rounds]
    assert names == [
        "cold",
        "unchanged",
        "after 4 entry changes",
        "unchanged, GetAuthorized",
        "TLS, 3 agents: cold",
        "TLS, 3 agents: unchanged",
    ]
    cold, unchanged, changed, get, tls_cold, tls_unchanged = r.rounds
    for rd in r.rounds:
        assert len(rd.per_agent) == (3 if rd.name.startswith("TLS") else 12)
        assert 0 < rd.p50 <= rd.p95
        assert rd.wall > 0 and rd.cpu >= 0
        # own entries and those under its alias (the alias itself is the server's child)
        assert rd.entries_per_agent == 5 + 6 - 1
        assert rd.sync_queries == 0, rd.statements  # syncs are served from the cache
    assert cold.fetched == 12 * 10
    assert unchanged.fetched == 0  # the agents already hold every revision
    assert 1 <= changed.fetched <= 4 * 12
    assert get.fetched == 12 * 10  # GetAuthorizedEntries always sends everything
    # the listener's services use SPIRE's page size (500): 10 entries fit in one page
    assert tls_cold.fetched == tls_unchanged.fetched == 3 * 10
    assert r.rss_loaded > 0 and r.rss_end > 0 and r.index_round_s > 0

    bench_sync_agents.report(r)
    out = capsys.readouterr().out
    assert "baseline, index lookup alone" in out
    assert "after 4 entry changes" in out
