//! The README's fenced blocks as data, so tests can run its examples exactly as written.
//!
//! A block that holds commands is preceded by a marker comment that says whether the README
//! test runs it (`<!-- readme-test: run -->`) or why not (`<!-- readme-test: not run: WHY
//! -->`); the README test fails on a command block with neither.

use std::path::PathBuf;

/// The marker before a block whose every command line the README test runs.
pub const RUN_MARKER: &str = "<!-- readme-test: run -->";

/// The start of the marker before a command block the README test does not run, with why.
pub const NOT_RUN_MARKER: &str = "<!-- readme-test: not run:";

/// The workspace's README.md.
pub fn readme_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md")
}

/// One fenced block of a Markdown file.
#[derive(Debug, Clone)]
pub struct FencedBlock {
    /// The info string after the opening fence (`rust`, or empty).
    pub info: String,
    /// The HTML comment on the line right before the opening fence, if any.
    pub marker: Option<String>,
    /// The 1-based line number of the block's first content line.
    pub first_line: usize,
    /// The block's content lines.
    pub lines: Vec<String>,
}

/// Every fenced block of `markdown`, in order.
pub fn fenced_blocks(markdown: &str) -> Vec<FencedBlock> {
    let mut blocks = vec![];
    let mut previous: Option<&str> = None;
    let mut open: Option<FencedBlock> = None;
    for (i, line) in markdown.lines().enumerate() {
        match open.as_mut() {
            Some(_) if line.trim_start().starts_with("```") => {
                blocks.push(open.take().expect("open block"));
            }
            Some(block) => block.lines.push(line.to_string()),
            None if line.trim_start().starts_with("```") => {
                let marker = previous
                    .map(str::trim)
                    .filter(|p| p.starts_with("<!--") && p.ends_with("-->"))
                    .map(str::to_string);
                open = Some(FencedBlock {
                    info: line.trim_start().trim_start_matches('`').trim().to_string(),
                    marker,
                    first_line: i + 2,
                    lines: vec![],
                });
            }
            None => {}
        }
        previous = Some(line);
    }
    blocks
}

/// One shell command line of a block: continuation lines joined, comment and a trailing
/// `&` split off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    /// The line as the README shows it (continuations joined with `\` and a newline).
    pub text: String,
    /// The command without its comment or trailing `&`, for `bash -c`.
    pub command: String,
    /// The comment after the command (without `#`), if any.
    pub comment: Option<String>,
    /// Whether the line ends with `&` (a server the reader leaves running).
    pub background: bool,
    /// The 1-based line number in the Markdown file.
    pub line: usize,
}

impl CommandLine {
    /// The exit status the comment claims (`exits N`), else 0.
    pub fn claimed_exit(&self) -> i32 {
        let comment = self.comment.as_deref().unwrap_or("");
        let words: Vec<&str> = comment
            .split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == ')')
            .filter(|w| !w.is_empty())
            .collect();
        words
            .windows(2)
            .find(|w| w[0] == "exits")
            .and_then(|w| w[1].parse().ok())
            .unwrap_or(0)
    }
}

/// The command lines of `block`: blank lines and whole-line comments are not commands.
pub fn command_lines(block: &FencedBlock) -> Vec<CommandLine> {
    let mut out = vec![];
    let mut pending: Option<(String, usize)> = None;
    for (i, raw) in block.lines.iter().enumerate() {
        let (mut text, start) = match pending.take() {
            Some((text, start)) => (text + "\n" + raw, start),
            None if raw.trim().is_empty() || raw.trim_start().starts_with('#') => continue,
            None => (raw.clone(), block.first_line + i),
        };
        let (code, comment) = split_comment(&text);
        if code.trim_end().ends_with('\\') {
            pending = Some((std::mem::take(&mut text), start));
            continue;
        }
        let code = code.trim_end();
        let background = code.ends_with('&') && !code.ends_with("&&");
        let command = code
            .strip_suffix('&')
            .filter(|_| background)
            .unwrap_or(code)
            .trim_end()
            .to_string();
        out.push(CommandLine {
            command,
            comment: comment.map(|c| c.trim().to_string()),
            background,
            line: start,
            text: text.trim_end().to_string(),
        });
    }
    out
}

/// Splits a shell line at its comment: a `#` that starts a word outside quotes.
fn split_comment(line: &str) -> (&str, Option<&str>) {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => {
                return (&line[..i], Some(&line[i + 1..]));
            }
            _ => {}
        }
        prev = c;
    }
    (line, None)
}

/// Whether a block's lines are shell commands for the reader to type: the first word of its
/// first line names one of the project's programs or scripts, or a tool the README tells
/// readers to run (a block of measured output starts with its title, the layout with a path).
pub fn is_command_block(block: &FencedBlock) -> bool {
    block.info.is_empty()
        && command_lines(block).first().is_some_and(|l| {
            let first = l.command.split_whitespace().next().unwrap_or("");
            first == "sm"
                || first.starts_with("sm-")
                || first.starts_with("scripts/")
                || [
                    "cargo",
                    "curl",
                    "mkfs.ext4",
                    "qemu-storage-daemon",
                    "virtiofsd",
                ]
                .contains(&first)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "text\n<!-- readme-test: run -->\n```\n\
        a --x 'y # not a comment' # says: prints 2, exits 3\n\
        # a note\n\
        b --long \\\n  --more &   # a server\n\
        c && d\n```\n\n```rust\nlet x = 1;\n```\n";

    #[test]
    fn blocks_carry_their_marker_and_line_numbers() {
        let blocks = fenced_blocks(SAMPLE);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].marker.as_deref(), Some(RUN_MARKER));
        assert_eq!(blocks[0].first_line, 4);
        assert_eq!(blocks[1].info, "rust");
        assert_eq!(blocks[1].marker, None);
    }

    #[test]
    fn command_lines_join_continuations_and_split_comments() {
        let lines = command_lines(&fenced_blocks(SAMPLE)[0]);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].command, "a --x 'y # not a comment'");
        assert_eq!(lines[0].claimed_exit(), 3);
        assert!(!lines[0].background);
        assert_eq!(lines[1].command, "b --long \\\n  --more");
        assert!(lines[1].background);
        assert_eq!(lines[1].line, 6);
        assert_eq!(lines[1].text, "b --long \\\n  --more &   # a server");
        assert_eq!(lines[2].command, "c && d");
        assert!(!lines[2].background);
        assert_eq!(lines[2].claimed_exit(), 0);
    }
}
