//! Functions: the TOML manifest that lists them and the registry of loaded functions.
//!
//! ```toml
//! [[function]]
//! name = "echo"                               # what clients invoke
//! library = "libpraas_example_functions.so"   # relative to the manifest's folder, or absolute
//! symbol = "echo"                             # exported C symbol; defaults to `name`
//! mode = "inline"                             # "inline": runs on the I/O thread; "worker" (default)
//! timeout_ms = 5000                           # optional default deadline of this function
//!
//! [[function]]
//! name = "py_echo"
//! language = "python"                         # default: the C ABI (C, C++ and Rust libraries)
//! module = "functions.py"                     # a file (relative to the manifest's folder, or
//!                                             # absolute) or an importable name ("pkg.mod")
//! symbol = "echo"                             # the Python function; defaults to `name`
//! ```
//!
//! Before the functions, `swap_in_on_call = false` makes a remote invocation of a swapped-out
//! process of the application fail at once with `UNAVAILABLE` instead of asking the control plane
//! to swap it in (`docs/remote-invocation.md`).
//!
//! A function name is 1 to 64 bytes of ASCII letters, digits, `_`, `.` and `-`, and does not
//! start with `-` or `.` ([`check_function_name`]); a `symbol` is a C identifier (a Python
//! function's name, given or defaulted, is one too); a C ABI function names a `library` and no
//! `module`, a Python function a `module` ([`PythonModule`]) and no `library`; no two functions
//! share a name. [`Manifest::to_toml`] writes a manifest that [`Manifest::from_toml`] reads back.
//! Python functions load only where the runtime was built with the cargo feature `python`
//! (`docs/python.md`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use libloading::Library;
use praas_ffi::praas_function;

use crate::stats::FunctionStats;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where an invocation of a function runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionMode {
    /// To completion on the I/O thread that received the request: no thread hand-off. For short
    /// functions only: the connection's other requests wait meanwhile.
    Inline,
    /// On the process's worker pool: one hand-off, and the I/O thread keeps serving.
    #[default]
    Worker,
}

/// What a function is written against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// The C ABI (`ffi/include/praas.h`): a symbol of a shared library, written in C, C++ or Rust.
    #[default]
    C,
    /// A function of a Python module, run by the process's embedded CPython.
    Python,
}

impl Language {
    fn is_c(&self) -> bool {
        *self == Language::C
    }
}

/// Where a Python function's module comes from, as a manifest's `module` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PythonModule<'a> {
    /// A source file (the value ends in `.py` or holds a `/`): relative to the manifest's
    /// folder, or absolute, like a library.
    File(&'a Path),
    /// A module name (`name` or `package.module`, each part an identifier), imported from the
    /// interpreter's module path.
    Name(&'a str),
}

impl<'a> PythonModule<'a> {
    /// What `module` names, or `None` if it is neither a file path nor a module name.
    pub fn parse(module: &'a str) -> Option<Self> {
        if module.contains('\0') {
            None
        } else if module.ends_with(".py") || module.contains('/') {
            Some(PythonModule::File(Path::new(module)))
        } else if module.split('.').all(is_c_identifier) {
            Some(PythonModule::Name(module))
        } else {
            None
        }
    }
}

/// One function entry of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    /// Name clients invoke it by ([`check_function_name`]).
    pub name: String,
    /// What it is written against: the C ABI (the default) or Python.
    #[serde(default, skip_serializing_if = "Language::is_c")]
    pub language: Language,
    /// Shared library that exports it (a C ABI function); empty for a Python function.
    #[serde(default, skip_serializing_if = "path_is_empty")]
    pub library: PathBuf,
    /// The module that defines it (a Python function, [`PythonModule`]); `None` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Exported symbol (C ABI) or function name in the module (Python), a C identifier;
    /// defaults to `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
    /// Where it runs.
    #[serde(default)]
    pub mode: ExecutionMode,
    /// Its default deadline in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

fn path_is_empty(path: &Path) -> bool {
    path.as_os_str().is_empty()
}

impl FunctionSpec {
    /// A C ABI function `name` exported under its own name by `library`, run on a worker.
    pub fn native(name: impl Into<String>, library: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            language: Language::C,
            library: library.into(),
            module: None,
            symbol: None,
            mode: ExecutionMode::Worker,
            timeout_ms: None,
        }
    }

    /// A Python function `name` defined under its own name by `module` ([`PythonModule`]), run
    /// on a worker.
    pub fn python(name: impl Into<String>, module: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            language: Language::Python,
            library: PathBuf::new(),
            module: Some(module.into()),
            symbol: None,
            mode: ExecutionMode::Worker,
            timeout_ms: None,
        }
    }

    /// The symbol (C ABI) or Python function name it is found by: `symbol`, else `name`.
    pub fn entry_name(&self) -> &str {
        self.symbol.as_deref().unwrap_or(&self.name)
    }
}

