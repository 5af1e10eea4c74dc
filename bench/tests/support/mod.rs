//! What the bench's integration tests share: a folder per test, the bench binary beside the
//! example functions, and running it for its JSON lines.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A folder of its own for this test, under cargo's temporary folder.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The bench binary cargo built, copied beside the example functions (it finds them beside
/// itself), so that it never runs cargo while this test's cargo holds the target folder.
pub fn bench_binary(dir: &Path) -> PathBuf {
    let bench = dir.join("praas-bench");
    std::fs::copy(env!("CARGO_BIN_EXE_praas-bench"), &bench).unwrap();
    std::fs::copy(praas_testkit::example_functions(), dir.join("libpraas_example_functions.so")).unwrap();
    bench
}

/// Runs the bench with `args`; returns its JSON lines.
pub fn run(bench: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let output = Command::new(bench).args(args).output().expect("praas-bench runs");
    assert!(
        output.status.success(),
        "praas-bench {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    stdout.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))).collect()
}
