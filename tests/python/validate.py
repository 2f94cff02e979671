"""Validates OCSF events (JSON lines, from a file or stdin) against the OCSF schema.

The JSON Schema of each event's class, with the profiles its metadata names, comes from the
OCSF release the event says it follows (ocsf-json-schema bundles them); jsonschema judges the
event by it. Also checked, as the OCSF docs define them: type_uid, category_uid and a named
activity's caption. Prints a JSON summary (events per class_uid); exits 1 on any invalid event.
"""

import json
import sys
from collections import Counter

from jsonschema import Draft202012Validator, FormatChecker
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

schemas = {}
validators = {}


def validator(version, class_uid, profiles):
    if version not in schemas:
        schemas[version] = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=version))
    key = (version, class_uid, tuple(sorted(profiles)))
    if key not in validators:
        schema = schemas[version]
        name = schema.lookup_class_name_from_uid(class_uid)
        class_schema = schema.get_class_schema(name, list(profiles))
        Draft202012Validator.check_schema(class_schema)
        raw = schema.schema.schema["classes"][name]
        validators[key] = (Draft202012Validator(class_schema, format_checker=FormatChecker()), raw)
    return validators[key]


def problems(event):
    metadata = event.get("metadata", {})
    version, profiles = metadata.get("version"), metadata.get("profiles", [])
    check, raw = validator(version, event["class_uid"], profiles)
    found = [f"{'/'.join(map(str, e.absolute_path)) or '(event)'}: {e.message}" for e in check.iter_errors(event)]
    activity = event.get("activity_id")
    if event.get("type_uid") != event["class_uid"] * 100 + (activity or 0):
        found.append(f"type_uid {event.get('type_uid')} is not class_uid * 100 + activity_id")
    if event.get("category_uid") != raw.get("category_uid", 0):
        found.append(f"category_uid {event.get('category_uid')} is not the class's {raw.get('category_uid')}")
    captions = raw["attributes"]["activity_id"].get("enum", {})
    if activity != 99 and str(activity) in captions and event.get("activity_name") not in (None, captions[str(activity)]["caption"]):
        found.append(f"activity_name {event.get('activity_name')!r} is not {captions[str(activity)]['caption']!r}")
    return found


def main():
    source = open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin
    classes, invalid = Counter(), 0
    for number, line in enumerate(source, 1):
        if not line.strip():
            continue
        event = json.loads(line)
        found = problems(event)
        classes[event["class_uid"]] += 1
        if found:
            invalid += 1
            for problem in found:
                print(f"line {number} (class {event['class_uid']}): {problem}", file=sys.stderr)
    print(json.dumps({"valid": sum(classes.values()) - invalid, "invalid": invalid, "classes": classes}))
    sys.exit(1 if invalid else 0)


main()
