//! The Apache-style configuration language, as syntax only.
//!
//! This crate turns text into a tree of [`Node`]s, each carrying the file and
//! line it came from: one directive a line, `#` comments, `"double"` or
//! `'single'` quoted words, `\` line continuation, `<Section arg>` …
//! `</Section>` blocks, and `Include path/glob` expanded in place. It knows no
//! directive besides `Include` (and `ServerRoot`, which is where relative
//! `Include` paths start); what the directives mean, and which are allowed
//! where, belongs to the program that reads the tree.
//!
//! Errors are collected rather than returned at the first one, so a checker
//! can print every problem of a file in one run, each as `FILE:LINE: message`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How deep `Include` may nest before we call it a cycle.
const MAX_INCLUDE_DEPTH: usize = 16;

/// One directive, or one section with its children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The name as written (compare with `eq_ignore_ascii_case`).
    pub name: String,
    pub args: Vec<String>,
    pub at: Location,
    /// `Some` for a `<Section>`, even an empty one.
    pub children: Option<Vec<Node>>,
}

impl Node {
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// Where a node was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: Arc<Path>,
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A problem with the configuration, printed as `FILE:LINE: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct Error {
    pub at: Location,
    pub message: String,
}

impl Error {
    pub fn new(at: &Location, message: impl Into<String>) -> Self {
        Self {
            at: at.clone(),
            message: message.into(),
        }
    }
}

/// A parsed tree and every syntax error met on the way. The tree holds all
/// that could be read, so a checker can validate it and report its problems
/// beside the syntax errors.
#[derive(Debug, Default)]
pub struct Parsed {
    pub nodes: Vec<Node>,
    pub errors: Vec<Error>,
}

impl Parsed {
    /// The tree if there was no error, else the errors.
    pub fn into_result(self) -> Result<Vec<Node>, Vec<Error>> {
        if self.errors.is_empty() {
            Ok(self.nodes)
        } else {
            Err(self.errors)
        }
    }
}

/// Files one configuration may read in all, its own included: a bound on
/// what a glob can make psd read.
pub const MAX_FILES: usize = 4096;

/// Reads and parses `path` and everything it includes.
pub fn parse_file(path: &Path) -> Parsed {
    let root = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut parser = Parser::new(root);
    let top = Location {
        file: Arc::from(path),
        line: 0,
    };
    let nodes = parser.file(path, &top, 0);
    Parsed {
        nodes,
        errors: parser.errors,
    }
}

/// Parses text as if read from `file`; `Include` paths start at `root`.
pub fn parse_str(text: &str, file: &Path, root: &Path) -> Parsed {
    let mut parser = Parser::new(root.to_path_buf());
    let nodes = parser.text(text, Arc::from(file), 0);
    Parsed {
        nodes,
        errors: parser.errors,
    }
}

struct Parser {
    /// Where relative `Include` paths start: the main file's folder until a
    /// top-level `ServerRoot` says otherwise.
    root: PathBuf,
    errors: Vec<Error>,
    /// Every file read so far (canonical paths): a file is read once, so
    /// a glob that matches the files including it cannot multiply them.
    read: std::collections::HashSet<PathBuf>,
}

impl Parser {
    fn new(root: PathBuf) -> Parser {
        Parser {
            root,
            errors: vec![],
            read: std::collections::HashSet::new(),
        }
    }
}

/// An open `<Section>` while its body is read.
struct Open {
    node: Node,
    children: Vec<Node>,
}

impl Parser {
    fn file(&mut self, path: &Path, from: &Location, depth: usize) -> Vec<Node> {
        let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        if self.read.contains(&canonical) {
            self.errors.push(Error::new(
                from,
                format!(
                    "Include: {} was already read (an Include cycle, or a file included twice)",
                    path.display()
                ),
            ));
            return vec![];
        }
        if self.read.len() >= MAX_FILES {
            self.errors.push(Error::new(
                from,
                format!(
                    "more than {MAX_FILES} configuration files; {} not read",
                    path.display()
                ),
            ));
            return vec![];
        }
        self.read.insert(canonical);
        match std::fs::read_to_string(path) {
            Ok(text) => self.text(&text, Arc::from(path), depth),
            Err(e) => {
                self.errors.push(Error::new(
                    from,
                    format!("cannot read {}: {e}", path.display()),
                ));
                vec![]
            }
        }
    }

    fn text(&mut self, text: &str, file: Arc<Path>, depth: usize) -> Vec<Node> {
        let mut stack: Vec<Open> = vec![];
        let mut top: Vec<Node> = vec![];
        for (line, logical) in logical_lines(text) {
            let at = Location {
                file: file.clone(),
                line,
            };
            let words = match split_words(&logical) {
                Ok(words) => words,
                Err(message) => {
                    self.errors.push(Error::new(&at, message));
                    continue;
                }
            };
            let Some(first) = words.first() else {
                continue;
            };
            if let Some(rest) = first.strip_prefix("</") {
                self.close(&mut stack, &mut top, rest, &words, &at);
            } else if let Some(rest) = first.strip_prefix('<') {
                self.open(&mut stack, rest, &words, &at);
            } else if first.eq_ignore_ascii_case("Include") {
                let included = self.include(&words[1..], &at, depth);
                match stack.last_mut() {
                    Some(open) => open.children.extend(included),
                    None => top.extend(included),
                }
            } else {
                let node = Node {
                    name: first.clone(),
                    args: words[1..].to_vec(),
                    at,
                    children: None,
                };
                if stack.is_empty() && node.is("ServerRoot") {
                    if let Some(dir) = node.args.first() {
                        self.root = self.root.join(dir);
                    }
                }
                match stack.last_mut() {
                    Some(open) => open.children.push(node),
                    None => top.push(node),
                }
            }
        }
        // Unclosed sections are reported, and kept (closed at the end of the
        // file) so that what they hold is still checked.
        while let Some(open) = stack.pop() {
            self.errors.push(Error::new(
                &open.node.at,
                format!("<{}> is never closed", open.node.name),
            ));
            let mut node = open.node;
            node.children = Some(open.children);
            match stack.last_mut() {
                Some(parent) => parent.children.push(node),
                None => top.push(node),
            }
        }
        top
    }

    fn open(&mut self, stack: &mut Vec<Open>, rest: &str, words: &[String], at: &Location) {
        let mut args: Vec<String> = words[1..].to_vec();
        let name = match (rest.strip_suffix('>'), args.last_mut()) {
            (Some(name), _) => {
                if !args.is_empty() {
                    self.errors
                        .push(Error::new(at, "text after '>' in section header"));
                }
                name.to_string()
            }
            (None, Some(last)) if last.ends_with('>') => {
                last.pop();
                if last.is_empty() {
                    args.pop();
                }
                rest.to_string()
            }
            _ => {
                self.errors
                    .push(Error::new(at, format!("<{rest} has no closing '>'")));
                return;
            }
        };
        if name.is_empty() {
            self.errors.push(Error::new(at, "section without a name"));
            return;
        }
        stack.push(Open {
            node: Node {
                name,
                args,
                at: at.clone(),
                children: None,
            },
            children: vec![],
        });
    }

    fn close(
        &mut self,
        stack: &mut Vec<Open>,
        top: &mut Vec<Node>,
        rest: &str,
        words: &[String],
        at: &Location,
    ) {
        let name = rest.strip_suffix('>').unwrap_or(rest);
        if words.len() > 1 || !rest.ends_with('>') {
            self.errors
                .push(Error::new(at, format!("malformed </{name}> line")));
        }
        match stack.pop() {
            Some(open) if open.node.name.eq_ignore_ascii_case(name) => {
                let mut node = open.node;
                node.children = Some(open.children);
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => top.push(node),
                }
            }
            Some(open) => {
                self.errors.push(Error::new(
                    at,
                    format!(
                        "</{name}> closes <{}> opened at line {}",
                        open.node.name, open.node.at.line
                    ),
                ));
                stack.push(open);
            }
            None => self.errors.push(Error::new(
                at,
                format!("</{name}> without matching <{name}>"),
            )),
        }
    }

    fn include(&mut self, args: &[String], at: &Location, depth: usize) -> Vec<Node> {
        let [pattern] = args else {
            self.errors
                .push(Error::new(at, "Include takes exactly one path"));
            return vec![];
        };
        if depth >= MAX_INCLUDE_DEPTH {
            self.errors.push(Error::new(
                at,
                format!("Include nested more than {MAX_INCLUDE_DEPTH} deep (a cycle?)"),
            ));
            return vec![];
        }
        let pattern = self.root.join(pattern);
        let paths = match expand_glob(&pattern) {
            Ok(paths) => paths,
            Err(message) => {
                self.errors.push(Error::new(at, message));
                return vec![];
            }
        };
        let mut nodes = vec![];
        for path in paths {
            nodes.extend(self.file(&path, at, depth + 1));
        }
        nodes
    }
}

/// Joins `\`-continued lines; yields (first physical line number, text).
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = vec![];
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let (body, continues) = match raw.strip_suffix('\\') {
            Some(body) => (body, true),
            None => (raw, false),
        };
        let (line, mut acc) = pending.take().unwrap_or((index + 1, String::new()));
        if !acc.is_empty() {
            acc.push(' ');
        }
        acc.push_str(body);
        if continues {
            pending = Some((line, acc));
        } else {
            out.push((line, acc));
        }
    }
    out.extend(pending);
    out
}

/// Splits a line into words: whitespace separates, quotes group, a `#` that
/// starts a word starts a comment.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = vec![];
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&c) = chars.peek() else {
            return Ok(words);
        };
        if c == '#' {
            return Ok(words);
        }
        let mut word = String::new();
        if c == '"' || c == '\'' {
            chars.next();
            let mut closed = false;
            while let Some(ch) = chars.next() {
                match ch {
                    '\\' if matches!(chars.peek(), Some(&n) if n == c || n == '\\') => {
                        word.extend(chars.next());
                    }
                    ch if ch == c => {
                        closed = true;
                        break;
                    }
                    ch => word.push(ch),
                }
            }
            if !closed {
                return Err(format!("unterminated {c}quoted{c} value"));
            }
        } else {
            while let Some(ch) = chars.next_if(|c| !c.is_whitespace()) {
                word.push(ch);
            }
        }
        words.push(word);
    }
}

