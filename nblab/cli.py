"""The `nblab` command line."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nblab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="the main job: formats and presets on N(0,1)")
    demo.add_argument("--size", type=int, default=1024, help="N of the NxN test tensor")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "demo":
        from nblab import demo as demo_module

        demo_module.main(size=args.size, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
