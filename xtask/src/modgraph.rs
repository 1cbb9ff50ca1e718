//! The module-cycle check (`cargo test -p xtask modgraph`, part of `cargo xtask test`):
//! in every crate of the workspace, which top-level modules use which — `use crate::…`,
//! `crate::x::…` and `super::…` paths that reach the crate root — and every circle in
//! that graph. A module's submodules count as the module; the crate root (`lib.rs`,
//! `main.rs`) is not a node, but a name it re-exports (`pub use maps::*`) counts as
//! the module it comes from. Comments, strings and doc links are not references.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// Which top-level modules each top-level module of one crate uses.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// Tokens of Rust source that paths are made of.
#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Semi,
    Star,
    Other(char),
}

/// Splits `src` into tokens, dropping comments, string, char and number literals
/// and lifetimes (`$crate` reads as `crate`).
fn tokens(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() || ch == '$' {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            loop {
                if i >= c.len() {
                    break;
                } else if c[i] == '/' && at(i + 1) == '*' {
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
        } else if ch == '"' {
            i = skip_string(&c, i + 1);
        } else if ch == '\'' {
            // A char literal ('a', '\n', '{') or a lifetime ('a).
            if at(i + 1) == '\\' {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
                while at(i).is_alphanumeric() || at(i) == '_' {
                    i += 1;
                }
            }
        } else if ch.is_ascii_digit() {
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let prefix = matches!(word.as_str(), "r" | "b" | "br" | "c" | "cr");
            if prefix && (at(i) == '"' || (at(i) == '#' && word.ends_with('r'))) {
                let hashes = c[i..].iter().take_while(|&&h| h == '#').count();
                if at(i + hashes) == '"' {
                    i = if word.ends_with('r') {
                        skip_raw_string(&c, i + hashes + 1, hashes)
                    } else {
                        skip_string(&c, i + 1)
                    };
                    continue;
                }
            }
            if word == "b" && at(i) == '\'' {
                continue; // the byte char's quote is read as a char literal next
            }
            out.push(Tok::Ident(word));
        } else {
            out.push(match ch {
                ':' if at(i + 1) == ':' => {
                    i += 1;
                    Tok::PathSep
                }
                '{' => Tok::Open,
                '}' => Tok::Close,
                ',' => Tok::Comma,
                ';' => Tok::Semi,
                '*' => Tok::Star,
                other => Tok::Other(other),
            });
            i += 1;
        }
    }
    out
}

/// The index after the closing quote of a string whose body starts at `i`.
fn skip_string(c: &[char], mut i: usize) -> usize {
    while i < c.len() && c[i] != '"' {
        i += if c[i] == '\\' { 2 } else { 1 };
    }
    i + 1
}

/// The index after the closing `"###` of a raw string whose body starts at `i`.
fn skip_raw_string(c: &[char], mut i: usize, hashes: usize) -> usize {
    while i < c.len() {
        if c[i] == '"'
            && c[i + 1..]
                .iter()
                .take(hashes)
                .filter(|&&h| h == '#')
                .count()
                == hashes
        {
            return i + 1 + hashes;
        }
        i += 1;
    }
    i
}

fn ident(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Ident(s)) => Some(s),
        _ => None,
    }
}

/// What one file says about modules.
#[derive(Debug, Default, PartialEq)]
struct Scan {
    /// `mod x;` declarations, with the inline modules they sit in.
    children: Vec<(Vec<String>, String)>,
    /// `mod x { … }` at the top of the file.
    inline: Vec<String>,
    /// Names reached at the crate root (`crate::x`, or enough `super::` to get
    /// there), each with the inline module of this file it is written in (if any).
    root_refs: Vec<(Option<String>, String)>,
    /// Outside inline modules: `use` leaves as (name, first path segment), a glob as
    /// ("*", segment); and the names of items defined.
    uses: Vec<(String, String)>,
    items: BTreeSet<String>,
}

/// The first segment of each path in a `crate::…` tail at `tok[i]`: `x` or `{x, y::z}`.
fn heads(tok: &[Tok], i: usize) -> Vec<String> {
    match tok.get(i) {
        Some(Tok::Ident(name)) if name != "self" => vec![name.clone()],
        Some(Tok::Open) => {
            let (mut names, mut depth, mut first) = (Vec::new(), 0, true);
            for t in &tok[i..] {
                match t {
                    Tok::Open => {
                        depth += 1;
                        if depth == 1 {
                            continue;
                        }
                    }
                    Tok::Close if depth == 1 => break,
                    Tok::Close => depth -= 1,
                    Tok::Comma if depth == 1 => {
                        first = true;
                        continue;
                    }
                    Tok::Ident(name) if depth == 1 && first && name != "self" => {
                        names.push(name.clone())
                    }
                    _ => {}
                }
                first = false;
            }
            names
        }
        _ => Vec::new(),
    }
}

