#!/usr/bin/env python3
"""The crate's module dependency graph, read from the source; fails on a cycle.

Usage: python3 tests/modules.py [--quiet]

Reads every src/**/*.rs (the library crate, and src/main.rs as the node `main`), and prints:

- `edges`: one `from -> to` per line, for every module that names another one;
- `layers`: the modules grouped by height, top-down (layer 0 names no other module; a module's
  layer is one above the highest it names), strongly connected components shown together;
- `cycles` and `rules`: what is wrong, if anything.

Exit status 1 if there is a cycle (a strongly connected component of more than one module) or
a rule below is broken, 0 otherwise. Dependency-free (Python 3 standard library).

Granularity: one node per source file. `src/a/b.rs` is the module `a::b`, `src/a/mod.rs` the
module `a`, `src/lib.rs` the crate root `crate`. A directory module is therefore its files, not
one node: `auth/mod.rs` and `auth/entra.rs` are two modules, and an import between a `mod.rs`
and one of its children in both directions is a cycle like any other (a parent may re-export
its children; a child names its siblings directly, never its parent).

What counts as naming a module: a `use` declaration or any path in code that starts with
`crate::`, `super::`, `self::`, a child module declared with `mod`, or (in main.rs)
`azure_queue_sidecar::`. A path is resolved to the longest module prefix; when the next
segment is a name that module re-exports (`pub use` / `pub(crate) use`), the edge goes to the
module that defines it. Comments, string literals and `#[cfg(test)]` items are left out: unit
tests may reach across layers (e.g. through the configuration), the shipped code may not.
"""

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
CRATE_NAME = "azure_queue_sidecar"

# Modules (by prefix) that may name only the modules listed: the bottom of the house. The
# configuration is read before anything runs and telemetry is emitted from everywhere, so
# neither may depend on a domain module (issue 12).
RULES = {
    "config": ("config", "redact"),
    "telemetry": ("telemetry",),
}


def strip(text):
    """The source with comments and string/char literals blanked out (lengths kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 260]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            end = n if end < 0 else end + 1 + len(hashes)
            out.append(re.sub(r"[^\n]", " ", text[i:end]))
            i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(re.sub(r"[^\n]", " ", text[i:j + 1]))
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{1F600}'), or a lifetime ('a) which is kept.
            m = re.match(r"'(\\(u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'])'", text[i:])
            if m:
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def drop_test_items(code):
    """`code` without the items under `#[cfg(test)]`."""
    while True:
        m = re.search(r"#\[cfg\(test\)\]", code)
        if not m:
            return code
        i = m.end()
        depth = 0
        while i < len(code):
            ch = code[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    i += 1
                    break
            elif ch == ";" and depth == 0:
                i += 1
                break
            i += 1
        code = code[:m.start()] + re.sub(r"[^\n]", " ", code[m.start():i]) + code[i:]


def module_name(path):
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts == ["lib"]:
        return "crate"
    if parts == ["main"]:
        return "main"
    if parts[-1] == "mod":
        parts = parts[:-1]
    return "::".join(parts)


def segments(name):
    return [] if name == "crate" else name.split("::")


def expand_use(tree, prefix=()):
    """The paths of a use tree: `a::{b, c::{d as e}}` -> [a::b, a::c::d] (with the names they
    bind)."""
    tree = tree.strip()
    paths = []
    # Split the top level on commas outside braces.
    if tree.startswith("{") and tree.endswith("}"):
        depth, start = 0, 1
        inner = tree[1:-1]
        parts, depth, start = [], 0, 0
        for i, ch in enumerate(inner):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(inner[start:i])
                start = i + 1
        parts.append(inner[start:])
        for part in parts:
            if part.strip():
                paths.extend(expand_use(part, prefix))
        return paths
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)\s*::\s*(.*)$", tree, re.S)
    if m:
        return expand_use(m.group(2), prefix + (m.group(1),))
    m = re.match(r"(\*|[A-Za-z_][A-Za-z0-9_]*)(\s+as\s+([A-Za-z_][A-Za-z0-9_]*))?$", tree, re.S)
    if not m:
        return paths
    last = m.group(1)
    if last == "self":
        return [(prefix, prefix[-1] if prefix else None)]
    bound = m.group(3) or (None if last == "*" else last)
    return [(prefix + (last,), bound)]


class Crate:
    def __init__(self):
        self.files = {}
        test_only = set()
        for path in sorted(SRC.rglob("*.rs")):
            if path == SRC / "build.rs":
                continue  # the build script (Cargo.toml `build`), not a module of the crate
            name, code = module_name(path), strip(path.read_text())
            # `#[cfg(test)] mod tests;`: the child file is test code, left out like the rest.
            for child in re.findall(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;", code):
                test_only.add(child if name in ("crate", "main") else f"{name}::{child}")
            self.files[name] = drop_test_items(code)
        for name in test_only:
            self.files.pop(name, None)
        self.modules = set(self.files)
        self.children = {m: set() for m in self.modules}
        for m, code in self.files.items():
            for child in re.findall(r"\bmod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;", code):
                full = child if m in ("crate", "main") else f"{m}::{child}"
                if full in self.modules:
                    self.children[m].add(child)
        self.uses = {m: self._uses(m) for m in self.modules}
        self.reexports = {m: {} for m in self.modules}
        for m, uses in self.uses.items():
            for absolute, bound, public in uses:
                if public and bound and bound != "*":
                    self.reexports[m][bound] = absolute

    def absolute(self, module, path):
        """`path` (segments) as written in `module`, from the crate root; None if external."""
        if not path:
            return None
        head = path[0]
        here = [] if module == "main" else segments(module)
        if head == "crate":
            return list(path[1:])
        if head == CRATE_NAME:
            return list(path[1:]) if module == "main" else None
        if head == "self":
            return here + list(path[1:])
        if head == "super":
            base, rest = list(here), list(path)
            while rest and rest[0] == "super":
                base, rest = base[:-1], rest[1:]
            return base + rest
        if head in self.children.get(module, ()):
            return here + list(path)
        return None

    def _uses(self, module):
        found = []
        for m in re.finditer(r"(\bpub(\s*\([^)]*\))?\s+)?\buse\s+([^;]*);", self.files[module]):
            public = m.group(1) is not None
            for path, bound in expand_use(m.group(3)):
                absolute = self.absolute(module, list(path))
                if absolute is not None:
                    found.append((absolute, bound, public))
        return found

    def resolve(self, path, depth=0):
        """The module that defines what `path` (from the root) names."""
        for cut in range(len(path), -1, -1):
            name = "::".join(path[:cut]) or "crate"
            if name in self.modules and name != "main":
                rest = path[cut:]
                if rest and depth < 8 and rest[0] in self.reexports[name]:
                    target = self.reexports[name][rest[0]]
                    return self.resolve(list(target) + rest[1:], depth + 1)
                return name
        return None

    def edges(self):
        edges = set()
        for module, code in self.files.items():
            paths = [absolute for absolute, _, _ in self.uses[module]]
            starts = {"crate", "super", "self"} | set(self.children[module])
            if module == "main":
                starts.add(CRATE_NAME)
            pattern = r"(?<![A-Za-z0-9_:])((?:%s)(?:\s*::\s*[A-Za-z_][A-Za-z0-9_]*)+)" % "|".join(
                re.escape(s) for s in sorted(starts)
            )
            for m in re.finditer(pattern, code):
                raw = [s.strip() for s in m.group(1).split("::")]
                absolute = self.absolute(module, raw)
                if absolute is not None:
                    paths.append(absolute)
            for path in paths:
                target = self.resolve(path)
                if target and target != module:
                    edges.add((module, target))
        return edges


def components(nodes, edges):
    """Tarjan's strongly connected components."""
    graph = {n: sorted(t for f, t in edges if f == n) for n in nodes}
    index, low, stack, on_stack, result = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
            result.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return result


