//! Typed command lines: a flag struct turned back into the arguments that parse to it.

use std::ffi::{OsStr, OsString};
use std::fmt::Debug;
use std::process::Command;

use clap::{CommandFactory, Parser, ValueEnum};

/// A binary's flags as a value that can become its command line again.
pub trait CommandLine: Parser {
    /// The arguments (without the program name) that parse back to `self`.
    fn to_args(&self) -> Vec<OsString>;

    /// A [`Command`] running `program` with these flags.
    fn to_command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(self.to_args());
        cmd
    }
}

/// Writes arguments for the flags of a clap struct, naming each flag by its field (clap's
/// argument id) and taking the spelling (`--long`) from the struct's own definition, so the
/// writer and the parser cannot disagree on a name.
pub struct ArgWriter {
    spec: clap::Command,
    args: Vec<OsString>,
}

impl ArgWriter {
    /// A writer for the flags of `P`.
    pub fn new<P: CommandFactory>() -> ArgWriter {
        ArgWriter {
            spec: P::command(),
            args: vec![],
        }
    }

    /// `--long` for the field `id`. Panics when `P` has no such long flag: a programming
    /// error that every [`CommandLine`] implementation's round-trip test catches.
    fn flag(&self, id: &str) -> String {
        let arg = self
            .spec
            .get_arguments()
            .find(|a| a.get_id() == id)
            .unwrap_or_else(|| panic!("{} has no argument {id}", self.spec.get_name()));
        let long = arg
            .get_long()
            .unwrap_or_else(|| panic!("{}: argument {id} has no long name", self.spec.get_name()));
        format!("--{long}")
    }

    /// `--long=VALUE` for the field `id`.
    pub fn value(&mut self, id: &str, value: impl AsRef<OsStr>) -> &mut ArgWriter {
        let mut a = OsString::from(self.flag(id) + "=");
        a.push(value.as_ref());
        self.args.push(a);
        self
    }

    /// `--long=VALUE` when there is a value.
    pub fn option<V: AsRef<OsStr>>(&mut self, id: &str, value: Option<V>) -> &mut ArgWriter {
        if let Some(v) = value {
            self.value(id, v);
        }
        self
    }

    /// `--long=VALUE` once per value (a repeatable flag).
    pub fn values<V: AsRef<OsStr>>(
        &mut self,
        id: &str,
        values: impl IntoIterator<Item = V>,
    ) -> &mut ArgWriter {
        for v in values {
            self.value(id, v);
        }
        self
    }

    /// `--long=NAME` for a value-enum flag, by the name clap parses.
    pub fn choice<E: ValueEnum>(&mut self, id: &str, value: &E) -> &mut ArgWriter {
        let name = value
            .to_possible_value()
            .map(|p| p.get_name().to_owned())
            .unwrap_or_else(|| panic!("{id}: a skipped value-enum variant cannot be written"));
        self.value(id, name)
    }

    /// `--long` when `on` (a boolean switch).
    pub fn switch(&mut self, id: &str, on: bool) -> &mut ArgWriter {
        if on {
            let a = self.flag(id).into();
            self.args.push(a);
        }
        self
    }

    /// `--` and then `rest` verbatim (a trailing command), when `rest` is not empty.
    pub fn trailing<V: AsRef<OsStr>>(&mut self, rest: &[V]) -> &mut ArgWriter {
        if !rest.is_empty() {
            self.args.push("--".into());
            self.args.extend(rest.iter().map(|v| v.as_ref().to_owned()));
        }
        self
    }

    /// The arguments written.
    pub fn finish(&mut self) -> Vec<OsString> {
        std::mem::take(&mut self.args)
    }
}

/// Asserts that `value`'s arguments parse back to `value` (for each implementation's tests).
pub fn assert_round_trip<T: CommandLine + PartialEq + Debug>(value: &T) {
    let args = value.to_args();
    let name = <T as CommandFactory>::command().get_name().to_owned();
    let parsed = T::try_parse_from(std::iter::once(OsString::from(name)).chain(args.clone()))
        .unwrap_or_else(|e| panic!("{args:?} does not parse: {e}"));
    assert_eq!(&parsed, value, "{args:?} parsed to something else");
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
    enum Mode {
        Fast,
        SlowAndSteady,
    }

    /// A flag struct with one flag of each shape.
    #[derive(Parser, Debug, PartialEq)]
    #[command(name = "demo")]
    struct Demo {
        #[arg(long)]
        path: PathBuf,
        #[arg(long = "renamed-flag")]
        count: Option<u32>,
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        #[arg(long, value_enum, default_value_t = Mode::Fast)]
        mode: Mode,
        #[arg(long)]
        quiet: bool,
        #[arg(last = true)]
        command: Vec<String>,
    }

    impl CommandLine for Demo {
        fn to_args(&self) -> Vec<OsString> {
            let Demo {
                path,
                count,
                env,
                mode,
                quiet,
                command,
            } = self;
            ArgWriter::new::<Demo>()
                .value("path", path)
                .option("count", count.map(|c| c.to_string()))
                .values("env", env)
                .choice("mode", mode)
                .switch("quiet", *quiet)
                .trailing(command)
                .finish()
        }
    }

    #[test]
    fn every_shape_round_trips() {
        assert_round_trip(&Demo {
            path: "/a b/-c=d".into(),
            count: Some(3),
            env: vec!["K=V".into(), "-x".into()],
            mode: Mode::SlowAndSteady,
            quiet: true,
            command: vec!["sh".into(), "-c".into(), "--".into()],
        });
        assert_round_trip(&Demo {
            path: "p".into(),
            count: None,
            env: vec![],
            mode: Mode::Fast,
            quiet: false,
            command: vec![],
        });
    }

    #[test]
    fn the_spelling_comes_from_the_definition() {
        let args = ArgWriter::new::<Demo>()
            .option("count", Some("1"))
            .switch("quiet", true)
            .finish();
        assert_eq!(args, ["--renamed-flag=1", "--quiet"]);
    }

    #[test]
    #[should_panic(expected = "demo has no argument nope")]
    fn an_unknown_field_is_caught() {
        ArgWriter::new::<Demo>().value("nope", "x");
    }
}
