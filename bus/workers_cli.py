"""``--workers-group`` and ``--lease-ttl-s``: the flags that make a stage one worker of a group on NATS."""

from __future__ import annotations

import argparse
from typing import Any

from bus.partitions import PARTITIONS, check_group
from common.argtypes import positive_seconds

LEASE_TTL_DEFAULT_S = 10.0  # bus.shards.LEASE_TTL_S, kept here so --help needs no NATS client


def _group(text: str) -> str:
    try:
        return check_group(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ttl(text: str) -> float:
    value = positive_seconds(text)
    if not 1.0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"lease TTL must be 1 to 3600 s, got {text}")
    return value


def add_workers_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers-group",
        type=_group,
        metavar="NAME",
        help=f"nats:// bus only: be one worker of group NAME (start every worker of this stage, on any host, "
        f"with the same NAME): the group's live workers share the {PARTITIONS} device partitions, each "
        f"device always reaching one worker, and a worker that dies hands its partitions to the others",
    )
    parser.add_argument(
        "--lease-ttl-s",
        type=_ttl,
        default=LEASE_TTL_DEFAULT_S,
        metavar="S",
        help=f"with --workers-group: a worker silent for S seconds loses its partitions to the others "
        f"(default {LEASE_TTL_DEFAULT_S:g}; the group's first worker sets it for the group)",
    )


def workers_spec(args: Any, stage: str) -> Any:
    """The :class:`bus.shards.ShardSpec` the flags ask for (None without ``--workers-group``);
    a UserError on a bus that is not NATS."""
    from bus.endpoints import is_nats
    from common.errors import UserError

    if args.workers_group is None:
        return None
    if not is_nats(args.bus):
        raise UserError(f"--workers-group needs a nats:// bus (a worker group shares a NATS stream), not {args.bus}")
    if getattr(args, "consumer", None):
        raise UserError("--workers-group names the consumers itself: leave out --consumer")
    from bus.shards import ShardSpec

    return ShardSpec(stage, args.workers_group, args.lease_ttl_s)
