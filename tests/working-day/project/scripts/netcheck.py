"""Checks, in parallel threads, that the package index and the tracker's API answer."""

import os
import sys
import threading
import urllib.error
import urllib.request

INDEX = os.environ["INDEX_URL"]
API = os.environ["API_URL"]


def fetch(url, results):
    try:
        with urllib.request.urlopen(url, timeout=60) as answer:
            results[url] = f"{answer.status} {len(answer.read())} bytes"
    except urllib.error.HTTPError as e:
        results[url] = f"{e.code} {e.reason}"
    except OSError as e:
        results[url] = f"failed: {e}"


def main():
    urls = [INDEX, f"{INDEX}kt-core/", f"{INDEX}kt-tools/", f"{INDEX}no-such-package/"]
    urls += [f"{API}/v1/issues/{n}" for n in range(1, 5)]
    results = {}
    threads = [threading.Thread(target=fetch, args=(url, results)) for url in urls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for url in urls:
        print(url, results[url])
    return 0 if all(not r.startswith("failed") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
