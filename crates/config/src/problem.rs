use std::fmt;

use serde_saphyr::Location;

/// One thing wrong with a configuration, with its position in the file (1-based; 0 = unknown).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl Problem {
    pub fn at(location: &Location, message: impl Into<String>) -> Self {
        Self {
            line: location.line(),
            column: location.column(),
            message: message.into(),
        }
    }

    pub fn new(line: u64, column: u64, message: impl Into<String>) -> Self {
        Self {
            line,
            column,
            message: message.into(),
        }
    }
}

/// Every problem found in one configuration source. Displays one `FILE:LINE:COLUMN: message`
/// line per problem, the format editors and CI annotate.
#[derive(Debug, Clone, thiserror::Error, serde::Serialize)]
pub struct ConfigErrors {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl ConfigErrors {
    pub fn single(file: &str, problem: Problem) -> Self {
        Self {
            file: file.to_owned(),
            problems: vec![problem],
        }
    }

    /// The problems as `FILE:LINE:COLUMN: message` lines.
    pub fn lines(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|p| format!("{}:{}:{}: {}", self.file, p.line, p.column, p.message))
            .collect()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}
