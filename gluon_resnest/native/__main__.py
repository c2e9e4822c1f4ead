"""``python -m gluon_resnest.native``: build (if needed) and load the operator libraries; print
their paths, one per line (the operator library, the oneDNN-layout library and its oneDNN 3
convolution library)."""
from __future__ import annotations

import sys

from . import (
    NativeBuildError,
    bf16,
    enabled,
    fast_inference_unavailable_reason,
    library_paths,
    load,
)


def main() -> int:
    if not enabled():
        print('GLUON_RESNEST_NATIVE=0: the operator library is disabled')
        return 0
    try:
        load(required=True)
    except NativeBuildError as err:
        print(f'gluon_resnest.native: error: {err}', file=sys.stderr)
        return 1
    print('\n'.join(library_paths()))
    reason = fast_inference_unavailable_reason()
    if reason is not None:
        print(f'gluon_resnest.native: float32 inference keeps MXNet\'s convolutions: {reason}',
              file=sys.stderr)
    else:
        why = bf16.unavailable_reason()
        if why is not None:
            print(f'gluon_resnest.native: no bfloat16 inference here: {why}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
