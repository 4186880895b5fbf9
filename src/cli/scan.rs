//! `keybound scan [PATH]...`: finds keybound API keys in files, for pre-commit hooks and CI.
//!
//! A hit needs the exact format and a valid CRC-32 checksum ([`find_keys`]), so random
//! strings that merely look like keys are not reported. It prints `file:line: <key id>`,
//! never the secret, and exits 1 when anything is found, 2 when a path could not be read, 0
//! otherwise. It needs no database.
//!
//! Files are read as bytes in fixed-size chunks, so a binary file, a 200 KB minified line or
//! a multi-gigabyte log costs the same bounded memory; consecutive chunks overlap by one key
//! length so a key split across a chunk boundary is still found exactly once.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::ScanArgs;
use crate::keys::KeyId;
use crate::keys::format::{BODY_LEN, find_keys};

/// Directories never worth scanning: git's object store and cargo's build output.
const SKIP_DIRS: &[&str] = &[".git", "target"];
/// Bytes read at a time.
const CHUNK: usize = 1 << 20;
/// The longest key: `sk_prod_` (or `sk_test_`) and the body.
const MAX_KEY_LEN: usize = "sk_prod_".len() + BODY_LEN;

/// One key found in an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// 1-based line number.
    pub line: u64,
    /// The key's public id.
    pub key_id: KeyId,
}

/// Runs `keybound scan`.
pub fn run(args: ScanArgs) -> ExitCode {
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.paths
    };
    let mut scan = Scan::default();
    for path in &paths {
        if path.as_os_str() == "-" {
            scan.report(Path::new("-"), scan_reader(io::stdin().lock(), CHUNK));
        } else {
            scan.path(path, true);
        }
    }
    if scan.found > 0 {
        eprintln!(
            "keybound scan: {} API key(s) found; treat them as leaked: `keybound keys revoke <key id> --reason leaked` (or rotate) and remove them from the files and their history",
            scan.found
        );
        ExitCode::from(1)
    } else if scan.failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

#[derive(Default)]
struct Scan {
    found: usize,
    failed: bool,
}

impl Scan {
    /// Scans a file, or a directory tree. Links named on the command line are followed; links
    /// met while walking are not, so a walk cannot loop or leave the tree.
    fn path(&mut self, path: &Path, named: bool) {
        let meta = if named {
            std::fs::metadata(path)
        } else {
            std::fs::symlink_metadata(path)
        };
        match meta {
            Ok(m) if m.is_dir() => self.dir(path),
            Ok(m) if m.is_file() => {
                self.report(path, File::open(path).and_then(|f| scan_reader(f, CHUNK)))
            }
            Ok(_) => {}
            Err(e) => self.error(path, &e),
        }
    }

    fn dir(&mut self, dir: &Path) {
        let entries = match std::fs::read_dir(dir) {
            Ok(rd) => rd.collect::<io::Result<Vec<_>>>(),
            Err(e) => Err(e),
        };
        let mut entries = match entries {
            Ok(v) => v,
            Err(e) => return self.error(dir, &e),
        };
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && SKIP_DIRS.iter().any(|s| entry.file_name() == *s) {
                continue;
            }
            self.path(&entry.path(), false);
        }
    }

    fn report(&mut self, path: &Path, result: io::Result<Vec<Finding>>) {
        match result {
            Ok(findings) => {
                for f in findings {
                    println!(
                        "{}:{}: {} (keybound API key)",
                        path.display(),
                        f.line,
                        f.key_id
                    );
                    self.found += 1;
                }
            }
            Err(e) => self.error(path, &e),
        }
    }

    fn error(&mut self, path: &Path, e: &io::Error) {
        eprintln!("keybound scan: {}: {e}", path.display());
        self.failed = true;
    }
}

