//! Deploying an application's functions: its processes load libraries only from where its owner
//! put them.
//!
//! A manifest names each function's library (or, for a Python function, its module file) by a
//! path. The control plane accepts that path in two cases, and refuses the application (400,
//! naming the path) otherwise:
//!
//! - **uploaded**: the path is relative (no `..`, no leading `/`) and names a file uploaded with
//!   the manifest (`praas app create` uploads every library its manifest names); the file is kept
//!   in the application's own folder `DATA/apps/APP/files/` (0700, files 0600);
//! - **inside a function root**: `praas control serve --function-root DIR` (repeatable) names
//!   folders whose libraries may be used in place; the path, absolute or relative to the root,
//!   must resolve (symbolic links followed) to a file inside one of them.
//!
//! A Python module given by name (`module = "pkg.mod"`) is refused: the process would import it
//! from its interpreter's path, which is not a place the owner put it.
//!
//! The manifest the processes load is written by the TOML library from the resolved manifest
//! ([`praas_dataplane::Manifest::to_toml`]), never by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Component, Path, PathBuf};

use praas_dataplane::function::{Language, PythonModule};
use praas_dataplane::Manifest;
use thiserror::Error;

use crate::private_fs::{self, PrivateFileError};

/// Most files one application may upload.
pub const MAX_FILES: usize = 64;
/// Most bytes one application may upload, all files together.
pub const MAX_UPLOAD_BYTES: usize = 512 << 20;

/// A file uploaded with a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// Its path relative to the application's folder, as the manifest names it.
    pub path: String,
    /// Its content.
    pub bytes: Vec<u8>,
}

/// Why an application's functions cannot be deployed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DeployError {
    /// The manifest does not parse, or names a function badly.
    #[error("invalid functions manifest: {0}")]
    Manifest(#[source] praas_dataplane::function::ManifestError),
    /// The manifest declares no function.
    #[error("the manifest declares no function")]
    NoFunction,
    /// An uploaded file's path is not a plain relative path.
    #[error("uploaded file {path:?}: a relative path of plain names is expected (no '..', no leading '/')")]
    UploadPath {
        /// The path as given.
        path: String,
    },
    /// Two uploaded files share a path.
    #[error("uploaded file {path:?} is given twice")]
    UploadTwice {
        /// The path.
        path: String,
    },
    /// An uploaded file is named by no function.
    #[error("uploaded file {path:?} is the library or module of no function of the manifest")]
    UploadUnused {
        /// The path.
        path: String,
    },
    /// Too many files, or too many bytes.
    #[error("at most {MAX_FILES} files and {MAX_UPLOAD_BYTES} bytes may be uploaded with a manifest")]
    UploadTooLarge,
    /// A library is neither uploaded nor inside a function root.
    #[error(
        "function {function:?}: library {path} is neither uploaded with the manifest nor inside a \
         --function-root of this control plane{roots}"
    )]
    LibraryOutside {
        /// The function.
        function: String,
        /// The library's path as the manifest names it.
        path: PathBuf,
        /// The function roots, for the message (empty when there are none).
        roots: String,
    },
    /// A Python module is neither uploaded nor inside a function root.
    #[error(
        "function {function:?}: Python module {path} is neither uploaded with the manifest nor inside a \
         --function-root of this control plane{roots}"
    )]
    ModuleOutside {
        /// The function.
        function: String,
        /// The module's path as the manifest names it.
        path: PathBuf,
        /// The function roots, for the message (empty when there are none).
        roots: String,
    },
    /// A Python module is given by name, which the process would import from wherever its
    /// interpreter looks.
    #[error(
        "function {function:?}: Python module {module:?} is a module name; the control plane runs only code \
         uploaded with the manifest or inside a --function-root: name the module's .py file"
    )]
    ModuleName {
        /// The function.
        function: String,
        /// The module name.
        module: String,
    },
    /// The application's folder could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

impl From<PrivateFileError> for DeployError {
    fn from(e: PrivateFileError) -> Self {
        DeployError::Io { path: e.path, source: e.source }
    }
}

/// A plain relative path: only normal components, each a non-empty name without NUL.
fn plain_relative(path: &str) -> Option<PathBuf> {
    let candidate = Path::new(path);
    if path.is_empty() || path.contains('\0') || path.len() > 1024 {
        return None;
    }
    candidate.components().all(|c| matches!(c, Component::Normal(_))).then(|| candidate.to_path_buf())
}

/// An application's functions, resolved: the manifest its processes load (every library an
/// absolute path) and the uploaded files to keep in its folder.
#[derive(Debug)]
pub struct Deployment {
    /// The manifest with absolute library paths, as TOML written by the TOML library.
    pub manifest: String,
    /// Uploaded files by their path relative to the application's `files/` folder.
    files: BTreeMap<PathBuf, Vec<u8>>,
}

/// The folder of application `app` in the data folder `data_dir`.
pub fn app_dir(data_dir: &Path, app: &str) -> PathBuf {
    data_dir.join("apps").join(app)
}

