//! The crate's layers, checked from its sources: every `crate::…`, `super::…`, `self::…`
//! and child-module path of every file under `src/` becomes an edge of a module graph, and
//! the test fails when
//! - a top-level module has no layer in [`LAYERS`] (a new module must be placed),
//! - a module names one of a higher layer (the models naming the pipeline, anything below
//!   naming `diagnostics`, `commands`, `cli`, …),
//! - the top-level modules import each other in a cycle (same layer included), or
//! - the files inside one module do in a cycle that does not go through their `mod.rs`.
//!
//! A `mod.rs` and its own children may name each other (the parent declares and re-exports
//! its children, a child uses a type the parent defines): that is one module's inside, not
//! an import between modules. Any other cycle is reported with its files.
//!
//! The parser is deliberately small: comments, strings and char literals are blanked out,
//! then paths are read from the remaining text (`use` trees with braces expanded).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules by layer, bottom first; lib.rs's header says what each layer is for.
const LAYERS: &[&[&str]] = &[
    &[
        "error", "time", "rng", "progress", "env_vars", "concept", "quality", "asset", "store", "geometry", "device",
        "cuda",
    ],
    &["attention", "conv"],
    &["synth", "hub", "weights"],
    &["stage", "models", "checkpoint"],
    &["procedural", "shape", "pipeline"],
    &["preview", "generation", "stale", "gallery"],
    &["diagnostics"],
    &["cli", "logging", "commands"],
];

/// A source file as a module: its path from the crate root (`mod.rs` and `lib.rs` name
/// their folder's module) and its code with literals blanked.
struct ModFile {
    path: Vec<String>,
    code: String,
}

fn module_files(src: &Path) -> Vec<ModFile> {
    let mut files = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p: PathBuf = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let rel = p.strip_prefix(src).unwrap().with_extension("");
                let mut path: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
                let is_dir = matches!(path.last().map(String::as_str), Some("mod" | "lib"));
                if path == ["main"] {
                    continue; // the binary: it names the library as `lumen::`
                }
                if is_dir {
                    path.pop();
                }
                files.push(ModFile { path, code: blank_literals(&std::fs::read_to_string(&p).unwrap()) });
            }
        }
    }
    files
}

/// The code with comments, string and char literals replaced by spaces.
fn blank_literals(s: &str) -> String {
    let c: Vec<char> = s.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or(' ');
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < c.len() {
        if c[i] == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c[i] == 'r' && !is_ident(at(i.wrapping_sub(1))) && (at(i + 1) == '"' || at(i + 1) == '#') {
            // A raw string r"…" / r#"…"#.
            let hashes = (i + 1..).take_while(|&k| at(k) == '#').count();
            if at(i + 1 + hashes) != '"' {
                out.push(c[i]);
                i += 1;
                continue;
            }
            i += 2 + hashes;
            while i < c.len() && !(c[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#')) {
                i += 1;
            }
            i += 1 + hashes;
            out.push_str("\"\"");
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c[i] == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
            // A char literal ('x', '\n', '\u{..}'); a lifetime ('a) has no closing quote.
            i += 1;
            while i < c.len() && c[i] != '\'' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn is_ident(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || ch == '_'
}

/// Every path that starts at `start` (just after `head::`), `use` trees expanded.
fn paths_after(code: &[char], mut i: usize) -> Vec<Vec<String>> {
    let skip_ws = |i: &mut usize| {
        while *i < code.len() && code[*i].is_whitespace() {
            *i += 1;
        }
    };
    skip_ws(&mut i);
    if code.get(i) == Some(&'{') {
        let mut out = Vec::new();
        i += 1;
        loop {
            skip_ws(&mut i);
            match code.get(i) {
                None => return out,
                Some('}') => return out,
                Some(',') => i += 1,
                _ => {
                    out.extend(paths_after(code, i));
                    // Skip this item: to the next `,` or `}` at this depth.
                    let mut depth = 0;
                    while i < code.len() {
                        match code[i] {
                            '{' => depth += 1,
                            '}' if depth == 0 => break,
                            '}' => depth -= 1,
                            ',' if depth == 0 => break,
                            _ => {}
                        }
                        i += 1;
                    }
                }
            }
        }
    }
    let start = i;
    while i < code.len() && is_ident(code[i]) {
        i += 1;
    }
    if i == start {
        return vec![Vec::new()];
    }
    let seg: String = code[start..i].iter().collect();
    if code.get(i) == Some(&':') && code.get(i + 1) == Some(&':') {
        let mut tails = paths_after(code, i + 2);
        for t in &mut tails {
            t.insert(0, seg.clone());
        }
        tails
    } else {
        vec![vec![seg]]
    }
}

/// Every module `f` names, as full paths from the crate root (unresolved).
fn named_paths(f: &ModFile) -> Vec<Vec<String>> {
    let code: Vec<char> = f.code.chars().collect();
    let children: BTreeSet<String> = f
        .code
        .split(';')
        .filter_map(|stmt| {
            let words: Vec<&str> = stmt.split_whitespace().collect();
            let at = words.iter().rposition(|w| *w == "mod")?;
            (at + 2 == words.len()).then(|| words[at + 1].to_string())
        })
        .collect();
    let module_of_self = f.path.clone();
    let parent: Vec<String> = f.path[..f.path.len().saturating_sub(1)].to_vec();
    let mut out = Vec::new();
    let mut i = 0;
    while i < code.len() {
        if !is_ident(code[i]) || (i > 0 && (is_ident(code[i - 1]) || code[i - 1] == ':')) {
            i += 1;
            continue;
        }
        let start = i;
        while i < code.len() && is_ident(code[i]) {
            i += 1;
        }
        if !(code.get(i) == Some(&':') && code.get(i + 1) == Some(&':')) {
            continue;
        }
        let head: String = code[start..i].iter().collect();
        let base = match head.as_str() {
            "crate" => Vec::new(),
            "super" => parent.clone(),
            "self" => module_of_self.clone(),
            child if children.contains(child) => {
                let mut p = module_of_self.clone();
                p.push(child.to_string());
                p
            }
            _ => continue,
        };
        for tail in paths_after(&code, i + 2) {
            let mut p = base.clone();
            p.extend(tail);
            out.push(p);
        }
    }
    out
}

/// The file-level module graph: module path → the modules it names (itself left out).
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = module_files(&src);
    let known: BTreeSet<Vec<String>> = files.iter().map(|f| f.path.clone()).collect();
    let mut graph = BTreeMap::new();
    for f in &files {
        if f.path.is_empty() {
            continue; // lib.rs only declares the top-level modules
        }
        let mut to = BTreeSet::new();
        for p in named_paths(f) {
            // The longest prefix that is a module file.
            if let Some(m) = (1..=p.len()).rev().map(|n| p[..n].to_vec()).find(|m| known.contains(m)) {
                if m != f.path {
                    to.insert(m.join("::"));
                }
            }
        }
        graph.insert(f.path.join("::"), to);
    }
    graph
}

fn top(m: &str) -> &str {
    m.split("::").next().unwrap()
}

fn layer_of(m: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top(m)))
}

/// A cycle in `graph`, if there is one (depth-first search with colours).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|s| s == m).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn every_module_has_a_layer_and_names_only_its_own_or_lower_ones() {
    let graph = module_graph();
    assert!(graph.len() > 40, "the parser found only {} modules", graph.len());
    let unplaced: BTreeSet<&str> = graph.keys().map(|m| top(m)).filter(|t| layer_of(t).is_none()).collect();
    assert!(unplaced.is_empty(), "modules without a layer (add them to LAYERS and lib.rs): {unplaced:?}");
    let upward: Vec<String> = graph
        .iter()
        .flat_map(|(from, tos)| tos.iter().map(move |to| (from, to)))
        .filter(|(from, to)| layer_of(to) > layer_of(from))
        .map(|(from, to)| format!("{from} → {to}"))
        .collect();
    assert!(upward.is_empty(), "imports from a lower layer into a higher one:\n  {}", upward.join("\n  "));
}

