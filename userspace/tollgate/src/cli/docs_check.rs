//! Every `tollgate …` command line in README.md and docs/*.md names
//! subcommands and `--flags` that exist (the same definitions `--help`
//! prints): docs that drift from the CLI fail the build's tests.

use clap::CommandFactory as _;

use super::args::Cli;

/// The `tollgate …` command lines of a Markdown text: lines of code blocks
/// and inline code spans that start with `tollgate ` (after `sudo`/`$`).
fn command_lines(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        // Diagrams name the CLI in boxes, not as a command line.
        if line.contains(['─', '│', '►']) {
            continue;
        }
        let spans: Vec<&str> = if in_block {
            vec![line]
        } else {
            line.split('`').skip(1).step_by(2).collect()
        };
        for span in spans {
            let s = span.trim_start();
            let s = s.strip_prefix("$ ").unwrap_or(s);
            let s = s.strip_prefix("sudo ").unwrap_or(s);
            if let Some(rest) = s.strip_prefix("tollgate ") {
                // A comment ends the command; a pipe or `&&` too.
                let rest = rest.split(" #").next().unwrap_or_default();
                let rest = rest.split(['|', ';', '>', '<']).next().unwrap_or_default();
                let rest = rest.split("&&").next().unwrap_or_default();
                out.push(rest.to_owned());
            }
        }
    }
    out
}

/// Why a command line does not match the CLI, if it does not.
fn check(line: &str) -> Option<String> {
    let root = Cli::command();
    let mut cmd = &root;
    let mut path = vec!["tollgate".to_owned()];
    let mut tokens = line
        .split_whitespace()
        .map(|t| t.trim_matches(['[', ']', '(', ')', ',']));
    let mut flags = Vec::new();
    let mut descending = true;
    for t in tokens.by_ref() {
        if t.starts_with("--") {
            flags.push(t.split('=').next().unwrap_or(t).to_owned());
            descending = false;
            continue;
        }
        if !descending || t.starts_with('-') || t.is_empty() {
            continue;
        }
        match cmd.find_subcommand(t) {
            Some(sub) => {
                cmd = sub;
                path.push(t.to_owned());
            }
            // The first word that is no subcommand is an argument.
            None if cmd.has_subcommands() && path.len() == 1 => {
                return Some(format!("`tollgate {line}`: no command `{t}`"));
            }
            None => descending = false,
        }
    }
    let known = |flag: &str| {
        let name = flag.trim_start_matches('-');
        name == "help"
            || name == "version"
            || cmd
                .get_arguments()
                .chain(root.get_arguments())
                .any(|a| a.get_long() == Some(name))
    };
    flags
        .iter()
        .find(|f| !known(f))
        .map(|f| format!("`tollgate {line}`: `{}` has no flag `{f}`", path.join(" ")))
}

#[test]
fn every_documented_command_and_flag_exists() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut files = vec![std::path::PathBuf::from(root).join("README.md")];
    let docs = std::fs::read_dir(std::path::Path::new(root).join("docs")).unwrap();
    files.extend(
        docs.filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "md")),
    );
    let mut seen = 0;
    let mut wrong = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for line in command_lines(&text) {
            seen += 1;
            if let Some(why) = check(&line) {
                wrong.push(format!("{}: {why}", f.display()));
            }
        }
    }
    assert!(
        seen > 50,
        "only {seen} command lines found: is the scan broken?"
    );
    assert!(
        wrong.is_empty(),
        "documented but not in the CLI:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_check_catches_what_does_not_exist() {
    assert!(check("block ls --json").is_none());
    assert!(check("block add 198.18.0.1 --ttl 1h --force").is_none());
    assert!(check("block ls --frobnicate").is_some());
    assert!(check("blok ls").is_some());
}
