"""Image folders made locally: scikit-learn's digits (demo) and synthetic photos (benchmark).

Nothing is downloaded: ``load_digits`` ships with scikit-learn and the synthetic images are drawn
with OpenCV from a seed.
"""
from __future__ import annotations

import os
from typing import Dict, Tuple

import cv2
import numpy as np
from PIL import Image

__all__ = ['synthetic_image', 'write_digits_folder', 'write_synthetic_folder']


def write_digits_folder(out_dir: str, size: int = 32, val_fraction: float = 0.2,
                        seed: int = 0) -> Dict[str, int]:
    """Write scikit-learn's 8x8 digits as ``out_dir/{train,val}/<digit>/<n>.png``.

    Images are grey PNGs upscaled to ``size`` (bicubic); the split is stratified and seeded
    (1437 train / 360 val with the defaults), so the output is the same on every run.

    Returns:
        Images written per split.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    index = np.arange(len(images))
    train_idx, val_idx = train_test_split(index, test_size=val_fraction, random_state=seed,
                                          stratify=digits.target)
    counts = {}
    for split, idx in (('train', np.sort(train_idx)), ('val', np.sort(val_idx))):
        for i in idx:
            folder = os.path.join(out_dir, split, str(int(digits.target[i])))
            os.makedirs(folder, exist_ok=True)
            img = Image.fromarray(images[i], 'L').resize((size, size), Image.BICUBIC)
            img.save(os.path.join(folder, f'{int(i):04d}.png'))
        counts[split] = len(idx)
    return counts


def synthetic_image(rng: np.random.Generator, width: int = 500,
                    height: int = 375) -> np.ndarray:
    """A photo-like RGB image: smooth colour field, random shapes, edges and sensor-like noise.

    Its JPEG size and decoding cost are close to an ImageNet photo of the same size (about 100 KB
    at quality 90 for 500x375), unlike a flat or pure-noise image.
    """
    field = rng.random((5, 7, 3), np.float32) * 255.0
    img = cv2.resize(field, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(8, 20))):
        colour = tuple(float(c) for c in rng.random(3) * 255.0)
        kind = rng.integers(3)
        thickness = -1 if rng.random() < 0.6 else int(rng.integers(1, 6))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        if kind == 0:
            axes = (int(rng.integers(10, width // 3)), int(rng.integers(10, height // 3)))
            cv2.ellipse(img, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, colour,
                        thickness, cv2.LINE_AA)
        elif kind == 1:
            pts = rng.integers(-80, 80, (int(rng.integers(3, 7)), 2)) + (cx, cy)
            cv2.fillPoly(img, [pts.astype(np.int32)], colour, cv2.LINE_AA)
        else:
            end = (cx + int(rng.integers(-200, 200)), cy + int(rng.integers(-200, 200)))
            cv2.line(img, (cx, cy), end, colour, int(rng.integers(1, 8)), cv2.LINE_AA)
    shape = (height, width, 3)
    texture = cv2.GaussianBlur(rng.standard_normal(shape, np.float32), (0, 0), 1.0)
    img += 45.0 * texture + 8.0 * rng.standard_normal(shape, np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_synthetic(args: Tuple[str, int, int, Tuple[int, int], int, int]) -> None:
    out_dir, n, num_classes, size, quality, seed = args
    rgb = synthetic_image(np.random.default_rng([seed, n]), *size)
    path = os.path.join(out_dir, f'class_{n % num_classes:03d}', f'{n:06d}.jpg')
    cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])


def write_synthetic_folder(out_dir: str, num_images: int, num_classes: int = 10,
                           size: Tuple[int, int] = (500, 375), quality: int = 90,
                           seed: int = 0, workers: int = 1) -> int:
    """Write ``num_images`` synthetic JPEGs as ``out_dir/class_<k>/<n>.jpg``; returns the count.

    Image ``n`` depends only on ``(seed, n)``, so the folder is the same for any ``workers``.
    """
    for k in range(min(num_classes, num_images)):
        os.makedirs(os.path.join(out_dir, f'class_{k:03d}'), exist_ok=True)
    jobs = [(out_dir, n, num_classes, tuple(size), int(quality), seed) for n in range(num_images)]
    if workers > 1:
        import multiprocessing as mp
        method = 'fork' if 'fork' in mp.get_all_start_methods() else 'spawn'
        with mp.get_context(method).Pool(workers) as pool:
            pool.map(_write_synthetic, jobs, chunksize=16)
    else:
        for job in jobs:
            _write_synthetic(job)
    return num_images
