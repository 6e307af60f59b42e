//! Files that tests watch (file_fresh checks) or hand to a node (secrets), in a
//! temp dir of the test.
use std::path::PathBuf;

use tempfile::TempDir;

pub struct WatchedFiles {
    dir: TempDir,
}

impl WatchedFiles {
    /// A new temp dir named `PREFIX...`, removed with the value.
    pub fn new(prefix: &str) -> WatchedFiles {
        WatchedFiles {
            dir: tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .expect("cannot create a temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Creates (or touches) the file: a check on it turns ok at the next scrape.
    pub fn create(&self, name: &str) {
        std::fs::write(self.path(name), "fresh\n").expect("writing a watched file");
    }

    /// Removes the file: a check on it turns critical at the next scrape.
    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.path(name)).expect("removing a watched file");
    }

    /// Writes a secret file; returns its path as fleet.toml wants it.
    pub fn secret(&self, name: &str, value: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, format!("{value}\n")).expect("writing a secret file");
        p.display().to_string()
    }
}
