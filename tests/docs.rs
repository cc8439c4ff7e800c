//! The documentation against the program (issue 14 item 6): every `memtrace` and `cargo xtask`
//! command in a shell block of README.md and docs/ parses with the program's own command line (run
//! with `--help` inserted, so it does nothing), every JSON example is JSON (the typed ones of
//! docs/api.md are checked field by field by `api::tests`), every TOML example is a valid
//! configuration, and the runnable examples of docs/trace.md run as written.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use memtrace_integration::{can_trace, memtrace_binary, peer_program, TempDir};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// README.md and every Markdown file of docs/.
fn documents() -> Vec<(PathBuf, String)> {
    let root = root();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("readable");
            (path, text)
        })
        .collect()
}

/// A fenced block: its file, first line, info string and text.
struct Block {
    file: String,
    line: usize,
    info: String,
    body: String,
}

fn blocks() -> Vec<Block> {
    let mut out = Vec::new();
    for (path, text) in documents() {
        let file = path
            .strip_prefix(root())
            .unwrap_or(&path)
            .display()
            .to_string();
        let mut lines = text.lines().enumerate();
        while let Some((n, line)) = lines.next() {
            let Some(info) = line.trim_start().strip_prefix("```") else {
                continue;
            };
            let body: Vec<&str> = lines
                .by_ref()
                .map(|(_, l)| l)
                .take_while(|l| !l.trim_start().starts_with("```"))
                .collect();
            out.push(Block {
                file: file.clone(),
                line: n + 1,
                info: info.trim().to_string(),
                body: body.join("\n"),
            });
        }
    }
    out
}

/// The commands of a shell block: continuation lines joined, comments and prompts removed.
fn commands(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in body.lines() {
        let line = line.trim();
        let line = line.strip_prefix("$ ").unwrap_or(line);
        if let Some(continued) = line.strip_suffix('\\') {
            current.push_str(continued);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let command = strip_comment(&current).trim().to_string();
        if !command.is_empty() {
            out.push(command);
        }
        current.clear();
    }
    out
}

/// A command without its trailing `# comment` (a `#` outside quotes, after a space).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if previous.is_whitespace() => return &line[..i],
            _ => {}
        }
        previous = c;
    }
    line
}

/// Shell words (quotes removed), enough for the documentation's commands.
fn words(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut in_word = false;
    for c in command.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (_, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(word);
    }
    out
}

/// A documented command line made concrete: optional `[...]` groups kept (their flags must exist
/// too), the first of `a|b` alternatives, `...` dropped, placeholders given a value.
fn concrete(args: &[String]) -> Vec<String> {
    args.iter()
        .map(|a| a.trim_start_matches('[').trim_end_matches(']').to_string())
        .filter(|a| !a.is_empty() && a != "..." && !a.ends_with("..."))
        .map(|a| {
            let a = a.split('|').next().unwrap_or("").to_string();
            match a.as_str() {
                "PID" => "1".into(),
                "SECS" => "1".into(),
                "FILE" => "/tmp/memtrace-docs-file".into(),
                "COMMAND" => "true".into(),
                _ => a,
            }
        })
        .collect()
}

fn shell_blocks() -> Vec<Block> {
    blocks()
        .into_iter()
        .filter(|b| matches!(b.info.as_str(), "sh" | "bash" | "shell" | "console"))
        .collect()
}

/// The `--help` run of a documented command: the program's parser accepts every flag and value,
/// and does nothing else.
fn help_run(program: &Path, args: &[String]) -> std::process::Output {
    let mut args = args.to_vec();
    // Before `--` (after it, `--help` would be the traced command's).
    let at = args.iter().position(|a| a == "--").unwrap_or(args.len());
    args.insert(at, "--help".into());
    Command::new(program)
        .args(&args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()))
}

#[test]
fn documented_commands_parse() {
    let memtrace = memtrace_binary();
    let xtask = memtrace.with_file_name("xtask");
    let mut checked = 0;
    let mut problems = Vec::new();
    for block in shell_blocks() {
        for command in commands(&block.body) {
            // Only the first command of a pipeline or list, after environment assignments.
            let first = command.split(['|', ';']).next().unwrap_or("");
            let first = first.split("&&").next().unwrap_or("");
            let mut words = words(first);
            while words
                .first()
                .is_some_and(|w| w.contains('=') && !w.starts_with('-'))
            {
                words.remove(0);
            }
            let (program, args) = match words.first().map(String::as_str) {
                Some("memtrace") => (memtrace.clone(), concrete(&words[1..])),
                Some("cargo") if words.get(1).is_some_and(|w| w == "xtask") => {
                    if !xtask.exists() {
                        continue;
                    }
                    (xtask.clone(), concrete(&words[2..]))
                }
                _ => continue,
            };
            let out = help_run(&program, &args);
            checked += 1;
            if !out.status.success() {
                problems.push(format!(
                    "{}:{}: `{command}` does not parse: {}",
                    block.file,
                    block.line,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
    }
    assert!(checked >= 10, "only {checked} commands found in the docs");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn json_and_toml_examples_parse() {
    let mut problems = Vec::new();
    let mut json = 0;
    for block in blocks() {
        let at = format!("{}:{}", block.file, block.line);
        if block.info == "json" || block.info.starts_with("json ") {
            json += 1;
            // A block may hold one JSON value per line (a stream) or one value.
            let whole = serde_json::from_str::<serde_json::Value>(&block.body);
            let lines_ok = block
                .body
                .lines()
                .filter(|l| !l.trim().is_empty())
                .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok());
            if whole.is_err() && !lines_ok {
                problems.push(format!(
                    "{at}: not JSON: {}",
                    whole.err().map(|e| e.to_string()).unwrap_or_default()
                ));
            }
        }
        if block.info == "toml" {
            if let Err(err) = memtrace::config::Config::from_toml_str(&block.body) {
                problems.push(format!(
                    "{at}: not a valid configuration: {}",
                    memtrace::error_chain(&err)
                ));
            }
        }
    }
    assert!(json >= 20, "only {json} JSON examples");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// docs/trace.md's worked example, run as written: trace a Python program, write its heap
/// profile, and read it with Go's pprof (when Go is installed).
#[test]
fn the_trace_example_runs_as_written() {
    if !can_trace() {
        return;
    }
    let block = shell_blocks()
        .into_iter()
        .find(|b| b.file == "docs/trace.md" && b.body.contains("python3 -c"))
        .expect("docs/trace.md has the python3 example");
    let dir = TempDir::new("docs-trace");
    let memtrace = memtrace_binary();
    let mut ran = 0;
    for command in commands(&block.body) {
        let words = words(&command);
        let program = match words.first().map(String::as_str) {
            Some("memtrace") => memtrace.clone(),
            Some("go") => match peer_program("go", &["/usr/bin/go"], "to read the profile") {
                Some(go) => go,
                None => continue,
            },
            _ => continue,
        };
        let out = Command::new(&program)
            .args(&words[1..])
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .env("HOME", dir.path())
            .output()
            .unwrap_or_else(|e| panic!("running `{command}`: {e}"));
        assert!(
            out.status.success(),
            "`{command}` failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        ran += 1;
    }
    assert!(ran >= 2, "ran {ran} commands of the example");
    assert!(dir.path().join("heap.pb.gz").exists());
}
