//! The workspace's layout rules (docs/architecture.md), checked on the source itself:
//! - the core depends on neither candle nor egui/eframe/wgpu, the engine on no GUI crate;
//! - no file imports, directly or through others, a file that imports it back (an import
//!   circle), counting `use` declarations and paths written in code (inline test modules left
//!   out);
//! - no source file is over 600 lines, except generated tables.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::common::ROOT;

/// Source files allowed past the line limit: generated data, not code.
const GENERATED: &[&str] = &["crates/engine/src/conditioning/tokenizer/tables.rs"];

/// The most lines a hand-written source file may have.
const MAX_LINES: usize = 600;

/// The workspace's crates: the name code uses for each, and its `src` folder.
const CRATES: &[(&str, &str)] = &[
    ("loopback_core", "crates/core/src"),
    ("loopback_engine", "crates/engine/src"),
    ("loopback_scaler", "src"),
];

#[test]
fn the_core_and_the_engine_keep_to_their_layer() {
    let lock = std::fs::read_to_string(Path::new(ROOT).join("Cargo.lock")).unwrap();
    let graph = lock_graph(&lock);
    let gui = ["egui", "eframe", "wgpu", "rfd", "winit"];
    let core = reachable(&graph, "loopback-core");
    for banned in gui
        .iter()
        .chain(&["candle-core", "candle-nn", "loopback-engine"])
    {
        assert!(!core.contains(*banned), "loopback-core depends on {banned}");
    }
    let engine = reachable(&graph, "loopback-engine");
    assert!(
        engine.contains("candle-core"),
        "the lock file was not read: {engine:?}"
    );
    for banned in gui.iter().chain(&["loopback-scaler"]) {
        assert!(
            !engine.contains(*banned),
            "loopback-engine depends on {banned}"
        );
    }
}