/// Longest function name, in bytes.
pub const MAX_FUNCTION_NAME: usize = 64;

/// The rule every function name follows, as error messages state it.
pub const FUNCTION_NAME_RULE: &str =
    "a function name is 1 to 64 bytes of ASCII letters, digits, '_', '.' and '-', not starting with '-' or '.'";

/// What is wrong with a function name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NameProblem {
    /// It is empty.
    #[error("it is empty")]
    Empty,
    /// It is longer than [`MAX_FUNCTION_NAME`] bytes.
    #[error("it is {0} bytes long")]
    TooLong(usize),
    /// It starts with `-` or `.`.
    #[error("it starts with {0:?}")]
    Leading(char),
    /// It holds a character outside the allowed set.
    #[error("it holds {character:?} at byte {at}")]
    Character {
        /// The first character not allowed.
        character: char,
        /// Its byte offset in the name.
        at: usize,
    },
}

/// Checks `name` against [`FUNCTION_NAME_RULE`].
pub fn check_function_name(name: &str) -> Result<(), NameProblem> {
    if name.is_empty() {
        return Err(NameProblem::Empty);
    }
    if let Some((at, character)) =
        name.char_indices().find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(NameProblem::Character { character, at });
    }
    if name.len() > MAX_FUNCTION_NAME {
        return Err(NameProblem::TooLong(name.len()));
    }
    match name.chars().next() {
        Some(first @ ('-' | '.')) => Err(NameProblem::Leading(first)),
        _ => Ok(()),
    }
}

/// Whether `symbol` is a C identifier: a letter or `_`, then letters, digits or `_` (ASCII).
pub fn is_c_identifier(symbol: &str) -> bool {
    let mut chars = symbol.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Why a manifest was refused, or could not be written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The text is not valid TOML of the manifest's shape.
    #[error("{0}")]
    Toml(Box<toml::de::Error>),
    /// A function name breaks [`FUNCTION_NAME_RULE`].
    #[error("function name {name:?} is not allowed: {problem}; {FUNCTION_NAME_RULE}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong with it.
        problem: NameProblem,
    },
    /// A function's symbol is not a C identifier.
    #[error(
        "function {function:?}: symbol {symbol:?} is not a C identifier (a letter or '_', then letters, digits or '_')"
    )]
    InvalidSymbol {
        /// The function.
        function: String,
        /// Its symbol.
        symbol: String,
    },
    /// Two functions share a name.
    #[error("function {0:?} is declared twice")]
    Duplicate(String),
    /// A C ABI function names no library.
    #[error("function {0:?}: a C ABI function needs `library` (or set language = \"python\" and `module`)")]
    MissingLibrary(String),
    /// A C ABI function names a module.
    #[error("function {0:?}: `module` is for Python functions: set language = \"python\" (and no `library`)")]
    ModuleWithoutPython(String),
    /// A Python function names no module.
    #[error("function {0:?}: a Python function needs `module` (a .py file or an importable module name)")]
    MissingModule(String),
    /// A Python function names a library.
    #[error("function {0:?}: a Python function takes `module`, not `library`")]
    LibraryWithPython(String),
    /// A Python function's module is neither a file path nor a module name.
    #[error(
        "function {function:?}: module {module:?} is neither a file (ending in .py, or a path with '/') nor a \
         module name (identifiers joined by '.')"
    )]
    InvalidModule {
        /// The function.
        function: String,
        /// Its module.
        module: String,
    },
    /// A Python function's name in its module, taken from the function's name, is not an
    /// identifier.
    #[error(
        "function {0:?}: its name is not a Python identifier, so `symbol` must name the Python function \
         (a letter or '_', then letters, digits or '_')"
    )]
    PythonName(String),
    /// The manifest could not be written as TOML (a library path that is not UTF-8, a
    /// `timeout_ms` beyond TOML's integers).
    #[error("cannot write the manifest as TOML: {0}")]
    Serialize(#[from] toml::ser::Error),
}

