"""Stand-in for ``ssh HOST CMD`` on the namespace test bed (see ``tests/multihost.py``).

Runs ``CMD`` with ``sh -c`` in the network namespace of ``HOST``, in a fresh UTS namespace whose
hostname is ``HOST``. It accepts the options horovodrun passes (before and after the host), as
ssh does, and ignores them. Like an ssh client it stays where it was started (the launcher):
it exits with the command's status, or with 255 when the command dies of a signal (the host was
lost), and passes SIGTERM/SIGINT/SIGHUP on to the command's process group, as sshd does when the
client goes away.

    netns_ssh.py --hosts hosts.json [ssh options] HOST [ssh options] CMD...
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

# ssh options that take a value (``-o Key=Value``, ``-p PORT``, ``-i FILE`` ...).
_WITH_VALUE = set('bcDEeFIiJLlmOopQRSWw')
LOST = 255


def split_ssh_args(args: list[str]) -> tuple[str, str]:
    """``(host, command)`` of an ssh command line (options may come before and after HOST)."""
    host = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith('-') and len(arg) > 1:
            i += 2 if arg[1] in _WITH_VALUE and len(arg) == 2 else 1
        elif host is None:
            host, i = arg, i + 1
        else:
            break
    if host is None:
        raise SystemExit('netns_ssh: error: no host given')
    return host, ' '.join(args[i:])


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != '--hosts':
        print('usage: netns_ssh.py --hosts FILE [ssh options] HOST CMD', file=sys.stderr)
        return LOST
    with open(argv[1]) as f:
        namespaces = json.load(f)
    host, command = split_ssh_args(argv[2:])
    if host not in namespaces:
        print(f'ssh: Could not resolve hostname {host}', file=sys.stderr)
        return LOST
    proc = subprocess.Popen(
        ['ip', 'netns', 'exec', namespaces[host], 'unshare', '--uts', 'sh', '-c',
         'hostname "$0" && exec sh -c "$1"', host, command or 'true'],
        start_new_session=True)

    def forward(signum: int, _frame) -> None:
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    code = proc.wait()
    return LOST if code < 0 else code


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
