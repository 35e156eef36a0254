"""Makes mlx-lm 0.32.2 run on MLX 0.32.2 for quantized MoE models.

mlx-lm's QuantizedSwitchLinear calls ``mx.gather_qmm(..., global_scale=...)``, an argument MLX
0.32.2 does not have (TypeError). It is only ever set for nvfp4 experts quantized with one
tensor scale per expert; every affine, mxfp4, mxfp8 and plain nvfp4 model passes None. Import
this module before running such a model: unset, the argument is dropped; set, it fails loudly.
"""
import mlx.core as mx

_gather_qmm = mx.gather_qmm


def _gather_qmm_compat(*args, global_scale=None, **kwargs):
    if global_scale is not None:
        raise NotImplementedError("gather_qmm(global_scale=...) needs a newer MLX")
    return _gather_qmm(*args, **kwargs)


try:
    _gather_qmm(mx.zeros((1, 32)), mx.zeros((1, 1, 4), dtype=mx.uint32),
                mx.zeros((1, 1, 1)), mx.zeros((1, 1, 1)), global_scale=None)
except TypeError:
    mx.gather_qmm = _gather_qmm_compat