#[test]
fn top_level_modules_import_each_other_without_a_cycle() {
    let mut tops: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in module_graph() {
        let entry = tops.entry(top(&from).to_string()).or_default();
        entry.extend(tos.iter().map(|t| top(t).to_string()).filter(|t| t != top(&from)));
    }
    assert!(tops.contains_key("models") && tops["commands"].contains("generation"), "the parser lost edges: {tops:?}");
    if let Some(cycle) = find_cycle(&tops) {
        panic!("import cycle between top-level modules: {}", cycle.join(" → "));
    }
}

#[test]
fn files_inside_a_module_import_each_other_without_a_cycle_outside_their_mod_rs() {
    let graph = module_graph();
    // Parent ↔ child edges out: what remains must be acyclic.
    let is_parent_child =
        |a: &str, b: &str| b.strip_prefix(a).is_some_and(|r| r.starts_with("::") && !r[2..].contains("::"));
    let siblings: BTreeMap<String, BTreeSet<String>> = graph
        .iter()
        .map(|(from, tos)| {
            let kept =
                tos.iter().filter(|to| !is_parent_child(from, to) && !is_parent_child(to, from)).cloned().collect();
            (from.clone(), kept)
        })
        .collect();
    if let Some(cycle) = find_cycle(&siblings) {
        panic!("import cycle between files: {}", cycle.join(" → "));
    }
}

/// The parser itself: a `use` tree, `super::`, a child module, and text it must ignore.
#[test]
fn the_parser_reads_use_trees_relative_paths_and_skips_literals() {
    let code = r#"
        mod child;
        use crate::{a::{b, c::D}, e};
        use super::sibling::Thing;
        // crate::in_a_comment
        let s = "crate::in_a_string"; let c = '"'; fn f<'a>(x: &'a str) {}
        child::go(); self::inner::x(); crate::z::y();
    "#;
    let f = ModFile { path: vec!["m".into(), "n".into()], code: blank_literals(code) };
    let mut got: Vec<String> = named_paths(&f).iter().map(|p| p.join("::")).collect();
    got.sort();
    let mut want = vec!["a::b", "a::c::D", "e", "m::sibling::Thing", "m::n::child::go", "m::n::inner::x", "z::y"];
    want.sort();
    assert_eq!(got, want);
}