#[test]
fn no_source_file_is_over_the_line_limit() {
    let mut long = Vec::new();
    for (_, src) in CRATES {
        for file in rust_files(&Path::new(ROOT).join(src)) {
            let rel = relative(&file);
            let lines = std::fs::read_to_string(&file).unwrap().lines().count();
            if lines > MAX_LINES && !GENERATED.contains(&rel.as_str()) {
                long.push(format!("{rel}: {lines} lines"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn no_file_imports_itself_through_others() {
    let modules = Modules::scan();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, module) in &modules.files {
        let text = std::fs::read_to_string(Path::new(ROOT).join(file)).unwrap();
        let targets = edges.entry(file.clone()).or_default();
        for path in referenced_paths(&text, module) {
            if let Some(target) = modules.file_of(&path)
                && &target != file
            {
                targets.insert(target);
            }
        }
    }
    // Sanity: the scan sees the engine's imports.
    assert!(
        edges["crates/engine/src/kernels/conv/mod.rs"]
            .contains("crates/engine/src/kernels/compute.rs"),
        "{:?}",
        edges["crates/engine/src/kernels/conv/mod.rs"]
    );
    // Each circle with the imports that close it, to say where to cut.
    let circles: Vec<String> = strongly_connected(&edges)
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|c| {
            let inside: Vec<String> = c
                .iter()
                .flat_map(|a| {
                    edges[a]
                        .iter()
                        .filter(|b| c.contains(b))
                        .map(move |b| format!("  {a} → {b}"))
                })
                .collect();
            format!("{}\n{}", c.join(" ↔ "), inside.join("\n"))
        })
        .collect();
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

/// Every package's direct dependencies, from `Cargo.lock`.
fn lock_graph(lock: &str) -> HashMap<String, Vec<String>> {
    let mut graph: HashMap<String, Vec<String>> = HashMap::new();
    for package in lock.split("[[package]]").skip(1) {
        let name = package
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .map(|n| n.trim_matches('"').to_string())
            .unwrap();
        let deps = package
            .split_once("dependencies = [")
            .map(|(_, rest)| rest.split(']').next().unwrap_or_default())
            .unwrap_or_default()
            .split(',')
            .filter_map(|d| d.trim().trim_matches('"').split(' ').next())
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect();
        graph.entry(name).or_default().extend::<Vec<_>>(deps);
    }
    graph
}

/// Every package reachable from `root` (development dependencies included: the lock file does
/// not tell them apart, which only makes the check stricter).
fn reachable(graph: &HashMap<String, Vec<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![root.to_string()];
    while let Some(name) = stack.pop() {
        for dep in graph.get(&name).into_iter().flatten() {
            if seen.insert(dep.clone()) {
                stack.push(dep.clone());
            }
        }
    }
    seen
}

/// The `.rs` files under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// `path` relative to the workspace root, with `/`.
fn relative(path: &Path) -> String {
    path.strip_prefix(ROOT)
        .unwrap()
        .to_string_lossy()
        .replace('\\', "/")
}

/// Every source file of the workspace with its module path (`crate name, segments…`).
struct Modules {
    files: BTreeMap<String, Vec<String>>,
    by_module: HashMap<Vec<String>, String>,
}

impl Modules {
    fn scan() -> Self {
        let mut files = BTreeMap::new();
        let mut by_module = HashMap::new();
        for (name, src) in CRATES {
            let root = Path::new(ROOT).join(src);
            for file in rust_files(&root) {
                let rel = file.strip_prefix(&root).unwrap().with_extension("");
                let mut module = vec![name.to_string()];
                module.extend(rel.iter().map(|s| s.to_string_lossy().into_owned()));
                if matches!(
                    module.last().map(String::as_str),
                    Some("mod" | "lib" | "main")
                ) {
                    module.pop();
                }
                let rel = relative(&file);
                by_module.insert(module.clone(), rel.clone());
                files.insert(rel, module);
            }
        }
        Modules { files, by_module }
    }

    /// The file holding the longest module prefix of an absolute path.
    fn file_of(&self, path: &[String]) -> Option<String> {
        (1..=path.len())
            .rev()
            .find_map(|n| self.by_module.get(&path[..n]).cloned())
    }
}

/// The absolute paths (`crate name, segments…`) that a file at `module` refers to, in its
/// `use` declarations and in code, comments left out. Inside an inline `mod … {}` (tests),
/// `super` counts from that module.
fn referenced_paths(text: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut inline = 0usize;
    // Inline test modules (`#[cfg(test)] mod tests { … }`) are left out: a test may use what
    // it tests from anywhere without making the code's own imports circular.
    let (mut test_module, mut after_cfg_test) = (false, false);
    let code: String = text
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if line.starts_with("mod ") && line.trim_end().ends_with('{')
                || line.starts_with("pub mod ") && line.trim_end().ends_with('{')
            {
                inline = 1;
                test_module = after_cfg_test;
            } else if line == "}" {
                inline = 0;
                test_module = false;
            }
            if !trimmed.is_empty() {
                after_cfg_test =
                    trimmed.starts_with("#[cfg(test)]") || trimmed.starts_with("#[cfg(all(test");
            }
            let code = if trimmed.starts_with("//") || test_module {
                ""
            } else {
                line.split(" //").next().unwrap_or_default()
            };
            // A marker of the inline depth in front of each line, read back below.
            format!("{inline}\u{1}{code}\n")
        })
        .collect();
    let mut statement = String::new();
    for line in code.lines() {
        let (depth, line) = line.split_once('\u{1}').unwrap();
        let depth: usize = depth.parse().unwrap();
        let trimmed = line.trim_start();
        let starts_use = trimmed.starts_with("use ")
            || trimmed.starts_with("pub use ")
            || trimmed.starts_with("pub(crate) use ")
            || trimmed.starts_with("pub(super) use ");
        if starts_use || !statement.is_empty() {
            statement.push_str(line);
            statement.push(' ');
            if line.contains(';') {
                let body = statement.split_once("use ").unwrap().1;
                let body = body.split(';').next().unwrap();
                for path in expand_use(body.trim()) {
                    out.extend(absolute(&path, module, depth, true));
                }
                statement.clear();
            }
            continue;
        }
        for path in code_paths(line) {
            out.extend(absolute(&path, module, depth, false));
        }
    }
    out
}

/// A `use` tree (`a::b::{c, d::{e, f}}`) as its full paths.
fn expand_use(tree: &str) -> Vec<Vec<String>> {
    // `x as y` → `x@y`, then no whitespace.
    let tree: String = tree
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace(" as ", "@")
        .replace(' ', "");
    let Some(open) = tree.find('{') else {
        let path = tree.split('@').next().unwrap_or_default();
        return vec![path.split("::").map(str::to_string).collect()];
    };
    let prefix: Vec<String> = tree[..open]
        .trim_end_matches("::")
        .split("::")
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut level, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => level += 1,
            '}' => level -= 1,
            ',' if level == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    let mut out = Vec::new();
    for part in parts.into_iter().filter(|p| !p.is_empty()) {
        for rest in expand_use(part) {
            let mut path = prefix.clone();
            path.extend(rest.into_iter().filter(|s| s != "self"));
            out.push(path);
        }
    }
    out
}

/// Paths written in code that start at a crate root or a parent module.
fn code_paths(line: &str) -> Vec<Vec<String>> {
    let starts = [
        "crate::",
        "super::",
        "self::",
        "loopback_core::",
        "loopback_engine::",
        "loopback_scaler::",
    ];
    let bytes = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < line.len() {
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if boundary && line.is_char_boundary(i) && starts.iter().any(|s| line[i..].starts_with(s)) {
            let end = line[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(line.len(), |e| i + e);
            out.push(
                line[i..end]
                    .split("::")
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect(),
            );
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// A path as written in a file at `module` (inside `inline` levels of inline modules) made
/// absolute; `None` for paths into other crates or the standard library. In a `use`
/// declaration (`in_use`), a path that starts with any other name may name a child module
/// (`use clip::ClipText;`): it is taken as relative, and one that names no module of the file's
/// resolves back to the file itself, which is no edge.
fn absolute(
    path: &[String],
    module: &[String],
    inline: usize,
    in_use: bool,
) -> Option<Vec<String>> {
    let first = path.first()?;
    let mut base: Vec<String> = match first.as_str() {
        "crate" => vec![module[0].clone()],
        "loopback_core" | "loopback_engine" | "loopback_scaler" => vec![first.clone()],
        "self" => module.to_vec(),
        "super" => {
            let ups = path.iter().take_while(|s| *s == "super").count();
            let ups = ups.checked_sub(inline)?;
            module[..module.len().checked_sub(ups)?.max(1)].to_vec()
        }
        _ if in_use && inline == 0 => {
            let mut relative = module.to_vec();
            relative.extend(path.iter().cloned());
            return Some(relative);
        }
        _ => return None,
    };
    base.extend(
        path.iter()
            .skip_while(|s| matches!(s.as_str(), "crate" | "self" | "super"))
            .skip(usize::from(first.starts_with("loopback_")))
            .cloned(),
    );
    Some(base)
}

/// Tarjan's strongly connected components of a directed graph.
fn strongly_connected(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: HashMap<&'a str, usize>,
        low: HashMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            component.sort();
            s.out.push(component);
        }
    }
    let mut state = State {
        edges,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.out
}
