//! The check that the server's top-level modules form no import cycle (`docs/design.md`,
//! "Module map"): `cargo test --lib layering`.
//!
//! It reads `src/` as text: every path through `crate::<module>` (in `use` lines, in grouped
//! `use crate::{a::…, b}` lines, inline in code and in `$crate::` macro paths) from a file
//! under one top-level module to another is an edge. Comments do not count (a doc link is
//! not a dependency), nor does test-only code: an item under `#[cfg(test)]` and a file it
//! brings in with `#[cfg(test)] mod x;` (a unit test may use a helper from anywhere).
//! `lib.rs` and `main.rs` sit above every module and are left out.
//!
//! A text scan rather than `cargo modules dependencies --acyclic`: that tool builds
//! rust-analyzer's crates, which is too heavy for this shared machine's build budget, and a
//! test runs on every `cargo test` without installing anything.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

/// `module -> module it uses -> the files that use it`.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level modules: `src/x.rs` and `src/x/`.
fn top_level_modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src)
        .expect("src/ is readable")
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            if e.path().is_dir() {
                Some(name)
            } else {
                let stem = name.strip_suffix(".rs")?;
                (stem != "lib" && stem != "main").then(|| stem.to_owned())
            }
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("readable").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `text` without comment lines and without the items under `#[cfg(test)]`; the names of the
/// modules such an item declares without a body (`#[cfg(test)] mod tests;`) go to
/// `test_mods`.
fn non_test_code(text: &str, test_mods: &mut Vec<String>) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect();
    let mut out = String::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "#[cfg(test)]" {
            out.push_str(lines[i]);
            out.push('\n');
            i += 1;
            continue;
        }
        // Skip the item: up to its `;` or its matching `}`.
        i += 1;
        let mut depth = 0i32;
        let mut opened = false;
        while i < lines.len() {
            let line = lines[i];
            if !opened
                && depth == 0
                && let Some(decl) = line.trim().strip_suffix(';')
            {
                if let Some(name) = decl.split_whitespace().skip_while(|w| *w != "mod").nth(1) {
                    test_mods.push(name.to_owned());
                }
                i += 1;
                break;
            }
            for c in line.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            i += 1;
            if opened && depth <= 0 {
                break;
            }
        }
    }
    out
}

/// Every top-level module named after `crate::` in `code`.
fn used_modules(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    used_after(code, "crate::", modules)
}

/// Every module of `modules` named right after `prefix` (`crate::`, `super::`,
/// `crate::http::`) in `code`, grouped `use` lines included.
fn used_after(code: &str, prefix: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices(prefix) {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::b, c, d::{e, f}}`: the names at the group's own depth.
            let mut depth = 0;
            let mut start = true;
            for (k, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start && depth == 0 => {
                        used.insert(ident(&group[k..]));
                        start = false;
                    }
                    _ => start = false,
                }
            }
        } else {
            used.insert(ident(rest));
        }
    }
    used.retain(|m| modules.contains(m));
    used
}

fn graph() -> Graph {
    let src = src_dir();
    let modules = top_level_modules(&src);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut test_only: HashSet<PathBuf> = HashSet::new();
    let mut graph = Graph::new();
    // Parents sort before their children (`a/mod.rs` < `a/mod/…`, `a.rs` < `a/…`), so a
    // test-only file is known before it is read.
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|s| s.trim_end_matches(".rs").to_owned())
            .expect("a file name");
        if !modules.contains(&top) || test_only.iter().any(|t| file.starts_with(t)) {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("readable");
        let mut test_mods = Vec::new();
        let code = non_test_code(&text, &mut test_mods);
        let dir = match file.file_name().and_then(|n| n.to_str()) {
            Some("mod.rs") => file.parent().expect("in a folder").to_path_buf(),
            _ if rel.components().count() == 1 => src.join(&top),
            _ => file.with_extension(""),
        };
        for m in test_mods {
            test_only.insert(dir.join(format!("{m}.rs")));
            test_only.insert(dir.join(&m));
        }
        for used in used_modules(&code, &modules) {
            if used != top {
                graph
                    .entry(top.clone())
                    .or_default()
                    .entry(used)
                    .or_default()
                    .insert(rel.display().to_string());
            }
        }
    }
    graph
}

/// A cycle through `graph`, as the modules along it, if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut HashSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_owned());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for next in graph.get(m).into_iter().flat_map(|e| e.keys()) {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = HashSet::new();
    graph
        .keys()
        .find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

#[test]
fn top_level_modules_form_no_cycle() {
    let graph = graph();
    // The scan sees the dependencies it should: a handful known to exist.
    for (from, to) in [
        ("http", "state"),
        ("state", "exchange"),
        ("exchange", "store"),
    ] {
        assert!(
            graph.get(from).is_some_and(|e| e.contains_key(to)),
            "the scan misses {from} -> {to}: {graph:#?}"
        );
    }
    if let Some(cycle) = find_cycle(&graph) {
        let links: Vec<String> = cycle
            .windows(2)
            .map(|w| format!("  {} -> {} (in {:?})", w[0], w[1], graph[&w[0]][&w[1]]))
            .collect();
        panic!(
            "import cycle between top-level modules: {}\n{}",
            cycle.join(" -> "),
            links.join("\n")
        );
    }
}

/// The same graph one level down: the files of `src/http/` (routers, extractors, the
/// OpenAPI document), through `super::x` and `crate::http::x`.
fn http_graph() -> Graph {
    let dir = src_dir().join("http");
    let modules: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("src/http/ is readable")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".rs")?;
            (stem != "mod").then(|| stem.to_owned())
        })
        .collect();
    let mut graph = Graph::new();
    for m in &modules {
        let text = std::fs::read_to_string(dir.join(format!("{m}.rs"))).expect("readable");
        let code = non_test_code(&text, &mut Vec::new());
        let used = used_after(&code, "super::", &modules)
            .into_iter()
            .chain(used_after(&code, "crate::http::", &modules));
        for used in used.filter(|u| u != m) {
            graph
                .entry(m.clone())
                .or_default()
                .entry(used)
                .or_default()
                .insert(format!("http/{m}.rs"));
        }
    }
    graph
}

#[test]
fn http_modules_form_no_cycle() {
    let graph = http_graph();
    assert!(
        graph
            .get("openapi")
            .is_some_and(|e| e.contains_key("admin")),
        "the scan misses openapi -> admin: {graph:#?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle between http modules: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_scan_reads_grouped_uses_and_skips_test_code() {
    let modules: BTreeSet<String> = ["a", "b", "c", "d", "e"].map(String::from).into();
    let mut test_mods = Vec::new();
    let code = non_test_code(
        "use crate::{a::X, b, c::{Y, Z}};\n// crate::d\n#[cfg(test)]\nmod tests {\n    use crate::e;\n}\n#[cfg(test)]\nmod fixtures;\n",
        &mut test_mods,
    );
    assert_eq!(
        used_modules(&code, &modules),
        ["a", "b", "c"].map(String::from).into()
    );
    assert_eq!(test_mods, ["fixtures"]);
    let graph: Graph = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(f, t)| (f.to_owned(), [(t.to_owned(), BTreeSet::new())].into()))
        .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
}
