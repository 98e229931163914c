//! A stand-in for the `bindgen` crate, put in its place by `[patch.crates-io]` in the workspace's
//! `Cargo.toml`.
//!
//! Why: the migration linter parses SQL with PostgreSQL's own grammar through the `pg_query`
//! crate, whose build script runs bindgen on `pg_query.h`, and bindgen needs libclang, which a
//! fresh machine does not have. `cargo run --release -- demo` must work there, so the bindings
//! were generated once, by the real bindgen 0.66.1 with pg_query's own settings (none), and are
//! committed as `src/pg_query_bindings.rs`. This crate answers pg_query's build script with them.
//!
//! It refuses any header but the exact `pg_query.h` they were generated from (checked by length
//! and FNV-1a hash), so an upgrade of pg_query fails the build loudly instead of linking against
//! stale declarations. To regenerate after an upgrade: install `libclang-dev`, remove the
//! `[patch.crates-io]` entry, build, copy `target/*/build/pg_query-*/out/bindings.rs` here, and
//! update [`HEADER_LEN`] and [`HEADER_FNV1A`] from that directory's `pg_query.h`.
//!
//! Only the part of bindgen's API that pg_query's build script calls is here.

use std::fmt;
use std::path::{Path, PathBuf};

/// The bindings of pg_query 18.1.0's `pg_query.h` for x86_64 Linux, as bindgen 0.66.1 wrote them.
const BINDINGS: &str = include_str!("pg_query_bindings.rs");
/// Length in bytes of the `pg_query.h` the bindings were generated from.
const HEADER_LEN: usize = 7986;
/// FNV-1a (64 bit) of that header.
const HEADER_FNV1A: u64 = 0x26ff_b91b_61b0_c085;

/// What went wrong: the header is not the one the bindings were made from, or it cannot be read.
#[derive(Debug)]
pub struct BindgenError(String);

impl fmt::Display for BindgenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BindgenError {}

/// Collects the header, as bindgen's builder does.
#[derive(Debug, Default)]
pub struct Builder {
    header: Option<PathBuf>,
}

impl Builder {
    pub fn header<T: Into<String>>(mut self, header: T) -> Builder {
        self.header = Some(PathBuf::from(header.into()));
        self
    }

    /// Checks that the header is the one the committed bindings came from.
    pub fn generate(self) -> Result<Bindings, BindgenError> {
        let Some(header) = self.header else {
            return Err(BindgenError("no header given".to_owned()));
        };
        let bytes = std::fs::read(&header)
            .map_err(|error| BindgenError(format!("cannot read {}: {error}", header.display())))?;
        if bytes.len() != HEADER_LEN || fnv1a(&bytes) != HEADER_FNV1A {
            return Err(BindgenError(format!(
                "{} is not the pg_query.h the committed bindings were generated from \
                 (pg_query was upgraded?); regenerate them as crates/bindgen-pregenerated/src/lib.rs says",
                header.display()
            )));
        }
        if !cfg!(all(target_arch = "x86_64", target_os = "linux")) {
            // The build script runs on the host; layout tests in the bindings catch a target
            // whose C layout differs, but say it plainly first.
            println!("cargo:warning=pg_query bindings were generated on x86_64 Linux");
        }
        Ok(Bindings)
    }
}

/// The generated bindings.
#[derive(Debug)]
pub struct Bindings;

impl Bindings {
    pub fn write_to_file<P: AsRef<Path>>(&self, path: P) -> std::io::Result<()> {
        std::fs::write(path, BINDINGS)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_different_header_is_refused() {
        let dir = std::env::temp_dir().join(format!("bindgen-stand-in-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let header = dir.join("pg_query.h");
        std::fs::write(&header, "int pg_query_init(void);\n").unwrap();
        let error = Builder::default()
            .header(header.to_str().unwrap())
            .generate()
            .unwrap_err();
        assert!(error.to_string().contains("regenerate"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