/// Scans everything `r` yields, `chunk` bytes at a time (at least twice a key's length).
///
/// A window is the unread chunk behind the last `MAX_KEY_LEN + 1` bytes of the previous one.
/// A candidate starting at `p` is decided by a window only if the window holds the whole
/// candidate and the byte after it (to see that the key is not glued to more characters), and
/// the byte before it; candidates further right are left to the next window, which starts one
/// byte before the first undecided position.
pub fn scan_reader(mut r: impl Read, chunk: usize) -> io::Result<Vec<Finding>> {
    assert!(chunk > 2 * MAX_KEY_LEN, "chunk too small");
    let mut findings = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(chunk + MAX_KEY_LEN + 1);
    // Newlines before buf[0], and the first buf index not yet decided by an earlier window.
    let mut lines_before = 0u64;
    let mut first_undecided = 0usize;
    loop {
        let eof = fill(&mut r, &mut buf, chunk)?;
        // Positions below `decided_end` have their candidate and its next byte in `buf`.
        let decided_end = if eof {
            buf.len()
        } else {
            buf.len() - MAX_KEY_LEN
        };
        let mut counted = 0usize;
        let mut lines = lines_before;
        for (pos, key_id) in find_keys(&buf) {
            if pos < first_undecided || pos >= decided_end {
                continue;
            }
            lines += newlines(&buf[counted..pos]);
            counted = pos;
            findings.push(Finding {
                line: lines + 1,
                key_id,
            });
        }
        if eof {
            return Ok(findings);
        }
        // Keep one byte of context before the first undecided position.
        let keep_from = decided_end - 1;
        lines_before += newlines(&buf[..keep_from]);
        buf.drain(..keep_from);
        first_undecided = 1;
    }
}

/// Reads until `buf` has grown by `chunk` bytes or the input ends; `true` at the end.
fn fill(r: &mut impl Read, buf: &mut Vec<u8>, chunk: usize) -> io::Result<bool> {
    let target = buf.len() + chunk;
    let mut tmp = [0u8; 8192];
    while buf.len() < target {
        let want = (target - buf.len()).min(tmp.len());
        match r.read(&mut tmp[..want]) {
            Ok(0) => return Ok(true),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

fn newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{ApiKey, KeyEnv};
    use proptest::prelude::*;

    /// The reference answer: the whole input at once.
    fn whole(text: &[u8]) -> Vec<Finding> {
        find_keys(text)
            .into_iter()
            .map(|(pos, key_id)| Finding {
                line: newlines(&text[..pos]) + 1,
                key_id,
            })
            .collect()
    }

    #[test]
    fn a_key_across_every_chunk_boundary_is_found_once() {
        let key = ApiKey::generate(KeyEnv::Prod);
        let chunk = 2 * MAX_KEY_LEN + 1;
        for offset in 0..chunk + 5 {
            let mut text = vec![b'\n'; offset];
            text.extend_from_slice(key.expose().as_bytes());
            text.extend_from_slice(b" tail");
            let got = scan_reader(&text[..], chunk).unwrap();
            assert_eq!(got, whole(&text), "offset {offset}");
            assert_eq!(got.len(), 1, "offset {offset}");
            assert_eq!(got[0].line, offset as u64 + 1, "offset {offset}");
        }
    }

    #[test]
    fn a_key_glued_to_more_characters_across_a_boundary_is_not_reported() {
        let key = ApiKey::generate(KeyEnv::Test);
        let chunk = 2 * MAX_KEY_LEN + 1;
        for offset in 0..chunk + 5 {
            for glued in [format!("x{}", key.expose()), format!("{}Z", key.expose())] {
                let mut text = vec![b' '; offset];
                text.extend_from_slice(glued.as_bytes());
                assert_eq!(
                    scan_reader(&text[..], chunk).unwrap(),
                    vec![],
                    "offset {offset}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn chunked_scan_equals_whole_scan(
            pieces in proptest::collection::vec(0usize..6, 0..40),
            chunk in (2 * MAX_KEY_LEN + 1)..400,
        ) {
            let keys = [ApiKey::generate(KeyEnv::Prod), ApiKey::generate(KeyEnv::Dev)];
            let mut text = Vec::new();
            for p in pieces {
                match p {
                    0 => text.extend_from_slice(keys[0].expose().as_bytes()),
                    1 => text.extend_from_slice(keys[1].expose().as_bytes()),
                    2 => text.push(b'\n'),
                    3 => text.extend_from_slice(b"sk_"),
                    4 => text.extend_from_slice(b"a\0b"),
                    _ => text.extend_from_slice(&keys[0].expose().as_bytes()[..40]),
                }
            }
            prop_assert_eq!(scan_reader(&text[..], chunk).unwrap(), whole(&text));
        }
    }
}
