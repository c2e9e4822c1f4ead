"""The reference every native Split-Attention kernel is compared against: MXNet's own operators.

For ``radix`` splits of ``C`` channels each, radix-major along the channel axis:

* ``sa_gap(x)[n, c] = mean over (h, w) of sum_r x[n, r*C + c, h, w]`` (the attention's input);
* ``sa_sum(a, x)[n, c, h, w] = sum_r a[n, r*C + c] * x[n, r*C + c, h, w]`` (the weighted sum),
  optionally followed by :func:`avd_pool`;
* ``avd_pool``: the 3 x 3, stride 2, padding 1 average pooling of the ResNet-D ``avd`` layer,
  padding counted (divisor 9);
* ``sa_sum_u8``: the weighted sum of an INT8 network as MXNet runs it without the native
  operator: each uint8 split dequantized, multiplied, summed in float32 and quantized again to
  ``[0, out_max]`` (then, with ``pool``, MXNet's quantized avd pooling).

The functions take ``F`` (``mx.nd`` or ``mx.sym``), so that they serve imperative tests,
autograd and symbolic graphs alike.
"""
from __future__ import annotations

from typing import Any

__all__ = ['avd_pool', 'sa_gap', 'sa_sum', 'sa_sum_u8']


def _splits(F: Any, x: Any, radix: int) -> list[Any]:  # noqa: N803 - MXNet's convention
    if radix == 1:
        return [x]
    parts = F.split(x, num_outputs=radix, axis=1)
    return [parts[r] for r in range(radix)]


def avd_pool(F: Any, x: Any) -> Any:  # noqa: N803 - MXNet's convention
    """3 x 3 average pooling, stride 2, padding 1, padding counted."""
    return F.Pooling(x, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type='avg',
                     count_include_pad=True)


def sa_gap(F: Any, x: Any, radix: int) -> Any:  # noqa: N803 - MXNet's convention
    """The pooled attention input ``(N, C, 1, 1)`` of ``x`` ``(N, radix * C, H, W)``."""
    return F.mean(F.add_n(*_splits(F, x, radix)), axis=(2, 3), keepdims=True)


def sa_sum(F: Any, a: Any, x: Any, radix: int, pool: bool = False) -> Any:  # noqa: N803
    """The weighted sum ``(N, C, H', W')`` of ``x`` ``(N, radix * C, H, W)`` with the attention
    ``a`` ``(N, radix * C, 1, 1)``; with ``pool``, avd-pooled."""
    total = F.add_n(*[F.broadcast_mul(xr, ar)
                      for xr, ar in zip(_splits(F, x, radix), _splits(F, a, radix))])
    return avd_pool(F, total) if pool else total


def sa_sum_u8(F: Any, a: Any, ranges: list[tuple[Any, Any]], xs: list[Any],  # noqa: N803
              out_max: float, pool: bool = False) -> tuple[Any, Any, Any]:
    """The uint8 weighted sum ``(q, min, max)`` of the uint8 splits ``xs`` (each ``(N, C, H, W)``,
    ``ranges[r]`` its ``(min, max)`` arrays) with the attention ``a`` ``(N, radix * C, 1, 1)``,
    quantized to ``[0, out_max]``; with ``pool``, avd-pooled as MXNet pools uint8."""
    parts = _splits(F, a, len(xs))
    total = F.add_n(*[F.broadcast_mul(F.contrib.dequantize(x, lo, hi), part)
                      for x, (lo, hi), part in zip(xs, ranges, parts)])
    q, lo, hi = F.contrib.quantize_v2(total, min_calib_range=0.0, max_calib_range=out_max,
                                      out_type='uint8')
    if pool:
        q, lo, hi = F.contrib.quantized_pooling(q, lo, hi, kernel=(3, 3), stride=(2, 2),
                                                pad=(1, 1), pool_type='avg')
    return q, lo, hi