impl Deployment {
    /// Resolves `manifest` (TOML) for the application whose folder is `app_dir`, with the files
    /// uploaded with it and the control plane's function roots (canonical paths).
    pub fn resolve(
        manifest: &str,
        uploads: Vec<Upload>,
        app_dir: &Path,
        roots: &[PathBuf],
    ) -> Result<Self, DeployError> {
        let files_dir = app_dir.join("files");
        let mut parsed = Manifest::from_toml(manifest, &files_dir).map_err(DeployError::Manifest)?;
        if parsed.functions.is_empty() {
            return Err(DeployError::NoFunction);
        }
        if uploads.len() > MAX_FILES || uploads.iter().map(|u| u.bytes.len()).sum::<usize>() > MAX_UPLOAD_BYTES {
            return Err(DeployError::UploadTooLarge);
        }
        let mut files = BTreeMap::new();
        for upload in uploads {
            let path =
                plain_relative(&upload.path).ok_or_else(|| DeployError::UploadPath { path: upload.path.clone() })?;
            if files.insert(path, upload.bytes).is_some() {
                return Err(DeployError::UploadTwice { path: upload.path });
            }
        }
        let roots_shown = if roots.is_empty() {
            String::new()
        } else {
            format!(" ({})", roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", "))
        };
        let mut used = BTreeSet::new();
        // A path the manifest names, resolved: an uploaded file, or one inside a function root.
        let mut resolve = |named: &Path| match named.to_str().and_then(plain_relative).filter(|p| files.contains_key(p))
        {
            Some(relative) => {
                let resolved = files_dir.join(&relative);
                used.insert(relative);
                Some(resolved)
            }
            None => inside_roots(named, roots),
        };
        for function in &mut parsed.functions {
            match function.language {
                Language::Python => {
                    let module = function.module.clone().unwrap_or_default();
                    let named = match PythonModule::parse(&module) {
                        Some(PythonModule::File(path)) => path.to_path_buf(),
                        _ => return Err(DeployError::ModuleName { function: function.name.clone(), module }),
                    };
                    let outside = || DeployError::ModuleOutside {
                        function: function.name.clone(),
                        path: named.clone(),
                        roots: roots_shown.clone(),
                    };
                    let resolved = resolve(&named).ok_or_else(outside)?;
                    function.module = Some(resolved.to_str().ok_or_else(outside)?.to_owned());
                }
                _ => {
                    let named = function.library.clone();
                    let resolved = resolve(&named).ok_or_else(|| DeployError::LibraryOutside {
                        function: function.name.clone(),
                        path: named.clone(),
                        roots: roots_shown.clone(),
                    })?;
                    function.library = resolved;
                }
            }
        }
        if let Some(unused) = files.keys().find(|p| !used.contains(*p)) {
            return Err(DeployError::UploadUnused { path: unused.display().to_string() });
        }
        parsed.base_dir = PathBuf::from("/");
        let manifest = parsed.to_toml().map_err(DeployError::Manifest)?;
        Ok(Self { manifest, files })
    }

    /// Writes the uploaded files into the application's folder `app_dir` (replacing whatever a
    /// deleted application of the same name left there): into a temporary folder first, renamed
    /// into place, so that a failure leaves no half-written application.
    pub fn install(&self, app_dir: &Path) -> Result<(), DeployError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| DeployError::Io { path, source }
        };
        let parent = app_dir.parent().unwrap_or(Path::new("/"));
        private_fs::create_dir(parent)?;
        let name = app_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let written = (|| {
            let files_dir = tmp.join("files");
            private_fs::create_dir(&files_dir)?;
            for (path, bytes) in &self.files {
                let target = files_dir.join(path);
                if let Some(folder) = target.parent() {
                    private_fs::create_dir(folder)?;
                }
                private_fs::write_file(&target, bytes)?;
            }
            if app_dir.exists() {
                fs::remove_dir_all(app_dir).map_err(io(app_dir))?;
            }
            fs::rename(&tmp, app_dir).map_err(io(app_dir))
        })();
        if written.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        written
    }
}

