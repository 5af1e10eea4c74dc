//! Keeps `include/praas.h` in sync with the Rust definitions of the C ABI in `src/lib.rs`.
//!
//! One table below lists every struct, field (with its type) and constant of the ABI. From it the
//! test generates a C program that prints `sizeof`, `_Alignof`, `offsetof`, field sizes, whether
//! each field has exactly the listed C type, and every constant; it compiles that program with
//! the system C compiler (`$CC`, else `cc`), runs it and compares each number with the Rust side.
//! The same table becomes `static_assert`s in a C++ translation unit that also uses every helper,
//! which proves the header is C++-clean. Pattern matches without `..` make the table fail to
//! compile when a field is added in Rust, and the constant and struct lists are checked against
//! the sources of both sides.
//!
//! Finally `examples/c_functions.c` is built as a shared library and run against a mock runtime
//! written in Rust, which exercises the header's helpers across the real ABI.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::c_void;
use std::fmt::Write as _;
use std::mem::{align_of, offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use praas_ffi::*;

const INCLUDE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
const HEADER: &str = include_str!("../include/praas.h");
const LIB_RS: &str = include_str!("../src/lib.rs");
const C_FLAGS: &[&str] = &["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"];
const CXX_FLAGS: &[&str] = &["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic"];

/// The C spelling of a Rust type of the ABI (written with `fn(..)` for `unsafe extern "C" fn(..)`).
macro_rules! c_ty {
    (u8) => { "uint8_t" };
    (u16) => { "uint16_t" };
    (u32) => { "uint32_t" };
    (u64) => { "uint64_t" };
    (i32) => { "int32_t" };
    (usize) => { "size_t" };
    (c_void) => { "void" };
    ($t:ident) => { stringify!($t) };
    (*const $t:ident) => { concat!("const ", c_ty!($t), " *") };
    (*mut $t:ident) => { concat!(c_ty!($t), " *") };
    (fn($($a:tt)*) -> $r:ident) => { concat!(c_ty!($r), " (*)(", c_args!($($a)*), ")") };
    (fn($($a:tt)*)) => { concat!("void (*)(", c_args!($($a)*), ")") };
}

/// The C spelling of a comma-separated list of parameter types.
macro_rules! c_args {
    () => { "" };
    (*const $t:ident $(, $($rest:tt)+)?) => { concat!(c_ty!(*const $t) $(, ", ", c_args!($($rest)+))?) };
    (*mut $t:ident $(, $($rest:tt)+)?) => { concat!(c_ty!(*mut $t) $(, ", ", c_args!($($rest)+))?) };
    ($t:ident $(, $($rest:tt)+)?) => { concat!(c_ty!($t) $(, ", ", c_args!($($rest)+))?) };
}

/// The Rust type written in the table's notation.
macro_rules! rust_ty {
    (fn($($a:tt)*) $(-> $r:ident)?) => { unsafe extern "C" fn($($a)*) $(-> $r)? };
    ($($t:tt)+) => { $($t)+ };
}

/// Compiles only if `A` and `B` are the same type.
trait Same<T> {}
impl<T> Same<T> for T {}
fn assert_same<A: Same<B>, B>() {}

/// Compiles only if the referenced value has exactly type `T` (no coercion happens behind `&`).
fn assert_type<T>(_: &T) {}

/// One number the header must agree on.
struct Check {
    /// What it is, as printed by the C program and named in failures.
    key: String,
    /// C expression of the number.
    c: String,
    /// C++ expression whose value must equal `expected` (checked with `static_assert`).
    cpp: String,
    /// The value on the Rust side.
    expected: i64,
    /// The failure message when the header has another value; empty for the generic one.
    mismatch: String,
}

impl Check {
    fn number(key: String, c: String, cpp: String, expected: usize) -> Self {
        Self { key, c, cpp, expected: i64::try_from(expected).unwrap(), mismatch: String::new() }
    }
}

/// Checks for struct layouts and field types.
macro_rules! struct_checks {
    ($checks:ident; $( $s:ident { $( $f:ident : ( $($ty:tt)+ ) ),* $(,)? } )*) => {
        $(
            // A pattern without `..` stops compiling when lib.rs adds a field the table lacks.
            let _exhaustive = |v: &$s| {
                let $s { $($f: _),* } = v;
            };
            let s = stringify!($s);
            let size = format!("sizeof({s})");
            $checks.push(Check::number(size.clone(), size.clone(), size, size_of::<$s>()));
            let align = (format!("alignof({s})"), format!("_Alignof({s})"));
            $checks.push(Check::number(align.0.clone(), align.1, align.0, align_of::<$s>()));
            $(
                let _type = |v: &$s| assert_type::<rust_ty!($($ty)+)>(&v.$f);
                let f = stringify!($f);
                let c_type = c_ty!($($ty)+);
                $checks.push(Check::number(
                    format!("offsetof({s}, {f})"),
                    format!("offsetof({s}, {f})"),
                    format!("offsetof({s}, {f})"),
                    offset_of!($s, $f),
                ));
                $checks.push(Check::number(
                    format!("sizeof({s}.{f})"),
                    format!("sizeof((({s} *)0)->{f})"),
                    format!("sizeof({s}::{f})"),
                    size_of::<rust_ty!($($ty)+)>(),
                ));
                $checks.push(Check {
                    key: format!("type({s}.{f})"),
                    c: format!("_Generic((({s} *)0)->{f}, {c_type}: 1, default: 0)"),
                    cpp: format!("std::is_same<decltype({s}::{f}), {c_type}>::value"),
                    expected: 1,
                    mismatch: format!(
                        "type({s}.{f}): praas.h does not declare it as `{c_type}` (Rust: `{}`)",
                        stringify!($($ty)+),
                    ),
                });
            )*
        )*
    };
}

/// Checks for type aliases (their size and exact C type).
macro_rules! alias_checks {
    ($checks:ident; $( $a:ident = ( $($ty:tt)+ ) ),* $(,)?) => {
        $(
            assert_same::<$a, rust_ty!($($ty)+)>();
            let a = stringify!($a);
            let c_type = c_ty!($($ty)+);
            let size = format!("sizeof({a})");
            $checks.push(Check::number(size.clone(), size.clone(), size, size_of::<$a>()));
            $checks.push(Check {
                key: format!("type({a})"),
                c: format!("_Generic(({a})0, {c_type}: 1, default: 0)"),
                cpp: format!("std::is_same<{a}, {c_type}>::value"),
                expected: 1,
                mismatch: format!("type({a}): praas.h does not define it as `{c_type}`"),
            });
        )*
    };
}

/// Checks for constants.
macro_rules! constant_checks {
    ($checks:ident; $($c:ident),* $(,)?) => {
        $(
            $checks.push(Check {
                key: stringify!($c).to_owned(),
                c: format!("(long long)({})", stringify!($c)),
                cpp: format!("static_cast<long long>({})", stringify!($c)),
                expected: i64::from($c),
                mismatch: String::new(),
            });
        )*
    };
}

/// Every item of the ABI, checked against `praas.h`.
fn abi_checks() -> Vec<Check> {
    let mut checks = Vec::new();
    struct_checks! { checks;
        praas_bytes {
            data: (*const u8),
            len: (usize),
            owner: (*mut c_void),
        }
        praas_output {
            data: (*mut u8),
            len: (usize),
            capacity: (usize),
            handle: (*mut c_void),
        }
        praas_api {
            abi_version: (u32),
            output_reserve: (fn(*mut praas_context, *mut praas_output, usize) -> i32),
            state_put: (fn(*mut praas_context, *const u8, usize, *const u8, usize) -> i32),
            state_get: (fn(*mut praas_context, *const u8, usize, *mut praas_bytes, *mut u64) -> i32),
            state_delete: (fn(*mut praas_context, *const u8, usize) -> i32),
            state_keys: (fn(*mut praas_context, *mut praas_bytes) -> i32),
            invoke: (fn(*mut praas_context, *const u8, usize, *const u8, usize, *mut praas_bytes) -> i32),
            process_id: (fn(*mut praas_context, *mut praas_bytes) -> i32),
            log: (fn(*mut praas_context, i32, *const u8, usize)),
            set_error: (fn(*mut praas_context, *const u8, usize)),
            release: (fn(*mut praas_context, *mut praas_bytes)),
            put: (fn(*mut praas_context, *const u8, usize, *const u8, usize, *const u8, usize, *mut praas_bytes) -> i32),
            get: (fn(*mut praas_context, *const u8, usize, *const u8, usize, u64, *mut praas_bytes, *mut praas_bytes) -> i32),
            remote_invoke: (fn(*mut praas_context, *const u8, usize, *const u8, usize, *const u8, usize, *mut praas_bytes) -> i32),
            remote_submit: (fn(*mut praas_context, *const u8, usize, *const u8, usize, *const u8, usize, *mut u64, *mut praas_bytes) -> i32),
            remote_wait: (fn(*mut praas_context, *const u64, usize, *mut usize, *mut praas_bytes) -> i32),
        }
        praas_context {
            api: (*const praas_api),
            runtime: (*mut c_void),
        }
    }
    alias_checks! { checks;
        praas_function = (fn(*mut praas_context, *const u8, usize, *mut praas_output) -> i32),
    }
    constant_checks! { checks;
        PRAAS_ABI_VERSION,
        PRAAS_ABI_REMOTE,
        PRAAS_OK,
        PRAAS_ERR_FUNCTION,
        PRAAS_ERR_UNKNOWN_FUNCTION,
        PRAAS_ERR_PANICKED,
        PRAAS_ERR_TIMEOUT,
        PRAAS_ERR_TOO_LARGE,
        PRAAS_ERR_MALFORMED,
        PRAAS_ERR_OVERLOADED,
        PRAAS_ERR_NOT_FOUND,
        PRAAS_ERR_UNSUPPORTED,
        PRAAS_ERR_INVALID_ARGUMENT,
        PRAAS_ERR_INTERNAL,
        PRAAS_ERR_UNAVAILABLE,
        PRAAS_ERR_UNAUTHENTICATED,
        PRAAS_LOG_ERROR,
        PRAAS_LOG_WARN,
        PRAAS_LOG_INFO,
        PRAAS_LOG_DEBUG,
    }
    // PRAAS_FUNCTION must define a function of type praas_function.
    checks.push(Check {
        key: "type(PRAAS_FUNCTION)".to_owned(),
        c: "_Generic(&praas_header_test_function, praas_function: 1, default: 0)".to_owned(),
        cpp: "std::is_same<decltype(&praas_header_test_function), praas_function>::value".to_owned(),
        expected: 1,
        mismatch: "type(PRAAS_FUNCTION): PRAAS_FUNCTION(name) does not define a praas_function".to_owned(),
    });
    checks
}

/// A directory of its own for one test, under Cargo's temporary directory for integration tests.
fn scratch_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("praas-ffi-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// The compiler command from `var` (which may carry arguments, as in `CC="ccache cc"`), else the
/// first of `candidates` that runs. Panics if there is none: the header check must not be skipped.
fn compiler(var: &str, candidates: &[&str], kind: &str) -> Vec<String> {
    if let Some(value) = std::env::var_os(var) {
        let words: Vec<String> = value.to_string_lossy().split_whitespace().map(str::to_owned).collect();
        if !words.is_empty() {
            return words;
        }
    }
    for candidate in candidates {
        if Command::new(candidate).arg("--version").output().is_ok_and(|out| out.status.success()) {
            return vec![(*candidate).to_owned()];
        }
    }
    panic!("no {kind} found (tried {candidates:?}); install one or set {var}: the header check cannot run without it")
}

/// Runs `words` + `args`, panicking with the output if it cannot start or fails.
fn run(words: &[String], args: &[&str], what: &str) -> Output {
    let mut command = Command::new(&words[0]);
    command.args(&words[1..]).args(args);
    let output = command.output().unwrap_or_else(|e| panic!("{what}: cannot start {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}): `{command:?}`\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    output
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Names from `source` lines starting with `prefix`, cut at the first character not in a name.
fn names_after<'a>(source: &'a str, prefix: &str) -> BTreeSet<&'a str> {
    source
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix(prefix))
        .map(|rest| rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next().unwrap_or(""))
        .collect()
}

#[test]
fn table_covers_every_item_of_both_sides() {
    let checks = abi_checks();
    let checked: BTreeSet<&str> = checks
        .iter()
        .map(|c| c.key.trim_start_matches("sizeof(").trim_start_matches("type(").trim_end_matches(')'))
        .collect();
    let mut missing = Vec::new();
    for (prefix, wanted) in [("pub const ", "PRAAS_"), ("pub struct ", "praas_"), ("pub type ", "praas_")] {
        for name in names_after(LIB_RS, prefix).into_iter().filter(|n| n.starts_with(wanted)) {
            if !checked.contains(name) {
                missing.push(format!("`{prefix}{name}` of src/lib.rs"));
            }
        }
    }
    // Numeric #defines of the header (not helper macros such as PRAAS_EXPORT).
    for line in HEADER.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#define"), Some(name), Some(value)) = (words.next(), words.next(), words.next()) {
            if value.parse::<i64>().is_ok() && !checked.contains(name) {
                missing.push(format!("#define {name} of include/praas.h"));
            }
        }
    }
    assert!(missing.is_empty(), "the ABI table in tests/header.rs does not check:\n  {}", missing.join("\n  "));
}

