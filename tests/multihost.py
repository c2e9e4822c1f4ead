"""A multi-host test bed on one Linux machine: each host is a network namespace.

Layout (names carry the creating process's id and a counter, so beds never collide)::

    grmh<pid>-<n>-sw   a "switch" namespace holding the bridge br0
    grmh<pid>-<n>-l    the launcher (horovodrun runs here): eth1 = 10.231.0.1/24, hostname launcher
    grmh<pid>-<n>-n1   host node1: eth1 = 10.231.0.11/24, hostname node1
    grmh<pid>-<n>-n2   host node2: eth1 = 10.231.0.12/24, hostname node2 ...

Each namespace reaches the bridge through a veth pair whose inner end is renamed ``eth1``, so
every host and the launcher share one interface name (``horovodrun --network-interface eth1``).
Nothing touches the machine's own network namespace: the bridge and the outer veth ends live in
the switch namespace, no namespace has a default route, so traffic can only go to loopback and
to the bed's own addresses. ``/etc/netns/<ns>/hosts`` (bound over ``/etc/hosts`` by
``ip netns exec``) maps every host name to its address, and each host runs in its own UTS
namespace with its own hostname, so Gloo publishes the host's real address.

``horovodrun`` reaches the hosts with ``ssh HOST CMD``; the bed puts a stand-in ``ssh``
(``tests/scripts/netns_ssh.py``) first on the launcher's ``PATH`` that runs ``CMD`` in the
host's namespace. The stand-in itself stays in the launcher, as a real ssh client would: when a
host dies, its connection ends with status 255 and ``horovodrun`` sees a lost host.

Run as a script to remove beds left by a process that died before cleaning up::

    python tests/multihost.py cleanup          # beds whose owning process is gone
    python tests/multihost.py cleanup --all    # every bed
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
SSH_STAND_IN = ROOT / 'tests' / 'scripts' / 'netns_ssh.py'
PREFIX = 'grmh'
SUBNET = '10.231.0'
IFACE = 'eth1'
NETNS_ETC = Path('/etc/netns')
_NAME = re.compile(rf'^({PREFIX}(\d+)-\d+)-(sw|l|n\d+)$')


@dataclass(frozen=True)
class Host:
    """One namespace of the bed."""

    name: str
    netns: str
    address: str


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(['ip', *args], capture_output=True, text=True, check=check)


def unavailable_reason() -> str | None:
    """Why a bed cannot be built on this machine, or ``None`` when it can."""
    if not sys.platform.startswith('linux'):
        return 'network namespaces need Linux'
    if os.geteuid() != 0:
        return 'creating network namespaces needs root'
    for tool in ('ip', 'unshare'):
        if shutil.which(tool) is None:
            return f'the {tool!r} command is not installed'
    probe = f'{PREFIX}{os.getpid()}-probe'
    result = _ip('netns', 'add', probe, check=False)
    if result.returncode != 0:
        return f'ip netns add failed: {result.stderr.strip()}'
    try:
        veth = _ip('-n', probe, 'link', 'add', 'p0', 'type', 'veth', 'peer', 'name', 'p1',
                   check=False)
        if veth.returncode != 0:
            return f'veth pairs cannot be made: {veth.stderr.strip()}'
        uts = subprocess.run(['unshare', '--uts', 'true'], capture_output=True, text=True)
        if uts.returncode != 0:
            return f'unshare --uts failed: {uts.stderr.strip()}'
    finally:
        _ip('netns', 'del', probe, check=False)
    return None


class Cluster:
    """A launcher and ``num_hosts`` hosts, each in its own network namespace.

    Args:
        num_hosts: how many worker hosts (``node1`` .. ``nodeN``).
        workdir: a folder for the bed's own files (ssh stand-in, host map, discovery list).
    """

    _made = 0

    def __init__(self, num_hosts: int, workdir: Path) -> None:
        Cluster._made += 1
        tag = f'{PREFIX}{os.getpid()}-{Cluster._made}'
        self.tag = tag
        self.switch = f'{tag}-sw'
        self.launcher = Host('launcher', f'{tag}-l', f'{SUBNET}.1')
        self.hosts = [Host(f'node{i}', f'{tag}-n{i}', f'{SUBNET}.{10 + i}')
                      for i in range(1, num_hosts + 1)]
        self.workdir = Path(workdir)
        self.bin_dir = self.workdir / 'bin'
        self.discovery_file = self.workdir / 'discovery-hosts.txt'
        self.discovery_script = self.bin_dir / 'discover-hosts'

    @property
    def namespaces(self) -> list[str]:
        return [self.switch, self.launcher.netns, *(h.netns for h in self.hosts)]

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def create(self) -> Cluster:
        """Make the namespaces, links, host files and the ssh stand-in (undone on failure)."""
        try:
            self._create()
        except BaseException:
            self.destroy()
            raise
        return self

    def _create(self) -> None:
        _ip('netns', 'add', self.switch)
        _ip('-n', self.switch, 'link', 'add', 'br0', 'type', 'bridge')
        _ip('-n', self.switch, 'link', 'set', 'br0', 'up')
        members = [self.launcher, *self.hosts]
        hosts_file = ''.join(['127.0.0.1 localhost\n']
                             + [f'{m.address} {m.name}\n' for m in members])
        for i, member in enumerate(members):
            _ip('netns', 'add', member.netns)
            outer = f'v{i}'
            _ip('-n', self.switch, 'link', 'add', outer, 'type', 'veth', 'peer', 'name', IFACE,
                'netns', member.netns)
            _ip('-n', self.switch, 'link', 'set', outer, 'master', 'br0', 'up')
            _ip('-n', member.netns, 'addr', 'add', f'{member.address}/24', 'dev', IFACE)
            _ip('-n', member.netns, 'link', 'set', IFACE, 'up')
            _ip('-n', member.netns, 'link', 'set', 'lo', 'up')
            etc = NETNS_ETC / member.netns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / 'hosts').write_text(hosts_file)
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        host_map = self.workdir / 'hosts.json'
        host_map.write_text(json.dumps({m.name: m.netns for m in members}))
        ssh = self.bin_dir / 'ssh'
        ssh.write_text(f'#!/bin/sh\nexec {sys.executable} {SSH_STAND_IN} --hosts {host_map} '
                       '"$@"\n')
        ssh.chmod(0o755)
        self.discovery_script.write_text(f'#!/bin/sh\nexec cat {self.discovery_file}\n')
        self.discovery_script.chmod(0o755)
        self.set_discovered([])

    def set_discovered(self, slots: dict[str, int] | Sequence[tuple[str, int]]) -> None:
        """What the discovery script lists from now on (``host:slots`` lines), atomically."""
        items = slots.items() if isinstance(slots, dict) else slots
        tmp = self.discovery_file.with_suffix('.tmp')
        tmp.write_text(''.join(f'{name}:{n}\n' for name, n in items))
        os.replace(tmp, self.discovery_file)

    def launch(self, argv: Sequence[str], *, cwd: Path, log: Path,
               env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``argv`` in the launcher namespace (with its hostname and the ssh stand-in).

        stdout and stderr go to ``log``. The process leads its own process group.
        """
        full_env = {**os.environ, **(env or {})}
        full_env['PATH'] = f'{self.bin_dir}{os.pathsep}{full_env.get("PATH", "")}'
        with open(log, 'wb') as out:
            return subprocess.Popen(
                ['ip', 'netns', 'exec', self.launcher.netns, 'unshare', '--uts', 'sh', '-c',
                 'hostname "$0" && exec "$@"', self.launcher.name, *argv],
                cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)

    def pids(self, netns: str) -> list[int]:
        """Processes living in namespace ``netns``."""
        result = _ip('netns', 'pids', netns, check=False)
        return [int(p) for p in result.stdout.split()]

    def kill_host(self, name: str, timeout: float = 30.0) -> list[int]:
        """SIGKILL every process of host ``name`` (a host that dies); return their ids."""
        return _kill_all(self.host(name).netns, timeout)

    def kill_everything(self) -> None:
        """SIGKILL every process in every namespace of the bed."""
        for netns in self.namespaces:
            _kill_all(netns, 10.0)

    def destroy(self) -> None:
        """Remove processes, namespaces (with the bridge and veths) and ``/etc/netns`` files."""
        remove_bed(self.tag)
        shutil.rmtree(self.bin_dir, ignore_errors=True)


