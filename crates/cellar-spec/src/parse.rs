//! YAML feature repo parsing and validation.

use crate::repo::FeatureRepo;

/// One problem in a feature repo, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {field}: {message}")]
pub struct SpecError {
    pub file: String,
    pub line: usize,
    /// The field at fault, as a path within its document (`features[2].type`).
    pub field: String,
    pub message: String,
}

/// Every problem found in a repo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<SpecError>);

impl std::fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} error(s) in the feature repo:", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

/// Parses and validates the files of a feature repo, given as (path, text) pairs. Each file may
/// hold several YAML documents separated by `---`.
pub fn parse_repo(files: &[(String, String)]) -> Result<FeatureRepo, SpecErrors> {
    let _ = files;
    todo!("parse")
}
