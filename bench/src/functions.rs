//! The example functions the praas server runs: their library, found next to the bench executable
//! (built on demand), the example Python functions (`examples/python/functions.py`, next to the
//! executable or in the workspace), and the manifest that declares them, written to a temporary
//! file.

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

/// File name of the example Python functions (`examples/python/functions.py`) when they lie
/// beside the bench executable.
pub const PYTHON_MODULE: &str = "functions.py";

/// The example Python functions: `functions.py` beside the bench executable, else
/// `examples/python/functions.py` of the workspace the bench was built in; `None` if neither is
/// there (a bench copied away from its workspace, as into the RDMA VM).
pub fn python_module() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let beside = exe.parent()?.join(PYTHON_MODULE);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python").join(PYTHON_MODULE);
    [beside, workspace].into_iter().find(|path| path.is_file()).and_then(|path| path.canonicalize().ok())
}

#[derive(Debug, Serialize)]
struct ManifestFile<'a> {
    function: Vec<FunctionEntry<'a>>,
}

#[derive(Debug, Serialize)]
struct FunctionEntry<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    language: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    library: Option<&'a Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    module: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    symbol: Option<&'a str>,
    mode: &'a str,
}

/// The worker-mode echo: the library's `echo` run on the process's worker pool
/// (`praas-bench invoke --mode worker`).
pub const ECHO_WORKER: &str = "echo_worker";
/// The worker-mode C no-op: the library's `noop` on the worker pool (`invoke --python`).
pub const NOOP_WORKER: &str = "noop_worker";
/// The Python no-op (`noop` of the Python module), inline and on the worker pool (`invoke --python`).
pub const PY_NOOP: &str = "py_noop";
/// The worker-mode Python no-op.
pub const PY_NOOP_WORKER: &str = "py_noop_worker";
/// The CPU-bound Python function (`burn` of the Python module, on the workers: `python-gil`).
pub const PY_BURN: &str = "py_burn";

/// The manifest text of the C ABI functions: `echo` and `noop` inline (on the I/O thread);
/// `echo_worker` and `noop_worker` (the same symbols), `local_loop`, `fill` and the message
/// benchmark's `msg_bounce` and `msg_roundtrip`, the remote-invocation benchmark's `remote_bench`
/// and the reduction benchmark's `kmeans_*` on the worker. With `python` (the example Python module,
/// absolute) also the Python functions: `py_noop` inline, `py_noop_worker` and `py_burn` on the
/// worker.
pub fn manifest_text_with(library: &Path, python: Option<&Path>) -> Result<String, String> {
    let entry =
        |name, mode| FunctionEntry { name, language: None, library: Some(library), module: None, symbol: None, mode };
    let mut function = vec![
        entry("echo", "inline"),
        entry("noop", "inline"),
        FunctionEntry { symbol: Some("echo"), ..entry(ECHO_WORKER, "worker") },
        FunctionEntry { symbol: Some("noop"), ..entry(NOOP_WORKER, "worker") },
        entry("local_loop", "worker"),
        entry("fill", "worker"),
        entry("msg_bounce", "worker"),
        entry("msg_roundtrip", "worker"),
        entry("remote_bench", "worker"),
        entry("kmeans_load", "worker"),
        entry("kmeans_partial", "worker"),
        entry("kmeans_reduce", "worker"),
        entry("kmeans_worker_msg", "worker"),
        entry("kmeans_reduce_msg", "worker"),
        entry("kmeans_worker_redis", "worker"),
        entry("kmeans_reduce_redis", "worker"),
    ];
    if let Some(module) = python {
        let module = module.to_str().ok_or_else(|| format!("{} is not a UTF-8 path", module.display()))?;
        let python = |name, symbol, mode| FunctionEntry {
            name,
            language: Some("python"),
            library: None,
            module: Some(module),
            symbol: Some(symbol),
            mode,
        };
        function.extend([
            python(PY_NOOP, "noop", "inline"),
            python(PY_NOOP_WORKER, "noop", "worker"),
            python(PY_BURN, "burn", "worker"),
        ]);
    }
    toml::to_string(&ManifestFile { function }).map_err(|e| format!("cannot write the manifest: {e}"))
}

/// The manifest text of the C ABI functions alone ([`manifest_text_with`] without Python).
pub fn manifest_text(library: &Path) -> Result<String, String> {
    manifest_text_with(library, None)
}

