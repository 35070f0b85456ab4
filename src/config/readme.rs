//! The README's configuration table, generated from the settings table,
//! and the test that keeps README.md in step with it.

use super::table::{Kind, Setting, SETTINGS};
use super::value::string;

/// Backticks around each name, joined by commas.
fn code(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    quoted.join(", ")
}

/// One row: a setting and, for a secret, its `*_file` form.
fn row(key: &'static Setting) -> String {
    let file = key.file_form();
    let both = |f: &dyn Fn(&'static Setting) -> Vec<&'static str>| {
        let mut names = f(key);
        names.extend(file.map(f).unwrap_or_default());
        code(&names)
    };
    let listed = matches!(key.kind, Kind::Tokens | Kind::Prefixes);
    let list = if listed { " (a list)" } else { "" };
    let repeat = if listed { " (repeatable)" } else { "" };
    let flags = both(&|s| s.flag.iter().map(|f| f.long).collect());
    let flags = match (flags.is_empty(), flags.split_once(", ")) {
        (true, _) => "—".to_string(),
        (false, Some((first, rest))) => format!("{first}{repeat}, {rest}"),
        (false, None) => format!("{flags}{repeat}"),
    };
    let default = match (key.required, key.default_text()) {
        (Some(_), _) => "required".to_string(),
        (None, Some(d)) if key.default_doc.is_none() => format!("`{}`", toml_default(key, &d)),
        (None, Some(d)) => d,
        (None, None) if key.kind == Kind::Tokens => "required by `serve`".to_string(),
        (None, None) => "—".to_string(),
    };
    let names = both(&|s| vec![s.name]);
    let names = match names.split_once(", ") {
        Some((first, rest)) => format!("{first}{list}, {rest}"),
        None => format!("{names}{list}"),
    };
    format!(
        "| {names} | {} | {flags} | {default} | {} |",
        both(&|s| s.env_names()),
        key.help(),
    )
}

/// A built-in default as the config file would spell it.
fn toml_default(key: &Setting, plain: &str) -> String {
    match key.kind {
        Kind::Count { .. } | Kind::Bool => plain.to_string(),
        _ => string(plain),
    }
}

/// The whole table, header included.
pub(super) fn table() -> String {
    let mut out = String::from(
        "| key | environment | flag | default | meaning |\n| --- | --- | --- | --- | --- |\n",
    );
    for key in SETTINGS {
        if !matches!(key.kind, Kind::FileOf { .. }) {
            out.push_str(&row(key));
            out.push('\n');
        }
    }
    out
}

#[test]
fn the_readme_table_is_the_generated_one() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let start = readme
        .find("| key | environment | flag | default |")
        .expect("README.md has a configuration table");
    let end = readme[start..]
        .find("\n\n")
        .map_or(readme.len(), |n| start + n + 1);
    let expected = table();
    if std::env::var_os("KVREPLICA_BLESS").is_some() {
        let updated = format!("{}{expected}{}", &readme[..start], &readme[end..]);
        std::fs::write(path, updated).unwrap();
        return;
    }
    assert_eq!(
        &readme[start..end],
        expected,
        "README.md's configuration table is out of date: run \
         KVREPLICA_BLESS=1 cargo test --lib the_readme_table_is_the_generated_one"
    );
}
