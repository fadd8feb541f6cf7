"""The propagation benchmark runs end to end (real server and agent processes) at a tiny size
and yields well-formed figures. No timing thresholds: the figures only have to exist, be
positive and be consistent; which agent watched is checked from its log."""

from __future__ import annotations

from bench import bench_propagation


async def test_bench_propagation_runs_at_tiny_size(capsys) -> None:
    r = await bench_propagation.run(
        samples=3, baseline_samples=2, sync_interval=0.5, watch_gap=0.05
    )

    assert r.sync_interval == 0.5
    assert len(r.watch.samples) == 3
    assert len(r.baseline.samples) == 2
    assert r.watch.watching, "the shipped agent keeps the Watch stream open"
    assert not r.baseline.watching, "the baseline agent only polls"
    for s in (r.watch, r.baseline):
        assert all(x > 0 for x in s.samples)
        assert s.p50 <= s.p95 <= s.max
        assert 0 <= s.over_1s <= len(s.samples)

    bench_propagation.report(r)
    out = capsys.readouterr().out
    assert "spiffed-agent (Watch push)" in out
    assert "polling agent (baseline)" in out
