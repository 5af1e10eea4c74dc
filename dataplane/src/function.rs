//! Functions: the TOML manifest that lists them and the registry of loaded functions.
//!
//! ```toml
//! [[function]]
//! name = "echo"                               # what clients invoke
//! library = "libpraas_example_functions.so"   # relative to the manifest's folder, or absolute
//! symbol = "echo"                             # exported C symbol; defaults to `name`
//! mode = "inline"                             # "inline": runs on the I/O thread; "worker" (default)
//! timeout_ms = 5000                           # optional default deadline of this function
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use libloading::Library;
use praas_ffi::praas_function;
use serde::Deserialize;
use thiserror::Error;

/// Where an invocation of a function runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionMode {
    /// To completion on the I/O thread that received the request: no thread hand-off. For short
    /// functions only: the connection's other requests wait meanwhile.
    Inline,
    /// On the process's worker pool: one hand-off, and the I/O thread keeps serving.
    #[default]
    Worker,
}

/// One function entry of a manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    /// Name clients invoke it by.
    pub name: String,
    /// Shared library that exports it.
    pub library: PathBuf,
    /// Exported symbol; defaults to `name`.
    pub symbol: Option<String>,
    /// Where it runs.
    #[serde(default)]
    pub mode: ExecutionMode,
    /// Its default deadline in milliseconds.
    pub timeout_ms: Option<u64>,
}

/// The functions of a process, as read from a TOML manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The functions.
    #[serde(rename = "function", default)]
    pub functions: Vec<FunctionSpec>,
    /// Folder relative library paths are resolved against.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Why functions could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The manifest file could not be read.
    #[error("cannot read manifest {path}: {source}")]
    Read {
        /// The manifest's path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest is not valid TOML of the expected shape.
    #[error("invalid manifest {path}: {source}")]
    Parse {
        /// The manifest's path.
        path: PathBuf,
        /// What the parser said.
        source: Box<toml::de::Error>,
    },
    /// Two functions share a name.
    #[error("function {0:?} is declared twice")]
    Duplicate(String),
    /// A shared library could not be opened.
    #[error("function {function:?}: cannot load library {library}: {source}")]
    Library {
        /// The function being loaded.
        function: String,
        /// Its library.
        library: PathBuf,
        /// The loader's error.
        source: libloading::Error,
    },
    /// The library does not export the symbol.
    #[error("function {function:?}: library {library} has no symbol {symbol:?}: {source}")]
    Symbol {
        /// The function being loaded.
        function: String,
        /// Its library.
        library: PathBuf,
        /// The missing symbol.
        symbol: String,
        /// The loader's error.
        source: libloading::Error,
    },
}

impl Manifest {
    /// Reads a manifest file; relative library paths resolve against its folder.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.into(), source })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_toml(&text, &base).map_err(|source| LoadError::Parse { path: path.into(), source: Box::new(source) })
    }

    /// Parses a manifest from TOML text.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Self, toml::de::Error> {
        let mut manifest: Manifest = toml::from_str(text)?;
        manifest.base_dir = base_dir.to_path_buf();
        Ok(manifest)
    }
}

/// A loaded function.
#[derive(Debug, Clone)]
pub struct Function {
    /// Its name.
    pub name: Arc<str>,
    /// Where it runs.
    pub mode: ExecutionMode,
    /// Its default deadline, if the manifest set one.
    pub timeout: Option<Duration>,
    entry: praas_function,
    // Keeps the library mapped while `entry` may be called.
    _library: Arc<Library>,
}

impl Function {
    /// The entry point; valid while `self` lives (it holds the library).
    pub fn entry(&self) -> praas_function {
        self.entry
    }
}

/// The functions of a process, by name.
#[derive(Debug, Default)]
pub struct FunctionRegistry {
    /// Keyed by the name's bytes: a name off the wire is looked up as it arrived, without first
    /// checking that it is UTF-8 (a name that is not matches no key).
    functions: crate::idmap::IdMap<Box<[u8]>, Function>,
}

impl FunctionRegistry {
    /// Loads every function of `manifest`; fails on the first that cannot be loaded, naming it.
    pub fn load(manifest: &Manifest) -> Result<Self, LoadError> {
        let mut libraries: HashMap<PathBuf, Arc<Library>> = HashMap::new();
        let mut functions = crate::idmap::IdMap::default();
        for spec in &manifest.functions {
            let path = manifest.base_dir.join(&spec.library);
            let library = match libraries.get(&path) {
                Some(lib) => Arc::clone(lib),
                None => {
                    // SAFETY: loading a library runs its initialisers; function libraries are
                    // trusted code of the application, loaded once at process start.
                    let lib = unsafe { Library::new(&path) }.map_err(|source| LoadError::Library {
                        function: spec.name.clone(),
                        library: path.clone(),
                        source,
                    })?;
                    let lib = Arc::new(lib);
                    libraries.insert(path.clone(), Arc::clone(&lib));
                    lib
                }
            };
            let symbol = spec.symbol.clone().unwrap_or_else(|| spec.name.clone());
            // SAFETY: the manifest declares that `symbol` is a praas function, so it has the
            // `praas_function` signature; the `Arc<Library>` stored beside the pointer keeps the
            // code mapped for as long as the pointer can be called.
            let entry =
                unsafe { library.get::<praas_function>(symbol.as_bytes()) }.map(|sym| *sym).map_err(|source| {
                    LoadError::Symbol {
                        function: spec.name.clone(),
                        library: path.clone(),
                        symbol: symbol.clone(),
                        source,
                    }
                })?;
            let function = Function {
                name: spec.name.as_str().into(),
                mode: spec.mode,
                timeout: spec.timeout_ms.map(Duration::from_millis),
                entry,
                _library: library,
            };
            if functions.insert(spec.name.as_bytes().into(), function).is_some() {
                return Err(LoadError::Duplicate(spec.name.clone()));
            }
        }
        Ok(Self { functions })
    }

    /// The function named `name`.
    pub fn get(&self, name: &[u8]) -> Option<&Function> {
        self.functions.get(name)
    }

    /// Names of all functions, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.functions.values().map(|f| &*f.name).collect();
        names.sort_unstable();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_parses_with_defaults() {
        let m = Manifest::from_toml(
            "[[function]]\nname = \"a\"\nlibrary = \"x.so\"\n[[function]]\nname = \"b\"\nlibrary = \"/y.so\"\nsymbol = \"bb\"\nmode = \"inline\"\ntimeout_ms = 10\n",
            Path::new("/base"),
        )
        .unwrap();
        assert_eq!(m.functions.len(), 2);
        assert_eq!(m.functions[0].mode, ExecutionMode::Worker);
        assert_eq!(m.functions[1].mode, ExecutionMode::Inline);
        assert_eq!(m.functions[1].symbol.as_deref(), Some("bb"));
        assert_eq!(m.base_dir.join(&m.functions[1].library), Path::new("/y.so"));
    }

    #[test]
    fn manifest_rejects_unknown_fields() {
        assert!(Manifest::from_toml("[[function]]\nname = \"a\"\nlibrary = \"x\"\nbogus = 1\n", Path::new("")).is_err());
    }

    #[test]
    fn missing_library_names_the_function() {
        let m = Manifest::from_toml("[[function]]\nname = \"f\"\nlibrary = \"/nonexistent/lib.so\"\n", Path::new(""))
            .unwrap();
        let err = FunctionRegistry::load(&m).unwrap_err().to_string();
        assert!(err.contains("\"f\"") && err.contains("/nonexistent/lib.so"), "{err}");
    }
}