#[test]
fn header_matches_rust_abi() {
    let cc = compiler("CC", &["cc", "gcc", "clang"], "C compiler");
    let dir = scratch_dir("layout");
    let checks = abi_checks();

    let mut program = String::from(
        "#include <praas.h>\n#include <stddef.h>\n#include <stdio.h>\n\n\
         PRAAS_FUNCTION(praas_header_test_function) { return PRAAS_OK; }\n\n\
         int main(void) {\n",
    );
    for check in &checks {
        writeln!(program, "    printf(\"%s\\t%lld\\n\", \"{}\", (long long)({}));", check.key, check.c).unwrap();
    }
    program.push_str("    return 0;\n}\n");
    let source = dir.join("layout.c");
    let binary = dir.join("layout");
    std::fs::write(&source, &program).unwrap();

    let mut args = C_FLAGS.to_vec();
    args.extend(["-I", INCLUDE_DIR, path_str(&source), "-o", path_str(&binary)]);
    run(&cc, &args, "compiling praas.h as C");
    let output = run(&[path_str(&binary).to_owned()], &[], "the layout program");

    let stdout = String::from_utf8(output.stdout).expect("the layout program prints ASCII");
    let mut printed = BTreeMap::new();
    for line in stdout.lines() {
        let (key, value) = line.split_once('\t').unwrap_or_else(|| panic!("unexpected line {line:?}"));
        printed.insert(key.to_owned(), value.parse::<i64>().unwrap_or_else(|e| panic!("{line:?}: {e}")));
    }
    let mut failures = Vec::new();
    for check in &checks {
        match printed.get(&check.key) {
            None => failures.push(format!("{}: not printed by the C program", check.key)),
            Some(&value) if value != check.expected && !check.mismatch.is_empty() => {
                failures.push(check.mismatch.clone())
            }
            Some(&value) if value != check.expected => {
                failures.push(format!("{}: praas.h has {value}, Rust has {}", check.key, check.expected))
            }
            Some(_) => {}
        }
    }
    assert!(failures.is_empty(), "include/praas.h disagrees with src/lib.rs:\n  {}", failures.join("\n  "));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn header_is_cpp_clean() {
    let cxx = compiler("CXX", &["c++", "g++", "clang++"], "C++ compiler");
    let dir = scratch_dir("cpp");

    let mut program = String::from(
        "#include <praas.h>\n#include <cstddef>\n#include <type_traits>\n\n\
         PRAAS_FUNCTION(praas_header_test_function) { return PRAAS_OK; }\n\n\
         // Uses every helper, so that C++ compiles each of them.\n\
         PRAAS_FUNCTION(praas_header_every_helper) {\n\
         \x20   praas_bytes bytes = {nullptr, 0, nullptr};\n\
         \x20   uint64_t timestamp = 0;\n\
         \x20   int32_t status = praas_output_reserve(ctx, output, input_len);\n\
         \x20   status |= praas_output_write(ctx, output, input, input_len);\n\
         \x20   status |= praas_state_put(ctx, \"key\", 3, input, input_len);\n\
         \x20   status |= praas_state_get(ctx, \"key\", 3, &bytes, &timestamp);\n\
         \x20   praas_release(ctx, &bytes);\n\
         \x20   status |= praas_state_delete(ctx, \"key\", 3);\n\
         \x20   status |= praas_state_keys(ctx, &bytes);\n\
         \x20   praas_release(ctx, &bytes);\n\
         \x20   status |= praas_invoke(ctx, \"echo\", 4, input, input_len, &bytes);\n\
         \x20   praas_release(ctx, &bytes);\n\
         \x20   status |= praas_process_id(ctx, &bytes);\n\
         \x20   status |= praas_put(ctx, \"peer\", 4, \"key\", 3, input, input_len, &bytes);\n\
         \x20   praas_release(ctx, &bytes);\n\
         \x20   praas_bytes from = {nullptr, 0, nullptr};\n\
         \x20   status |= praas_get(ctx, nullptr, 0, \"key\", 3, 10, &bytes, &from);\n\
         \x20   praas_release(ctx, &bytes);\n\
         \x20   praas_release(ctx, &from);\n\
         \x20   praas_log(ctx, PRAAS_LOG_INFO, \"log\", 3);\n\
         \x20   praas_set_error(ctx, \"error\", 5);\n\
         \x20   return status;\n\
         }\n\n",
    );
    for check in abi_checks() {
        writeln!(program, "static_assert(({}) == {}, \"{}\");", check.cpp, check.expected, check.key).unwrap();
    }
    let source = dir.join("header.cpp");
    let object = dir.join("header.o");
    std::fs::write(&source, &program).unwrap();

    let mut args = CXX_FLAGS.to_vec();
    args.extend(["-I", INCLUDE_DIR, "-c", path_str(&source), "-o", path_str(&object)]);
    run(&cxx, &args, "compiling praas.h as C++");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `examples/c_functions.c` against a mock runtime implemented here.
#[cfg(unix)]
mod examples {
    use super::*;
    use std::ffi::{c_char, c_int, CString};

    extern "C" {
        fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
        fn dlerror() -> *const c_char;
    }
    const RTLD_NOW: c_int = 2;

    const PROCESS_ID: &[u8] = b"proc-42";

    /// The mock runtime state behind `praas_context::runtime`.
    #[derive(Default)]
    struct Mock {
        state: BTreeMap<Vec<u8>, (Vec<u8>, u64)>,
        clock: u64,
        error: Option<Vec<u8>>,
        logs: Vec<(i32, String)>,
        /// Lent bytes not released yet.
        lent: usize,
        /// Calls of `output_reserve`.
        reserves: usize,
        /// Status the mock's "echo" function returns; anything but `PRAAS_OK` fails with a message.
        echo_status: i32,
        /// Contract violations seen by the mock (panicking across the C frames would abort).
        violations: Vec<String>,
        /// Messages put (to "peer" or to PROCESS_ID), by key, oldest first.
        messages: BTreeMap<Vec<u8>, std::collections::VecDeque<Vec<u8>>>,
    }

    /// # Safety
    /// `ctx` must be a context built by [`call`].
    unsafe fn mock<'a>(ctx: *mut praas_context) -> &'a mut Mock {
        // SAFETY: `call` points `runtime` at a `Mock` that outlives the invocation and that the
        // test does not touch while the C function runs.
        unsafe { &mut *(*ctx).runtime.cast::<Mock>() }
    }

    /// The bytes of a (pointer, length) argument, or `None` (recorded) for a null pointer.
    ///
    /// # Safety
    /// A non-null `data` must be valid for `len` bytes during the call.
    unsafe fn arg<'a>(mock: &mut Mock, what: &str, data: *const u8, len: usize) -> Option<&'a [u8]> {
        if data.is_null() {
            mock.violations.push(format!("{what}: null pointer (length {len})"));
            return None;
        }
        // SAFETY: non-null and, by the caller's contract, valid for `len` bytes.
        Some(unsafe { std::slice::from_raw_parts(data, len) })
    }

    fn lend(mock: &mut Mock, bytes: Vec<u8>) -> praas_bytes {
        let owner = Box::new(bytes);
        mock.lent += 1;
        praas_bytes { data: owner.as_ptr(), len: owner.len(), owner: Box::into_raw(owner).cast() }
    }

    unsafe extern "C" fn output_reserve(ctx: *mut praas_context, out: *mut praas_output, additional: usize) -> i32 {
        // SAFETY: the runtime side of the ABI: `ctx` and `out` are the invocation's.
        let (mock, out) = unsafe { (mock(ctx), &mut *out) };
        mock.reserves += 1;
        // SAFETY: `call` makes every output's handle a live `Vec<u8>` that backs `data`.
        let buf = unsafe { &mut *out.handle.cast::<Vec<u8>>() };
        if out.len > buf.len() || out.capacity != buf.len() {
            mock.violations.push(format!("output len {} / capacity {} corrupted", out.len, out.capacity));
            return PRAAS_ERR_INVALID_ARGUMENT;
        }
        let Some(needed) = out.len.checked_add(additional) else { return PRAAS_ERR_TOO_LARGE };
        if needed > buf.len() {
            // Always reallocate, so that functions which keep a stale `data` get caught.
            let mut grown = vec![0u8; needed.max(2 * buf.len())];
            grown[..out.len].copy_from_slice(&buf[..out.len]);
            *buf = grown;
        }
        out.data = buf.as_mut_ptr();
        out.capacity = buf.len();
        PRAAS_OK
    }

    unsafe extern "C" fn state_put(
        ctx: *mut praas_context,
        key: *const u8,
        key_len: usize,
        value: *const u8,
        value_len: usize,
    ) -> i32 {
        // SAFETY: the runtime side of the ABI: `ctx` is the invocation's.
        let mock = unsafe { mock(ctx) };
        // SAFETY: the ABI makes the arguments valid for their lengths during the call.
        let (Some(key), Some(value)) = (unsafe { arg(mock, "state_put key", key, key_len) }, unsafe {
            arg(mock, "state_put value", value, value_len)
        }) else {
            return PRAAS_ERR_INVALID_ARGUMENT;
        };
        mock.clock += 1;
        let clock = mock.clock;
        mock.state.insert(key.to_vec(), (value.to_vec(), clock));
        PRAAS_OK
    }

    unsafe extern "C" fn state_get(
        ctx: *mut praas_context,
        key: *const u8,
        key_len: usize,
        value: *mut praas_bytes,
        timestamp_ns: *mut u64,
    ) -> i32 {
        // SAFETY: the runtime side of the ABI: `ctx` is the invocation's.
        let mock = unsafe { mock(ctx) };
        // SAFETY: the ABI makes `key` valid for `key_len` bytes during the call.
        let Some(key) = (unsafe { arg(mock, "state_get key", key, key_len) }) else {
            return PRAAS_ERR_INVALID_ARGUMENT;
        };
        let Some((bytes, timestamp)) = mock.state.get(key).cloned() else { return PRAAS_ERR_NOT_FOUND };
        // SAFETY: the ABI makes `value` writable and `timestamp_ns` null or writable.
        unsafe {
            *value = lend(mock, bytes);
            if !timestamp_ns.is_null() {
                *timestamp_ns = timestamp;
            }
        }
        PRAAS_OK
    }

    unsafe extern "C" fn state_delete(ctx: *mut praas_context, key: *const u8, key_len: usize) -> i32 {
        // SAFETY: the runtime side of the ABI: `ctx` is the invocation's.
        let mock = unsafe { mock(ctx) };
        // SAFETY: the ABI makes `key` valid for `key_len` bytes during the call.
        let Some(key) = (unsafe { arg(mock, "state_delete key", key, key_len) }) else {
            return PRAAS_ERR_INVALID_ARGUMENT;
        };
        if mock.state.remove(key).is_some() {
            PRAAS_OK
        } else {
            PRAAS_ERR_NOT_FOUND
        }
    }

    unsafe extern "C" fn state_keys(ctx: *mut praas_context, keys: *mut praas_bytes) -> i32 {
        // SAFETY: the runtime side of the ABI: `ctx` is the invocation's.
        let mock = unsafe { mock(ctx) };
        let mut list = Vec::new();
        for (key, (_, timestamp)) in &mock.state {
            encode_key(&mut list, &String::from_utf8_lossy(key), *timestamp);
        }
        // SAFETY: the ABI makes `keys` writable.
        unsafe { *keys = lend(mock, list) };
        PRAAS_OK
    }

    unsafe extern "C" fn invoke(
        ctx: *mut praas_context,
        function: *const u8,
        function_len: usize,
        input: *const u8,
        input_len: usize,
        output: *mut praas_bytes,
    ) -> i32 {
        // SAFETY: the runtime side of the ABI: `ctx` is the invocation's.
        let mock = unsafe { mock(ctx) };
        // SAFETY: the ABI makes the arguments valid for their lengths during the call.
        let (Some(function), Some(input)) = (unsafe { arg(mock, "invoke function", function, function_len) }, unsafe {
            arg(mock, "invoke input", input, input_len)
        }) else {
            return PRAAS_ERR_INVALID_ARGUMENT;
        };
        let (status, bytes) = match function {
            b"echo" if mock.echo_status == PRAAS_OK => (PRAAS_OK, input.to_vec()),
            b"echo" => (mock.echo_status, b"echo timed out".to_vec()),
            other => (PRAAS_ERR_UNKNOWN_FUNCTION, format!("no function {}", String::from_utf8_lossy(other)).into()),
        };
        // SAFETY: the ABI makes `output` writable.
        unsafe { *output = lend(mock, bytes) };
        status
    }

    unsafe extern "C" fn process_id(_ctx: *mut praas_context, id: *mut praas_bytes) -> i32 {
        // SAFETY: the ABI makes `id` writable; the id is static and owned by nobody.
        unsafe { *id = praas_bytes { data: PROCESS_ID.as_ptr(), len: PROCESS_ID.len(), owner: std::ptr::null_mut() } };
        PRAAS_OK
    }

    unsafe extern "C" fn log(ctx: *mut praas_context, level: i32, message: *const u8, message_len: usize) {
        // SAFETY: the runtime side of the ABI: `ctx` is the invocation's.
        let mock = unsafe { mock(ctx) };
        // SAFETY: the ABI makes `message` valid for `message_len` bytes during the call.
        if let Some(message) = unsafe { arg(mock, "log message", message, message_len) } {
            let line = String::from_utf8_lossy(message).into_owned();
            mock.logs.push((level, line));
        }
    }

    unsafe extern "C" fn set_error(ctx: *mut praas_context, message: *const u8, message_len: usize) {
        // SAFETY: the runtime side of the ABI: `ctx` is the invocation's.
        let mock = unsafe { mock(ctx) };
        // SAFETY: the ABI makes `message` valid for `message_len` bytes during the call.
        if let Some(message) = unsafe { arg(mock, "set_error message", message, message_len) } {
            mock.error = Some(message.to_vec());
        }
    }

    unsafe extern "C" fn release(ctx: *mut praas_context, bytes: *mut praas_bytes) {
        // SAFETY: the runtime side of the ABI: `ctx` is the invocation's, `bytes` points to bytes it lent.
        let (mock, bytes) = unsafe { (mock(ctx), &mut *bytes) };
        if bytes.owner.is_null() {
            return;
        }
        // SAFETY: a non-null owner comes from `lend`'s `Box::into_raw` and is released only once,
        // since it is cleared right after.
        drop(unsafe { Box::from_raw(bytes.owner.cast::<Vec<u8>>()) });
        *bytes = praas_bytes::empty();
        mock.lent -= 1;
    }

    #[allow(clippy::too_many_arguments)]
    unsafe extern "C" fn put(
        ctx: *mut praas_context,
        dest: *const u8,
        dest_len: usize,
        key: *const u8,
        key_len: usize,
        data: *const u8,
        data_len: usize,
        error: *mut praas_bytes,
    ) -> i32 {
        // SAFETY: the runtime side of the ABI: `ctx` is the invocation's.
        let mock = unsafe { mock(ctx) };
        // SAFETY: the ABI makes the arguments valid for their lengths during the call (data may
        // be dangling when empty).
        let (Some(dest), Some(key)) =
            (unsafe { arg(mock, "put dest", dest, dest_len) }, unsafe { arg(mock, "put key", key, key_len) })
        else {
            return PRAAS_ERR_INVALID_ARGUMENT;
        };
        let data = if data_len == 0 {
            &[][..]
        } else {
            // SAFETY: as above.
            match unsafe { arg(mock, "put data", data, data_len) } {
                Some(data) => data,
                None => return PRAAS_ERR_INVALID_ARGUMENT,
            }
        };
        if dest != b"peer" && dest != PROCESS_ID {
            if !error.is_null() {
                let text = format!("unknown process {:?}", String::from_utf8_lossy(dest)).into_bytes();
                // SAFETY: the ABI makes a non-null `error` writable.
                unsafe { *error = lend(mock, text) };
            }
            return PRAAS_ERR_NOT_FOUND;
        }
        mock.messages.entry(key.to_vec()).or_default().push_back(data.to_vec());
        PRAAS_OK
    }

    #[allow(clippy::too_many_arguments)]
    unsafe extern "C" fn get(
        ctx: *mut praas_context,
        _source: *const u8,
        _source_len: usize,
        key: *const u8,
        key_len: usize,
        _timeout_ms: u64,
        message: *mut praas_bytes,
        from: *mut praas_bytes,
    ) -> i32 {
        // SAFETY: the runtime side of the ABI: `ctx` is the invocation's.
        let mock = unsafe { mock(ctx) };
        // SAFETY: the ABI makes `key` valid for `key_len` bytes during the call.
        let Some(key) = (unsafe { arg(mock, "get key", key, key_len) }) else {
            return PRAAS_ERR_INVALID_ARGUMENT;
        };
        match mock.messages.get_mut(key).and_then(|q| q.pop_front()) {
            Some(data) => {
                let sender = lend(mock, PROCESS_ID.to_vec());
                // SAFETY: the ABI makes `message` writable, and `from` null or writable.
                unsafe {
                    *message = lend(mock, data);
                    if from.is_null() {
                        mock.violations.push("the example passes a `from`".into());
                    } else {
                        *from = sender;
                    }
                }
                PRAAS_OK
            }
            None => {
                // SAFETY: the ABI makes `message` writable.
                unsafe { *message = lend(mock, b"no message within the timeout".to_vec()) };
                PRAAS_ERR_TIMEOUT
            }
        }
    }

    // The mock runs no other processes: its remote invocation entries refuse (the real ones are
    // tested between real processes in dataplane/tests/remote_invocation.rs).
    #[allow(clippy::too_many_arguments)]
    unsafe extern "C" fn remote_invoke(
        _ctx: *mut praas_context,
        _process: *const u8,
        _process_len: usize,
        _function: *const u8,
        _function_len: usize,
        _input: *const u8,
        _input_len: usize,
        _output: *mut praas_bytes,
    ) -> i32 {
        PRAAS_ERR_UNSUPPORTED
    }

    #[allow(clippy::too_many_arguments)]
    unsafe extern "C" fn remote_submit(
        _ctx: *mut praas_context,
        _process: *const u8,
        _process_len: usize,
        _function: *const u8,
        _function_len: usize,
        _input: *const u8,
        _input_len: usize,
        _handle: *mut u64,
        _error: *mut praas_bytes,
    ) -> i32 {
        PRAAS_ERR_UNSUPPORTED
    }

    unsafe extern "C" fn remote_wait(
        _ctx: *mut praas_context,
        _handles: *const u64,
        _count: usize,
        _index: *mut usize,
        _output: *mut praas_bytes,
    ) -> i32 {
        PRAAS_ERR_UNSUPPORTED
    }

    static API: praas_api = praas_api {
        abi_version: PRAAS_ABI_VERSION,
        output_reserve,
        state_put,
        state_get,
        state_delete,
        state_keys,
        invoke,
        process_id,
        log,
        set_error,
        release,
        put,
        get,
        remote_invoke,
        remote_submit,
        remote_wait,
    };

    /// What one invocation returned.
    #[derive(Debug, PartialEq, Eq)]
    struct Outcome {
        status: i32,
        output: Vec<u8>,
        error: Option<String>,
    }

    fn ok(output: &[u8]) -> Outcome {
        Outcome { status: PRAAS_OK, output: output.to_vec(), error: None }
    }

    fn failed(status: i32, error: &str) -> Outcome {
        Outcome { status, output: Vec::new(), error: Some(error.to_owned()) }
    }

    fn call(function: praas_function, mock: &mut Mock, input: &[u8]) -> Outcome {
        mock.error = None;
        // Start with no room at all, so that every non-empty output goes through output_reserve.
        let buf: *mut Vec<u8> = Box::into_raw(Box::default());
        // SAFETY: `buf` was just created from a live Box.
        let data = unsafe { (*buf).as_mut_ptr() };
        let mut out = praas_output { data, len: 0, capacity: 0, handle: buf.cast() };
        let mut ctx = praas_context { api: &API, runtime: std::ptr::from_mut(mock).cast() };
        // SAFETY: `function` has the praas_function signature (PRAAS_FUNCTION); the context, the
        // output and the input are valid for the duration of the call.
        let status = unsafe { function(&mut ctx, input.as_ptr(), input.len(), &mut out) };
        // SAFETY: `buf` came from `Box::into_raw` above and the function has returned.
        let buf = unsafe { Box::from_raw(buf) };
        assert!(out.len <= buf.len(), "output len {} exceeds the buffer of {}", out.len, buf.len());
        assert!(mock.violations.is_empty(), "the C function broke the ABI: {:?}", mock.violations);
        assert_eq!(mock.lent, 0, "the C function did not release everything it was lent");
        let error = mock.error.take().map(|e| String::from_utf8_lossy(&e).into_owned());
        Outcome { status, output: buf[..out.len].to_vec(), error }
    }

    struct Library {
        handle: *mut c_void,
        path: PathBuf,
    }

    impl Library {
        fn open(path: &Path) -> Self {
            let name = CString::new(path_str(path)).unwrap();
            // SAFETY: `name` is NUL-terminated; the library's constructors are those of plain C.
            let handle = unsafe { dlopen(name.as_ptr(), RTLD_NOW) };
            assert!(!handle.is_null(), "dlopen {}: {}", path.display(), last_dl_error());
            Self { handle, path: path.to_owned() }
        }

        fn function(&self, name: &str) -> praas_function {
            let symbol = CString::new(name).unwrap();
            // SAFETY: `handle` is an open library (never closed); `symbol` is NUL-terminated.
            let address = unsafe { dlsym(self.handle, symbol.as_ptr()) };
            assert!(!address.is_null(), "{} does not export {name}: {}", self.path.display(), last_dl_error());
            // SAFETY: the example defines each exported symbol with PRAAS_FUNCTION, whose type the
            // layout test checks to be praas_function.
            unsafe { std::mem::transmute::<*mut c_void, praas_function>(address) }
        }
    }

    fn last_dl_error() -> String {
        // SAFETY: dlerror returns null or a NUL-terminated message valid until the next dl call.
        let message = unsafe { dlerror() };
        if message.is_null() {
            return "no dlerror message".to_owned();
        }
        // SAFETY: non-null and NUL-terminated, see above.
        unsafe { std::ffi::CStr::from_ptr(message) }.to_string_lossy().into_owned()
    }

    #[test]
    fn c_examples_run_against_a_mock_runtime() {
        let cc = compiler("CC", &["cc", "gcc", "clang"], "C compiler");
        let dir = scratch_dir("examples");
        let library = dir.join("libc_functions.so");
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/c_functions.c");
        // The dataplane tests' command line, plus warnings as errors.
        let mut args = C_FLAGS.to_vec();
        args.extend(["-shared", "-fPIC", "-O2", "-I", INCLUDE_DIR, source, "-o", path_str(&library)]);
        run(&cc, &args, "compiling examples/c_functions.c");
        let lib = Library::open(&library);
        let mut mock = Mock::default();
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();

        let echo = lib.function("c_echo");
        assert_eq!(call(echo, &mut mock, b"hello"), ok(b"hello"));
        assert_eq!(call(echo, &mut mock, b""), ok(b""));
        mock.reserves = 0;
        assert_eq!(call(echo, &mut mock, &big), ok(&big));
        assert!(mock.reserves >= 1, "c_echo wrote without reserving");

        let reverse = lib.function("c_reverse");
        assert_eq!(call(reverse, &mut mock, b"abc"), ok(b"cba"));
        assert_eq!(call(reverse, &mut mock, b""), ok(b""));
        let reversed: Vec<u8> = big.iter().rev().copied().collect();
        assert_eq!(call(reverse, &mut mock, &big), ok(&reversed));

        let counter = lib.function("c_counter");
        for expected in [b"1", b"2", b"3"] {
            assert_eq!(call(counter, &mut mock, b"ignored"), ok(expected));
        }
        assert_eq!(mock.state[&b"c_counter"[..]].0, 3u64.to_le_bytes());
        mock.state.insert(b"c_counter".to_vec(), ((u64::MAX - 1).to_le_bytes().to_vec(), 0));
        assert_eq!(call(counter, &mut mock, b""), ok(u64::MAX.to_string().as_bytes()));
        mock.state.insert(b"c_counter".to_vec(), (vec![1, 2, 3], 0));
        let outcome = call(counter, &mut mock, b"");
        assert_eq!(outcome.status, PRAAS_ERR_FUNCTION, "{outcome:?}");
        assert!(outcome.error.is_some(), "{outcome:?}");

        let call_echo = lib.function("c_call_echo");
        assert_eq!(call(call_echo, &mut mock, b"ping"), ok(b"ping"));
        assert_eq!(call(call_echo, &mut mock, b""), ok(b""));
        mock.echo_status = PRAAS_ERR_TIMEOUT;
        assert_eq!(call(call_echo, &mut mock, b"ping"), failed(PRAAS_ERR_TIMEOUT, "echo timed out"));
        mock.echo_status = PRAAS_OK;

        let fail = lib.function("c_fail");
        assert_eq!(call(fail, &mut mock, b"x"), failed(PRAAS_ERR_FUNCTION, "c_fail was asked to fail"));

        let process_id = lib.function("c_process_id");
        assert_eq!(call(process_id, &mut mock, b""), ok(PROCESS_ID));

        let msg_put = lib.function("c_msg_put");
        let msg_get = lib.function("c_msg_get");
        assert_eq!(call(msg_put, &mut mock, b"peer k first one"), ok(b"stored"));
        assert_eq!(call(msg_put, &mut mock, b"peer k second"), ok(b"stored"));
        assert_eq!(call(msg_put, &mut mock, b"peer empty"), ok(b"stored"));
        assert_eq!(call(msg_put, &mut mock, b"nobody k x"), failed(PRAAS_ERR_NOT_FOUND, "unknown process \"nobody\""));
        assert_eq!(call(msg_put, &mut mock, b"peer").status, PRAAS_ERR_INVALID_ARGUMENT);
        assert_eq!(call(msg_get, &mut mock, b"* k 10"), ok(b"proc-42 first one"));
        assert_eq!(call(msg_get, &mut mock, b"proc-42 k 0"), ok(b"proc-42 second"));
        assert_eq!(call(msg_get, &mut mock, b"* empty 0"), ok(b"proc-42 "));
        assert_eq!(call(msg_get, &mut mock, b"* k 5"), failed(PRAAS_ERR_TIMEOUT, "no message within the timeout"));
        assert_eq!(call(msg_get, &mut mock, b"* k x").status, PRAAS_ERR_INVALID_ARGUMENT);

        assert!(mock.logs.is_empty(), "unexpected logs: {:?}", mock.logs);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
