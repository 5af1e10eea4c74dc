//! Example praas functions in Rust, used by the demo, the tests and the benchmarks.
//!
//! `examples/functions/functions.toml` declares them for `praas process serve`.

use std::time::{Duration, Instant};

use praas_ffi::{export, Context, Error, Output, Result, PRAAS_LOG_INFO};

fn text(input: &[u8]) -> Result<&str> {
    std::str::from_utf8(input)
        .map_err(|_| Error::with_status(praas_ffi::PRAAS_ERR_INVALID_ARGUMENT, "input is not UTF-8"))
}

fn number(input: &[u8]) -> Result<u64> {
    let text = text(input)?.trim();
    text.parse()
        .map_err(|_| Error::with_status(praas_ffi::PRAAS_ERR_INVALID_ARGUMENT, format!("{text:?} is not a number")))
}

/// Returns its input.
fn echo(_ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    out.extend_from_slice(input)
}

/// Does nothing, returns nothing.
fn noop(_ctx: &mut Context<'_>, _input: &[u8], _out: &mut Output<'_>) -> Result<()> {
    Ok(())
}

/// Input `key=value`: stores `value` under `key`.
fn state_put(ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let split = input.iter().position(|&b| b == b'=').ok_or_else(|| Error::new("input must be key=value"))?;
    let key = text(&input[..split])?;
    ctx.state_put(key, &input[split + 1..])?;
    out.extend_from_slice(b"stored")
}

/// Input `key`: returns its value, or fails with NOT_FOUND.
fn state_get(ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let key = text(input)?;
    match ctx.state_get(key)? {
        Some((value, _timestamp)) => out.extend_from_slice(&value),
        None => Err(Error::with_status(praas_ffi::PRAAS_ERR_NOT_FOUND, format!("no state key {key:?}"))),
    }
}

/// Input `key`: deletes it; returns `deleted` or `absent`.
fn state_delete(ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let deleted = ctx.state_delete(text(input)?)?;
    out.extend_from_slice(if deleted { b"deleted" } else { b"absent" })
}

/// Returns the state keys, one per line, as `key timestamp_ns`.
fn state_keys(ctx: &mut Context<'_>, _input: &[u8], out: &mut Output<'_>) -> Result<()> {
    for (key, ts) in ctx.state_keys()? {
        out.extend_from_slice(format!("{key} {ts}\n").as_bytes())?;
    }
    Ok(())
}

/// Increments the counter in state key `counter` and returns its new value as text.
fn counter(ctx: &mut Context<'_>, _input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let current = match ctx.state_get("counter")? {
        Some((value, _)) => {
            u64::from_le_bytes(value.as_slice().try_into().map_err(|_| Error::new("counter is not 8 bytes"))?)
        }
        None => 0,
    };
    let next = current + 1;
    ctx.state_put("counter", &next.to_le_bytes())?;
    ctx.log(PRAAS_LOG_INFO, &format!("counter is now {next}"));
    out.extend_from_slice(next.to_string().as_bytes())
}

/// Panics with its input as the message.
fn panic(_ctx: &mut Context<'_>, input: &[u8], _out: &mut Output<'_>) -> Result<()> {
    panic!("asked to panic: {}", String::from_utf8_lossy(input));
}

/// Fails with its input as the message.
fn fail(_ctx: &mut Context<'_>, input: &[u8], _out: &mut Output<'_>) -> Result<()> {
    Err(Error::new(String::from_utf8_lossy(input).into_owned()))
}

/// Sleeps for the number of milliseconds in its input, then returns `slept`.
fn sleep(_ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    std::thread::sleep(Duration::from_millis(number(input)?));
    out.extend_from_slice(b"slept")
}

/// Returns as many bytes as its input says, a repeating pattern of `0..=250`.
fn generate(_ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let len = usize::try_from(number(input)?).map_err(|_| Error::new("too large"))?;
    let buf = out.resize(len)?;
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte = (i % 251) as u8;
    }
    Ok(())
}

