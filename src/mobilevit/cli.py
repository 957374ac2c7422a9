"""``mobilevit`` command line: thin commands that call the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence


def _csv_ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _models(patterns: Sequence[str]) -> list[str]:
    """Architecture names from names or shell patterns; an unknown name raises with suggestions."""
    from .registry import get_config, list_models

    names: list[str] = []
    for pattern in patterns or ["*"]:
        if any(ch in pattern for ch in "*?["):
            matched = list_models(pattern)
            if not matched:
                raise ValueError(f"No model matches {pattern!r}. See `mobilevit list`.")
            names += matched
        else:
            get_config(pattern)
            names.append(pattern)
    return list(dict.fromkeys(names))


def _print(rows: list[dict], as_json: bool) -> None:
    from .bench.report import markdown_table

    print(json.dumps(rows, indent=2) if as_json else markdown_table(rows))


def cmd_list(args: argparse.Namespace) -> None:
    from .bench.run import model_table

    _print(model_table(_models(args.models), macs=args.macs, resolution=args.resolution), args.json)


def cmd_bench(args: argparse.Namespace) -> None:
    import torch

    from .bench.run import latency_table

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = latency_table(_models(args.models), args.batch_sizes, args.resolution, args.repeats)
    _print(rows, args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mobilevit", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="the model table: architectures, parameters and MACs")
    p.add_argument("models", nargs="*", help="names or patterns such as 'mobilevitv2_*' (default: all)")
    p.add_argument("--macs", action="store_true", help="also count MACs (takes a few seconds)")
    p.add_argument("--resolution", type=int, default=256, help="input size for the MAC count")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("bench", help="measure CPU latency (fp32, eager) of models on this machine")
    p.add_argument("models", nargs="*", help="names or patterns (default: all)")
    p.add_argument("--batch-sizes", type=_csv_ints, default=[1, 8], help="comma-separated, e.g. 1,8")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--repeats", type=int, default=20, help="timed runs per measurement")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"mobilevit {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
