"""How many workers `serve` runs (CPU affinity, cgroup v1/v2 quotas, memory://) and the shared port they bind."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from proxy.workers import (
    cfs_quota_cpus,
    cgroup_cpu_quota,
    container_cpus,
    cpu_max_cpus,
    effective_workers,
    reserve_ports,
)
from tests.support import proxy_settings

BACKEND, UPSTREAM = "http://127.0.0.1:1", "http://127.0.0.1:2"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("max 100000\n", None),
        ("200000 100000\n", 2.0),
        ("150000 100000\n", 1.5),
        ("50000 100000", 0.5),
        ("100000", 1.0),  # no period: the kernel's default 100 ms
        ("", None),
        ("garbage 100000", None),
        ("0 100000", None),
    ],
)
def test_cgroup_v2_cpu_max(text, cpus):
    assert cpu_max_cpus(text) == cpus


@pytest.mark.parametrize(
    ("quota", "period", "cpus"),
    [("-1\n", "100000\n", None), ("300000\n", "100000\n", 3.0), ("25000", "50000", 0.5), ("x", "100000", None)],
)
def test_cgroup_v1_cfs_quota(quota, period, cpus):
    assert cfs_quota_cpus(quota, period) == cpus


def test_container_in_its_own_v2_namespace_reads_the_root(tmp_path):
    write(tmp_path / "cgroup.controllers", "cpu memory\n")
    write(tmp_path / "cpu.max", "150000 100000\n")
    assert cgroup_cpu_quota(tmp_path, "0::/\n") == 1.5
    assert container_cpus(root=tmp_path, self_cgroup="0::/\n", affinity=8) == 2  # 1.5 CPUs rounds up
    assert container_cpus(root=tmp_path, self_cgroup="0::/\n", affinity=1) == 1  # affinity is tighter


def test_no_quota_means_the_affinity(tmp_path):
    write(tmp_path / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(tmp_path, "0::/\n") is None
    assert container_cpus(root=tmp_path, self_cgroup="0::/\n", affinity=6) == 6
    assert container_cpus(root=tmp_path / "missing", self_cgroup="", affinity=3) == 3  # no cgroup fs at all


def test_v2_without_a_namespace_takes_the_tightest_of_the_path_and_its_parents(tmp_path):
    write(tmp_path / "kubepods" / "cpu.max", "400000 100000\n")
    write(tmp_path / "kubepods" / "pod1" / "cpu.max", "250000 100000\n")
    write(tmp_path / "kubepods" / "pod1" / "ctr" / "cpu.max", "max 100000\n")
    write(tmp_path / "other" / "cpu.max", "10000 100000\n")  # another cgroup: not ours
    assert cgroup_cpu_quota(tmp_path, "0::/kubepods/pod1/ctr\n") == 2.5
    assert container_cpus(root=tmp_path, self_cgroup="0::/kubepods/pod1/ctr\n", affinity=16) == 3


def test_cgroup_v1_quota_under_the_cpu_controller(tmp_path):
    write(tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us", "200000\n")
    write(tmp_path / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    self_cgroup = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n"
    assert cgroup_cpu_quota(tmp_path, self_cgroup) == 2.0  # the container's cgroup mounted at the root
    write(tmp_path / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us", "50000\n")
    write(tmp_path / "cpu" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(tmp_path, self_cgroup) == 0.5  # the full path, seen from the host
    assert container_cpus(root=tmp_path, self_cgroup=self_cgroup, affinity=4) == 1


def test_v1_unlimited_quota(tmp_path):
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "-1\n")
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(tmp_path, "3:cpu:/\n") is None


def test_container_cpus_on_this_machine_is_at_least_one():
    assert container_cpus() >= 1


def test_effective_workers():
    redis = "redis://127.0.0.1:6379/0"
    assert effective_workers(proxy_settings(BACKEND, UPSTREAM, redis), cpus=lambda: 4) == 4
    assert effective_workers(proxy_settings(BACKEND, UPSTREAM, redis, workers=3), cpus=lambda: 8) == 3
    assert effective_workers(proxy_settings(BACKEND, UPSTREAM, redis, workers=1), cpus=lambda: 8) == 1
    # the default never fails validation: memory:// keeps state per process, so one
    assert effective_workers(proxy_settings(BACKEND, UPSTREAM, "memory://"), cpus=lambda: 8) == 1
    assert effective_workers(proxy_settings(BACKEND, UPSTREAM, redis), cpus=lambda: 0) == 1


def test_port_0_is_resolved_to_one_port_every_worker_can_bind():
    settings = proxy_settings(BACKEND, UPSTREAM, "redis://127.0.0.1:6379/0", listen="127.0.0.1:0")
    overrides, held = reserve_ports(settings)
    try:
        assert set(overrides) == {"PROXY_LISTEN", "PROXY_METRICS_LISTEN"}
        host, _, port = overrides["PROXY_LISTEN"].rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0
        assert overrides["PROXY_METRICS_LISTEN"] != overrides["PROXY_LISTEN"]
        listeners = []
        for _ in range(2):  # two workers share it; the reservation itself takes no connection
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", int(port)))
            s.listen()
            listeners.append(s)
        with socket.create_connection(("127.0.0.1", int(port)), timeout=2):
            pass
        plain = socket.socket()  # a program without SO_REUSEPORT cannot take the port
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", int(port)))
        plain.close()
        for s in listeners:
            s.close()
    finally:
        for s in held:
            s.close()


def test_fixed_ports_are_left_alone():
    settings = proxy_settings(
        BACKEND, UPSTREAM, "redis://127.0.0.1:6379/0", listen="127.0.0.1:8080", metrics_listen=":9090"
    )
    assert reserve_ports(settings) == ({}, [])