/// Input `n`: invokes itself with `n - 1` until 0; returns `nest(n)[...]` around the inner result.
fn nest(ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let depth = number(input)?;
    if depth == 0 {
        return out.extend_from_slice(format!("leaf@{}", ctx.process_id()).as_bytes());
    }
    let inner = ctx.invoke("nest", (depth - 1).to_string().as_bytes())?;
    out.extend_from_slice(format!("nest({depth})[").as_bytes())?;
    out.extend_from_slice(&inner)?;
    out.extend_from_slice(b"]")
}

/// Input `name`: invokes that function of this process with an empty input and returns its output.
fn call(ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let output = ctx.invoke(text(input)?, b"")?;
    out.extend_from_slice(&output)
}

/// Input `iterations size`: invokes `echo` locally that many times with `size` bytes and returns
/// each call's duration in nanoseconds as little-endian u64s (for the local-invoke benchmark).
fn local_loop(ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let text = text(input)?;
    let mut parts = text.split_whitespace();
    let iterations: usize =
        parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| Error::new("want: iterations size"))?;
    let size: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let payload = vec![0x5a; size];
    out.reserve(iterations * 8)?;
    for _ in 0..iterations {
        let start = Instant::now();
        let result = ctx.invoke("echo", &payload)?;
        let elapsed = start.elapsed().as_nanos() as u64;
        if result.len() != size {
            return Err(Error::new("local echo returned the wrong size"));
        }
        drop(result);
        out.extend_from_slice(&elapsed.to_le_bytes())?;
    }
    Ok(())
}

/// Input `dest key payload...`: puts the payload under `key` to process `dest`; returns `stored`
/// once the destination has stored it.
fn msg_put(ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let mut parts = input.splitn(3, |&b| b == b' ');
    let (Some(dest), Some(key)) = (parts.next(), parts.next()) else {
        return Err(Error::with_status(praas_ffi::PRAAS_ERR_INVALID_ARGUMENT, "want: dest key payload"));
    };
    ctx.put(text(dest)?, text(key)?, parts.next().unwrap_or(b""))?;
    out.extend_from_slice(b"stored")
}

/// Input `source|* key timeout_ms`: takes the oldest message under `key` from `source` (`*`: any)
/// and returns `from payload`.
fn msg_get(ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let mut parts = text(input)?.split_whitespace();
    let (Some(source), Some(key), Some(timeout)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Error::with_status(praas_ffi::PRAAS_ERR_INVALID_ARGUMENT, "want: source|* key timeout_ms"));
    };
    let timeout = Duration::from_millis(number(timeout.as_bytes())?);
    let message = ctx.get(Some(source).filter(|s| *s != "*"), key, timeout)?;
    out.extend_from_slice(message.from.as_bytes())?;
    out.extend_from_slice(b" ")?;
    out.extend_from_slice(&message.data)
}

/// Input `peer iterations`: gets each message under `ping` from `peer` and puts it back to
/// `peer` under `pong`, `iterations` times (the far end of the message benchmark).
fn msg_bounce(ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let text = text(input)?;
    let (peer, iterations) = text.split_once(' ').ok_or_else(|| Error::new("want: peer iterations"))?;
    let iterations = number(iterations.as_bytes())?;
    for _ in 0..iterations {
        let message = ctx.get(Some(peer), "ping", Duration::from_secs(30))?;
        ctx.put(peer, "pong", &message.data)?;
    }
    out.extend_from_slice(b"bounced")
}

/// Input `peer iterations size`: puts `size` bytes to `peer` under `ping` and gets the answer
/// under `pong`, `iterations` times; returns each round trip's nanoseconds as little-endian u64s
/// (the near end of the message benchmark; `msg_bounce` must run on `peer`).
fn msg_roundtrip(ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let text = text(input)?;
    let mut parts = text.split_whitespace();
    let (Some(peer), Some(iterations), Some(size)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Error::new("want: peer iterations size"));
    };
    let iterations = number(iterations.as_bytes())? as usize;
    let payload = vec![0xa5u8; number(size.as_bytes())? as usize];
    out.reserve(iterations * 8)?;
    for _ in 0..iterations {
        let start = Instant::now();
        ctx.put(peer, "ping", &payload)?;
        let answer = ctx.get(Some(peer), "pong", Duration::from_secs(30))?;
        let elapsed = start.elapsed().as_nanos() as u64;
        if answer.data.len() != payload.len() {
            return Err(Error::new("the bounced message has the wrong size"));
        }
        out.extend_from_slice(&elapsed.to_le_bytes())?;
    }
    Ok(())
}

