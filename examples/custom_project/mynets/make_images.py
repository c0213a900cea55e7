"""Write Shapes as an ImageFolder tree of PNGs, so `data=images` can be tried with no network:

    python -m mynets.make_images data/images              # 800 train, 200 val images
    python -m mynets.make_images data/images --train 4000 --val 1000 --image-size 32

gives `<out>/train/<class>/<index>.png` and `<out>/val/<class>/<index>.png`, one folder per
class, the layout torchvision.datasets.ImageFolder reads (its classes are the folder names).
Your own images go in the same layout.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from mynets.data import Shapes


def write_split(dataset: Shapes, root: Path) -> int:
    """Every sample of `dataset` as an 8-bit grey PNG in root/<class name>/; their number."""
    for folder in dataset.classes:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index in range(len(dataset)):
        image, label = dataset[index]
        pixels = (image[0] * 255).round().byte().numpy()
        Image.fromarray(pixels).save(root / dataset.classes[label] / f"{index:05d}.png")
    return len(dataset)


def make_images(out: Path, train: int = 800, val: int = 200, image_size: int = 16) -> None:
    """out/train from Shapes offset 0 and out/val from offset 1: never the same image."""
    for split, size, offset in (("train", train, 0), ("val", val, 1)):
        written = write_split(Shapes(size, offset=offset, image_size=image_size), out / split)
        print(f"{written} images in {out / split}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to write train/ and val/ into")
    parser.add_argument("--train", type=int, default=800, help="train images (800)")
    parser.add_argument("--val", type=int, default=200, help="val images (200)")
    parser.add_argument("--image-size", type=int, default=16, help="side in pixels (16)")
    args = parser.parse_args(argv)
    make_images(args.out, args.train, args.val, args.image_size)


if __name__ == "__main__":
    main()
