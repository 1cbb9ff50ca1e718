use super::*;

/// Circles other branches are breaking in this phase; each line goes when its
/// branch lands (the test fails on a line whose circle is gone, so the list stays true).
const ALLOWED: [&str; 0] = [];

#[test]
fn no_module_cycles_in_the_workspace() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    let found = workspace_cycles(root).expect("reading the workspace");
    let new: Vec<&str> = found
        .iter()
        .map(String::as_str)
        .filter(|c| !ALLOWED.contains(c))
        .collect();
    let gone: Vec<&str> = ALLOWED
        .into_iter()
        .filter(|a| !found.iter().any(|c| c == a))
        .collect();
    let mut report = String::new();
    if !new.is_empty() {
        report += "module import circles (break each: move what both sides need to one \
                       side, or to a module below both):\n  ";
        report += &new.join("\n  ");
    }
    if !gone.is_empty() {
        report += "\nallowed circles that no longer exist (remove them from ALLOWED):\n  ";
        report += &gone.join("\n  ");
    }
    assert!(report.is_empty(), "{report}");
}

fn graph(edges: &[(&str, &str)]) -> Graph {
    let mut g = Graph::new();
    for (from, to) in edges {
        g.entry((*from).into()).or_default().insert((*to).into());
        g.entry((*to).into()).or_default();
    }
    g
}

fn written(cycles: Vec<Vec<String>>) -> Vec<String> {
    cycles.into_iter().map(|c| c.join(" → ")).collect()
}

#[test]
fn finds_every_circle_once_and_passes_a_dag() {
    let g = graph(&[
        ("b", "a"),
        ("a", "b"),
        ("c", "d"),
        ("d", "e"),
        ("e", "c"),
        ("c", "e"),
    ]);
    assert_eq!(
        written(cycles(&g)),
        ["a → b → a", "c → d → e → c", "c → e → c"]
    );
    let dag = graph(&[("a", "b"), ("b", "c"), ("a", "c"), ("d", "a")]);
    assert!(cycles(&dag).is_empty());
}

/// A throwaway crate on disk: `files` as (path under src/, text).
fn crate_graph(files: &[(&str, &str)]) -> Graph {
    let dir = std::env::temp_dir().join(format!(
        "ks-modgraph-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = fs::remove_dir_all(&dir);
    for (path, text) in files {
        let file = dir.join("src").join(path);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(file, text).unwrap();
    }
    let g = graph_of(&read_crate(&dir.join("src/lib.rs")).unwrap());
    fs::remove_dir_all(&dir).unwrap();
    g
}

#[test]
fn child_modules_count_as_their_parent() {
    let g = crate_graph(&[
        // Test-only modules are left out: a test may use what its module is used by.
        (
            "lib.rs",
            "pub mod config;\nmod deploy;\nmod t { use crate::deploy::X; }\n\
                 pub mod exit { pub const OK: u8 = 0; }\n\
                 #[cfg(test)]\nmod tests { use crate::config::X; }\n#[cfg(test)]\nmod more;",
        ),
        ("more.rs", "use crate::config::Y;"),
        (
            "config.rs",
            "mod check;\nuse crate::deploy::{self, Params};\n\
                 #[cfg(test)]\nmod tests { use crate::t::Z; }",
        ),
        // super::super from config/check.rs is the root: a reference to deploy.
        (
            "config/check.rs",
            "mod inner { use super::super::super::deploy::Y; }\nuse super::Config;",
        ),
        ("deploy/mod.rs", "mod sub;"),
        (
            "deploy/sub.rs",
            "use crate::{config::{Config, check}, deploy::Z};\nfn f() { crate::exit::OK; }",
        ),
    ]);
    assert_eq!(
        g,
        graph(&[
            ("config", "deploy"),
            ("deploy", "config"),
            ("deploy", "exit"),
            ("t", "deploy"),
        ])
    );
    assert_eq!(written(cycles(&g)), ["config → deploy → config"]);
}

#[test]
fn root_reexports_resolve_and_text_is_not_code() {
    let g = crate_graph(&[
        (
            "lib.rs",
            "pub mod hash;\npub mod maps;\npub use maps::*;\npub use hash::{FlowTuple as Tuple, flow_hash};",
        ),
        (
            "maps.rs",
            "pub struct FlowKey;\npub mod tcp_flags { pub const ACK: u8 = 1; }\nfn f() { crate::flow_hash(); }",
        ),
        (
            "hash.rs",
            "/// See [`crate::maps::FlowKey`]. // crate::maps\nconst S: &str = \"crate::maps::X\";\n\
                 const R: &str = r#\"crate::maps\"#; fn g<'a>(c: char) -> bool { c == '{' }\n\
                 fn h() { crate::Tuple::new(); crate::tcp_flags::ACK; crate::ROOT_ITEM; }",
        ),
    ]);
    assert_eq!(g, graph(&[("maps", "hash"), ("hash", "maps")]));
}
