"""Make real PyTorch ResNeSt checkpoints and reference logits (run in the torch virtualenv).

    <torchvenv>/bin/python tests/tools_torch_reference.py SPEC.json

SPEC.json is a list of cases::

    {"factory": "resnest50" | null, "arch": {...ResNet kwargs...} | null, "classes": 10,
     "seed": 0, "input": "x.npy", "logits": "logits.npy",
     "files": {"zip": "a.pth", "legacy": "b.pth", "timm": "c.pth", "safetensors": "d.st"}}

``factory`` names a model of the authors' ``resnest.torch`` package; ``arch`` instead builds
their ``ResNet(Bottleneck, ...)`` directly (for depths and widths the package does not register).
BatchNorm statistics and affine parameters are randomised so that inference is not an identity.
The model is run in eval mode on the float32 NCHW batch ``input`` and its logits saved.

The ``timm`` file is the container timm's training script writes (``state_dict``,
``state_dict_ema`` with the ``module.`` prefix of its EMA wrapper, ``args`` as an
``argparse.Namespace``, ``optimizer``); the state-dict keys themselves are the same in timm and
in the authors' code. The ``safetensors`` file is written by hand (the format is a JSON header
and raw little-endian data), as timm's weights are published.

This file never runs under the project's own virtualenv: GluonCV refuses to import beside torch.
"""
from __future__ import annotations

import argparse
import json
import struct
import sys

import numpy as np
import torch
from resnest.torch import ablation as authors_ablation
from resnest.torch import resnest as authors_resnest
from resnest.torch.resnet import Bottleneck, ResNet


def build(case: dict) -> torch.nn.Module:
    classes = case.get('classes', 1000)
    if case.get('factory'):
        module = authors_resnest if hasattr(authors_resnest, case['factory']) \
            else authors_ablation
        return getattr(module, case['factory'])(num_classes=classes)
    arch = dict(case['arch'])
    layers = arch.pop('layers')
    defaults = dict(radix=2, groups=1, bottleneck_width=64, deep_stem=True, stem_width=32,
                    avg_down=True, avd=True, avd_first=False)
    defaults.update(arch)
    return ResNet(Bottleneck, layers, num_classes=classes, **defaults)


def randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
                module.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                module.num_batches_tracked.fill_(1234)
        # Small residual branches, as in trained networks (the paper zero-initialises these
        # gammas): with random statistics everywhere a deep network's outputs grow to 1e8.
        for name, module in model.named_modules():
            if name.endswith('.bn3'):
                module.weight.copy_(torch.rand(module.num_features, generator=gen) * 0.25 + 0.05)


def save_safetensors(state: dict, path: str) -> None:
    names = {torch.float32: 'F32', torch.int64: 'I64'}
    header, blobs, offset = {}, [], 0
    for key, tensor in state.items():
        raw = tensor.contiguous().numpy().astype(tensor.numpy().dtype.newbyteorder('<')).tobytes()
        header[key] = {'dtype': names[tensor.dtype], 'shape': list(tensor.shape),
                       'data_offsets': [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header['__metadata__'] = {'format': 'pt'}
    text = json.dumps(header).encode()
    text += b' ' * (-len(text) % 8)
    with open(path, 'wb') as handle:
        handle.write(struct.pack('<Q', len(text)))
        handle.write(text)
        for raw in blobs:
            handle.write(raw)


def run(case: dict) -> None:
    torch.manual_seed(case.get('seed', 0))
    model = build(case)
    randomize(model, case.get('seed', 0))
    model.eval()
    data = torch.from_numpy(np.load(case['input']))
    with torch.no_grad():
        logits = model(data)
    np.save(case['logits'], logits.numpy())
    state = model.state_dict()
    files = case.get('files', {})
    if 'zip' in files:
        torch.save(state, files['zip'])
    if 'legacy' in files:
        torch.save(state, files['legacy'], _use_new_zipfile_serialization=False)
    if 'timm' in files:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        torch.save({'epoch': 3, 'arch': case.get('timm_arch', 'resnest14d'),
                    'state_dict': state,
                    'state_dict_ema': {f'module.{k}': v for k, v in state.items()},
                    'optimizer': optimizer.state_dict(), 'version': 2,
                    'args': argparse.Namespace(model=case.get('timm_arch'), lr=0.1),
                    'metric': 0.5}, files['timm'])
    if 'safetensors' in files:
        save_safetensors(state, files['safetensors'])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('spec', help='JSON list of cases')
    args = parser.parse_args(argv)
    with open(args.spec) as handle:
        cases = json.load(handle)
    for case in cases:
        run(case)
    return 0


if __name__ == '__main__':
    sys.exit(main())
