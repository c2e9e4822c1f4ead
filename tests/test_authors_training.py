"""Training as the authors' ``scripts/gluon/train.py`` trains (ResNeSt repository, MXNet/Horovod).

Their model, DropBlock scheduler and AutoAugment policy come from the ``resnest==0.0.5``
package (``resnest.gluon``, installed without dependencies as a test reference); their step is
written out in ``tests/scripts/step_equivalence_check.py``.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_resnest
from gluon_resnest.layers import DropBlock, set_drop_prob
from gluon_resnest.training import (
    dropblock_prob,
    iteration_lr,
    load_recipe,
    recipe_names,
    resolve,
    schedule_epoch_size,
)
from gluon_resnest.training.loop import build_networks, seed_everything
from gluon_resnest.training.plan import IMAGENET_TRAIN_IMAGES, steps_per_epoch

authors = pytest.importorskip('resnest.gluon')
from resnest.gluon.dropblock import DropBlock as AuthorsDropBlock  # noqa: E402
from resnest.gluon.dropblock import DropBlockScheduler  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
HOROVODRUN = str(Path(PY).parent / 'horovodrun')
SCRIPT = ROOT / 'tests' / 'scripts' / 'step_equivalence_check.py'

# Their script's initializer, set globally on a network without per-layer initialisers.
AUTHORS_INIT = dict(rnd_type='gaussian', factor_type='in', magnitude=2)


def _weights(net: nn.Block) -> dict[str, np.ndarray]:
    return {k: p.data().asnumpy() for k, p in net._collect_params_with_prefix().items()}


# --- initialisation -------------------------------------------------------------------------

@pytest.mark.parametrize('recipe', recipe_names())
def test_no_layer_of_a_recipe_network_has_its_own_weight_initializer(recipe):
    """The global initializer decides every weight, as in the authors' and GluonCV's networks."""
    config = resolve(load_recipe(recipe))
    net = gluon_resnest.get_model(config['model'], classes=config['classes'],
                                  last_gamma=config['last_gamma'], **config['model_kwargs'])
    weights = {k: p.init for k, p in net._collect_params_with_prefix().items()
               if k.endswith('weight')}
    assert weights and all(init is None for init in weights.values())


def test_training_network_is_kaiming_normal_fan_in():
    """Every convolution and the classifier of a from-scratch resnest50: std sqrt(2 / fan_in),
    zero mean, Gaussian (excess kurtosis 0); biases and beta 0, gamma 1, last gamma 0."""
    config = resolve(load_recipe('resnest50'), 64)
    seed_everything(0)
    net, _ = build_networks(config, mx.cpu())
    checked = 0
    params = net._collect_params_with_prefix()
    for name, param in params.items():
        value = param.data().asnumpy().astype(np.float64)
        if name.endswith('weight') and value.ndim in (2, 4):
            n = value.size
            fan_in = int(np.prod(value.shape[1:]))
            ratio = value.std() / math.sqrt(2.0 / fan_in)
            # Six standard errors of the estimates (seeded: the values are fixed).
            assert abs(ratio - 1) < 6 / math.sqrt(2 * n), (name, value.shape, ratio)
            assert abs(value.mean()) < 6 * value.std() / math.sqrt(n), name
            centred = value - value.mean()
            kurtosis = (centred ** 4).mean() / (centred ** 2).mean() ** 2 - 3
            assert abs(kurtosis) < 6 * math.sqrt(24 / n), (name, kurtosis)
            checked += 1
        elif name.endswith(('bias', 'beta', 'running_mean')):
            assert not value.any(), name
        elif name.endswith('gamma'):
            last = name.endswith('bn3.gamma') and name.startswith('layer')
            np.testing.assert_array_equal(value, 0.0 if last else 1.0, err_msg=name)
    # Every convolution and the classifier.
    assert checked == sum(k.endswith('weight') for k in params) > 80


def test_training_network_initial_weights_are_the_authors_bit_for_bit():
    """From the same seed: our trainer's resnest50 and the authors' resnest50 under their
    script's global initializer hold the same bits in every parameter."""
    config = resolve(load_recipe('resnest50'), 64)
    seed_everything(5)
    ours, _ = build_networks(config, mx.cpu())
    seed_everything(5)
    theirs = authors.resnest50(last_gamma=True)
    theirs.initialize(mx.init.Xavier(**AUTHORS_INIT))
    a, b = _weights(ours), _weights(theirs)
    assert sorted(a) == sorted(b)
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not different


