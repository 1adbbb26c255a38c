//! Include/exclude globs, and the names ferry reserves for itself inside a synced folder.

use std::path::Path;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// Prefix of the temporary files a transfer writes before renaming them into place.
pub const TEMP_PREFIX: &str = ".ferry-tmp.";
/// Folder at a replica's root where ferry keeps its own state; never synced.
pub const STATE_DIR: &str = ".ferry";

#[derive(Debug, thiserror::Error)]
#[error("invalid glob {pattern:?}: {source}")]
pub struct FilterError {
    pub pattern: String,
    #[source]
    pub source: globset::Error,
}

/// Decides which relative paths a job touches.
///
/// A pattern without `/` matches a name at any depth (`*.tmp`); a pattern with `/` matches the
/// whole path relative to the job's root (`logs/**`). An excluded folder is not descended into.
/// When includes are given, a file must match one of them; folders are always traversed.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    /// The patterns as given, to hand the filter to an agent.
    patterns: (Vec<String>, Vec<String>),
}

impl Filter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, FilterError> {
        Ok(Self {
            include: build_set(include)?,
            exclude: build_set(exclude)?,
            patterns: (include.to_vec(), exclude.to_vec()),
        })
    }

    /// The include and exclude patterns it was built from.
    pub fn patterns(&self) -> (&[String], &[String]) {
        (&self.patterns.0, &self.patterns.1)
    }

    pub fn admits_dir(&self, rel: &Path) -> bool {
        !is_reserved(rel) && !matches(&self.exclude, rel)
    }

    pub fn admits_file(&self, rel: &Path) -> bool {
        if is_reserved(rel) || matches(&self.exclude, rel) {
            return false;
        }
        self.include.is_none() || matches(&self.include, rel)
    }
}

/// True for ferry's own files: temporary transfer files anywhere, the state folder at the root.
pub fn is_reserved(rel: &Path) -> bool {
    let is_temp = rel
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(TEMP_PREFIX));
    is_temp || rel.starts_with(STATE_DIR)
}

fn matches(set: &Option<GlobSet>, rel: &Path) -> bool {
    let Some(set) = set else { return false };
    set.is_match(rel)
        || rel
            .file_name()
            .is_some_and(|name| set.is_match(Path::new(name)))
}

fn build_set(patterns: &[String]) -> Result<Option<GlobSet>, FilterError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        builder.add(compile(pattern)?);
    }
    let set = builder.build().map_err(|source| FilterError {
        pattern: patterns.join(" "),
        source,
    })?;
    Ok(Some(set))
}

fn compile(pattern: &str) -> Result<Glob, FilterError> {
    GlobBuilder::new(pattern.trim_start_matches('/'))
        .literal_separator(pattern.contains('/'))
        .build()
        .map_err(|source| FilterError {
            pattern: pattern.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(include: &[&str], exclude: &[&str]) -> Filter {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Filter::new(&own(include), &own(exclude)).unwrap()
    }

    #[test]
    fn name_patterns_match_at_any_depth() {
        let f = filter(&[], &["*.tmp"]);
        assert!(!f.admits_file(Path::new("a.tmp")));
        assert!(!f.admits_file(Path::new("deep/er/a.tmp")));
        assert!(f.admits_file(Path::new("a.txt")));
    }

    #[test]
    fn path_patterns_match_from_the_root() {
        let f = filter(&[], &["logs/*"]);
        assert!(!f.admits_file(Path::new("logs/a")));
        assert!(f.admits_file(Path::new("logs/sub/a")));
        assert!(f.admits_file(Path::new("x/logs/a")));
    }

    #[test]
    fn includes_limit_files_but_not_folders() {
        let f = filter(&["*.doc"], &[]);
        assert!(f.admits_file(Path::new("a/b.doc")));
        assert!(!f.admits_file(Path::new("a/b.txt")));
        assert!(f.admits_dir(Path::new("a")));
    }

    #[test]
    fn ferry_files_are_never_synced() {
        let f = Filter::default();
        assert!(!f.admits_file(Path::new("dir/.ferry-tmp.12.3")));
        assert!(!f.admits_dir(Path::new(".ferry")));
        assert!(!f.admits_file(Path::new(".ferry/sync/job.json")));
        assert!(f.admits_file(Path::new("dir/.ferry")));
    }

    #[test]
    fn a_bad_glob_names_itself() {
        let err = Filter::new(&["a[".into()], &[]).unwrap_err();
        assert!(err.to_string().contains("a["), "{err}");
    }
}
