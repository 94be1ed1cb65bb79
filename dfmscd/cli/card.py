"""``dfmscd card``: write a teacher's model card, with mean/std computed from sample images.

The card's ``mean``/``std`` must be those the teacher was trained with (pixels scaled to [0, 1],
then ``(x - mean) / std`` per channel); computing them from a sample of the training images is
the reliable way to get them. With ``--teacher`` the teacher's BatchNorm statistics are
checked against the result (warnings on stderr, never an error).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dfmscd.cli.options import EXIT_OK, PROG, existing_file
from dfmscd.errors import CardError


def add_card_parser(sub: Any) -> None:
    c = sub.add_parser("card", help="write a teacher's model card (mean/std computed from sample images)")
    c.add_argument("--architecture", required=True, help="the teacher's architecture (see 'dfmscd architectures')")
    c.add_argument("--num-classes", required=True, type=int)
    c.add_argument("--images", required=True, type=Path, metavar="DIR_NPZ_or_ARCHIVE",
                   help="sample training images: a folder of .png/.jpg files, an .npz with 'x' (uint8, or float in "
                        "[0, 1]), or a .tar/.tar.gz/.zip of class folders (its train/ folder when it has one)")
    c.add_argument("--image-size", type=int, help="input side; default: the images' (they must then all be square and equal)")
    c.add_argument("--channels", type=int, choices=(1, 3), help="default: 1 if every image is greyscale, else 3")
    c.add_argument("--class-names", help="comma-separated, one per class")
    c.add_argument("--teacher", type=existing_file, help="also check these weights' BatchNorm statistics against the card")
    c.add_argument("--out", type=Path, help="write the card here (default: print it)")
    c.set_defaults(func=run_card)


def run_card(args: argparse.Namespace) -> int:
    from dfmscd.io import parse_card, validate_card
    from dfmscd.normalisation import sample_stats

    stats = sample_stats(args.images, args.channels)
    if args.channels is not None and stats.channels != args.channels:
        raise CardError(f"--channels {args.channels}: the images in {args.images} have {stats.channels} channels")
    side = args.image_size if args.image_size is not None else stats.side
    if side is None:
        raise CardError(f"{args.images}: the images are not all the same square size; give --image-size")
    card_data: dict[str, Any] = {
        "architecture": args.architecture, "num_classes": args.num_classes,
        "input_shape": [stats.channels, side, side], "mean": list(stats.mean), "std": list(stats.std),
    }
    if args.class_names:
        card_data["class_names"] = [n.strip() for n in args.class_names.split(",")]
    card = validate_card(parse_card(card_data))
    text = json.dumps(card_data, indent=1)
    sys.stderr.write(f"{PROG}: mean {list(card.mean)} std {list(card.std)} from {stats.count} images in {args.images}\n")
    if args.teacher is not None:
        from dfmscd.io import load_teacher
        from dfmscd.normalisation import normalisation_warnings

        warnings = normalisation_warnings(load_teacher(args.teacher, card), card)
        for w in warnings:
            sys.stderr.write(f"{PROG}: warning: {w}\n")
        if not warnings:
            sys.stderr.write(f"{PROG}: the teacher's first BatchNorm statistics agree with this mean/std\n")
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
        sys.stderr.write(f"{PROG}: wrote {args.out}\n")
    else:
        print(text)
    return EXIT_OK