/// The functions of a process, as read from a TOML manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// A remote invocation of a process of the application that is swapped out asks the
    /// control plane to swap it in, within the caller's deadline (`true`, the default); `false`:
    /// it fails at once with `UNAVAILABLE` (`docs/remote-invocation.md`).
    #[serde(default = "swap_in_on_call_default", skip_serializing_if = "is_default_swap_in_on_call")]
    pub swap_in_on_call: bool,
    /// The functions.
    #[serde(rename = "function", default)]
    pub functions: Vec<FunctionSpec>,
    /// Folder relative library paths are resolved against.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Why functions could not be loaded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The manifest file could not be read.
    #[error("cannot read manifest {path}: {source}")]
    Read {
        /// The manifest's path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest is not valid TOML of the expected shape, or breaks a rule of manifests.
    #[error("invalid manifest {path}: {source}")]
    Parse {
        /// The manifest's path.
        path: PathBuf,
        /// What is wrong.
        source: ManifestError,
    },
    /// A manifest built in code breaks a rule of manifests.
    #[error("invalid manifest: {0}")]
    Invalid(#[from] ManifestError),
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
    /// A Python function, but this runtime was built without the cargo feature `python`.
    #[error("function {0:?} is written in Python, but this process was built without Python support (cargo feature `python`)")]
    PythonUnsupported(String),
    /// The embedded Python interpreter could not be prepared.
    #[error("function {function:?}: the Python interpreter could not be prepared: {reason}")]
    PythonInterpreter {
        /// The function being loaded.
        function: String,
        /// What failed, with the Python traceback.
        reason: String,
    },
    /// A Python module failed to import (its file is missing, or running it raised).
    #[error("function {function:?}: Python module {module:?} failed to import: {traceback}")]
    PythonImport {
        /// The function being loaded.
        function: String,
        /// The module, as the manifest names it (a file resolved against the manifest's folder).
        module: String,
        /// The exception and its traceback.
        traceback: String,
    },
    /// A Python module has no callable of the function's name.
    #[error("function {function:?}: Python module {module:?} has no function {name:?}: {reason}")]
    PythonFunction {
        /// The function being loaded.
        function: String,
        /// Its module.
        module: String,
        /// The name looked up in the module (`symbol`, else the function's name).
        name: String,
        /// Why not: the exception and its traceback, or what the name is instead.
        reason: String,
    },
}

fn swap_in_on_call_default() -> bool {
    true
}

fn is_default_swap_in_on_call(on: &bool) -> bool {
    *on
}

impl Manifest {
    /// A manifest of `functions` with the default settings, relative paths resolved against the
    /// current folder.
    pub fn of(functions: Vec<FunctionSpec>) -> Self {
        Self { swap_in_on_call: true, functions, base_dir: PathBuf::new() }
    }

    /// Reads a manifest file; relative library paths resolve against its folder.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.into(), source })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_toml(&text, &base).map_err(|source| LoadError::Parse { path: path.into(), source })
    }

    /// Parses a manifest from TOML text and checks its rules ([`Manifest::validate`]); relative
    /// library paths will resolve against `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Self, ManifestError> {
        let mut manifest: Manifest = toml::from_str(text).map_err(|e| ManifestError::Toml(Box::new(e)))?;
        manifest.validate()?;
        manifest.base_dir = base_dir.to_path_buf();
        Ok(manifest)
    }

    /// Writes the manifest as TOML (by the TOML library, so every value is quoted as TOML
    /// wants), after checking its rules: [`Manifest::from_toml`] reads back the same manifest.
    /// `base_dir` is not written: the reader gives its own.
    pub fn to_toml(&self) -> Result<String, ManifestError> {
        self.validate()?;
        Ok(toml::to_string(self)?)
    }

    /// Checks the rules of manifests: valid function names ([`check_function_name`]), symbols
    /// that are C identifiers, a `library` for each C ABI function and a `module` for each
    /// Python function (and not the other), no name declared twice.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let mut seen = std::collections::HashSet::with_capacity(self.functions.len());
        for spec in &self.functions {
            check_function_name(&spec.name)
                .map_err(|problem| ManifestError::InvalidName { name: spec.name.clone(), problem })?;
            if let Some(symbol) = spec.symbol.as_ref().filter(|s| !is_c_identifier(s)) {
                return Err(ManifestError::InvalidSymbol { function: spec.name.clone(), symbol: symbol.clone() });
            }
            check_code(spec)?;
            if !seen.insert(spec.name.as_str()) {
                return Err(ManifestError::Duplicate(spec.name.clone()));
            }
        }
        Ok(())
    }
}