def layers(nodes, edges, sccs):
    of = {n: i for i, c in enumerate(sccs) for n in c}
    deps = {i: set() for i in range(len(sccs))}
    for f, t in edges:
        if of[f] != of[t]:
            deps[of[f]].add(of[t])
    height = {}

    def h(i):
        if i not in height:
            height[i] = 0
            height[i] = 1 + max((h(d) for d in deps[i]), default=-1)
        return height[i]

    by_layer = {}
    for i, component in enumerate(sccs):
        label = component[0] if len(component) == 1 else "{" + ", ".join(component) + "}"
        by_layer.setdefault(h(i), []).append(label)
    return by_layer


def rule_breaks(edges):
    breaks = []
    for source, target in sorted(edges):
        for prefix, allowed in RULES.items():
            in_scope = source == prefix or source.startswith(prefix + "::")
            permitted = any(target == a or target.startswith(a + "::") for a in allowed)
            if in_scope and not permitted:
                breaks.append(f"{source} -> {target}: {prefix} may name only {', '.join(allowed)}")
    return breaks


def main():
    quiet = "--quiet" in sys.argv[1:]
    crate = Crate()
    edges = crate.edges()
    sccs = components(crate.modules, edges)
    cycles = [c for c in sccs if len(c) > 1]
    breaks = rule_breaks(edges)
    if not quiet:
        print(f"modules: {len(crate.modules)}, edges: {len(edges)}")
        print("edges:")
        for f, t in sorted(edges):
            print(f"  {f} -> {t}")
        print("layers (top-down; 0 names no other module):")
        by_layer = layers(crate.modules, edges, sccs)
        for level in sorted(by_layer, reverse=True):
            print(f"  {level}: {', '.join(sorted(by_layer[level]))}")
    if cycles:
        print(f"cycles: {len(cycles)}")
        for c in cycles:
            inside = sorted((f, t) for f, t in edges if f in c and t in c)
            print(f"  {len(c)} modules: {', '.join(c)}")
            for f, t in inside:
                print(f"    {f} -> {t}")
    else:
        print("cycles: none")
    if breaks:
        print(f"rules broken: {len(breaks)}")
        for b in breaks:
            print(f"  {b}")
    else:
        print("rules: kept (" + "; ".join(f"{p} names only {', '.join(a)}" for p, a in RULES.items()) + ")")
    return 1 if cycles or breaks else 0


if __name__ == "__main__":
    sys.exit(main())