# --- schedules ------------------------------------------------------------------------------

def _authors_schedule(workers: int, batch: int, lr: float, epochs: int, warmup: int,
                      records: int = IMAGENET_TRAIN_IMAGES) -> mx.lr_scheduler.CosineScheduler:
    epoch_size = int(math.ceil(int(records // workers) / batch))
    return mx.lr_scheduler.CosineScheduler(epochs * epoch_size, base_lr=lr * workers,
                                           warmup_steps=warmup * epoch_size,
                                           warmup_begin_lr=0.0)


def test_resnest50_learning_rate_at_every_iteration_is_the_authors():
    """270 epochs at 64 workers x 128 (their README's command): every iteration our trainer
    runs gets the rate their CosineScheduler gives, bit for bit."""
    config = resolve(load_recipe('resnest50'), 64)
    assert config['per_worker_batch_size'] == 128 and config['epochs'] == 270
    assert config['lr'] == 0.05 * 64  # their --lr 0.05, times the workers
    schedule = _authors_schedule(64, 128, 0.05, 270, 5)
    ours_steps = steps_per_epoch(IMAGENET_TRAIN_IMAGES, 64, 128)
    assert (ours_steps, schedule_epoch_size(IMAGENET_TRAIN_IMAGES, 64, 128)) == (156, 157)
    iterations = 270 * ours_steps
    # The optimizer numbers its updates from 1.
    theirs = [schedule(t) for t in range(1, iterations + 1)]
    ours = [iteration_lr(config, IMAGENET_TRAIN_IMAGES, i) for i in range(iterations)]
    different = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    assert not different, (different[:5], ours[different[0]], theirs[different[0]])
    assert theirs[784] == config['lr'] and theirs[783] < config['lr']  # 785 warm-up updates
    assert 3e-4 < ours[-1] < 4e-4  # the authors' schedule stops short of 0


@pytest.mark.parametrize('recipe', [r for r in recipe_names() if r != 'digits'])
def test_every_imagenet_recipe_follows_the_authors_schedule(recipe):
    config = resolve(load_recipe(recipe), 64)
    batch = config['per_worker_batch_size']
    schedule = _authors_schedule(64, batch, config['lr'] / 64, config['epochs'],
                                 int(config['warmup_epochs']))
    iterations = config['epochs'] * steps_per_epoch(IMAGENET_TRAIN_IMAGES, 64, batch)
    for i in range(0, iterations, 7):
        assert iteration_lr(config, IMAGENET_TRAIN_IMAGES, i) == schedule(i + 1), i


def test_dropblock_probability_per_epoch_is_the_authors():
    """Their DropBlockScheduler(net, 0, 0.1, epochs) on their resnest50, every epoch, against
    the probability our trainer sets (same blocks: three per bottleneck of stages 3 and 4)."""
    config = resolve(load_recipe('resnest50'), 64)
    epochs, final = config['epochs'], config['dropblock_prob']
    assert final == 0.1
    theirs = authors.resnest50()
    scheduler = DropBlockScheduler(theirs, 0, 0.1, epochs)
    blocks = []
    theirs.apply(lambda b: blocks.append(b) if isinstance(b, AuthorsDropBlock) else None)
    ours = gluon_resnest.get_model('resnest50', dropblock_prob=final)
    for epoch in range(epochs):
        scheduler(epoch)
        expected = {b.drop_prob for b in blocks}
        assert len(expected) == 1
        ours_prob = dropblock_prob(epoch, epochs, final)
        assert ours_prob == expected.pop(), epoch
    assert set_drop_prob(ours, ours_prob) == len(blocks) == 3 * (6 + 3)
    assert isinstance(ours.layer3[0].dropblock1, DropBlock)


def test_dropblock_draws_the_authors_mask():
    """Their DropBlock draws one mask for the whole batch; the trainer's does too: from the
    same seed, in a hybridized graph, the same mask and the same output (to float rounding)."""
    config = resolve(load_recipe('digits'))
    config['dropblock_prob'] = 0.1
    net, _ = build_networks(config, mx.cpu())
    blocks = []
    net.apply(lambda b: blocks.append(b) if isinstance(b, DropBlock) else None)
    assert len(blocks) == 6 and all(b.shared_mask for b in blocks)

    x = mx.nd.random.normal(shape=(4, 16, 14, 14))
    theirs = AuthorsDropBlock(0.1, 3, 16, 14, 14)
    ours = DropBlock(0.1, 3, shared_mask=True)
    outputs = []
    for block, kwargs in ((theirs, {}), (ours, {'static_alloc': True, 'static_shape': True})):
        block.initialize()
        block.hybridize(**kwargs)
        mx.random.seed(11)
        with mx.autograd.record():
            outputs.append(block(x).asnumpy())
    a, b = outputs
    assert 0.05 < (a == 0).mean() < 0.3
    np.testing.assert_array_equal(a == 0, b == 0)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert all(np.array_equal(b[0] == 0, b[i] == 0) for i in range(1, 4))


# --- training steps -------------------------------------------------------------------------

def _check_steps(results: dict) -> None:
    """What the worker script reports, per rank."""
    for rank, res in results.items():
        # Our initialisation is theirs, bit for bit, in every array.
        assert not res['init_differing'] and len(res['init_identical']) > 100
        # Same learning rate every step: their CosineScheduler on 6-iteration epochs (their
        # count), ours from iteration_lr; warm-up and cosine both inside the 10 steps.
        assert res['our_lr'] == res['authors_lr'] == res['authors_lr_their_model']
        assert res['our_lr'][4] < res['our_lr'][5] > res['our_lr'][6]
        assert res['wd_mult_equal'] and res['wd_mult_zero']
        assert res['weights_moved'] > 0.1
        # The authors' step on our network: the same bits after every step.
        for row in res['ours_vs_authors_step_same_model']:
            assert row['differing_params'] == 0 and row['max_abs_diff'] == 0.0, (rank, row)
            assert row['running_stats_max_abs_diff'] == 0.0, (rank, row)
        # Against their network the forward pass rounds differently (the Split-Attention
        # sums and pools in another order): last-bit differences in a few gradients of the
        # first step, which the next steps carry along.
        for key in ('ours_vs_authors_their_model', 'ours_native_vs_authors_their_model'):
            rows = res[key]
            assert rows[0]['max_abs_diff'] < 1e-6 * max(rows[0]['worst_param_max_abs'], 1e-3)
            assert max(r['max_abs_diff'] for r in rows[:6]) < 1e-6, (rank, key)
            assert max(r['max_abs_diff'] for r in rows) < 1e-2, (rank, key)


def _run(cmd: list[str], out: Path) -> dict:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {json.loads(p.read_text())['rank']: json.loads(p.read_text())
            for p in sorted(out.glob('result-*.json'))}


def test_first_steps_are_the_authors_steps_one_worker(tmp_path):
    results = _run([PY, str(SCRIPT), str(tmp_path)], tmp_path)
    assert sorted(results) == [0]
    _check_steps(results)


@pytest.mark.slow
def test_first_steps_are_the_authors_steps_two_workers(tmp_path):
    """Horovod's gradient averaging over 2 workers, each with its own batches."""
    results = _run([HOROVODRUN, '-np', '2', '-H', 'localhost:2', '--gloo', PY, str(SCRIPT),
                    str(tmp_path)], tmp_path)
    assert sorted(results) == [0, 1]
    _check_steps(results)
    # Both ranks end with the same weights on both sides.
    assert results[0]['final_digest'] == results[1]['final_digest']
