//! The rules of docs/ARCHITECTURE.md that the compiler does not enforce, checked on the
//! sources: the core and the engine below it never reach up into the HTTP adapters, the models
//! never reach into the scheduler, the app and the admin API's crate link no MLX, and the
//! engine's top-level modules import one another without cycles.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir` (or `dir` itself when it is a file).
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    if dir.is_file() {
        return vec![dir.to_path_buf()];
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// A file's code without its unit tests and comments.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a file names through `crate::` (`crate::a::b`, `crate::{a, b}`).
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let names: Vec<&str> = match rest.strip_prefix('{') {
            Some(group) => group
                .split('}')
                .next()
                .unwrap_or("")
                .split(',')
                .map(|s| s.trim())
                .collect(),
            None => vec![rest],
        };
        for name in names {
            let name: String = name
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                refs.insert(name);
            }
        }
    }
    refs
}

/// Each top-level module of the engine and the modules it imports.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(src()).unwrap().flatten() {
        let path = entry.path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let mut refs: BTreeSet<String> = rust_files(&path)
            .iter()
            .flat_map(|f| crate_refs(&code_of(f)))
            .collect();
        refs.remove(&name);
        graph.insert(name, refs);
    }
    graph
}

#[test]
fn the_engine_below_the_backend_never_imports_the_adapters() {
    let graph = module_graph();
    let adapters = ["server", "admin"];
    for (module, refs) in &graph {
        if adapters.contains(&module.as_str()) {
            continue;
        }
        for adapter in adapters {
            assert!(
                !refs.contains(adapter),
                "{module} imports {adapter}: the HTTP layer sits on top of the core, never under it"
            );
        }
    }
}

#[test]
fn models_never_import_the_scheduler() {
    let refs = &module_graph()["model"];
    for above in ["scheduler", "registry", "server", "admin"] {
        assert!(
            !refs.contains(above),
            "model imports {above}: a model computes a step, the scheduler decides which"
        );
    }
}

#[test]
fn the_engine_modules_import_each_other_without_cycles() {
    let graph = module_graph();
    // Depth-first search; a module met again while still on the path closes a cycle.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if let Some(at) = path.iter().position(|p| *p == m) {
            panic!("import cycle: {} -> {m}", path[at..].join(" -> "));
        }
        if !done.insert(m) {
            return;
        }
        path.push(m);
        for next in graph.get(m).into_iter().flatten() {
            if graph.contains_key(next) {
                visit(next, graph, path, done);
            }
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_app_and_the_admin_api_crate_link_no_mlx() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for manifest in ["src-tauri/Cargo.toml", "api/Cargo.toml"] {
        let text = std::fs::read_to_string(root.join(manifest)).unwrap();
        for dependency in ["mlx", "wuwei-engine"] {
            assert!(
                !text.contains(dependency),
                "{manifest} depends on {dependency}: the app is a client of the admin API only"
            );
        }
    }
}
