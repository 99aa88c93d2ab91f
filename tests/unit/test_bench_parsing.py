"""The benchmark's pure parts: wrk's output, /proc CPU accounting, medians and ratios (no processes)."""

import pytest

from bench import cpu, report, wrk
from bench.profile import EVENT_LOOP, self_time
from bench.targets import parse_assignment, set_dotted

WRK_OK = """Running 5s test @ http://127.0.0.1:41235/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   312.50us  100.00us   5.00ms   90.00%
    Req/Sec    50.00k     2.00k   55.00k    70.00%
  Latency Distribution
     50%  300.00us
     75%  350.00us
     90%  410.00us
     99%    1.20ms
  250123 requests in 5.00s, 40.50MB read
Requests/sec:  50024.60
Transfer/sec:      8.10MB
"""

WRK_ERRORS = """Running 5s test @ http://127.0.0.1:41235/big
  1 threads and 256 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.50s   200.00ms   2.00s    80.00%
    Req/Sec     1.00k   100.00     1.20k    70.00%
  Latency Distribution
     50%    1.40s
     75%    1.60s
     90%    1.80s
     99%    1.00m
  1200 requests in 1.00m, 1.17GB read
  Socket errors: connect 2, read 3, write 0, timeout 7
  Non-2xx or 3xx responses: 11
Requests/sec:     20.00
Transfer/sec:     20.00MB
bench: done=1200 elapsed=4.250000
"""


def test_wrk_summary_is_parsed_with_units():
    res = wrk.parse_output(WRK_OK)
    assert res.requests == 250123
    assert res.duration_s == pytest.approx(5.0)
    assert res.bytes_read == round(40.5 * 1024 * 1024)
    assert res.rps == pytest.approx(50024.6)
    assert res.latency_ms == pytest.approx({"avg": 0.3125, "50": 0.3, "75": 0.35, "90": 0.41, "99": 1.2})
    assert res.errors == 0
    assert res.socket_errors == {}
    assert res.script == {}


def test_wrk_errors_seconds_minutes_and_script_lines():
    res = wrk.parse_output(WRK_ERRORS)
    assert res.duration_s == pytest.approx(60.0)
    assert res.latency_ms["50"] == pytest.approx(1400.0)
    assert res.latency_ms["99"] == pytest.approx(60_000.0)
    assert res.socket_errors == {"connect": 2, "read": 3, "write": 0, "timeout": 7}
    assert res.non_2xx == 11
    assert res.errors == 23
    assert res.bytes_read == round(1.17 * 1024**3)
    assert res.script == {"done": "1200", "elapsed": "4.250000"}


def test_wrk_without_a_summary_is_an_error():
    with pytest.raises(ValueError, match="requests in"):
        wrk.parse_output("unable to connect to 127.0.0.1:1 Connection refused\n")


@pytest.mark.parametrize(
    ("text", "seconds"), [("0.00us", 0.0), ("999.99us", 999.99e-6), ("12.5ms", 0.0125), ("2.00s", 2.0), ("1.5m", 90.0)]
)
def test_wrk_times(text, seconds):
    assert wrk.parse_time(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "size"), [("512.00B", 512), ("1.00KB", 1024), ("2.00MB", 2 * 1024**2)])
def test_wrk_sizes(text, size):
    assert wrk.parse_size(text) == size


def test_wrk_rejects_unknown_units():
    with pytest.raises(ValueError):
        wrk.parse_time("3.00parsecs")
    with pytest.raises(ValueError):
        wrk.parse_size("3.00XB")


def test_distinct_keys_script_names_the_keys_the_emulator_gets():
    text = wrk.distinct_keys_script("bench-miss-", 10_000, 1024)
    assert 'string.format("bench-miss-%08d", sent)' in text
    assert "got == 10000" in text and "limit = 11024" in text
    assert wrk.distinct_key("bench-miss-", 7) == "bench-miss-00000007"


def test_wrk_command_pins_and_passes_headers():
    cmd = wrk.command("http://127.0.0.1:1/", seconds=5, connections=32, headers=["x-api-key: k"], cpus="1")
    assert cmd[:3] == ["taskset", "-c", "1"]
    assert cmd[3:7] == ["wrk", "-t1", "-c32", "-d5s"]
    assert cmd[-3:] == ["-H", "x-api-key: k", "http://127.0.0.1:1/"]


# ------------------------------------------------------------------------------------------- /proc

STAT = "4242 (nginx: worker (x) y) S 4241 4241 4241 0 -1 4194624 500 0 0 0 150 50 7 3 20 0 1 0 100 0 0"


