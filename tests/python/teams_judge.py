"""Microsoft's own Teams SDK for Python (microsoft-teams-apps, PyPI) judging the Bot Framework tokens keyturn judges.

Usage: tests/python/.venv/bin/python tests/python/teams_judge.py [tokens|conversations] < input.json
Reads one JSON document on stdin, prints one JSON verdict on stdout and exits 0 (a crash
exits non-zero). Only the standard library and microsoft-teams-apps.

stdin is {"app_id": "...", "openid_metadata": "http://127.0.0.1:PORT/v1/.well-known/openidconfiguration",
"cases": [{"authorization": "Bearer ...", "service_url": "https://..."}, ...]}. Each case is
judged as the SDK's messaging endpoint judges an activity (HttpServer.handle_request): the
Authorization header must start with "Bearer ", and the rest must pass
InboundActivityTokenValidator(app_id, cloud).validate_token(token, serviceUrl), where cloud
is the public cloud (issuer https://api.botframework.com) with its OpenID metadata URL
replaced by "openid_metadata" (from which the SDK takes the keys at .../keys). An absent or
null "service_url" is an activity without serviceUrl. Each case gets a validator of its own,
so no case sees keys another case fetched. Any exception refuses, as handle_request's does.
Prints {"valid": [true, false, ...], "reasons": ["", "Signature has expired", ...]}.

In mode "conversations", stdin is {"conversations": [body, ...]}, the bodies keyturn POSTed
to /v3/conversations, judged against what the SDK sends to create a personal conversation;
prints {"findings": [...]}, empty when every body agrees.
"""

import asyncio
import dataclasses
import json
import sys
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the SDK warns on import of its preview features
    from microsoft_teams.api.auth.cloud_environment import PUBLIC
    from microsoft_teams.api import Account, CreateConversationParams
    from microsoft_teams.apps.auth import InboundActivityTokenValidator


async def judge(cloud, app_id, case):
    authorization = case.get("authorization") or ""
    if not authorization.startswith("Bearer "):
        return False, "missing or malformed Authorization header"
    validator = InboundActivityTokenValidator(app_id, cloud=cloud)
    try:
        await validator.validate_token(authorization.removeprefix("Bearer "), case.get("service_url"))
    except Exception as e:
        return False, f"{type(e).__name__}: {e}"
    return True, ""


async def judge_all(request):
    cloud = dataclasses.replace(PUBLIC, openid_metadata_url=request["openid_metadata"])
    verdicts = [await judge(cloud, request["app_id"], case) for case in request["cases"]]
    return {"valid": [v for v, _ in verdicts], "reasons": [r for _, r in verdicts]}


def judge_conversations(request):
    """Each body keyturn sent to create a personal conversation, against the body the SDK
    itself sends for one (ConversationClient.create of CreateConversationParams, as
    FunctionContext does for a user of a tenant): every field the SDK sends must be there,
    with the SDK's value, and the body must parse as the SDK's parameters."""
    findings = []
    for body in request["conversations"]:
        try:
            parsed = CreateConversationParams.model_validate(body)
            members = parsed.members or []
            if len(members) != 1:
                findings.append(f"not one member: {body}")
                continue
            expected = CreateConversationParams(
                members=[Account(id=members[0].id)], tenant_id=parsed.tenant_id
            ).model_dump(by_alias=True, exclude_none=True)
            if parsed.tenant_id is None:
                findings.append(f"no tenantId: {body}")
            for field, value in expected.items():
                if body.get(field) != value:
                    findings.append(f"{field}: {body.get(field)!r}, the SDK sends {value!r}")
        except Exception as e:
            findings.append(f"{type(e).__name__}: {e}")
    return {"findings": findings}


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "tokens"
    request = json.load(sys.stdin)
    if mode == "conversations":
        print(json.dumps(judge_conversations(request)))
    else:
        print(json.dumps(asyncio.run(judge_all(request))))


if __name__ == "__main__":
    main()
