"""The Workload API benchmark runs end to end at a tiny size and yields well-formed figures.

No timing thresholds: the figures only have to exist, be positive and be consistent.
"""

from __future__ import annotations

from bench import bench_workload


async def test_bench_workload_runs_at_tiny_size(capsys) -> None:
    r = await bench_workload.run(entries=20, mine=2, clients=(1, 3), calls=6, streams=5)

    assert r.entries == 20
    assert r.streams == 5
    assert [(row.name, row.clients) for row in r.rows] == [
        ("FetchJWTSVID (cached)", 1),
        ("FetchX509SVID first msg", 1),
        ("FetchJWTSVID (cached)", 3),
        ("FetchX509SVID first msg", 3),
    ]
    for row in r.rows:
        for lat in (row.lat, row.echo):
            assert len(lat.samples) == 6 // row.clients * row.clients
            assert 0 < lat.p50 <= lat.p99
            assert lat.wall > 0
            assert lat.server_cpu >= 0
    assert r.rss_echo > 0
    assert r.rss_start > 0
    assert r.rss_streams > 0

    bench_workload.report(r)
    out = capsys.readouterr().out
    assert "grpc echo (baseline)" in out
    assert "agent RSS with 5 open FetchX509SVID streams" in out
