//! Python functions through a real control plane, as a user deploys them: `praas app create`
//! uploads the module file with the manifest, a process runs Python beside Rust functions, its
//! Python state survives a swap, and a module that fails to import fails the process with the
//! Python traceback in its error.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use praas_control::model::ProcessStatus;
use support::{praas, ControlPlaneProcess};

fn run(cp: &ControlPlaneProcess, args: &[&str]) -> Output {
    praas()
        .env("PRAAS_TOKEN_FILE", cp.data_dir.join("api-token"))
        .arg("--control")
        .arg(&cp.http)
        .args(args)
        .output()
        .expect("praas runs")
}

fn ok(cp: &ControlPlaneProcess, args: &[&str]) -> String {
    let out = run(cp, args);
    assert!(out.status.success(), "praas {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A folder with the example Python module and a manifest of Python and Rust functions naming it.
fn python_app(dir: &Path, module_text: Option<&str>) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let module = dir.join("functions.py");
    match module_text {
        Some(text) => std::fs::write(&module, text).unwrap(),
        None => {
            std::fs::copy(praas_testkit::workspace_root().join("examples/python/functions.py"), &module).unwrap();
        }
    }
    let lib = praas_testkit::example_functions();
    let mut manifest = String::new();
    for (name, symbol, mode) in
        [("py_counter", "counter", "worker"), ("py_fail", "fail", "worker"), ("py_echo", "echo", "inline")]
    {
        manifest.push_str(&format!(
            "[[function]]\nname = \"{name}\"\nlanguage = \"python\"\nmodule = \"functions.py\"\nsymbol = \"{symbol}\"\nmode = \"{mode}\"\n\n"
        ));
    }
    manifest.push_str("[[function]]\nname = \"py_call_echo\"\nlanguage = \"python\"\nmodule = \"functions.py\"\nsymbol = \"call_echo\"\n\n");
    manifest.push_str(&format!("[[function]]\nname = \"echo\"\nlibrary = {lib:?}\nmode = \"inline\"\n"));
    let path = dir.join("functions.toml");
    std::fs::write(&path, manifest).unwrap();
    path
}

#[test]
fn python_functions_deploy_run_beside_rust_and_keep_their_state_across_a_swap() {
    let cp = ControlPlaneProcess::start("python", &[]);
    let manifest = python_app(&cp.data_dir.join("py-src"), None);
    let manifest = manifest.to_str().unwrap();
    ok(&cp, &["app", "create", "pyapp", "--manifest", manifest, "--vcpus", "1", "--memory-mb", "2048"]);
    assert!(ok(&cp, &["process", "create", "pyapp", "p1"]).contains("ALLOCATED"));

    assert_eq!(ok(&cp, &["invoke", "--app", "pyapp", "--process", "p1", "py_counter"]), "1");
    assert_eq!(ok(&cp, &["invoke", "--app", "pyapp", "--process", "p1", "py_counter"]), "2");
    assert_eq!(
        ok(&cp, &["invoke", "--app", "pyapp", "--process", "p1", "py_echo", "--input", "from python"]),
        "from python"
    );
    // Python invoking the Rust `echo` of its process through the C ABI.
    assert_eq!(ok(&cp, &["invoke", "--app", "pyapp", "--process", "p1", "py_call_echo", "--input", "round"]), "round");
    let failed = run(&cp, &["invoke", "--app", "pyapp", "--process", "p1", "py_fail", "--input", "fail now"]);
    assert!(!failed.status.success());
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(err.contains("ValueError") && err.contains("asked to fail") && err.contains("Traceback"), "{err}");

    assert!(ok(&cp, &["process", "swap", "pyapp", "p1"]).contains("SWAPPED_OUT"));
    assert!(ok(&cp, &["process", "swapin", "pyapp", "p1"]).contains("ALLOCATED"));
    assert_eq!(ok(&cp, &["invoke", "--app", "pyapp", "--process", "p1", "py_counter"]), "3", "state survives the swap");
}

#[test]
fn a_module_that_fails_to_import_fails_its_process_with_the_traceback() {
    let cp = ControlPlaneProcess::start("python-broken", &[]);
    let broken = "import praas_function\n\nraise RuntimeError('this module cannot start')\n";
    let manifest = python_app(&cp.data_dir.join("py-broken"), Some(broken));
    let manifest = manifest.to_str().unwrap();
    ok(&cp, &["app", "create", "broken", "--manifest", manifest, "--vcpus", "1", "--memory-mb", "2048"]);
    let created = run(&cp, &["process", "create", "broken", "b1"]);
    assert!(!created.status.success(), "a process whose module raises at import does not start");
    let record = cp.wait_status("broken", "b1", ProcessStatus::Failure, Duration::from_secs(30));
    let error = record.error.unwrap_or_default();
    assert!(error.contains("RuntimeError") && error.contains("this module cannot start"), "{error}");
    assert!(error.contains("Traceback"), "{error}");
}

#[test]
fn a_module_named_instead_of_a_file_is_refused_before_anything_is_sent() {
    let cp = ControlPlaneProcess::start("python-name", &[]);
    let dir = cp.data_dir.join("py-name");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("functions.toml");
    std::fs::write(
        &manifest,
        "[[function]]\nname = \"f\"\nlanguage = \"python\"\nmodule = \"json\"\nsymbol = \"dumps\"\n",
    )
    .unwrap();
    let out = run(&cp, &["app", "create", "named", "--manifest", manifest.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("module \"json\" is a module name") && err.contains(".py"), "{err}");
    assert!(!ok(&cp, &["app", "list"]).contains("named"), "nothing was created");
}
