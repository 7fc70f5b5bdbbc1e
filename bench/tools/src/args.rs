//! A minimal `--name value` / `--name=value` / `--flag` parser (no clap: build time matters).

use std::str::FromStr;

pub struct Args {
    values: Vec<(String, String)>,
    flags: Vec<String>,
}

/// Outcome of a parse that did not produce `Args`.
pub enum ParseError {
    Help,
    Bad(String),
}

impl Args {
    /// Parses `argv` (without the program name). `value_opts` take a value,
    /// `flag_opts` don't; anything else is an error.
    pub fn parse(
        argv: impl IntoIterator<Item = String>,
        value_opts: &[&str],
        flag_opts: &[&str],
    ) -> Result<Args, ParseError> {
        let mut values = Vec::new();
        let mut flags = Vec::new();
        let mut it = argv.into_iter();
        while let Some(arg) = it.next() {
            if arg == "-h" || arg == "--help" {
                return Err(ParseError::Help);
            }
            let Some(body) = arg.strip_prefix("--") else {
                return Err(ParseError::Bad(format!("unexpected argument {arg:?}")));
            };
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            if flag_opts.contains(&name) {
                if inline.is_some() {
                    return Err(ParseError::Bad(format!("--{name} takes no value")));
                }
                flags.push(name.to_string());
            } else if value_opts.contains(&name) {
                let v = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .ok_or_else(|| ParseError::Bad(format!("--{name} needs a value")))?,
                };
                values.push((name.to_string(), v));
            } else {
                return Err(ParseError::Bad(format!("unknown option --{name}")));
            }
        }
        Ok(Args { values, flags })
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The last value given for `--name`, parsed; `Ok(None)` when absent.
    pub fn get<T: FromStr>(&self, name: &str) -> Result<Option<T>, String> {
        match self.str(name) {
            None => Ok(None),
            Some(v) => v
                .parse::<T>()
                .map(Some)
                .map_err(|_| format!("--{name}: cannot parse {v:?}")),
        }
    }

    pub fn required<T: FromStr>(&self, name: &str) -> Result<T, String> {
        self.get(name)?
            .ok_or_else(|| format!("--{name} is required"))
    }
}

/// Parses a positive, finite number of seconds (fractions allowed).
pub fn seconds(v: f64, name: &str) -> Result<std::time::Duration, String> {
    if (0.0..1e9).contains(&v) {
        Ok(std::time::Duration::from_secs_f64(v))
    } else {
        Err(format!("--{name}: {v} is not a valid number of seconds"))
    }
}
