"""Convert a PyTorch ResNeSt checkpoint (the authors' ``resnest.torch`` or timm's) to .params.

    python tools/convert_torch.py --model resnest50 --input resnest50-528c19ca.pth \\
        --output resnest50.params

Reads ``torch.save`` files (zip or legacy format) and ``.safetensors`` without PyTorch; the
weights may sit at the top level or under ``state_dict``/``model`` (``--key`` picks another
entry, e.g. timm's ``state_dict_ema``). ``--model`` also accepts timm's names (``resnest50d``,
``resnest101e``, ...). The output loads with ``get_model(NAME, pretrained=FILE)``.
"""
from __future__ import annotations

from gluon_resnest import list_models
from gluon_resnest.deploy.torch_checkpoint import TIMM_MODEL_NAMES, convert_checkpoint
from gluon_resnest.errors import ToolParser, int_in, run_tool

PROG = 'convert_torch'


def _main(argv: list[str] | None = None) -> int:
    parser = ToolParser(PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', required=True,
                        help=f'one of: {", ".join(list_models())} (or timm\'s: '
                             f'{", ".join(TIMM_MODEL_NAMES)})')
    parser.add_argument('--input', required=True,
                        help='PyTorch checkpoint (.pth/.pt/.safetensors)')
    parser.add_argument('--output', required=True, help='.params file to write')
    parser.add_argument('--classes', type=int_in(1, 10**6),
                        help='classifier outputs (default: from the checkpoint\'s fc.weight)')
    parser.add_argument('--key', help='checkpoint entry holding the weights (default: the '
                                      'checkpoint itself, or its state_dict/model entry)')
    args = parser.parse_args(argv)
    net = convert_checkpoint(args.input, args.model, args.output, args.classes, args.key)
    print(f'{args.output}: {net.model_name} with {net.classes} classes, from {args.input}')
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the tool; bad input ends with one line on stderr and status 2."""
    return run_tool(PROG, _main, argv)
