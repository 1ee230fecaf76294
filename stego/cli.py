"""The `stego` command: one sub-command per job, each defined next to the code it runs."""
import argparse
import logging
import sys

from .errors import StegoError


def _smoke(args) -> int:
    from .smoke import smoke

    result = smoke(steps=args.steps)
    print(f"smoke run: {len(result['losses'])} steps, final loss {result['losses'][-1]:.4f}, "
          f"{result['seconds']:.1f} s (random backbone and labels: the metrics only show the path runs)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stego", description="STEGO unsupervised semantic segmentation suite")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    smoke = sub.add_parser("smoke", help="a few training steps of the core on random inputs (no downloads)")
    smoke.add_argument("--steps", type=int, default=5)
    smoke.set_defaults(func=_smoke)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except StegoError as err:
        print(f"stego: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