/// Returns the process id.
fn process_id(ctx: &mut Context<'_>, _input: &[u8], out: &mut Output<'_>) -> Result<()> {
    out.extend_from_slice(ctx.process_id().as_bytes())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Input `key bytes`: stores `bytes` generated bytes (a pattern seeded by the key) under `key`.
fn fill(ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let text = text(input)?;
    let (key, size) = text.split_once(' ').ok_or_else(|| Error::new("want: key bytes"))?;
    let size: usize = size.trim().parse().map_err(|_| Error::new("bytes is not a number"))?;
    let mut x = fnv1a(key.as_bytes()) | 1;
    let value: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    ctx.state_put(key, &value)?;
    out.extend_from_slice(format!("{size} {:016x}", fnv1a(&value)).as_bytes())
}

/// Input `key`: returns `length fnv1a-64` of its value, to compare state without moving it.
fn checksum(ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let key = text(input)?;
    let (value, _) = ctx.state_get(key)?.ok_or_else(|| Error::with_status(praas_ffi::PRAAS_ERR_NOT_FOUND, key))?;
    out.extend_from_slice(format!("{} {:016x}", value.len(), fnv1a(&value)).as_bytes())
}

/// Longest state-file name `file_write` and `file_read` take, in bytes (the usual file-system limit).
const MAX_FILE_NAME: usize = 255;

/// `name` if it names a file directly in the process's working folder (its state-files folder):
/// not empty, at most [`MAX_FILE_NAME`] bytes, no `/`, no NUL, not starting with `.` (so neither
/// `..` nor hidden files). Anything else is `PRAAS_ERR_INVALID_ARGUMENT`, saying why.
fn state_file_name(name: &str) -> Result<&str> {
    let problem = if name.is_empty() {
        Some("it is empty".to_owned())
    } else if name.len() > MAX_FILE_NAME {
        Some(format!("it is {} bytes long, more than {MAX_FILE_NAME}", name.len()))
    } else if name.contains('/') {
        Some("it holds '/'".to_owned())
    } else if name.contains('\0') {
        Some("it holds a NUL byte".to_owned())
    } else if name.starts_with('.') {
        Some("it starts with '.'".to_owned())
    } else {
        None
    };
    match problem {
        None => Ok(name),
        Some(problem) => Err(Error::with_status(
            praas_ffi::PRAAS_ERR_INVALID_ARGUMENT,
            format!(
                "{name:?} is not a state file name: {problem}; a state file name is a plain file name \
                 (1 to {MAX_FILE_NAME} bytes, no '/', no NUL, not starting with '.') in the process's \
                 state-files folder"
            ),
        )),
    }
}

/// Opens the state file `name` (checked by [`state_file_name`]) with `options`, refusing a
/// symbolic link there (`O_NOFOLLOW`) and anything but a regular file.
fn open_state_file(name: &str, options: &mut std::fs::OpenOptions) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = state_file_name(name)?;
    // O_NONBLOCK: opening a FIFO planted under the name must not block the invocation; it has no
    // effect on regular files.
    let file = options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(name).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            Error::with_status(
                praas_ffi::PRAAS_ERR_INVALID_ARGUMENT,
                format!("state file {name:?} is a symbolic link: state files are never followed elsewhere"),
            )
        } else if e.kind() == std::io::ErrorKind::NotFound {
            Error::with_status(praas_ffi::PRAAS_ERR_NOT_FOUND, format!("no state file {name:?}"))
        } else {
            Error::new(format!("state file {name:?}: {e}"))
        }
    })?;
    if !file.metadata()?.is_file() {
        return Err(Error::with_status(
            praas_ffi::PRAAS_ERR_INVALID_ARGUMENT,
            format!("state file {name:?} is not a regular file"),
        ));
    }
    Ok(file)
}

