#!/usr/bin/env python3
"""The public API of the `leasering` library, one item a line, from rustdoc's JSON.

Usage: python3 .ci/public-api.py target/doc/leasering.json > tests/public-api.txt

Lists every item a user's crate can name: modules, types, functions, constants,
re-exports (under the path they are reachable by), public fields, enum variants,
inherent methods, and the traits implemented for each type (auto traits and
blanket impls left out). Signatures are not rendered: the list catches an item
added, removed or renamed by accident; a signature change shows in the diff of
the code itself. `.ci/run` compares it with tests/public-api.txt (issue 20).
"""
import json
import sys

doc = json.load(open(sys.argv[1]))
index = doc["index"]
out = set()


def item(i):
    return index.get(str(i)) or index.get(i)


def kind(it):
    return next(iter(it["inner"]))


def path_name(p):
    # a resolved path: {"path": "Clone", "id": ..., "args": ...}
    return p.get("path") or p.get("name") or "?"


def impls(path, ids):
    for i in ids:
        imp = item(i)
        if imp is None:
            continue
        inner = imp["inner"]["impl"]
        if inner.get("is_synthetic") or inner.get("blanket_impl"):
            continue
        if inner.get("trait"):
            out.add("impl %s for %s" % (path_name(inner["trait"]), path))
            continue
        for m in inner["items"]:
            it = item(m)
            if it and it["visibility"] == "public" and it["name"]:
                out.add("%s %s::%s" % (kind(it), path, it["name"]))


def walk(path, it, seen):
    if it is None or it["id"] in seen:
        return
    seen = seen | {it["id"]}
    k = kind(it)
    inner = it["inner"][k]
    if k == "module":
        out.add("module " + path)
        for c in inner["items"]:
            child = item(c)
            if child is None or child["visibility"] != "public":
                continue
            if kind(child) == "use":
                u = child["inner"]["use"]
                target = item(u["id"]) if u.get("id") is not None else None
                if u.get("is_glob"):
                    if target is not None and kind(target) == "module":
                        for g in target["inner"]["module"]["items"]:
                            gi = item(g)
                            if gi is not None and gi["visibility"] == "public":
                                walk("%s::%s" % (path, gi["name"]), gi, seen)
                    continue
                if target is None:
                    out.add("use %s::%s (external %s)" % (path, u["name"], u["source"]))
                    continue
                walk("%s::%s" % (path, u["name"]), target, seen)
            else:
                walk("%s::%s" % (path, child["name"]), child, seen)
    elif k == "struct":
        out.add("struct " + path)
        sk = inner["kind"]
        fields = sk.get("plain", {}).get("fields", []) if isinstance(sk, dict) else []
        for f in fields:
            fi = item(f)
            if fi and fi["visibility"] == "public":
                out.add("field %s::%s" % (path, fi["name"]))
        impls(path, inner.get("impls", []))
    elif k == "enum":
        out.add("enum " + path)
        for v in inner["variants"]:
            vi = item(v)
            if vi:
                out.add("variant %s::%s" % (path, vi["name"]))
        impls(path, inner.get("impls", []))
    elif k == "trait":
        out.add("trait " + path)
        for m in inner["items"]:
            mi = item(m)
            if mi:
                out.add("%s %s::%s" % (kind(mi), path, mi["name"]))
    else:
        out.add("%s %s" % (k, path))


walk("leasering", item(doc["root"]), frozenset())
for line in sorted(out):
    print(line)
