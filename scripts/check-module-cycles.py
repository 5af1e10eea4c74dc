#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a circle.

For every crate of the workspace (each folder with a Cargo.toml and a src/ folder, found from
the workspace's `members`), every source file is a module (`src/a/b.rs` and `src/a/b/mod.rs` are
`a::b`; `src/lib.rs` and `src/main.rs` are the crate root). A module *uses* another when its code
names it by path: `crate::a::b::Item`, `super::x`, `self::x`, or a child module `x::Item` that it
declares with `mod x;`. Names the crate root re-exports (`pub use a::b::Item;` in lib.rs) count
as uses of `a::b`. The crate root's own declarations and re-exports are no uses, and neither is
code inside `#[cfg(test)] mod tests { ... }` (a unit test may reach anywhere in its crate).

A cycle is a strongly connected component of more than one module in the graph of uses: a reader
cannot read those modules in any order that meets each one's dependencies first. The check prints
each cycle with one path around it and exits 1; it exits 0 when no crate has one.

Usage: scripts/check-module-cycles.py            check the workspace
       scripts/check-module-cycles.py --self-test  check that a cycle made on purpose is found
"""

import os
import re
import sys
import tempfile

PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
CHILD = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;", re.M)
ROOT_USE = re.compile(r"^\s*pub\s+use\s+([A-Za-z_][A-Za-z0-9_:]*)::(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))\s*;", re.M)
TESTS = re.compile(r"#\[cfg\(test\)\]\s*(?:pub\s+)?mod\s+tests\s*\{")
COMMENT = re.compile(r"//[^\n]*")


def workspace_crates(root):
    """The folders of the workspace's member crates that have a src/ folder."""
    text = open(os.path.join(root, "Cargo.toml")).read()
    members = re.search(r"members\s*=\s*\[([^\]]*)\]", text)
    names = re.findall(r'"([^"]+)"', members.group(1)) if members else []
    return [os.path.join(root, m) for m in names if os.path.isdir(os.path.join(root, m, "src"))]


def module_of(src, path):
    """The module path (a tuple) of a source file below src/."""
    rel = os.path.relpath(path, src)[: -len(".rs")].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel in (["lib"], ["main"]):
        return ()
    return tuple(rel)


def without_tests(text):
    """The text before the unit tests' module, comments dropped."""
    match = TESTS.search(text)
    if match:
        text = text[: match.start()]
    return COMMENT.sub("", text)


def crate_graph(crate):
    """Modules and the uses between them, for one crate."""
    src = os.path.join(crate, "src")
    files = {}
    for folder, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(folder, name)
                if path == os.path.join(src, "main.rs") and os.path.exists(os.path.join(src, "lib.rs")):
                    continue  # a binary beside a library is a crate of its own, using the library by name
                files[module_of(src, path)] = path
    modules = set(files)
    texts = {m: without_tests(open(p).read()) for m, p in files.items()}
    reexports = {}
    for match in ROOT_USE.finditer(texts.get((), "")):
        target = tuple(match.group(1).split("::"))
        for name in (match.group(2) or match.group(3)).split(","):
            name = name.strip().split(" as ")[-1].strip()
            if name:
                reexports[name] = target

    def resolve(parts):
        """The module a path names: its longest prefix that is a module, or a re-export."""
        parts = tuple(parts)
        for end in range(len(parts), 0, -1):
            if parts[:end] in modules:
                return parts[:end]
        if len(parts) == 1 and parts[0] in reexports:
            return resolve(reexports[parts[0]])
        return None

    uses = {m: set() for m in modules}
    for module, text in texts.items():
        if module == ():
            continue
        here = module
        parent = module[:-1]
        for match in PATH.finditer(text):
            head, rest = match.group(1), match.group(2).split("::")[1:]
            if head == "crate":
                target = resolve(rest)
            elif head == "super":
                base = list(parent)
                while rest and rest[0] == "super":
                    base, rest = base[:-1], rest[1:]
                target = resolve(base + rest) or (tuple(base) if tuple(base) in modules else None)
            else:
                target = resolve(list(here) + rest)
            if target is not None and target != module and target != ():
                uses[module].add(target)
        for child in CHILD.findall(text):
            pattern = re.compile(r"(?<![A-Za-z0-9_:])" + re.escape(child) + r"::([A-Za-z_][A-Za-z0-9_]*)")
            for match in pattern.finditer(text):
                target = resolve(list(module) + [child, match.group(1)])
                if target is not None and target != module:
                    uses[module].add(target)
    return uses


def cycles(uses):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(uses[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(uses):
        if v not in index:
            visit(v)
    return found


def path_around(uses, component):
    """One cycle through the component's first module, as a list of modules."""
    members = set(component)
    start = component[0]
    previous = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(uses[v]):
            if w == start:
                path = [v]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return list(reversed(path)) + [start]
            if w in members and w not in previous:
                previous[w] = v
                queue.append(w)
    return component


def name(module):
    return "::".join(module) or "(root)"


def check(root):
    bad = 0
    for crate in workspace_crates(root):
        uses = crate_graph(crate)
        for component in cycles(uses):
            bad += 1
            around = " -> ".join(name(m) for m in path_around(uses, component))
            print(f"{os.path.relpath(crate, root)}: modules in a cycle: {', '.join(name(m) for m in component)}")
            print(f"    for example {around}")
    if bad:
        print(f"check-module-cycles: {bad} cycle(s)")
        return 1
    print("check-module-cycles: no module imports itself through others in any crate")
    return 0


def self_test():
    """A crate whose modules a and b use each other must fail; with the use removed, pass."""
    with tempfile.TemporaryDirectory() as root:
        os.makedirs(os.path.join(root, "c", "src", "b"))
        open(os.path.join(root, "Cargo.toml"), "w").write('[workspace]\nmembers = ["c"]\n')
        open(os.path.join(root, "c", "src", "lib.rs"), "w").write("pub mod a;\npub mod b;\n")
        open(os.path.join(root, "c", "src", "a.rs"), "w").write("pub fn f() { crate::b::g() }\n")
        inner = os.path.join(root, "c", "src", "b", "mod.rs")
        open(inner, "w").write("pub fn g() {}\npub fn h() { super::a::f() }\n")
        if check(root) != 1:
            print("self-test: a cycle made on purpose was not found")
            return 1
        open(inner, "w").write("pub fn g() {}\n#[cfg(test)]\nmod tests { fn t() { super::super::a::f() } }\n")
        if check(root) != 0:
            print("self-test: a crate without a cycle was refused")
            return 1
    print("check-module-cycles: self-test passed (a cycle made on purpose fails the check)")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        sys.exit(self_test())
    sys.exit(check(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")))
