//! Include/exclude globs, and the names ferry reserves for itself inside a synced folder.

use std::path::Path;

use globset::{GlobBuilder, GlobMatcher};

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

/// Decides which relative paths a job touches, with `.gitignore`'s (and rsync's) meaning:
///
/// - a pattern without a `/` matches a name at any depth (`*.tmp`, `build`);
/// - a pattern with a `/` at its start or in its middle matches the path from the job's root
///   (`/build` is the root's `build` only, `logs/*.log`);
/// - a pattern ending in `/` matches folders only (`build/`);
/// - `**` spans folders (`**/cache`, `logs/**`).
///
/// An excluded folder is not descended into. When includes are given, a file must match one of
/// them (or lie in a folder an include ending in `/` matches); folders are always traversed.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: Vec<Rule>,
    exclude: Vec<Rule>,
    /// The patterns as given, to hand the filter to an agent.
    patterns: (Vec<String>, Vec<String>),
}

/// One pattern, compiled.
#[derive(Debug, Clone)]
struct Rule {
    glob: GlobMatcher,
    /// Matched against the whole relative path, not a name.
    anchored: bool,
    /// Matches folders only.
    folders_only: bool,
}

impl Rule {
    fn compile(pattern: &str) -> Result<Rule, FilterError> {
        let folders_only = pattern.len() > 1 && pattern.ends_with('/');
        let body = pattern
            .strip_suffix('/')
            .filter(|_| folders_only)
            .unwrap_or(pattern);
        let anchored = body.contains('/');
        let glob = GlobBuilder::new(body.trim_start_matches('/'))
            .literal_separator(true)
            .build()
            .map_err(|source| FilterError {
                pattern: pattern.to_owned(),
                source,
            })?;
        Ok(Rule {
            glob: glob.compile_matcher(),
            anchored,
            folders_only,
        })
    }

    fn matches(&self, rel: &Path, is_dir: bool) -> bool {
        if self.folders_only && !is_dir {
            return false;
        }
        match self.anchored {
            true => self.glob.is_match(rel),
            false => rel.file_name().is_some_and(|name| self.glob.is_match(name)),
        }
    }
}

impl Filter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, FilterError> {
        let compile = |patterns: &[String]| -> Result<Vec<Rule>, FilterError> {
            patterns.iter().map(|p| Rule::compile(p)).collect()
        };
        Ok(Self {
            include: compile(include)?,
            exclude: compile(exclude)?,
            patterns: (include.to_vec(), exclude.to_vec()),
        })
    }

    /// The include and exclude patterns it was built from.
    pub fn patterns(&self) -> (&[String], &[String]) {
        (&self.patterns.0, &self.patterns.1)
    }

    /// Whether the job touches `rel`, a folder or not as `is_dir` says.
    pub fn admits(&self, rel: &Path, is_dir: bool) -> bool {
        match is_dir {
            true => self.admits_dir(rel),
            false => self.admits_file(rel),
        }
    }

    pub fn admits_dir(&self, rel: &Path) -> bool {
        !is_reserved(rel) && !self.exclude.iter().any(|r| r.matches(rel, true))
    }

    pub fn admits_file(&self, rel: &Path) -> bool {
        if is_reserved(rel) || self.exclude.iter().any(|r| r.matches(rel, false)) {
            return false;
        }
        let in_included_folder = || {
            (rel.ancestors().skip(1))
                .filter(|a| !a.as_os_str().is_empty())
                .any(|a| {
                    self.include
                        .iter()
                        .any(|r| r.folders_only && r.matches(a, true))
                })
        };
        self.include.is_empty()
            || self.include.iter().any(|r| r.matches(rel, false))
            || in_included_folder()
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
    fn a_trailing_slash_matches_folders_and_a_leading_one_the_root_only() {
        let f = filter(&[], &["build/", "/out"]);
        assert!(!f.admits_dir(Path::new("build")));
        assert!(!f.admits_dir(Path::new("sub/build")));
        assert!(
            f.admits_file(Path::new("build")),
            "a file named build is not a folder"
        );
        assert!(!f.admits_dir(Path::new("out")));
        assert!(!f.admits_file(Path::new("out")));
        assert!(
            f.admits_dir(Path::new("sub/out")),
            "/out is the root's only"
        );
        assert!(f.admits_file(Path::new("sub/out")));
    }

    #[test]
    fn double_stars_span_folders_and_includes_ending_in_a_slash_take_a_folder() {
        let f = filter(&["docs/", "**/keep/*.txt"], &["**/cache"]);
        assert!(f.admits_file(Path::new("docs/a/b.bin")));
        assert!(f.admits_file(Path::new("x/y/keep/a.txt")));
        assert!(!f.admits_file(Path::new("x/y/a.txt")));
        assert!(!f.admits_dir(Path::new("a/b/cache")));
    }

    #[test]
    fn a_bad_glob_names_itself() {
        let err = Filter::new(&["a[".into()], &[]).unwrap_err();
        assert!(err.to_string().contains("a["), "{err}");
    }
}
