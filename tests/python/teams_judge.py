"""Microsoft's own Teams SDK for Python (microsoft-teams-apps, PyPI) judging the Bot Framework tokens keyturn judges.

Usage: tests/python/.venv/bin/python tests/python/teams_judge.py < input.json
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
"""

import asyncio
import dataclasses
import json
import sys
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the SDK warns on import of its preview features
    from microsoft_teams.api.auth.cloud_environment import PUBLIC
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


def main():
    print(json.dumps(asyncio.run(judge_all(json.load(sys.stdin)))))


if __name__ == "__main__":
    main()
