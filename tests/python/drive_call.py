"""Drives a call through initiate -> accept -> end with a client generated from Ringline's
OpenAPI document by openapi-python-client, and checks what each step returns.

Run by tests/tests/openapi.rs, which generates the client, starts the server and passes:
GENERATED_CLIENT (the directory holding the ringline_client package), RINGLINE_URL,
CALLER_TOKEN, RECEIVER_TOKEN, RECEIVER_ID. Exits non-zero on the first failed check.
"""

import inspect
import os
import sys

sys.path.insert(0, os.environ["GENERATED_CLIENT"])

from ringline_client import AuthenticatedClient  # noqa: E402
from ringline_client.api.calls import (  # noqa: E402
    calls_accept,
    calls_end,
    calls_get,
    calls_initiate,
    calls_list,
    turn_ice_servers,
)
from ringline_client.models import CallJson, CallPage, CallStatusJson, CallTypeJson, ErrorBody, InitiateBody  # noqa: E402


def check(condition, message):
    if not condition:
        print(f"FAILED: {message}", file=sys.stderr)
        sys.exit(1)


base = os.environ["RINGLINE_URL"]
caller = AuthenticatedClient(base_url=base, token=os.environ["CALLER_TOKEN"], raise_on_unexpected_status=True)
receiver = AuthenticatedClient(base_url=base, token=os.environ["RECEIVER_TOKEN"], raise_on_unexpected_status=True)
receiver_id = os.environ["RECEIVER_ID"]

# The generated types are the strict ones: receiver_id is required (a keyword without a
# default), call_type is an enum, and path ids are integers.
try:
    InitiateBody()
    check(False, "InitiateBody without receiver_id was allowed")
except TypeError:
    pass
id_type = inspect.signature(calls_accept.sync_detailed).parameters["id"].annotation
check(id_type in (int, "int"), f"path ids are typed {id_type!r}")
created = calls_initiate.sync_detailed(
    client=caller, body=InitiateBody(receiver_id=receiver_id, call_type=CallTypeJson.VIDEO)
)
check(created.status_code == 201, f"initiate answered {created.status_code}: {created.content!r}")
call = created.parsed
check(isinstance(call, CallJson), f"initiate parsed as {type(call)}")
check(call.status == CallStatusJson.RINGING, f"status {call.status}")
check(call.receiver.id == receiver_id, f"receiver {call.receiver.id}")
check(call.call_type == CallTypeJson.VIDEO, f"call_type {call.call_type}")
check(isinstance(call.id, int), f"id {call.id!r}")
call_id = call.id

denied = calls_accept.sync_detailed(call_id, client=caller)
check(denied.status_code == 403, f"the caller accepting answered {denied.status_code}")
check(isinstance(denied.parsed, ErrorBody) and denied.parsed.code == "receiver_only", f"{denied.parsed}")

accepted = calls_accept.sync(call_id, client=receiver)
check(isinstance(accepted, CallJson) and accepted.status == CallStatusJson.ACTIVE, f"accept gave {accepted}")
check(accepted.answered_at is not None, "answered_at is set")

ended = calls_end.sync(call_id, client=caller)
check(isinstance(ended, CallJson) and ended.status == CallStatusJson.ENDED, f"end gave {ended}")
check(isinstance(ended.duration_seconds, int), f"duration {ended.duration_seconds!r}")

fetched = calls_get.sync(call_id, client=receiver)
check(isinstance(fetched, CallJson) and fetched.status == CallStatusJson.ENDED, f"get gave {fetched}")

page = calls_list.sync(client=receiver)
check(isinstance(page, CallPage) and page.count == 1 and page.results[0].id == call.id, f"list gave {page}")
check(page.next_ is None and page.previous is None, "one page")  # `next` is a builtin: the generator names it next_

servers = turn_ice_servers.sync(client=caller)
check(servers is not None and isinstance(servers.ice_servers, list), f"ice servers gave {servers}")

print("generated client drove the call: initiate -> accept -> end")
