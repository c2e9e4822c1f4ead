"""Deployment: export and reload, ONNX, fast CPU inference, INT8 quantization, PyTorch weights.

Modules:

* :mod:`~gluon_resnest.deploy.meta`: the files of an export and its meta data;
* :mod:`~gluon_resnest.deploy.preprocess`: the paper's evaluation transform, image decoding;
* :mod:`~gluon_resnest.deploy.export`: export to symbol/params, load an export or a model;
* :mod:`~gluon_resnest.deploy.onnx_export`: ONNX conversion and its check;
* :mod:`~gluon_resnest.deploy.graph`: the JSON-graph rewriting every graph pass uses;
* :mod:`~gluon_resnest.deploy.inference`: oneDNN fusion, BatchNorm folding;
* :mod:`~gluon_resnest.deploy.fast_inference`: float32 CPU inference on oneDNN 3;
* :mod:`~gluon_resnest.deploy.quantization`: INT8 post-training quantization;
* :mod:`~gluon_resnest.deploy.torch_checkpoint`: PyTorch checkpoints read without PyTorch.

Every public name of these modules is also importable from ``gluon_resnest.deploy``.
"""
from ..params import save_params
from .export import (
    MODEL_SPEC,
    build_network,
    export_network,
    load_exported,
    load_network,
    read_export,
    read_model_spec,
    write_export,
)
from .fast_inference import fast_inference, fast_inference_graph
from .graph import Graph
from .inference import fold_batchnorm, optimize_for_inference, subgraph_backend_available
from .meta import (
    META_DEFAULTS,
    check_export,
    export_paths,
    meta_document,
    read_meta,
    verify_export,
    write_meta,
)
from .onnx_export import (
    MXNET_ONNX_OPSET,
    export_onnx,
    initializers_as_constants,
    onnx_compatible_symbol,
    verify_onnx,
)
from .preprocess import (
    CROP_RATIO,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalize,
    eval_transform,
    load_class_names,
    load_image,
    resize_size,
)
from .quantization import (
    CALIB_MODES,
    calibration_batches,
    fold_network,
    fuse_split_attention_int8,
    grouped_convolutions,
    pool_splits_per_branch,
    quantize_export,
    quantize_network,
    split_grouped_convolutions,
    sum_splits_per_branch,
    top1_agreement,
)
from .torch_checkpoint import (
    TIMM_MODEL_NAMES,
    OpaqueObject,
    convert_checkpoint,
    convert_state_dict,
    extract_state_dict,
    load_safetensors,
    load_torch_file,
    load_torch_state_dict,
    torch_to_gluon_name,
)

__all__ = ['CALIB_MODES', 'CROP_RATIO', 'Graph', 'IMAGENET_MEAN', 'IMAGENET_STD', 'META_DEFAULTS',
           'MODEL_SPEC', 'MXNET_ONNX_OPSET', 'Normalize', 'OpaqueObject', 'TIMM_MODEL_NAMES',
           'build_network', 'calibration_batches', 'check_export', 'convert_checkpoint',
           'convert_state_dict', 'eval_transform', 'export_network', 'export_onnx', 'export_paths',
           'extract_state_dict', 'fast_inference', 'fast_inference_graph', 'fold_batchnorm',
           'fold_network', 'fuse_split_attention_int8',
           'grouped_convolutions',
           'initializers_as_constants',
           'load_class_names', 'load_exported', 'load_image', 'load_network',
           'load_safetensors', 'load_torch_file', 'load_torch_state_dict', 'meta_document',
           'onnx_compatible_symbol', 'optimize_for_inference', 'pool_splits_per_branch',
           'quantize_export',
           'quantize_network', 'read_export', 'read_meta', 'read_model_spec', 'resize_size',
           'save_params',
           'split_grouped_convolutions', 'subgraph_backend_available', 'sum_splits_per_branch',
           'top1_agreement', 'torch_to_gluon_name', 'verify_export', 'verify_onnx', 'write_export',
           'write_meta']