/// The leaves of the use tree at `tok[*i]` as (name, first segment of its path); a
/// glob's name is `*`. In a group, `prefix` is the path's first and last segment.
fn use_leaves(
    tok: &[Tok],
    i: &mut usize,
    prefix: Option<(&str, &str)>,
    out: &mut Vec<(String, String)>,
) {
    let mut first = prefix.map(|(f, _)| f.to_owned());
    let mut last = prefix.map(|(_, l)| l.to_owned());
    loop {
        match tok.get(*i) {
            // At the root, `crate::x` and `self::x` are both `x`.
            Some(Tok::Ident(word)) if first.is_none() && (word == "crate" || word == "self") => {}
            Some(Tok::Ident(word)) if word == "as" => {
                if let (Some(alias), Some(first)) = (ident(tok.get(*i + 1)), &first) {
                    out.pop();
                    out.push((alias.to_owned(), first.clone()));
                }
                *i += 2;
                return;
            }
            Some(Tok::Ident(word)) => {
                let name = if word == "self" {
                    last.clone()
                } else {
                    Some(word.clone())
                };
                first.get_or_insert_with(|| word.clone());
                last = name;
                if tok.get(*i + 1) != Some(&Tok::PathSep) {
                    *i += 1;
                    if let (Some(name), Some(first)) = (&last, &first) {
                        out.push((name.clone(), first.clone()));
                    }
                    if ident(tok.get(*i)) == Some("as") {
                        continue;
                    }
                    return;
                }
            }
            Some(Tok::Star) => {
                *i += 1;
                if let Some(first) = &first {
                    out.push(("*".into(), first.clone()));
                }
                return;
            }
            Some(Tok::Open) => {
                *i += 1;
                while !matches!(tok.get(*i), None | Some(Tok::Close)) {
                    let prefix = first.as_deref().zip(last.as_deref());
                    use_leaves(tok, i, prefix, out);
                    if tok.get(*i) == Some(&Tok::Comma) {
                        *i += 1;
                    }
                }
                *i += 1;
                return;
            }
            _ => return,
        }
        *i += 1; // past `::` (or the skipped `crate`/`self`, then its `::`)
        if tok.get(*i) == Some(&Tok::PathSep) {
            *i += 1;
        }
    }
}

/// Whether the item ending `before` (a `mod` keyword's tokens so far) is marked
/// `#[cfg(test)]`, as in `#[cfg(test)] mod tests` or `#[cfg(test)] pub mod x`.
fn is_test_only(before: &[Tok]) -> bool {
    let before = match before.last() {
        Some(Tok::Ident(word)) if word == "pub" => &before[..before.len() - 1],
        _ => before,
    };
    let attr = [
        Tok::Other('#'),
        Tok::Other('['),
        Tok::Ident("cfg".into()),
        Tok::Other('('),
        Tok::Ident("test".into()),
        Tok::Other(')'),
        Tok::Other(']'),
    ];
    before.ends_with(&attr)
}

/// Where the rest of the path starting at `tok[i]` begins if the path is at the crate
/// root: after `crate::`, or after as many `super::` as the module is `depth` deep.
fn root_tail(tok: &[Tok], i: usize, depth: usize) -> Option<usize> {
    let step =
        |j: usize, word| ident(tok.get(j)) == Some(word) && tok.get(j + 1) == Some(&Tok::PathSep);
    if step(i, "crate") {
        return Some(i + 2);
    }
    let ups = (0..).take_while(|k| step(i + 2 * k, "super")).count();
    (ups > 0 && ups == depth).then_some(i + 2 * ups)
}

