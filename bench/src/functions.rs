//! The example functions the praas server runs: their library, found next to the bench executable
//! (built on demand), and the manifest that declares them, written to a temporary file.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;
use tempfile::NamedTempFile;

/// File name of the example functions' cdylib.
pub const LIBRARY: &str = "libpraas_example_functions.so";
const PACKAGE: &str = "praas-example-functions";

/// The library next to the bench executable; if missing, builds it with cargo (same profile and
/// target folder as the executable) and says so on stderr.
pub fn library() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the bench executable: {e}"))?;
    let dir = exe.parent().ok_or("the bench executable has no folder")?;
    let path = dir.join(LIBRARY);
    if path.is_file() {
        return Ok(path);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command.arg("build").args(["-p", PACKAGE]);
    command.arg("--manifest-path").arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"));
    // In a cargo target folder (`<target>/release` or `<target>/debug`), build into it with the
    // same profile; anywhere else, a release build in the workspace's own target folder.
    let profile = dir.file_name().and_then(|n| n.to_str());
    if profile != Some("debug") {
        command.arg("--release");
    }
    if let (Some("debug" | "release"), Some(target)) = (profile, dir.parent()) {
        command.arg("--target-dir").arg(target);
    }
    eprintln!("praas-bench: {} is missing; building it: {command:?}", path.display());
    // Cargo's output goes to stderr: stdout may be carrying JSON lines.
    let stderr = std::io::stderr().as_fd().try_clone_to_owned().map_err(|e| e.to_string())?;
    let status = command
        .stdout(Stdio::from(stderr))
        .status()
        .map_err(|e| format!("cannot run {}: {e}", cargo.to_string_lossy()))?;
    if !status.success() {
        return Err(format!(
            "building {PACKAGE} failed ({status}); build it with `cargo build --release -p {PACKAGE}`"
        ));
    }
    if !path.is_file() {
        return Err(format!(
            "{} is still missing after building {PACKAGE}; build it with `cargo build --release -p {PACKAGE}` \
             and run the bench from the same target folder",
            path.display()
        ));
    }
    Ok(path)
}

#[derive(Debug, Serialize)]
struct ManifestFile<'a> {
    function: Vec<FunctionEntry<'a>>,
}

#[derive(Debug, Serialize)]
struct FunctionEntry<'a> {
    name: &'a str,
    library: &'a Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    symbol: Option<&'a str>,
    mode: &'a str,
}

/// The worker-mode echo: the library's `echo` run on the process's worker pool
/// (`praas-bench invoke --mode worker`).
pub const ECHO_WORKER: &str = "echo_worker";

/// The manifest text: `echo` and `noop` inline (on the I/O thread); `echo_worker` (the same
/// `echo` symbol), `local_loop` and the message benchmark's `msg_bounce` and `msg_roundtrip` on
/// the worker.
pub fn manifest_text(library: &Path) -> Result<String, String> {
    let entry = |name, mode| FunctionEntry { name, library, symbol: None, mode };
    let manifest = ManifestFile {
        function: vec![
            entry("echo", "inline"),
            entry("noop", "inline"),
            FunctionEntry { symbol: Some("echo"), ..entry(ECHO_WORKER, "worker") },
            entry("local_loop", "worker"),
            entry("msg_bounce", "worker"),
            entry("msg_roundtrip", "worker"),
        ],
    };
    toml::to_string(&manifest).map_err(|e| format!("cannot write the manifest: {e}"))
}

/// Writes the manifest to a temporary file, removed when the returned handle drops.
pub fn write_manifest(library: &Path) -> Result<NamedTempFile, String> {
    let mut file = tempfile::Builder::new()
        .prefix("praas-bench-")
        .suffix(".toml")
        .tempfile()
        .map_err(|e| format!("cannot create a temporary manifest: {e}"))?;
    file.write_all(manifest_text(library)?.as_bytes()).map_err(|e| format!("cannot write the manifest: {e}"))?;
    file.flush().map_err(|e| format!("cannot write the manifest: {e}"))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use praas_dataplane::Manifest;

    use super::*;

    #[test]
    fn manifest_round_trips_through_the_runtime_parser() {
        let text = manifest_text(Path::new("/opt/a \"quoted\" dir/libx.so")).unwrap();
        let manifest = Manifest::from_toml(&text, Path::new("/elsewhere")).unwrap();
        let names: Vec<&str> = manifest.functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["echo", "noop", "echo_worker", "local_loop", "msg_bounce", "msg_roundtrip"]);
        assert_eq!(manifest.functions[0].library, Path::new("/opt/a \"quoted\" dir/libx.so"));
        let modes: Vec<String> = manifest.functions.iter().map(|f| format!("{:?}", f.mode)).collect();
        assert_eq!(modes, ["Inline", "Inline", "Worker", "Worker", "Worker", "Worker"]);
        let symbols: Vec<Option<&str>> = manifest.functions.iter().map(|f| f.symbol.as_deref()).collect();
        assert_eq!(symbols, [None, None, Some("echo"), None, None, None]);
    }
}