/// Checks that `spec` names the code of its language, and only that.
fn check_code(spec: &FunctionSpec) -> Result<(), ManifestError> {
    let name = || spec.name.clone();
    match spec.language {
        Language::C if path_is_empty(&spec.library) => Err(ManifestError::MissingLibrary(name())),
        Language::C if spec.module.is_some() => Err(ManifestError::ModuleWithoutPython(name())),
        Language::C => Ok(()),
        Language::Python => {
            let Some(module) = &spec.module else {
                return Err(ManifestError::MissingModule(name()));
            };
            if !path_is_empty(&spec.library) {
                return Err(ManifestError::LibraryWithPython(name()));
            }
            if PythonModule::parse(module).is_none() {
                return Err(ManifestError::InvalidModule { function: name(), module: module.clone() });
            }
            if !is_c_identifier(spec.entry_name()) {
                return Err(ManifestError::PythonName(name()));
            }
            Ok(())
        }
    }
}

/// A loaded function's code.
#[derive(Debug, Clone)]
pub(crate) enum FunctionCode {
    /// A C ABI entry point; valid while `library` is held.
    Native {
        entry: praas_function,
        // Keeps the library mapped while `entry` may be called.
        _library: Arc<Library>,
    },
    /// A callable of a Python module.
    #[cfg(feature = "python")]
    Python(crate::python::PythonFunction),
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
    /// Its invocations so far (`crate::stats`).
    pub stats: Arc<FunctionStats>,
    code: FunctionCode,
}

impl Function {
    /// The C ABI entry point (`None` for a Python function); valid while `self` lives (it holds
    /// the library).
    pub fn entry(&self) -> Option<praas_function> {
        match &self.code {
            FunctionCode::Native { entry, .. } => Some(*entry),
            #[cfg(feature = "python")]
            FunctionCode::Python(_) => None,
        }
    }

    /// What it is written against.
    pub fn language(&self) -> Language {
        match &self.code {
            FunctionCode::Native { .. } => Language::C,
            #[cfg(feature = "python")]
            FunctionCode::Python(_) => Language::Python,
        }
    }

    /// Its code, for the invocation to run.
    pub(crate) fn code(&self) -> &FunctionCode {
        &self.code
    }
}

/// Opens `spec`'s library (once per path: `libraries` keeps those opened) and finds its symbol.
fn native_code(
    manifest: &Manifest,
    spec: &FunctionSpec,
    libraries: &mut HashMap<PathBuf, Arc<Library>>,
) -> Result<FunctionCode, LoadError> {
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
    let symbol = spec.entry_name();
    // SAFETY: the manifest declares that `symbol` is a praas function, so it has the
    // `praas_function` signature; the `Arc<Library>` stored beside the pointer keeps the
    // code mapped for as long as the pointer can be called.
    let entry = unsafe { library.get::<praas_function>(symbol.as_bytes()) }.map(|sym| *sym).map_err(|source| {
        LoadError::Symbol { function: spec.name.clone(), library: path.clone(), symbol: symbol.to_owned(), source }
    })?;
    Ok(FunctionCode::Native { entry, _library: library })
}