def test_proc_stat_fields_counted_after_the_last_parenthesis():
    st = cpu.parse_proc_stat(STAT)
    assert (st.pid, st.ppid, st.utime, st.stime, st.cutime, st.cstime) == (4242, 4241, 150, 50, 7, 3)
    assert st.ticks == 210


def test_proc_stat_too_short():
    with pytest.raises(ValueError):
        cpu.parse_proc_stat("1 (init) S 0 1")


def _st(pid, ppid, ticks):
    return cpu.ProcStat(pid=pid, ppid=ppid, utime=ticks, stime=0, cutime=0, cstime=0)


def test_tree_ticks_sum_the_process_tree_only():
    stats = {p.pid: p for p in (_st(1, 0, 1000), _st(10, 1, 5), _st(11, 10, 100), _st(12, 10, 200), _st(13, 1, 7))}
    stats[14] = _st(14, 11, 1)  # a grandchild (workers of a worker)
    assert cpu.descendants(stats, 10) == {10, 11, 12, 14}
    assert cpu.tree_ticks(stats, 10) == 306
    assert cpu.tree_ticks(stats, 99) == 0


def test_tree_user_system_splits_the_trees_ticks():
    stats = {
        1: cpu.ProcStat(pid=1, ppid=0, utime=50, stime=9, cutime=0, cstime=0),
        2: cpu.ProcStat(pid=2, ppid=1, utime=30, stime=10, cutime=4, cstime=1),  # reaped a child of its own
        3: cpu.ProcStat(pid=3, ppid=0, utime=999, stime=999, cutime=0, cstime=0),  # not in the tree
    }
    assert cpu.tree_user_system(stats, 1) == (84, 20)
    assert sum(cpu.tree_user_system(stats, 1)) == cpu.tree_ticks(stats, 1)


def test_cpu_us_per_request():
    # 250 ticks at 100 Hz = 2.5 s of CPU over 50,000 requests = 50 µs each
    assert cpu.cpu_us_per_request(1000, 1250, 50_000, clk_tck=100) == pytest.approx(50.0)
    assert cpu.cpu_us_per_request(0, 10, 0) is None


def test_core_busy_and_other_load():
    before = cpu.parse_core_times(
        "cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 100 0 50 800 50 0 0 0 0 0\ncpu1 0 0 0 1000 0 0 0 0 0 0\nintr 5\n"
    )
    after = cpu.parse_core_times("cpu0 190 0 60 850 50 0 0 0 0 0\ncpu1 50 0 0 1050 0 0 0 0 0 0\n")
    assert before["cpu0"] == (150, 1000)
    busy = cpu.core_busy(before, after)
    assert busy == pytest.approx({"cpu0": 100 / 150, "cpu1": 0.5})
    assert cpu.busy_cores(before, after) == pytest.approx(100 / 150 + 0.5)
    # 150 busy ticks over a 125-tick interval (on average per core); ours were 100 → 0.4 of a core besides
    assert cpu.other_load(before, after, 100) == pytest.approx(0.4)
    assert cpu.other_load(before, after, 1000) == 0.0


# ------------------------------------------------------------------------------------------ report


def test_median_and_ratio():
    assert report.median([3.0, None, 1.0, 2.0]) == 2.0
    assert report.median([1.0, 2.0]) == 1.5
    assert report.median([None]) is None
    assert report.ratio(2.0, 4.0) == 0.5
    assert report.ratio(None, 4.0) is None
    assert report.ratio(2.0, 0.0) is None


def _run(target, case, rps, cpu_us, p99, errors=0):
    return {"target": target, "case": case, "rps": rps, "cpu_us_per_req": cpu_us, "p99_ms": p99, "errors_total": errors}