/// The Python module the manifests the bench writes declare: [`python_module`] when this bench
/// was built with the `python` feature (the served process can run Python functions), else none.
pub fn served_python_module() -> Option<PathBuf> {
    if cfg!(feature = "python") {
        python_module()
    } else {
        None
    }
}

/// Writes the manifest to a temporary file, removed when the returned handle drops: the C ABI
/// functions and, when [`served_python_module`] finds the module, the Python ones (else says on
/// stderr that they are left out).
pub fn write_manifest(library: &Path) -> Result<NamedTempFile, String> {
    let python = served_python_module();
    if cfg!(feature = "python") && python.is_none() {
        eprintln!(
            "praas-bench: no {PYTHON_MODULE} beside the bench nor in its workspace: the manifest has no Python functions"
        );
    }
    let mut file = tempfile::Builder::new()
        .prefix("praas-bench-")
        .suffix(".toml")
        .tempfile()
        .map_err(|e| format!("cannot create a temporary manifest: {e}"))?;
    let text = manifest_text_with(library, python.as_deref())?;
    file.write_all(text.as_bytes()).map_err(|e| format!("cannot write the manifest: {e}"))?;
    file.flush().map_err(|e| format!("cannot write the manifest: {e}"))?;
    Ok(file)
}

/// Fails unless the manifests this bench writes hold the Python functions: what `invoke --python`
/// and `python-gil` measure.
pub fn require_python() -> Result<PathBuf, String> {
    if !cfg!(feature = "python") {
        return Err("this praas-bench was built without the python feature: it serves no Python functions".into());
    }
    python_module().ok_or_else(|| {
        format!("the Python functions ({PYTHON_MODULE}) are neither beside the bench nor in its workspace (examples/python)")
    })
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
        assert_eq!(
            names,
            [
                "echo",
                "noop",
                "echo_worker",
                "noop_worker",
                "local_loop",
                "fill",
                "msg_bounce",
                "msg_roundtrip",
                "remote_bench",
                "kmeans_load",
                "kmeans_partial",
                "kmeans_reduce",
                "kmeans_worker_msg",
                "kmeans_reduce_msg",
                "kmeans_worker_redis",
                "kmeans_reduce_redis"
            ]
        );
        assert_eq!(manifest.functions[0].library, Path::new("/opt/a \"quoted\" dir/libx.so"));
        let modes: Vec<String> = manifest.functions.iter().map(|f| format!("{:?}", f.mode)).collect();
        assert_eq!(&modes[..2], ["Inline", "Inline"]);
        assert!(modes[2..].iter().all(|m| m == "Worker"), "{modes:?}");
        let symbols: Vec<Option<&str>> = manifest.functions.iter().map(|f| f.symbol.as_deref()).collect();
        assert_eq!(&symbols[..4], [None, None, Some("echo"), Some("noop")]);
        assert!(symbols[4..].iter().all(Option::is_none), "{symbols:?}");
    }

    #[test]
    fn python_functions_are_declared_beside_the_c_ones() {
        let text = manifest_text_with(Path::new("/opt/libx.so"), Some(Path::new("/opt/py/functions.py"))).unwrap();
        let manifest = Manifest::from_toml(&text, Path::new("/elsewhere")).unwrap();
        let python: Vec<_> = manifest.functions.iter().filter(|f| f.module.is_some()).collect();
        let names: Vec<&str> = python.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, [PY_NOOP, PY_NOOP_WORKER, PY_BURN]);
        for f in &python {
            assert_eq!(format!("{:?}", f.language), "Python");
            assert_eq!(f.module.as_deref(), Some("/opt/py/functions.py"));
        }
        let symbols: Vec<Option<&str>> = python.iter().map(|f| f.symbol.as_deref()).collect();
        assert_eq!(symbols, [Some("noop"), Some("noop"), Some("burn")]);
        let modes: Vec<String> = python.iter().map(|f| format!("{:?}", f.mode)).collect();
        assert_eq!(modes, ["Inline", "Worker", "Worker"]);
    }

    #[test]
    fn the_python_module_is_found_in_the_workspace() {
        let module = python_module().expect("examples/python/functions.py");
        assert!(module.is_absolute() && module.ends_with("examples/python/functions.py"), "{}", module.display());
    }
}