/// Imports `spec`'s module (once per module: `loader` keeps those imported) and finds its function.
#[cfg(feature = "python")]
fn python_code(
    manifest: &Manifest,
    spec: &FunctionSpec,
    loader: &mut crate::python::Loader,
) -> Result<FunctionCode, LoadError> {
    use crate::python::{LoadFailure, Source};
    // `validate` checked that a Python function names a module that parses.
    let module = spec.module.as_deref().unwrap_or_default();
    let source = match PythonModule::parse(module) {
        Some(PythonModule::File(path)) => Source::File(manifest.base_dir.join(path)),
        Some(PythonModule::Name(name)) => Source::Name(name),
        None => {
            return Err(ManifestError::InvalidModule { function: spec.name.clone(), module: module.to_owned() }.into())
        }
    };
    let shown = match &source {
        Source::File(path) => path.display().to_string(),
        Source::Name(name) => (*name).to_owned(),
    };
    let name = spec.entry_name();
    loader.load(source, name).map(FunctionCode::Python).map_err(|failure| match failure {
        LoadFailure::Interpreter(reason) => LoadError::PythonInterpreter { function: spec.name.clone(), reason },
        LoadFailure::Import(traceback) => {
            LoadError::PythonImport { function: spec.name.clone(), module: shown, traceback }
        }
        LoadFailure::Missing(reason) => {
            LoadError::PythonFunction { function: spec.name.clone(), module: shown, name: name.to_owned(), reason }
        }
    })
}

/// The functions of a process, by name.
#[derive(Debug, Default)]
pub struct FunctionRegistry {
    /// Keyed by the name's bytes: a name off the wire is looked up as it arrived, without first
    /// checking that it is UTF-8 (a name that is not matches no key).
    functions: praas_wire::idmap::IdMap<Box<[u8]>, Function>,
}

