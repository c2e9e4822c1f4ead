"""Whether this process can run bfloat16 inference on the native operators.

``split_attention_bf16.cc`` (built into the oneDNN-layout library) registers

* ``gluon_resnest_conv_bf16``: ``gluon_resnest_conv`` on bfloat16 feature maps (oneDNN 3's bf16
  convolutions, float32 accumulation and bias; a float32 input is converted first);
* ``gluon_resnest_sa_gap_nhwc_bf16``: the Split-Attention pooled input of bfloat16 splits,
  summed and written in float32;
* ``gluon_resnest_sa_sum_nhwc_bf16``: the weighted sum of bfloat16 splits by a float32
  attention (with the avd pooling), computed in float32 and rounded to bfloat16 once.

They need the float32 inference operators (:func:`gluon_resnest.native.fast_inference_available`),
a CPU with bfloat16 instructions (AVX512_BF16 or AMX: elsewhere oneDNN has no fast bf16
convolution) and a passed self-check of their own (:mod:`.selfcheck`); a failure there leaves
the float32 operators in use.
"""
from __future__ import annotations

__all__ = ['OPERATORS', 'calls', 'cpu_refusal', 'unavailable_reason']

#: The bfloat16 operators (a self-check failure among them disables only them).
OPERATORS = ('gluon_resnest_conv_bf16', 'gluon_resnest_sa_gap_nhwc_bf16',
             'gluon_resnest_sa_sum_nhwc_bf16')
_CPU_FLAGS = ('avx512_bf16', 'amx_bf16')


def cpu_refusal(cpuinfo: str = '/proc/cpuinfo') -> str | None:
    """Why this CPU cannot run the bfloat16 convolutions fast, or None when it can (its flags
    name AVX512_BF16 or AMX-BF16)."""
    try:
        with open(cpuinfo, encoding='utf-8', errors='replace') as handle:
            text = handle.read()
    except OSError as err:
        return f'the CPU\'s instruction sets are unknown ({err})'
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith('flags'):
            flags.update(line.partition(':')[2].split())
    if not flags.intersection(_CPU_FLAGS):
        return 'this CPU has no bfloat16 instructions (AVX512_BF16 or AMX-BF16)'
    return None


def unavailable_reason() -> str | None:
    """Why bfloat16 inference on the native operators is unavailable here, or None."""
    from . import _state, fast_inference_unavailable_reason

    reason = fast_inference_unavailable_reason()
    if reason is not None:
        return reason
    return cpu_refusal() or (str(_state['bf16_error']) if _state['bf16_error'] else None)


def calls() -> dict[str, int]:
    """How often each bfloat16 operator ran in this process (zeros when the library is not
    loaded)."""
    from . import _state

    handle = _state['onednn']
    if not handle:
        return {name: 0 for name in OPERATORS}
    fn = handle.gluon_resnest_bf16_calls
    import ctypes

    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_int]
    return {name: int(fn(i)) for i, name in enumerate(OPERATORS)}