/// `named` resolved inside one of `roots`: the canonical path of an existing file below a root's
/// canonical path (symbolic links followed on both, so neither a link out of a root nor a root
/// named through a link changes the answer).
fn inside_roots(named: &Path, roots: &[PathBuf]) -> Option<PathBuf> {
    roots.iter().find_map(|root| {
        let root = fs::canonicalize(root).ok()?;
        let candidate = fs::canonicalize(root.join(named)).ok()?;
        (candidate.starts_with(&root) && candidate.is_file()).then_some(candidate)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(library: &str) -> String {
        format!("[[function]]\nname = \"f\"\nlibrary = \"{library}\"\n")
    }

    fn upload(path: &str) -> Upload {
        Upload { path: path.into(), bytes: b"\x7fELF".to_vec() }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("praas-deploy-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn an_uploaded_library_resolves_into_the_application_folder() {
        let dir = temp("upload");
        let app = dir.join("apps").join("a");
        let deployment = Deployment::resolve(&manifest("lib/libf.so"), vec![upload("lib/libf.so")], &app, &[]).unwrap();
        let reparsed = Manifest::from_toml(&deployment.manifest, Path::new("/")).unwrap();
        assert_eq!(reparsed.functions[0].library, app.join("files/lib/libf.so"));
        deployment.install(&app).unwrap();
        assert_eq!(fs::read(app.join("files/lib/libf.so")).unwrap(), b"\x7fELF");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(app.join("files/lib/libf.so")).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(app.join("files")).unwrap().permissions().mode() & 0o777, 0o700);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn libraries_outside_uploads_and_roots_are_refused_by_path() {
        let app = Path::new("/nonexistent/apps/a");
        for library in ["/usr/lib/x86_64-linux-gnu/libc.so.6", "../../evil.so", "libmissing.so"] {
            let error = Deployment::resolve(&manifest(library), vec![], app, &[]).unwrap_err();
            assert!(matches!(error, DeployError::LibraryOutside { .. }), "{library}: {error}");
            assert!(error.to_string().contains(library), "{error}");
        }
        let error = Deployment::resolve(&manifest("../x.so"), vec![upload("../x.so")], app, &[]).unwrap_err();
        assert!(matches!(error, DeployError::UploadPath { .. }), "{error}");
        let error = Deployment::resolve(&manifest("/etc/x.so"), vec![upload("/etc/x.so")], app, &[]).unwrap_err();
        assert!(matches!(error, DeployError::UploadPath { .. }), "{error}");
        let error = Deployment::resolve(&manifest("a.so"), vec![upload("a.so"), upload("b.so")], app, &[]).unwrap_err();
        assert!(matches!(error, DeployError::UploadUnused { .. }), "{error}");
    }

    fn python(module: &str) -> String {
        format!("[[function]]\nname = \"f\"\nlanguage = \"python\"\nmodule = \"{module}\"\n")
    }

    #[test]
    fn python_modules_resolve_like_libraries_and_module_names_are_refused() {
        let dir = temp("python");
        let app = dir.join("apps/a");
        let uploaded =
            Deployment::resolve(&python("fns/functions.py"), vec![upload("fns/functions.py")], &app, &[]).unwrap();
        let reparsed = Manifest::from_toml(&uploaded.manifest, Path::new("/")).unwrap();
        let expected = app.join("files/fns/functions.py");
        assert_eq!(reparsed.functions[0].module.as_deref(), expected.to_str());
        assert!(reparsed.functions[0].library.as_os_str().is_empty());
        let root = dir.join("root");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("in_root.py"), b"def f(ctx, data): pass\n").unwrap();
        fs::write(dir.join("outside.py"), b"").unwrap();
        let roots = [fs::canonicalize(&root).unwrap()];
        let ok = Deployment::resolve(&python("in_root.py"), vec![], &app, &roots).unwrap();
        assert!(ok.manifest.contains(&roots[0].join("in_root.py").display().to_string()), "{}", ok.manifest);
        for outside in ["../outside.py", "/etc/python3/sitecustomize.py", "missing.py"] {
            let error = Deployment::resolve(&python(outside), vec![], &app, &roots).unwrap_err();
            assert!(matches!(error, DeployError::ModuleOutside { .. }), "{outside}: {error}");
            assert!(error.to_string().contains(outside), "{error}");
        }
        let error = Deployment::resolve(&python("json"), vec![], &app, &roots).unwrap_err();
        assert!(matches!(error, DeployError::ModuleName { .. }), "{error}");
        assert!(error.to_string().contains("\"json\"") && error.to_string().contains(".py file"), "{error}");
        let error =
            Deployment::resolve(&python("a.py"), vec![upload("a.py"), upload("unused.py")], &app, &[]).unwrap_err();
        assert!(matches!(error, DeployError::UploadUnused { .. }), "{error}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_function_root_admits_what_resolves_inside_it_only() {
        let dir = temp("roots");
        let root = dir.join("root");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("libin.so"), b"x").unwrap();
        fs::write(dir.join("libout.so"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.join("libout.so"), root.join("liblink.so")).unwrap();
        let roots = [fs::canonicalize(&root).unwrap()];
        let app = dir.join("apps/a");
        let ok = Deployment::resolve(&manifest("libin.so"), vec![], &app, &roots).unwrap();
        assert!(ok.manifest.contains(&roots[0].join("libin.so").display().to_string()));
        let absolute = roots[0].join("libin.so").display().to_string();
        assert!(Deployment::resolve(&manifest(&absolute), vec![], &app, &roots).is_ok());
        for outside in ["../libout.so", "liblink.so", &dir.join("libout.so").display().to_string()] {
            let error = Deployment::resolve(&manifest(outside), vec![], &app, &roots).unwrap_err();
            assert!(matches!(error, DeployError::LibraryOutside { .. }), "{outside}: {error}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
