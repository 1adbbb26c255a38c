//! Paths in frames and state files. A Unix file name is bytes, not text: a name in another
//! encoding than UTF-8 (left by an old Samba share, say) must replicate like any other, so a
//! path is written as a string when it is UTF-8 (nearly always, and readable) and as its raw
//! bytes otherwise. Both forms are read back, so earlier frames and files stay readable.
//!
//! Use with `#[serde(with = "crate::raw_path")]` on a `PathBuf`, or the submodules for the
//! containers the protocol uses.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use crate::tree::Entry;

pub fn serialize<S: Serializer>(path: &Path, serializer: S) -> Result<S::Ok, S::Error> {
    match path.to_str() {
        Some(text) => serializer.serialize_str(text),
        None => serializer.serialize_bytes(path.as_os_str().as_bytes()),
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PathBuf, D::Error> {
    deserializer.deserialize_any(PathVisitor)
}

struct PathVisitor;

impl<'de> Visitor<'de> for PathVisitor {
    type Value = PathBuf;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a path, as a string or as bytes")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<PathBuf, E> {
        Ok(PathBuf::from(text))
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<PathBuf, E> {
        Ok(PathBuf::from(OsString::from_vec(bytes.to_vec())))
    }

    /// Bytes in a format without a bytes type (JSON writes them as an array of numbers).
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PathBuf, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        Ok(PathBuf::from(OsString::from_vec(bytes)))
    }
}

/// A path to write, for the containers below.
struct Borrowed<'a>(&'a Path);

impl Serialize for Borrowed<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize(self.0, serializer)
    }
}

/// A path read, for the containers below.
struct Owned(PathBuf);

impl<'de> Deserialize<'de> for Owned {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize(deserializer).map(Owned)
    }
}

/// `Vec<PathBuf>`.
pub mod list {
    use super::*;

    pub fn serialize<S: Serializer>(paths: &[PathBuf], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(paths.iter().map(|p| Borrowed(p)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<PathBuf>, D::Error> {
        let paths = Vec::<Owned>::deserialize(deserializer)?;
        Ok(paths.into_iter().map(|Owned(p)| p).collect())
    }
}

/// `Option<Vec<PathBuf>>`.
pub mod optional_list {
    use super::*;

    pub fn serialize<S: Serializer>(
        paths: &Option<Vec<PathBuf>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match paths {
            Some(paths) => serializer.serialize_some(&Listed(paths)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<PathBuf>>, D::Error> {
        let paths = Option::<Vec<Owned>>::deserialize(deserializer)?;
        Ok(paths.map(|paths| paths.into_iter().map(|Owned(p)| p).collect()))
    }

    struct Listed<'a>(&'a [PathBuf]);

    impl Serialize for Listed<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            list::serialize(self.0, serializer)
        }
    }
}

/// `Vec<(PathBuf, Entry)>`: a scan's entries.
pub mod entries {
    use super::*;

    pub fn serialize<S: Serializer>(
        entries: &[(PathBuf, Entry)],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(entries.iter().map(|(p, e)| (Borrowed(p), e)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(PathBuf, Entry)>, D::Error> {
        let entries = Vec::<(Owned, Entry)>::deserialize(deserializer)?;
        Ok(entries.into_iter().map(|(Owned(p), e)| (p, e)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Named {
        #[serde(with = "crate::raw_path")]
        path: PathBuf,
        #[serde(with = "crate::raw_path::list")]
        paths: Vec<PathBuf>,
    }

    fn latin1() -> PathBuf {
        PathBuf::from(OsString::from_vec(b"caf\xe9/r\xe9sum\xe9.txt".to_vec()))
    }

    #[test]
    fn a_name_that_is_not_utf8_survives_msgpack_and_json() {
        let named = Named {
            path: latin1(),
            paths: vec![latin1(), PathBuf::from("plain/name.txt")],
        };
        let packed = rmp_serde::to_vec_named(&named).unwrap();
        assert_eq!(rmp_serde::from_slice::<Named>(&packed).unwrap(), named);
        let json = serde_json::to_vec(&named).unwrap();
        assert_eq!(serde_json::from_slice::<Named>(&json).unwrap(), named);
    }

    #[test]
    fn utf8_names_are_written_as_strings_as_before() {
        #[derive(Serialize)]
        struct Plain {
            path: PathBuf,
        }
        let path = PathBuf::from("docs/résumé.txt");
        let ours = Named {
            path: path.clone(),
            paths: vec![],
        };
        let json = serde_json::to_value(&ours).unwrap();
        assert_eq!(
            json["path"],
            serde_json::to_value(Plain { path }).unwrap()["path"]
        );
    }
}