/// Scans one file whose module is `depth` levels below the crate root.
fn scan(src: &str, depth: usize) -> Scan {
    let tok = tokens(src);
    let mut scan = Scan::default();
    // Open inline modules: (name, brace depth inside them, whether test-only).
    let mut inline: Vec<(String, usize, bool)> = Vec::new();
    let mut braces = 0;
    for (i, t) in tok.iter().enumerate() {
        let after_sep = i > 0 && tok[i - 1] == Tok::PathSep;
        match t {
            Tok::Open => braces += 1,
            Tok::Close => {
                if inline.last().is_some_and(|(_, d, _)| *d == braces) {
                    inline.pop();
                }
                braces -= 1;
            }
            _ if inline.iter().any(|(_, _, test)| *test) => {}
            Tok::Ident(word) if word == "mod" => {
                if let Some(name) = ident(tok.get(i + 1)) {
                    let test = is_test_only(&tok[..i]);
                    match tok.get(i + 2) {
                        Some(Tok::Semi) if !test => scan.children.push((
                            inline.iter().map(|(n, _, _)| n.clone()).collect(),
                            name.to_owned(),
                        )),
                        Some(Tok::Open) => {
                            if braces == 0 && !test {
                                scan.inline.push(name.to_owned());
                            }
                            inline.push((name.to_owned(), braces + 1, test));
                        }
                        _ => {}
                    }
                    if braces == 0 {
                        scan.items.insert(name.to_owned());
                    }
                }
            }
            Tok::Ident(word) if (word == "crate" || word == "super") && !after_sep => {
                if let Some(tail) = root_tail(&tok, i, depth + inline.len()) {
                    let owner = inline.first().map(|(n, _, _)| n.clone());
                    let names = heads(&tok, tail).into_iter();
                    scan.root_refs
                        .extend(names.map(|name| (owner.clone(), name)));
                }
            }
            Tok::Ident(word) if word == "use" && inline.is_empty() && braces == 0 => {
                use_leaves(&tok, &mut (i + 1), None, &mut scan.uses);
            }
            Tok::Ident(word)
                if braces == 0
                    && matches!(
                        word.as_str(),
                        "fn" | "struct" | "enum" | "const" | "static" | "type" | "trait" | "union"
                    ) =>
            {
                if let Some(name) = ident(tok.get(i + 1)) {
                    scan.items.insert(name.to_owned());
                }
            }
            _ => {}
        }
    }
    scan
}

/// One crate's top-level modules: each with the root names its files reach.
#[derive(Debug, Default)]
struct Crate {
    modules: BTreeMap<String, Vec<String>>,
    /// Items defined at the top of each top-level module's own file.
    items: BTreeMap<String, BTreeSet<String>>,
    /// The root's `use` leaves (name, first segment).
    root_uses: Vec<(String, String)>,
}

/// Which top-level module a name at the crate root stands for, if any.
fn resolve<'a>(krate: &'a Crate, name: &'a str) -> Option<&'a str> {
    if krate.modules.contains_key(name) {
        return Some(name);
    }
    let from = |leaf: &str| {
        krate
            .root_uses
            .iter()
            .filter(move |(n, m)| n == leaf && krate.modules.contains_key(m))
            .map(|(_, m)| m.as_str())
            .next()
    };
    from(name).or_else(|| {
        krate
            .root_uses
            .iter()
            .filter(|(n, _)| n == "*")
            .map(|(_, m)| m.as_str())
            .find(|m| {
                krate
                    .items
                    .get(*m)
                    .is_some_and(|items| items.contains(name))
            })
    })
}

fn graph_of(krate: &Crate) -> Graph {
    let mut graph = Graph::new();
    for (module, refs) in &krate.modules {
        let edges = graph.entry(module.clone()).or_default();
        for name in refs {
            if let Some(target) = resolve(krate, name)
                && target != module
            {
                edges.insert(target.to_owned());
            }
        }
    }
    graph
}

/// The file of module `name` declared in a file whose children live in `dir`.
fn module_file(dir: &Path, name: &str) -> Option<(PathBuf, PathBuf)> {
    let flat = dir.join(format!("{name}.rs"));
    let nested = dir.join(name).join("mod.rs");
    if flat.is_file() {
        Some((flat, dir.join(name)))
    } else if nested.is_file() {
        Some((nested, dir.join(name)))
    } else {
        None
    }
}

