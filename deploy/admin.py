"""``mailplane-admin``: the operator's commands (DESIGN §4 Accounts).

    mailplane-admin create-account --name NAME [--plan trial|starter|growth|enterprise]
        → {"accountId": "acct_…", "apiKey": "mp_…"}
    mailplane-admin set-plan ACCOUNT_ID PLAN
    mailplane-admin set-state ACCOUNT_ID active|expired
        → {"id", "name", "plan", "state", "createdAt"}

It calls the pods service at ``MAILPLANE_PODS_ADDR`` with the service credential
``MAILPLANE_INTERNAL_TOKEN``; from a checkout running ``make run`` both come from
``.mailplane/settings.env``. Errors print the catalog body on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import grpc
from mailplane.pods.v1 import pods_pb2, pods_pb2_grpc

from deploy import settings as local_settings
from services.chassis.auth import INTERNAL_TOKEN_METADATA
from services.chassis.config import Settings
from services.chassis.rpc import from_rpc_error, open_channel

PLANS = {
    "trial": pods_pb2.PLAN_TRIAL,
    "starter": pods_pb2.PLAN_STARTER,
    "growth": pods_pb2.PLAN_GROWTH,
    "enterprise": pods_pb2.PLAN_ENTERPRISE,
}
STATES = {"active": pods_pb2.ACCOUNT_STATE_ACTIVE, "expired": pods_pb2.ACCOUNT_STATE_EXPIRED}


def account_json(account: pods_pb2.Account) -> dict[str, Any]:
    """The account as the CLI prints it."""
    return {
        "id": account.id,
        "name": account.name,
        "plan": {v: k for k, v in PLANS.items()}[account.plan],
        "state": {v: k for k, v in STATES.items()}[account.state],
        "createdAt": account.create_time.ToJsonString(),
    }


async def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Runs one command against the pods service; returns what to print.

    Raises:
        grpc.aio.AioRpcError: the pods service refused or could not be reached.
    """
    metadata = ((INTERNAL_TOKEN_METADATA, settings.internal_token.get_secret_value()),)
    async with open_channel(settings.pods_addr) as channel:
        accounts = pods_pb2_grpc.AccountServiceStub(channel)
        timeout = settings.peer_deadline_seconds
        if args.command == "create-account":
            created = await accounts.CreateAccount(
                pods_pb2.CreateAccountRequest(name=args.name, plan=PLANS[args.plan]),
                metadata=metadata,
                timeout=timeout,
            )
            return {"accountId": created.account.id, "apiKey": created.api_key}
        if args.command == "set-plan":
            account = await accounts.SetAccountPlan(
                pods_pb2.SetAccountPlanRequest(account_id=args.account_id, plan=PLANS[args.plan]),
                metadata=metadata,
                timeout=timeout,
            )
        else:
            account = await accounts.SetAccountState(
                pods_pb2.SetAccountStateRequest(
                    account_id=args.account_id, state=STATES[args.state]
                ),
                metadata=metadata,
                timeout=timeout,
            )
        return account_json(account)


def parser() -> argparse.ArgumentParser:
    """The command line."""
    root = argparse.ArgumentParser(prog="mailplane-admin", description=__doc__.split("\n")[0])
    commands = root.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create-account", help="create an account and its first key")
    create.add_argument("--name", required=True)
    create.add_argument("--plan", choices=list(PLANS), default="trial")
    plan = commands.add_parser("set-plan", help="change an account's plan")
    plan.add_argument("account_id")
    plan.add_argument("plan", choices=list(PLANS))
    state = commands.add_parser("set-state", help="change an account's state")
    state.add_argument("account_id")
    state.add_argument("state", choices=list(STATES))
    return root


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mailplane-admin`` console script; returns the exit code."""
    args = parser().parse_args(argv)
    try:
        result = asyncio.run(run(args, local_settings.load()))
    except grpc.aio.AioRpcError as exc:
        error = from_rpc_error(exc)
        body = {
            "error": error.code,
            "message": error.message,
            "statusCode": error.entry.http_status,
            "details": error.details,
        }
        sys.stderr.write(json.dumps(body) + "\n")
        return 1
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