def _kill_all(netns: str, timeout: float) -> list[int]:
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        pids = [int(p) for p in _ip('netns', 'pids', netns, check=False).stdout.split()]
        if not pids:
            return killed
        if time.monotonic() > deadline:
            raise TimeoutError(f'processes {pids} of {netns} survive SIGKILL')
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)  # they vanish from the list once the kernel has reaped them


def bed_namespaces() -> dict[str, list[str]]:
    """Namespaces of every bed on this machine, by tag (``grmh<pid>-<n>``)."""
    beds: dict[str, list[str]] = {}
    names = _ip('netns', 'list', check=False).stdout.split('\n')
    candidates = [line.split()[0] for line in names if line.strip()]
    if NETNS_ETC.is_dir():
        candidates += [p.name for p in NETNS_ETC.iterdir()]
    for name in candidates:
        match = _NAME.match(name)
        if match and name not in beds.setdefault(match.group(1), []):
            beds[match.group(1)].append(name)
    return beds


def remove_bed(tag: str) -> None:
    """Remove every namespace and ``/etc/netns`` entry of bed ``tag``, killing its processes."""
    members = bed_namespaces().get(tag, [])
    # Hosts first, the switch last: deleting the switch takes the bridge and veths with it.
    for netns in sorted(members, key=lambda n: n.endswith('-sw')):
        _kill_all(netns, 10.0)
        _ip('netns', 'del', netns, check=False)
        shutil.rmtree(NETNS_ETC / netns, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup(everything: bool = False) -> list[str]:
    """Remove beds whose owning process has ended (all beds with ``everything``)."""
    removed = []
    for tag in bed_namespaces():
        owner = int(tag[len(PREFIX):].split('-')[0])
        if everything or not _alive(owner):
            remove_bed(tag)
            removed.append(tag)
    return removed


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    clean = sub.add_parser('cleanup', help='remove beds left behind')
    clean.add_argument('--all', action='store_true', help='also beds of running processes')
    sub.add_parser('check', help='say whether a bed can be built here')
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.command == 'check':
        reason = unavailable_reason()
        print(reason or 'network namespaces are available')
        return 0 if reason is None else 1
    for tag in cleanup(args.all):
        print(f'removed {tag}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

