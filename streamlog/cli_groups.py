"""C{streamlog groups list|describe|reset|delete}: consumer groups from the command line.

Each command asks the group's coordinator (found with C{FindCoordinator},
following one C{NOT_COORDINATOR} hint); C{list} asks every node of a cluster
(each lists the groups it coordinates).  A command that only looks
(C{describe}, C{delete} and C{reset --dry-run} of a group that may not exist)
asks any node while the cluster has no offsets topic yet, since
C{FindCoordinator} would create it.  Human output by default, C{--json}
for the answers as the server gave them.
"""

from __future__ import annotations

import argparse
from typing import Any

from streamlog import errors
from streamlog.cli import EXIT_OK, _leaf, emit_json, make_client
from streamlog.client.blocking import BlockingClient
from streamlog.groups.config import OFFSETS_TOPIC


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    groups = sub.add_parser("groups", help="list, describe, reset and delete consumer groups", parents=[common])
    gsub = groups.add_subparsers(dest="groups_command", metavar="{list,describe,reset,delete}", required=True)

    p = gsub.add_parser("list", help="the consumer groups of every node", parents=[common])
    _leaf(p, cmd_groups_list)

    p = gsub.add_parser("describe", help="members, assignment, committed offsets and lag of a group",
                        parents=[common])
    p.add_argument("group")
    _leaf(p, cmd_groups_describe)

    p = gsub.add_parser("reset", help="move a group's committed offsets (the group must have no members)",
                        parents=[common])
    p.add_argument("group")
    p.add_argument("--topic", "-t", required=True)
    p.add_argument("--partitions", "-p", help="comma-separated partitions (default: all)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--to-earliest", action="store_true")
    where.add_argument("--to-latest", action="store_true")
    where.add_argument("--to-offset", type=int, metavar="N")
    where.add_argument("--shift-by", type=int, metavar="N", help="the committed offset plus N (may be negative)")
    where.add_argument("--to-timestamp", type=int, metavar="MS", help="the first offset at or after MS")
    p.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
    _leaf(p, cmd_groups_reset)

    p = gsub.add_parser("delete", help="delete a group's committed offsets (it must have no members)",
                        parents=[common])
    p.add_argument("group")
    _leaf(p, cmd_groups_delete)


def at_coordinator(client: BlockingClient, group: str, method: str, params: dict[str, Any],
                   looks: bool = False) -> Any:
    """C{method} at C{group}'s coordinator (any node for a node alone).  C{looks}: the request
    changes nothing for a group that does not exist, so while there is no offsets topic (no group
    exists) any node answers it, and no C{FindCoordinator} creates the topic."""
    if looks and not _offsets_topic_exists(client):
        return client.call(method, params)
    where = client.call("FindCoordinator", {"group": group})
    address = where.get("coordinator_address")
    for _ in range(2):
        try:
            if address is None:
                return client.call(method, params)
            return client._call_at(client._node(address), method, params)
        except errors.NotCoordinator as e:  # it moved meanwhile: follow the hint once
            address = e.details.get("coordinator_address")
    return client.call(method, params)


def _offsets_topic_exists(client: BlockingClient) -> bool:
    try:
        topics = client.call("Metadata", {"topics": [OFFSETS_TOPIC]})["topics"]
    except errors.MethodNotFound:
        return True  # an old node: ask its coordinator as before
    return any(t.get("topic") == OFFSETS_TOPIC and "partitions" in t for t in topics)


def cmd_groups_list(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        try:
            nodes = [n["address"] for n in client.call("Metadata", {"topics": []})["nodes"] if n.get("address")]
        except errors.MethodNotFound:
            nodes = []
        found: dict[str, dict[str, Any]] = {}
        answers = [client.call("ListGroups", {})] if not nodes else []
        for address in nodes:
            try:
                answers.append(client._call_at(client._node(address), "ListGroups", {}))
            except (errors.ConnectionLost, errors.Timeout):
                continue  # a node down coordinates nothing now
        for answer in answers:
            for g in answer["groups"]:
                found[g["group"]] = g
    groups = [found[name] for name in sorted(found)]
    if args.json:
        emit_json({"groups": groups})
    elif not groups:
        print("no groups")
    else:
        width = max(5, *(len(g["group"]) for g in groups))
        print(f"{'GROUP':<{width}}  {'STATE':<11}  MEMBERS")
        for g in groups:
            print(f"{g['group']:<{width}}  {g['state']:<11}  {g['members']}")
    return EXIT_OK


def _partitions(entries: list[dict[str, Any]]) -> str:
    return " ".join(f"{e['topic']}:{','.join(map(str, e['partitions']))}" for e in entries) or "-"


def cmd_groups_describe(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        result = at_coordinator(client, args.group, "DescribeGroup", {"group": args.group}, looks=True)
    if args.json:
        emit_json(result)
        return EXIT_OK
    print(f"group {result['group']}: {result['state']}, generation {result['generation']}, "
          f"{len(result['members'])} member(s), assignor {result['assignor'] or '-'}")
    for m in result["members"]:
        static = f" (instance {m['group_instance_id']})" if m["group_instance_id"] else ""
        print(f"  member {m['member_id']}{static}: holds {_partitions(m['assignment'])}; "
              f"target {_partitions(m['target'])}")
    print(f"{'TOPIC':<20}  {'PARTITION':>9}  {'COMMITTED':>12}  {'HIGH_WATERMARK':>14}  {'LAG':>8}")
    for o in result["offsets"]:
        def show(value: Any) -> str:
            return "-" if value is None else str(value)
        print(f"{o['topic']:<20}  {o['partition']:>9}  {show(o['offset']):>12}  {show(o['high_watermark']):>14}  "
              f"{show(o['lag']):>8}")
    return EXIT_OK


def cmd_groups_reset(args: argparse.Namespace) -> int:
    to: Any
    if args.to_earliest:
        to = "earliest"
    elif args.to_latest:
        to = "latest"
    elif args.to_offset is not None:
        to = {"offset": args.to_offset}
    elif args.shift_by is not None:
        to = {"shift": args.shift_by}
    else:
        to = {"timestamp": args.to_timestamp}
    params: dict[str, Any] = {"group": args.group, "topic": args.topic, "to": to, "dry_run": args.dry_run}
    if args.partitions:
        try:
            params["partitions"] = [int(p) for p in args.partitions.split(",")]
        except ValueError:
            args._parser.error(f"--partitions {args.partitions!r} is not a comma-separated list of partitions")
    with make_client(args) as client:
        result = at_coordinator(client, args.group, "ResetOffsets", params, looks=args.dry_run)
    if args.json:
        emit_json(result)
        return EXIT_OK
    verb = "would move" if result["dry_run"] else "moved"
    for o in result["offsets"]:
        before = "-" if o["previous"] is None else o["previous"]
        print(f"{verb} {args.group} {o['topic']}/{o['partition']}: {before} -> {o['offset']}")
    return EXIT_OK


def cmd_groups_delete(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        result = at_coordinator(client, args.group, "DeleteGroup", {"group": args.group}, looks=True)
    if args.json:
        emit_json(result)
    else:
        print(f"deleted group {args.group}")
    return EXIT_OK