impl FunctionRegistry {
    /// Loads every function of `manifest`; fails on the first that cannot be loaded, naming it.
    /// Python modules are imported here, once each (a module that fails to import, or lacks a
    /// function, fails the load with the Python traceback in the error).
    pub fn load(manifest: &Manifest) -> Result<Self, LoadError> {
        manifest.validate()?;
        let mut libraries: HashMap<PathBuf, Arc<Library>> = HashMap::new();
        let mut functions = praas_wire::idmap::IdMap::default();
        #[cfg(feature = "python")]
        let mut python = crate::python::Loader::default();
        for spec in &manifest.functions {
            let code = match spec.language {
                Language::C => native_code(manifest, spec, &mut libraries)?,
                #[cfg(feature = "python")]
                Language::Python => python_code(manifest, spec, &mut python)?,
                #[cfg(not(feature = "python"))]
                Language::Python => return Err(LoadError::PythonUnsupported(spec.name.clone())),
            };
            let function = Function {
                name: spec.name.as_str().into(),
                mode: spec.mode,
                timeout: spec.timeout_ms.map(Duration::from_millis),
                stats: Arc::new(FunctionStats::new()),
                code,
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

    /// All functions, sorted by name.
    pub fn iter(&self) -> Vec<&Function> {
        let mut functions: Vec<&Function> = self.functions.values().collect();
        functions.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        functions
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

    /// A manifest text of one function, as a user could write it (bypassing `to_toml`'s checks;
    /// the strings quoted by the TOML library).
    fn one(name: &str, symbol: Option<&str>) -> String {
        let quoted = |text: &str| toml::Value::String(text.to_owned()).to_string();
        let symbol = symbol.map(|s| format!("symbol = {}\n", quoted(s))).unwrap_or_default();
        format!("[[function]]\nname = {}\nlibrary = \"x.so\"\n{symbol}", quoted(name))
    }

    #[test]
    fn function_names_outside_the_rule_are_refused_naming_the_function_and_the_rule() {
        let long = "a".repeat(MAX_FUNCTION_NAME + 1);
        let cases: [(&str, NameProblem); 9] = [
            ("", NameProblem::Empty),
            ("del\u{7f}", NameProblem::Character { character: '\u{7f}', at: 3 }),
            ("e\u{301}", NameProblem::Character { character: '\u{301}', at: 1 }),
            ("zero\u{200b}width", NameProblem::Character { character: '\u{200b}', at: 4 }),
            ("with space", NameProblem::Character { character: ' ', at: 4 }),
            ("slash/name", NameProblem::Character { character: '/', at: 5 }),
            ("-leading", NameProblem::Leading('-')),
            (".hidden", NameProblem::Leading('.')),
            (&long, NameProblem::TooLong(MAX_FUNCTION_NAME + 1)),
        ];
        for (name, problem) in cases {
            assert_eq!(check_function_name(name), Err(problem.clone()), "{name:?}");
            let err = Manifest::from_toml(&one(name, None), Path::new("")).unwrap_err();
            assert!(
                matches!(&err, ManifestError::InvalidName { name: n, problem: p } if n == name && *p == problem),
                "{name:?}: {err:?}"
            );
            let text = err.to_string();
            assert!(text.contains(&format!("{name:?}")) && text.contains(FUNCTION_NAME_RULE), "{text}");
        }
        for name in ["a", "echo", "a.b-c_d", "0start", "UPPER_lower.9", &"z".repeat(MAX_FUNCTION_NAME)] {
            assert_eq!(check_function_name(name), Ok(()), "{name:?}");
            Manifest::from_toml(&one(name, None), Path::new("")).unwrap();
        }
    }

    #[test]
    fn symbols_must_be_c_identifiers() {
        for symbol in ["", "1abc", "a-b", "a.b", "sp ace", "é"] {
            let err = Manifest::from_toml(&one("f", Some(symbol)), Path::new("")).unwrap_err();
            assert!(
                matches!(&err, ManifestError::InvalidSymbol { function, symbol: s } if function == "f" && s == symbol),
                "{symbol:?}: {err:?}"
            );
            assert!(err.to_string().contains("C identifier"), "{err}");
        }
        for symbol in ["a", "_", "_a1", "praas_echo", "Z9"] {
            assert!(is_c_identifier(symbol), "{symbol:?}");
            Manifest::from_toml(&one("f", Some(symbol)), Path::new("")).unwrap();
        }
    }

    #[test]
    fn swap_in_on_call_is_on_unless_the_manifest_turns_it_off_and_round_trips() {
        let on = Manifest::from_toml(&one("f", None), Path::new("")).unwrap();
        assert!(on.swap_in_on_call);
        assert!(!on.to_toml().unwrap().contains("swap_in_on_call"), "the default is not written");
        let off =
            Manifest::from_toml(&format!("swap_in_on_call = false\n\n{}", one("f", None)), Path::new("")).unwrap();
        assert!(!off.swap_in_on_call);
        let text = off.to_toml().unwrap();
        assert_eq!(Manifest::from_toml(&text, Path::new("")).unwrap(), off, "{text}");
        assert!(Manifest::from_toml("swap_in_on_call = \"no\"\n", Path::new("")).is_err());
        assert!(Manifest::of(Vec::new()).swap_in_on_call);
    }

    #[test]
    fn a_name_declared_twice_is_refused_by_the_parser_and_the_loader() {
        let text = format!("{}{}", one("twice", None), one("twice", Some("other")));
        let err = Manifest::from_toml(&text, Path::new("")).unwrap_err();
        assert!(matches!(&err, ManifestError::Duplicate(name) if name == "twice"), "{err:?}");
        let spec = FunctionSpec::native("twice", "/nonexistent.so");
        let built = Manifest { swap_in_on_call: true, functions: vec![spec.clone(), spec], base_dir: PathBuf::new() };
        let err = FunctionRegistry::load(&built).unwrap_err();
        assert!(matches!(err, LoadError::Invalid(ManifestError::Duplicate(_))), "{err}");
        assert!(matches!(built.to_toml(), Err(ManifestError::Duplicate(_))));
    }

    #[test]
    fn to_toml_writes_what_from_toml_reads_and_refuses_what_it_would_not() {
        let m = Manifest::from_toml(
            "[[function]]\nname = \"a\"\nlibrary = \"x.so\"\n[[function]]\nname = \"b\"\nlibrary = \"/a \\\"q\\\"\\n dir/y.so\"\nsymbol = \"bb\"\nmode = \"inline\"\ntimeout_ms = 10\n",
            Path::new("/base"),
        )
        .unwrap();
        let text = m.to_toml().unwrap();
        assert_eq!(Manifest::from_toml(&text, Path::new("/base")).unwrap(), m, "{text}");
        assert!(!text.contains("base_dir"), "{text}");
        let mut bad = m.clone();
        bad.functions[0].name = "a b".into();
        assert!(matches!(bad.to_toml(), Err(ManifestError::InvalidName { .. })));
        let mut huge = m;
        huge.functions[0].timeout_ms = Some(u64::MAX);
        assert!(matches!(huge.to_toml(), Err(ManifestError::Serialize(_))));
    }

    mod round_trip {
        use proptest::prelude::*;

        use super::super::*;

        fn spec() -> impl Strategy<Value = FunctionSpec> {
            (
                "[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}",
                any::<String>().prop_filter("a library path", |s| !s.is_empty()),
                proptest::option::of("[A-Za-z_][A-Za-z0-9_]{0,40}"),
                prop_oneof![Just(ExecutionMode::Inline), Just(ExecutionMode::Worker)],
                proptest::option::of(0..=i64::MAX as u64),
            )
                .prop_map(|(name, library, symbol, mode, timeout_ms)| FunctionSpec {
                    symbol,
                    mode,
                    timeout_ms,
                    ..FunctionSpec::native(name, library)
                })
        }

        fn python_spec() -> impl Strategy<Value = FunctionSpec> {
            (
                "[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}",
                prop_oneof!["[^\\x00]{0,30}\\.py", "[a-z_][a-z0-9_]{0,10}(\\.[a-z_][a-z0-9_]{0,10}){0,2}"],
                "[A-Za-z_][A-Za-z0-9_]{0,40}",
                prop_oneof![Just(ExecutionMode::Inline), Just(ExecutionMode::Worker)],
            )
                .prop_map(|(name, module, symbol, mode)| FunctionSpec {
                    symbol: Some(symbol),
                    mode,
                    ..FunctionSpec::python(name, module)
                })
        }

        fn manifest() -> impl Strategy<Value = Manifest> {
            proptest::collection::vec(prop_oneof![spec(), python_spec()], 0..8).prop_map(|specs| {
                let mut seen = std::collections::HashSet::new();
                let functions = specs.into_iter().filter(|s| seen.insert(s.name.clone())).collect();
                Manifest { swap_in_on_call: true, functions, base_dir: PathBuf::from("/where/it/was/read") }
            })
        }

        proptest! {
            #[test]
            fn every_valid_manifest_round_trips_through_toml(manifest in manifest()) {
                let text = manifest.to_toml().unwrap();
                let back = Manifest::from_toml(&text, &manifest.base_dir).unwrap();
                prop_assert_eq!(back, manifest, "{}", text);
            }
        }
    }

    #[test]
    fn python_functions_name_a_module_and_c_functions_a_library_each_not_the_other() {
        let parse = |text: &str| Manifest::from_toml(text, Path::new("/base"));
        let m = parse(
            "[[function]]\nname = \"a\"\nlanguage = \"python\"\nmodule = \"fns.py\"\n\
             [[function]]\nname = \"b\"\nlanguage = \"python\"\nmodule = \"pkg.mod\"\nsymbol = \"run\"\nmode = \"inline\"\n\
             [[function]]\nname = \"c\"\nlibrary = \"x.so\"\nlanguage = \"c\"\n",
        )
        .unwrap();
        assert_eq!(m.functions[0].language, Language::Python);
        assert_eq!(m.functions[0].entry_name(), "a");
        assert_eq!(m.functions[1].entry_name(), "run");
        assert_eq!(m.functions[2].language, Language::C);
        assert_eq!(PythonModule::parse("fns.py"), Some(PythonModule::File(Path::new("fns.py"))));
        assert_eq!(PythonModule::parse("sub/dir/fns"), Some(PythonModule::File(Path::new("sub/dir/fns"))));
        assert_eq!(PythonModule::parse("pkg.mod"), Some(PythonModule::Name("pkg.mod")));
        // The C ABI stays the default, and is not written out.
        let text = m.to_toml().unwrap();
        assert_eq!(text.matches("language").count(), 2, "{text}");
        assert_eq!(parse(&text).unwrap(), m);

        let python = |extra: &str| format!("[[function]]\nname = \"f\"\nlanguage = \"python\"\n{extra}");
        type Case = (String, fn(&ManifestError) -> bool, &'static str);
        let cases: [Case; 7] = [
            (python(""), |e| matches!(e, ManifestError::MissingModule(f) if f == "f"), "needs `module`"),
            (
                python("module = \"m.py\"\nlibrary = \"x.so\"\n"),
                |e| matches!(e, ManifestError::LibraryWithPython(_)),
                "not `library`",
            ),
            (
                python("module = \"not a name\"\n"),
                |e| matches!(e, ManifestError::InvalidModule { .. }),
                "neither a file",
            ),
            (python("module = \"pkg..mod\"\n"), |e| matches!(e, ManifestError::InvalidModule { .. }), "neither a file"),
            (
                "[[function]]\nname = \"with-dash\"\nlanguage = \"python\"\nmodule = \"m.py\"\n".into(),
                |e| matches!(e, ManifestError::PythonName(f) if f == "with-dash"),
                "`symbol` must name",
            ),
            (
                "[[function]]\nname = \"f\"\n".into(),
                |e| matches!(e, ManifestError::MissingLibrary(_)),
                "needs `library`",
            ),
            (
                "[[function]]\nname = \"f\"\nlibrary = \"x.so\"\nmodule = \"m.py\"\n".into(),
                |e| matches!(e, ManifestError::ModuleWithoutPython(_)),
                "language = \"python\"",
            ),
        ];
        for (text, is, says) in cases {
            let err = parse(&text).unwrap_err();
            assert!(is(&err), "{text}: {err:?}");
            assert!(err.to_string().contains(says) && err.to_string().contains("function \""), "{err}");
        }
        assert!(parse("[[function]]\nname = \"f\"\nlanguage = \"perl\"\nmodule = \"m\"\n").is_err());
        // A dashed name is fine with a symbol.
        parse(&python("module = \"m.py\"\nsymbol = \"f_1\"\n").replace("\"f\"\nlanguage", "\"f-1\"\nlanguage"))
            .unwrap();
    }

    #[cfg(not(feature = "python"))]
    #[test]
    fn python_functions_need_the_python_feature() {
        let m = Manifest {
            swap_in_on_call: true,
            functions: vec![FunctionSpec::python("f", "m.py")],
            base_dir: PathBuf::new(),
        };
        let err = FunctionRegistry::load(&m).unwrap_err();
        assert!(matches!(err, LoadError::PythonUnsupported(_)), "{err}");
        assert!(err.to_string().contains("cargo feature `python`"), "{err}");
    }

    #[test]
    fn missing_library_names_the_function() {
        let m = Manifest::from_toml("[[function]]\nname = \"f\"\nlibrary = \"/nonexistent/lib.so\"\n", Path::new(""))
            .unwrap();
        let err = FunctionRegistry::load(&m).unwrap_err().to_string();
        assert!(err.contains("\"f\"") && err.contains("/nonexistent/lib.so"), "{err}");
    }
}