def test_summary_is_the_ratio_of_medians_against_nginx():
    runs = [
        _run("nginx", "cached-32", 100.0, 10.0, 1.0),
        _run("threescale", "cached-32", 30.0, 40.0, 4.0),
        _run("nginx", "cached-32", 120.0, 12.0, 2.0),
        _run("threescale", "cached-32", 10.0, 50.0, 6.0, errors=2),
        _run("nginx", "cached-32", 80.0, 11.0, 3.0),
        _run("threescale", "cached-32", 20.0, 60.0, 5.0),
        _run("threescale", "miss", 5.0, 100.0, 9.0),
    ]
    rows = {(r["target"], r["case"]): r for r in report.summarize(runs)}
    ts = rows[("threescale", "cached-32")]
    assert ts["rounds"] == 3
    assert ts["rps"] == 20.0 and ts["rps_x_nginx"] == pytest.approx(0.2)  # median 20 over median 100
    assert ts["cpu_x_nginx"] == pytest.approx(50.0 / 11.0)
    assert ts["p99_x_nginx"] == pytest.approx(5.0 / 2.0)
    assert ts["errors"] == 2
    assert rows[("nginx", "cached-32")]["rps_x_nginx"] == 1.0
    assert rows[("threescale", "miss")]["rps_x_nginx"] is None  # nginx has no miss case
    table = report.format_table(list(rows.values()), [{"target": "threescale/w2", "case": "workers", "reason": "x"}])
    assert "threescale!" in table and "ERRORS 2" in table and "skipped: x" in table


def test_compare_with_a_saved_run():
    now = [{"target": "threescale", "case": "cached-32", "rps": 30.0, "cpu_us_per_req": 20.0, "p99_ms": 1.0}]
    then = [{"target": "threescale", "case": "cached-32", "rps": 20.0, "cpu_us_per_req": 40.0, "p99_ms": 2.0}]
    (row,) = report.compare(now, [*then, {"target": "haproxy", "case": "cached-32", "rps": 1.0}])
    assert (row["rps"], row["cpu_us_per_req"], row["p99_ms"]) == pytest.approx((1.5, 0.5, 0.5))


def test_rounds_alternate():
    assert report.alternating(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert report.alternating(["a", "b", "c"], 1) == ["c", "b", "a"]
    assert report.alternating(["a", "b", "c"], 2) == ["a", "b", "c"]


# --------------------------------------------------------------------------------- config, profile


def test_proxy_set_assignments():
    assert parse_assignment("upstream.transport=aiohttp") == (None, "upstream.transport", "aiohttp")
    assert parse_assignment("log.access_log=false") == (None, "log.access_log", False)
    assert parse_assignment("threescale@base:workers=2") == ("threescale@base", "workers", 2)
    with pytest.raises(ValueError):
        parse_assignment("workers")
    cfg = {"log": {"level": "warning"}, "services": [{"id": "1"}]}
    set_dotted(cfg, "log.access_log", True)
    set_dotted(cfg, "upstream.transport", "h1")
    set_dotted(cfg, "services.0.upstream_timeout", 5)
    assert cfg == {
        "log": {"level": "warning", "access_log": True},
        "upstream": {"transport": "h1"},
        "services": [{"id": "1", "upstream_timeout": 5}],
    }


def test_self_time_from_collapsed_stacks():
    collapsed = (
        'process 1:"python";run (asyncio/base_events.py:607);_run_once (asyncio/base_events.py:1922);'
        "handle (proxy/pipeline.py:120) 30\n"
        'process 1:"python";run (asyncio/base_events.py:607);_run_once (asyncio/base_events.py:1922);'
        "handle (proxy/pipeline.py:121) 10\n"
        'process 1:"python";_BatchWriter.run (proxy/logs.py:93) 60\n'
    )
    counts, total = self_time(collapsed)
    assert total == 100 and counts["handle (proxy/pipeline.py)"] == 40
    loop, in_loop = self_time(collapsed, "_run_once")
    assert in_loop == 40 and list(loop) == ["handle (proxy/pipeline.py)"]
    _, others = self_time(collapsed, "_run_once", invert=True)
    assert others == 60


def test_the_event_loop_stacks_are_found_on_asyncio_and_on_uvloop():
    """uvloop's loop is C: its stacks go from asyncio.Runner straight to our callbacks, with no _run_once."""
    runner = (
        'process 1:"python";_serve (proxy/cli.py:75);run (asyncio/runners.py:190);Runner.run (asyncio/runners.py:118)'
    )
    collapsed = (
        f"{runner};BaseEventLoop.run_forever (asyncio/base_events.py:607);_run_once (asyncio/base_events.py:1922);"
        "handle (proxy/pipeline.py:120) 30\n"
        f"{runner};_Connection.data_received (proxy/http/server.py:367) 20\n"  # on uvloop
        'process 1:"python";_BatchWriter.run (proxy/logs.py:93) 50\n'
    )
    loop, in_loop = self_time(collapsed, EVENT_LOOP)
    assert in_loop == 50
    assert loop == {"handle (proxy/pipeline.py)": 30, "_Connection.data_received (proxy/http/server.py)": 20}
    assert self_time(collapsed, EVENT_LOOP, invert=True)[1] == 50
