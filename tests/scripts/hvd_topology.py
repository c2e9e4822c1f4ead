"""Run under horovodrun: each rank writes what Horovod says about its place in the job.

    horovodrun ... python tests/scripts/hvd_topology.py OUT_DIR

Writes ``OUT_DIR/rank-<r>.json`` with the rank, size, local and cross rank/size, the hostname
and the host's IPv4 addresses, and the result of one all-reduce (sum of ``rank + 1``) and one
broadcast from the last rank, so a test sees that data really crossed the hosts.
"""
import json
import socket
import sys
from pathlib import Path

import horovod.mxnet as hvd
import mxnet as mx


def main(out_dir: str) -> int:
    hvd.init()
    total = hvd.allreduce(mx.nd.array([hvd.rank() + 1.0]), average=False, name='sum')
    last = hvd.size() - 1
    token = hvd.broadcast_object(f'from {socket.gethostname()} rank {hvd.rank()}',
                                 root_rank=last, name='token')
    info = {
        'rank': hvd.rank(), 'size': hvd.size(),
        'local_rank': hvd.local_rank(), 'local_size': hvd.local_size(),
        'cross_rank': hvd.cross_rank(), 'cross_size': hvd.cross_size(),
        'hostname': socket.gethostname(),
        'address': socket.gethostbyname(socket.gethostname()),
        'allreduce_sum': float(total.asscalar()), 'broadcast': token,
    }
    Path(out_dir, f'rank-{hvd.rank()}.json').write_text(json.dumps(info) + '\n')
    hvd.allreduce(mx.nd.zeros(1), name='done').wait_to_read()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1]))