/// Reads the crate whose root file is `root`, following `mod x;` declarations.
fn read_crate(root: &Path) -> Result<Crate> {
    let text = fs::read_to_string(root).with_context(|| format!("reading {}", root.display()))?;
    let top = scan(&text, 0);
    let dir = root.parent().expect("a file has a directory").to_path_buf();
    let mut krate = Crate {
        root_uses: top.uses,
        ..Crate::default()
    };
    for name in top.inline {
        krate.modules.entry(name).or_default();
    }
    for (owner, name) in top.root_refs {
        if let Some(owner) = owner {
            krate.modules.entry(owner).or_default().push(name);
        }
    }
    // (file, directory of its children, depth, top-level module)
    let mut queue: Vec<(PathBuf, PathBuf, usize, String)> = Vec::new();
    let enqueue = |queue: &mut Vec<_>,
                   dir: &Path,
                   children: Vec<(Vec<String>, String)>,
                   depth,
                   top: Option<&str>| {
        for (within, name) in children {
            let dir = within.iter().fold(dir.to_path_buf(), |d, m| d.join(m));
            if let Some((file, child_dir)) = module_file(&dir, &name) {
                let top =
                    top.map_or_else(|| within.first().unwrap_or(&name).clone(), str::to_owned);
                queue.push((file, child_dir, depth + within.len() + 1, top));
            }
        }
    };
    enqueue(&mut queue, &dir, top.children, 0, None);
    while let Some((file, child_dir, depth, module)) = queue.pop() {
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let s = scan(&text, depth);
        let refs = krate.modules.entry(module.clone()).or_default();
        refs.extend(s.root_refs.into_iter().map(|(_, name)| name));
        if depth == 1 {
            krate.items.insert(module.clone(), s.items);
        }
        enqueue(&mut queue, &child_dir, s.children, depth, Some(&module));
    }
    Ok(krate)
}

/// Every circle of `graph`, each once, starting at its smallest module:
/// `["agent", "metrics", "agent"]`.
pub fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    fn walk(graph: &Graph, start: &str, path: &mut Vec<String>, found: &mut Vec<Vec<String>>) {
        let here = path.last().expect("starts at start").clone();
        for next in graph.get(&here).into_iter().flatten() {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(start.to_owned());
                found.push(cycle);
            } else if next.as_str() > start && !path.contains(next) {
                path.push(next.clone());
                walk(graph, start, path, found);
                path.pop();
            }
        }
    }
    let mut found = Vec::new();
    for start in graph.keys() {
        walk(graph, start, &mut vec![start.clone()], &mut found);
    }
    found
}

/// Every crate target of the workspace at `root` with modules: (name, graph).
pub fn workspace(root: &Path) -> Result<Vec<(String, Graph)>> {
    let manifest = fs::read_to_string(root.join("Cargo.toml")).context("reading Cargo.toml")?;
    let members = manifest
        .split_once("members")
        .and_then(|(_, rest)| rest.split_once('['))
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list)
        .context("Cargo.toml has no workspace members list")?;
    let mut crates = Vec::new();
    for member in members
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
    {
        let dir = root.join(member);
        let package = fs::read_to_string(dir.join("Cargo.toml"))
            .with_context(|| format!("reading {member}/Cargo.toml"))?;
        let name = package
            .lines()
            .find_map(|l| l.trim().strip_prefix("name"))
            .and_then(|v| v.split('"').nth(1))
            .with_context(|| format!("{member}/Cargo.toml has no package name"))?
            .to_owned();
        let lib = dir.join("src/lib.rs");
        let mut roots = vec![lib.clone(), dir.join("src/main.rs"), dir.join("build.rs")];
        for sub in ["src/bin", "tests", "examples", "benches"] {
            if let Ok(entries) = fs::read_dir(dir.join(sub)) {
                let mut files: Vec<PathBuf> =
                    entries.filter_map(|e| Some(e.ok()?.path())).collect();
                files.sort();
                for path in files {
                    roots.push(if path.is_dir() {
                        path.join("main.rs")
                    } else {
                        path
                    });
                }
            }
        }
        for file in roots
            .into_iter()
            .filter(|f| f.is_file() && f.extension().is_some_and(|e| e == "rs"))
        {
            let graph = graph_of(&read_crate(&file)?);
            if graph.is_empty() {
                continue;
            }
            let label = if file == lib || !lib.is_file() && file.ends_with("src/main.rs") {
                name.clone()
            } else {
                format!(
                    "{name} ({})",
                    file.strip_prefix(&dir).unwrap_or(&file).display()
                )
            };
            crates.push((label, graph));
        }
    }
    Ok(crates)
}

/// Every circle in the workspace, written `crate: a → b → a`.
pub fn workspace_cycles(root: &Path) -> Result<Vec<String>> {
    Ok(workspace(root)?
        .iter()
        .flat_map(|(name, graph)| {
            cycles(graph)
                .into_iter()
                .map(move |c| format!("{name}: {}", c.join(" → ")))
        })
        .collect())
}

#[cfg(test)]
mod tests;
