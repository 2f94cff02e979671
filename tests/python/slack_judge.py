"""Slack's own Python SDK (slack_sdk, PyPI) judging what keyturn sends to and takes from Slack.

Usage: tests/python/.venv/bin/python tests/python/slack_judge.py MODE < input.json
Reads one JSON document on stdin, prints one JSON verdict on stdout and exits 0 (a crash,
or a MODE it does not know, exits non-zero). Only the standard library and slack_sdk.

MODE blocks: stdin is a list of messages, [{"text": "...", "blocks": [...]}, ...]. Each block
is parsed by slack_sdk.models.blocks.Block.parse (None, an unknown type, or an exception is a
finding); every model in it, nested ones too, is checked by the validators its validate_json()
runs (the SDK's copy of Slack's Block Kit limits), each on its own so that every
SlackObjectFormationError is a finding, not only the first; and the block the SDK would
send, to_dict(), must equal the block given: a field the SDK's model does not know (a field
keyturn spelled wrong) is dropped and reported by its JSON pointer. The SDK's own
warning for a message without top-level text (what WebClient warns on chat.postMessage) is a
finding too. Prints {"findings": ["message 0 block 2 (section): ...", ...]}.

MODE views: stdin is a list of modals, as views.open is given them. Each is parsed by
slack_sdk.models.views.View (an exception is a finding), checked by every validator of it and
of every model under it (as for blocks: title, submit and close at most 24 characters, at
most 100 blocks, callback_id at most 255 and private_metadata at most 3000 characters), and
its to_dict() must equal the modal given. Prints {"findings": ["view 0: ...", ...]}.

MODE signatures: stdin is {"secret": "...", "cases": [{"body": "...", "timestamp": "...",
"signature": "...", "now": 1531420618}, ...]}. Each case is judged by
slack_sdk.signature.SignatureVerifier(secret, clock).is_valid(body, timestamp, signature),
the clock fixed at the case's "now" if given, else at its timestamp (so only the signature
is judged; give "now" to judge the SDK's five-minute window too). A timestamp the SDK cannot
read counts as invalid. Prints {"valid": [true, false, ...]}.
"""

import json
import sys
import warnings

from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.basic_objects import JsonObject
from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View
from slack_sdk.signature import Clock, SignatureVerifier
from slack_sdk.web.internal_utils import _warn_if_message_text_content_is_missing


class FixedClock(Clock):
    """The SDK's clock, stopped at one instant."""

    def __init__(self, now):
        self._now = now

    def now(self):
        return self._now


def pointer(path):
    return "/" + "/".join(str(p) for p in path) if path else "(the block)"


def validators(obj):
    """The validators validate_json() runs, one by one: it stops at the first that fails."""
    for name in sorted(dir(obj)):
        if name.startswith("__"):
            continue
        try:
            attribute = getattr(obj, name, None)
        except Exception:  # a property that cannot be read on this object
            continue
        if callable(attribute) and hasattr(attribute, "validator"):
            yield attribute


def validate_tree(obj, path, findings):
    """obj's validate_json() checks, and those of every model under it, each failure with its path."""
    for validate in validators(obj):
        try:
            validate()
        except SlackObjectFormationError as e:
            findings.append(f"{pointer(path)}: {e}")
        except Exception as e:  # a malformed value the SDK's validator could not even read
            findings.append(f"{pointer(path)}: {type(e).__name__}: {e}")
    for key in sorted(obj.attributes):
        value = getattr(obj, key, None)
        if isinstance(value, JsonObject):
            validate_tree(value, path + [key], findings)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if isinstance(item, JsonObject):
                    validate_tree(item, path + [key, i], findings)


def unvalidated_dict(obj):
    """What to_dict() would give, without stopping at the first limit it finds broken."""
    original = JsonObject.validate_json
    JsonObject.validate_json = lambda self: None
    try:
        return obj.to_dict()
    finally:
        JsonObject.validate_json = original


def differences(given, sent, path, findings):
    """Where the SDK's rendering of a block differs from the block keyturn wrote."""
    if isinstance(given, dict) and isinstance(sent, dict):
        for key in given:
            if key not in sent:
                findings.append(f"{pointer(path + [key])}: dropped by slack_sdk (a field its model does not know, or an empty value)")
            else:
                differences(given[key], sent[key], path + [key], findings)
        for key in sent:
            if key not in given:
                findings.append(f"{pointer(path + [key])}: added by slack_sdk ({json.dumps(sent[key])})")
    elif isinstance(given, list) and isinstance(sent, list) and len(given) == len(sent):
        for i, (g, s) in enumerate(zip(given, sent)):
            differences(g, s, path + [i], findings)
    elif given != sent or type(given) is not type(sent):
        findings.append(f"{pointer(path)}: given {json.dumps(given)}, slack_sdk sends {json.dumps(sent)}")


def judge_block(block):
    if not isinstance(block, dict):
        return [f"not a JSON object: {json.dumps(block)}"]
    try:
        parsed = Block.parse(block)
    except Exception as e:
        return [f"Block.parse raised {type(e).__name__}: {e}"]
    if parsed is None:
        return [f"Block.parse knows no block of type {json.dumps(block.get('type'))}"]
    return judge_model(parsed, block)


def judge_model(model, given):
    """What is wrong with model, the SDK's reading of given: every validator of it and of the
    models under it, and every difference between what the SDK would send and given."""
    findings = []
    validate_tree(model, [], findings)
    try:
        sent = unvalidated_dict(model)
    except Exception as e:
        findings.append(f"to_dict raised {type(e).__name__}: {e}")
    else:
        differences(given, sent, [], findings)
    return findings


def judge_blocks(messages):
    findings = []
    for m, message in enumerate(messages):
        blocks = message.get("blocks") or []
        if not isinstance(blocks, list):
            findings.append(f"message {m}: blocks is not a list")
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _warn_if_message_text_content_is_missing("chat.postMessage", dict(message))
        findings.extend(f"message {m}: {w.message}" for w in caught)
        for b, block in enumerate(blocks):
            kind = block.get("type") if isinstance(block, dict) else None
            findings.extend(f"message {m} block {b} ({kind}): {f}" for f in judge_block(block))
    return {"findings": findings}


def judge_views(views):
    findings = []
    for v, given in enumerate(views):
        if not isinstance(given, dict):
            findings.append(f"view {v}: not a JSON object")
            continue
        try:
            view = View(**given)
        except Exception as e:
            findings.append(f"view {v}: View raised {type(e).__name__}: {e}")
            continue
        findings.extend(f"view {v}: {f}" for f in judge_model(view, given))
    return {"findings": findings}


def judge_signatures(request):
    valid = []
    for case in request["cases"]:
        timestamp = case.get("timestamp")
        now = case.get("now")
        if now is None:
            try:
                now = float(timestamp)
            except (TypeError, ValueError):
                now = 0.0
        verifier = SignatureVerifier(request["secret"], clock=FixedClock(float(now)))
        try:
            valid.append(verifier.is_valid(case.get("body"), timestamp, case.get("signature")))
        except ValueError:  # int(timestamp) in the SDK: not a number of seconds
            valid.append(False)
    return {"valid": valid}


MODES = {"blocks": judge_blocks, "views": judge_views, "signatures": judge_signatures}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in MODES:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(MODES)}}} < input.json")
    print(json.dumps(MODES[sys.argv[1]](json.load(sys.stdin))))


if __name__ == "__main__":
    main()