/// Input `name content`: writes the state file `name` in the process's working folder, its
/// state-files folder (owner-only, `0600`).
fn file_write(_ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text = text(input)?;
    let (name, content) = text
        .split_once(' ')
        .ok_or_else(|| Error::with_status(praas_ffi::PRAAS_ERR_INVALID_ARGUMENT, "want: name content"))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(0o600);
    open_state_file(name, &mut options)?.write_all(content.as_bytes())?;
    out.extend_from_slice(b"written")
}

/// Input `name`: returns the content of the state file `name` in the process's working folder.
fn file_read(_ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    use std::io::Read;
    let mut content = Vec::new();
    open_state_file(text(input)?, std::fs::OpenOptions::new().read(true))?.read_to_end(&mut content)?;
    out.extend_from_slice(&content)
}

/// Input `ms`: sleeps, then increments the state counter `slow` and returns its new value. The
/// read and the write of the counter are one step: invocations on several workers that wake at
/// the same moment do not both read the same value.
fn slow_count(ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    static INCREMENT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    std::thread::sleep(Duration::from_millis(number(input)?));
    let _one_at_a_time = INCREMENT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let current = match ctx.state_get("slow")? {
        Some((value, _)) => text(&value)?.parse::<u64>().map_err(|_| Error::new("slow is not a number"))?,
        None => 0,
    };
    ctx.state_put("slow", (current + 1).to_string().as_bytes())?;
    out.extend_from_slice((current + 1).to_string().as_bytes())
}

/// Splits `word rest` at the first space (`rest` may be empty or binary).
fn word(input: &[u8]) -> Result<(&str, &[u8])> {
    let at = input.iter().position(|&b| b == b' ').unwrap_or(input.len());
    Ok((text(&input[..at])?, input.get(at + 1..).unwrap_or(&[])))
}

/// Input `process function input`: invokes `function` of `process` (another process of the
/// application) with the bytes after the second space and returns its output; its error (status
/// and message) is this function's error.
fn remote_call(ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let (process, rest) = word(input)?;
    let (function, input) = word(rest)?;
    let output = ctx.invoke_remote(process, function, input)?;
    out.extend_from_slice(&output)
}

/// Input `p1,p2,... function input`: invokes `function` with `input` on every process listed,
/// all at once, and gathers the answers as they come. One line per process, in the order given:
/// `p ok OUTPUT` or `p err STATUS MESSAGE`.
fn fan_out(ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let (processes, rest) = word(input)?;
    let (function, input) = word(rest)?;
    let processes: Vec<&str> = processes.split(',').filter(|p| !p.is_empty()).collect();
    let mut lines: Vec<Option<String>> = vec![None; processes.len()];
    let mut calls = Vec::with_capacity(processes.len());
    let mut owner = std::collections::HashMap::new();
    for (index, process) in processes.iter().enumerate() {
        match ctx.submit(process, function, input) {
            Ok(call) => {
                owner.insert(call, index);
                calls.push(call);
            }
            Err(err) => lines[index] = Some(format!("{process} err {} {}", err.status, err.message)),
        }
    }
    while let Some((call, result)) = ctx.wait_any(&mut calls) {
        let index = owner[&call];
        lines[index] = Some(match result {
            Ok(output) => format!("{} ok {}", processes[index], String::from_utf8_lossy(&output)),
            Err(err) => format!("{} err {} {}", processes[index], err.status, err.message),
        });
    }
    let text: Vec<String> = lines.into_iter().flatten().collect();
    out.extend_from_slice(text.join("\n").as_bytes())
}

export!(
    echo,
    noop,
    msg_put,
    msg_get,
    state_put,
    state_get,
    state_delete,
    state_keys,
    counter,
    panic,
    fail,
    sleep,
    generate,
    nest,
    call,
    local_loop,
    process_id,
    fill,
    checksum,
    file_write,
    file_read,
    slow_count,
    msg_bounce,
    msg_roundtrip,
    remote_call,
    fan_out
);