/// Expands `*` and `?` in the last path component; a path without them must
/// exist, a pattern may match nothing. Matches come sorted, as Apache does.
fn expand_glob(pattern: &Path) -> Result<Vec<PathBuf>, String> {
    let name = pattern
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains(['*', '?']) {
        return if pattern.exists() {
            Ok(vec![pattern.to_path_buf()])
        } else {
            Err(format!("Include: {} does not exist", pattern.display()))
        };
    }
    let dir = pattern.parent().unwrap_or(Path::new("."));
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("Include: cannot list {}: {e}", dir.display()))?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| !t.is_dir()).unwrap_or(false))
        .filter(|e| wildcard_match(&name, &e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    out.sort();
    Ok(out)
}

/// `*` matches any run of characters, `?` any one character.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Node>, Vec<Error>> {
        parse_str(text, Path::new("t.conf"), Path::new(".")).into_result()
    }

    #[test]
    fn directives_comments_quotes_and_continuation() {
        let nodes = parse(
            "# comment\nListen 127.0.0.1:80 http  # trailing\n\
             SetEnv GREETING \"hello \\\"world\\\"\"\nWorker fastcgi \\\n  /bin/app --flag\n",
        )
        .unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0].args, ["127.0.0.1:80", "http"]);
        assert_eq!(nodes[0].at.line, 2);
        assert_eq!(nodes[1].args, ["GREETING", "hello \"world\""]);
        assert_eq!(nodes[2].args, ["fastcgi", "/bin/app", "--flag"]);
        assert_eq!(nodes[2].at.line, 4);
    }

    #[test]
    fn sections_nest_and_keep_their_lines() {
        let nodes =
            parse("<VirtualHost *:80>\n<Location /app>\nWorker x\n</Location>\n</VirtualHost>\n")
                .unwrap();
        let vhost = &nodes[0];
        assert!(vhost.is("virtualhost"));
        assert_eq!(vhost.args, ["*:80"]);
        let loc = &vhost.children.as_ref().unwrap()[0];
        assert_eq!(loc.args, ["/app"]);
        assert_eq!(loc.at.line, 2);
        assert_eq!(loc.children.as_ref().unwrap()[0].at.line, 3);
    }

    #[test]
    fn section_header_with_spaced_bracket() {
        let nodes = parse("<Location \"/a b\" >\n</Location>").unwrap();
        assert_eq!(nodes[0].args, ["/a b"]);
    }

    #[test]
    fn structural_errors_carry_file_and_line() {
        let errors = parse("<Location /a>\nFoo\n</VirtualHost>\nBar \"open\n").unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|e| e.starts_with("t.conf:3: </VirtualHost> closes <Location>")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|e| e.starts_with("t.conf:4: unterminated")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e.starts_with("t.conf:1: <Location> is never closed")),
            "{text:?}"
        );
    }

    #[test]
    fn include_expands_globs_in_order_and_reports_missing_files() {
        let dir = std::env::temp_dir().join(format!("psd-conf-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        std::fs::write(dir.join("conf.d/b.conf"), "B 2\n").unwrap();
        std::fs::write(dir.join("conf.d/a.conf"), "A 1\n").unwrap();
        std::fs::write(dir.join("conf.d/skip.txt"), "C 3\n").unwrap();
        std::fs::write(
            dir.join("main.conf"),
            "Include conf.d/*.conf\nInclude missing.conf\n",
        )
        .unwrap();
        let errors = parse_file(&dir.join("main.conf"))
            .into_result()
            .unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].at.line, 2);
        std::fs::write(dir.join("main.conf"), "Include conf.d/*.conf\n").unwrap();
        let nodes = parse_file(&dir.join("main.conf")).into_result().unwrap();
        let names: Vec<_> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["A", "B"]);
        assert!(nodes[0].at.file.ends_with("conf.d/a.conf"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Three files each including `fan/*.conf` (themselves among them)
    /// grew exponentially: 1.46 GB and no answer after 30 s.
    #[test]
    fn include_globs_matching_their_own_files_are_read_once() {
        let dir = std::env::temp_dir().join(format!("psd-conf-fan-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("fan")).unwrap();
        for name in ["a", "b", "c"] {
            std::fs::write(
                dir.join(format!("fan/{name}.conf")),
                format!("Include fan/*.conf\nX {name}\n"),
            )
            .unwrap();
        }
        std::fs::write(dir.join("main.conf"), "Include fan/*.conf\n").unwrap();
        let started = std::time::Instant::now();
        let parsed = parse_file(&dir.join("main.conf"));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(parsed.nodes.len(), 3, "each file's X once");
        assert!(!parsed.errors.is_empty(), "the repeats are errors");
        assert!(parsed.errors[0].to_string().contains("already read"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn include_cycle_is_an_error_not_a_hang() {
        let dir = std::env::temp_dir().join(format!("psd-conf-cycle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("self.conf"), "Include self.conf\n").unwrap();
        let errors = parse_file(&dir.join("self.conf"))
            .into_result()
            .unwrap_err();
        assert!(errors[0].message.contains("already read"), "{errors:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*.conf", "a.conf"));
        assert!(!wildcard_match("*.conf", "a.conf.bak"));
        assert!(wildcard_match("a?c*", "abcdef"));
        assert!(wildcard_match("*", ""));
    }
}
