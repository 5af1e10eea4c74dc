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

/// Input `p1[,p2,...] function iterations size`: `iterations` rounds of invoking `function` of
/// every process listed with `size` bytes, returning each round's nanoseconds as little-endian
/// u64s, timed here around the calls (the remote-invocation benchmark: no client hop in the
/// figure). One process: `invoke_remote` per round; several: all submitted, then all waited for.
/// Every answer must have `size` bytes (as `echo` returns).
fn remote_bench(ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let text = text(input)?;
    let mut parts = text.split_whitespace();
    let (Some(processes), Some(function), Some(iterations), Some(size)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::with_status(
            praas_ffi::PRAAS_ERR_INVALID_ARGUMENT,
            "want: p1[,p2,...] function iterations size",
        ));
    };
    let processes: Vec<&str> = processes.split(',').filter(|p| !p.is_empty()).collect();
    let iterations = usize::try_from(number(iterations.as_bytes())?).map_err(|_| Error::new("too many iterations"))?;
    let size = usize::try_from(number(size.as_bytes())?).map_err(|_| Error::new("too large"))?;
    let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let wrong = |p: &str, len: usize| {
        Error::new(format!("{function:?} on {p} answered {len} bytes other than the {size} sent"))
    };
    out.reserve(iterations * 8)?;
    for round in 0..iterations {
        // The first round (a warm-up one) also compares the bytes, as echo returns its input.
        let check = |process: &str, answer: &[u8]| match answer.len() == size && (round > 0 || answer == payload) {
            true => Ok(()),
            false => Err(wrong(process, answer.len())),
        };
        let start = Instant::now();
        if let [process] = processes.as_slice() {
            check(process, &ctx.invoke_remote(process, function, &payload)?)?;
        } else {
            let mut calls = Vec::with_capacity(processes.len());
            for process in &processes {
                calls.push(ctx.submit(process, function, &payload)?);
            }
            for (process, answer) in processes.iter().zip(ctx.wait_all(calls)) {
                check(process, &answer?)?;
            }
        }
        let elapsed = start.elapsed().as_nanos() as u64;
        out.extend_from_slice(&elapsed.to_le_bytes())?;
    }
    Ok(())
}

/// Words before the bytes: the first `n` space-separated words of `input` and what follows the
/// `n`-th space (binary, may be empty).
fn words(input: &[u8], n: usize) -> Result<(Vec<&str>, &[u8])> {
    let mut words = Vec::with_capacity(n);
    let mut rest = input;
    for _ in 0..n {
        let (word, after) = word(rest)?;
        if word.is_empty() {
            return Err(Error::with_status(praas_ffi::PRAAS_ERR_INVALID_ARGUMENT, format!("want {n} words first")));
        }
        words.push(word);
        rest = after;
    }
    Ok((words, rest))
}

/// The k-means step of the reduction benchmark (`praas-bench reduce`): points of
/// [`kmeans::DIMS`] doubles held in state, centroids given, partial sums returned.
mod kmeans {
    /// Doubles per point.
    pub const DIMS: usize = 8;
    /// Doubles of one cluster's partial: the sums of its points' coordinates and their count.
    pub const PARTIAL: usize = DIMS + 1;
    /// The state key a worker's points live under.
    pub const POINTS_KEY: &str = "kmeans-points";

    fn splitmix(mut x: u64) -> u64 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    /// Point `index` of the data set: around one of 8 fixed centres (chosen by a hash of the
    /// index), a uniform offset in [0, 1) per coordinate. The same index is the same point
    /// however the data set is split among workers.
    pub fn point(index: u64) -> [f64; DIMS] {
        let centre = splitmix(index) % 8;
        let mut p = [0.0; DIMS];
        for (d, value) in p.iter_mut().enumerate() {
            let offset = (splitmix(index.wrapping_mul(DIMS as u64).wrapping_add(d as u64) ^ 0x5eed) >> 11) as f64
                / (1u64 << 53) as f64;
            *value = ((centre as usize * 5 + d * 3) % 16) as f64 + offset;
        }
        p
    }

    /// Points `start..start + count` as little-endian doubles.
    pub fn points(start: u64, count: u64) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(count as usize * DIMS * 8);
        for index in start..start + count {
            for value in point(index) {
                bytes.extend_from_slice(&value.to_le_bytes());
            }
        }
        bytes
    }

    /// Little-endian doubles from `bytes` (a whole number of them), or `None`.
    pub fn doubles(bytes: &[u8]) -> Option<Vec<f64>> {
        if !bytes.len().is_multiple_of(8) {
            return None;
        }
        Some(bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
    }

    /// Appends `values` as little-endian doubles.
    pub fn extend(out: &mut Vec<u8>, values: &[f64]) {
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// The partial sums of one k-means step over `points` (little-endian doubles, DIMS a point)
    /// for `centroids` (K of DIMS doubles): per cluster the coordinate sums of the points nearest
    /// its centroid and their count, K * PARTIAL doubles.
    pub fn partials(points: &[u8], centroids: &[f64]) -> Vec<f64> {
        let k = centroids.len() / DIMS;
        let mut sums = vec![0.0; k * PARTIAL];
        let mut p = [0.0; DIMS];
        for bytes in points.chunks_exact(DIMS * 8) {
            for (value, b) in p.iter_mut().zip(bytes.chunks_exact(8)) {
                *value = f64::from_le_bytes(b.try_into().expect("8 bytes"));
            }
            let mut best = (f64::INFINITY, 0);
            for (c, centroid) in centroids.chunks_exact(DIMS).enumerate() {
                let distance: f64 = p.iter().zip(centroid).map(|(a, b)| (a - b) * (a - b)).sum();
                if distance < best.0 {
                    best = (distance, c);
                }
            }
            let cluster = &mut sums[best.1 * PARTIAL..(best.1 + 1) * PARTIAL];
            for (sum, value) in cluster.iter_mut().zip(p) {
                *sum += value;
            }
            cluster[DIMS] += 1.0;
        }
        sums
    }

    /// Adds `partial` into `total` (both K * PARTIAL doubles).
    pub fn add(total: &mut [f64], partial: &[f64]) {
        for (t, p) in total.iter_mut().zip(partial) {
            *t += p;
        }
    }

    /// The next centroids from the gathered sums: each cluster's mean, or its old centroid when no
    /// point chose it.
    pub fn next_centroids(centroids: &mut [f64], total: &[f64]) {
        for (centroid, sums) in centroids.chunks_exact_mut(DIMS).zip(total.chunks_exact(PARTIAL)) {
            let count = sums[DIMS];
            if count > 0.0 {
                for (c, s) in centroid.iter_mut().zip(sums) {
                    *c = s / count;
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_step_counts_every_point_once_and_moves_to_the_means() {
            let points = points(0, 1000);
            // Two centroids far apart on the first coordinate.
            let mut centroids = vec![0.0; 2 * DIMS];
            centroids[DIMS] = 100.0;
            let sums = partials(&points, &centroids);
            assert_eq!(sums[DIMS] + sums[PARTIAL + DIMS], 1000.0);
            // Every coordinate lies in [0, 16): all are nearer the centroid at the origin.
            assert_eq!(sums[DIMS], 1000.0);
            let mean0: f64 = (0..1000).map(|i| point(i)[0]).sum::<f64>() / 1000.0;
            next_centroids(&mut centroids, &sums);
            assert!((centroids[0] - mean0).abs() < 1e-9, "{} vs {mean0}", centroids[0]);
            assert_eq!(centroids[DIMS], 100.0, "an empty cluster keeps its centroid");
        }

        #[test]
        fn a_split_data_set_sums_to_the_whole() {
            let centroids: Vec<f64> = (0..4 * DIMS).map(|i| (i % 16) as f64).collect();
            let whole = partials(&points(0, 300), &centroids);
            let mut split = partials(&points(0, 100), &centroids);
            add(&mut split, &partials(&points(100, 200), &centroids));
            for (a, b) in whole.iter().zip(&split) {
                assert!((a - b).abs() < 1e-9, "{a} vs {b}");
            }
            assert_eq!(split.iter().skip(DIMS).step_by(PARTIAL).sum::<f64>(), 300.0);
        }
    }
}

/// The centroids of a reducer's input (the bytes after its words): K * DIMS doubles, K >= 1.
fn centroids_of(bytes: &[u8]) -> Result<Vec<f64>> {
    match kmeans::doubles(bytes) {
        Some(c) if !c.is_empty() && c.len() % kmeans::DIMS == 0 => Ok(c),
        _ => Err(Error::with_status(
            praas_ffi::PRAAS_ERR_INVALID_ARGUMENT,
            format!(
                "the centroids must be K * {} little-endian doubles, K >= 1; got {} bytes",
                kmeans::DIMS,
                bytes.len()
            ),
        )),
    }
}

/// The partials of this worker's points (state key `kmeans-points`) for `centroids`.
fn own_partials(ctx: &mut Context<'_>, centroids: &[f64]) -> Result<Vec<f64>> {
    let (points, _) = ctx.state_get(kmeans::POINTS_KEY)?.ok_or_else(|| {
        Error::with_status(praas_ffi::PRAAS_ERR_NOT_FOUND, "no points in state: run kmeans_load first")
    })?;
    Ok(kmeans::partials(&points, centroids))
}

/// A worker's partial from `bytes`, checked to be K * PARTIAL doubles.
fn partial_of(bytes: &[u8], k: usize, from: &str) -> Result<Vec<f64>> {
    match kmeans::doubles(bytes) {
        Some(p) if p.len() == k * kmeans::PARTIAL => Ok(p),
        _ => Err(Error::new(format!("{from} sent {} bytes, not a partial of {k} clusters", bytes.len()))),
    }
}

/// What a reducer returns: each iteration's nanoseconds (little-endian u64s), then the last
/// iteration's gathered sums (K * PARTIAL doubles).
fn reducer_output(out: &mut Output<'_>, times: &[u64], total: &[f64]) -> Result<()> {
    let mut bytes = Vec::with_capacity(times.len() * 8 + total.len() * 8);
    for t in times {
        bytes.extend_from_slice(&t.to_le_bytes());
    }
    kmeans::extend(&mut bytes, total);
    out.extend_from_slice(&bytes)
}

/// Input `start count`: stores points `start..start + count` of the k-means data set under the
/// state key `kmeans-points` (replacing any); returns `count bytes`.
fn kmeans_load(ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let (w, _) = words(input, 2)?;
    let (start, count) = (number(w[0].as_bytes())?, number(w[1].as_bytes())?);
    let points = kmeans::points(start, count);
    ctx.state_put(kmeans::POINTS_KEY, &points)?;
    out.extend_from_slice(format!("{count} {}", points.len()).as_bytes())
}

/// Input: K * 8 centroids (little-endian doubles). Returns the partial sums of this worker's
/// points: per cluster 8 coordinate sums and the count, K * 9 doubles.
fn kmeans_partial(ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let centroids = centroids_of(input)?;
    let mut bytes = Vec::new();
    kmeans::extend(&mut bytes, &own_partials(ctx, &centroids)?);
    out.extend_from_slice(&bytes)
}

/// Input `w1,w2,... iterations ` then K * 8 centroids: `iterations` k-means steps, each invoking
/// `kmeans_partial` on every worker at once (remote invocation), summing their partials in the
/// order given and moving the centroids. Returns [`reducer_output`].
fn kmeans_reduce(ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let (w, rest) = words(input, 2)?;
    let workers: Vec<&str> = w[0].split(',').collect();
    let iterations = number(w[1].as_bytes())?;
    let mut centroids = centroids_of(rest)?;
    let k = centroids.len() / kmeans::DIMS;
    let (mut times, mut total) = (Vec::new(), Vec::new());
    let mut request = Vec::with_capacity(rest.len());
    for _ in 0..iterations {
        let start = Instant::now();
        request.clear();
        kmeans::extend(&mut request, &centroids);
        let mut calls = Vec::with_capacity(workers.len());
        for worker in &workers {
            calls.push(ctx.submit(worker, "kmeans_partial", &request)?);
        }
        total = vec![0.0; k * kmeans::PARTIAL];
        for (worker, answer) in workers.iter().zip(ctx.wait_all(calls)) {
            kmeans::add(&mut total, &partial_of(&answer?, k, worker)?);
        }
        kmeans::next_centroids(&mut centroids, &total);
        times.push(start.elapsed().as_nanos() as u64);
    }
    reducer_output(out, &times, &total)
}

/// Input `reducer iterations`: `iterations` times, gets the centroids from `reducer` (key
/// `kmeans-c`) and puts this worker's partial back to it (key `kmeans-p`); returns `done`.
fn kmeans_worker_msg(ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let (w, _) = words(input, 2)?;
    let (reducer, iterations) = (w[0], number(w[1].as_bytes())?);
    for _ in 0..iterations {
        let message = ctx.get(Some(reducer), "kmeans-c", Duration::from_secs(30))?;
        let centroids = centroids_of(&message.data)?;
        let mut bytes = Vec::new();
        kmeans::extend(&mut bytes, &own_partials(ctx, &centroids)?);
        ctx.put(reducer, "kmeans-p", &bytes)?;
    }
    out.extend_from_slice(b"done")
}

/// Input as [`kmeans_reduce`]'s: the same steps with the exchange by messages: the centroids put
/// to every worker (key `kmeans-c`, its `kmeans_worker_msg` running), their partials got from any
/// (key `kmeans-p`) and summed in the order given. Returns [`reducer_output`].
fn kmeans_reduce_msg(ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let (w, rest) = words(input, 2)?;
    let workers: Vec<&str> = w[0].split(',').collect();
    let iterations = number(w[1].as_bytes())?;
    let mut centroids = centroids_of(rest)?;
    let k = centroids.len() / kmeans::DIMS;
    let (mut times, mut total) = (Vec::new(), Vec::new());
    let mut request = Vec::with_capacity(rest.len());
    for _ in 0..iterations {
        let start = Instant::now();
        request.clear();
        kmeans::extend(&mut request, &centroids);
        for worker in &workers {
            ctx.put(worker, "kmeans-c", &request)?;
        }
        let mut partials: Vec<Option<Vec<f64>>> = vec![None; workers.len()];
        for _ in 0..workers.len() {
            let message = ctx.get(None, "kmeans-p", Duration::from_secs(30))?;
            let index = workers
                .iter()
                .position(|w| *w == message.from)
                .filter(|&i| partials[i].is_none())
                .ok_or_else(|| Error::new(format!("an unexpected partial from {:?}", message.from)))?;
            partials[index] = Some(partial_of(&message.data, k, &message.from)?);
        }
        total = vec![0.0; k * kmeans::PARTIAL];
        for partial in partials.iter().flatten() {
            kmeans::add(&mut total, partial);
        }
        kmeans::next_centroids(&mut centroids, &total);
        times.push(start.elapsed().as_nanos() as u64);
    }
    reducer_output(out, &times, &total)
}

/// A minimal Redis client (RESP over a blocking `TcpStream`, every read and write bounded by a
/// timeout) for the Redis variant of the reduction benchmark.
mod resp {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use praas_ffi::{Error, Result};

    /// Largest bulk reply taken, in bytes (a partial is well below).
    const MAX_BULK: usize = 64 << 20;

    /// One connection to a Redis server.
    pub struct Redis {
        reader: BufReader<TcpStream>,
        writer: TcpStream,
    }

    fn io(doing: &str) -> impl Fn(std::io::Error) -> Error + '_ {
        move |e| Error::new(format!("redis {doing}: {e}"))
    }

    impl Redis {
        /// Connects to `addr` (`host:port`); reads and writes wait at most `timeout`.
        pub fn connect(addr: &str, timeout: Duration) -> Result<Self> {
            let addr: std::net::SocketAddr =
                addr.parse().map_err(|_| Error::new(format!("{addr:?} is not a redis address (host:port)")))?;
            let stream = TcpStream::connect_timeout(&addr, timeout).map_err(io("connecting"))?;
            stream.set_nodelay(true).map_err(io("connecting"))?;
            stream.set_read_timeout(Some(timeout)).map_err(io("connecting"))?;
            stream.set_write_timeout(Some(timeout)).map_err(io("connecting"))?;
            let reader = BufReader::new(stream.try_clone().map_err(io("connecting"))?);
            Ok(Self { reader, writer: stream })
        }

        fn send(&mut self, args: &[&[u8]]) -> Result<()> {
            let mut command = format!("*{}\r\n", args.len()).into_bytes();
            for arg in args {
                command.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                command.extend_from_slice(arg);
                command.extend_from_slice(b"\r\n");
            }
            self.writer.write_all(&command).map_err(io("sending"))
        }

        fn line(&mut self) -> Result<String> {
            let mut line = Vec::new();
            let n = (&mut self.reader).take(1024).read_until(b'\n', &mut line).map_err(io("receiving"))?;
            if n == 0 || !line.ends_with(b"\r\n") {
                return Err(Error::new("redis closed the connection or sent a line of more than 1 KiB"));
            }
            line.truncate(line.len() - 2);
            String::from_utf8(line).map_err(|_| Error::new("redis sent a line that is not UTF-8"))
        }

        fn length(line: &str) -> Result<i64> {
            line[1..].parse().map_err(|_| Error::new(format!("unexpected redis reply {line:?}")))
        }

        fn bulk(&mut self) -> Result<Vec<u8>> {
            let line = self.line()?;
            if !line.starts_with('$') {
                return Err(Error::new(format!("redis answered {line:?} for a bulk string")));
            }
            let len = usize::try_from(Self::length(&line)?)
                .ok()
                .filter(|&n| n <= MAX_BULK)
                .ok_or_else(|| Error::new(format!("redis announced a bulk string of {line:?}")))?;
            let mut data = vec![0; len + 2];
            self.reader.read_exact(&mut data).map_err(io("receiving"))?;
            if !data.ends_with(b"\r\n") {
                return Err(Error::new("a redis bulk string not ended by CRLF"));
            }
            data.truncate(len);
            Ok(data)
        }

        /// `LPUSH key value`.
        pub fn lpush(&mut self, key: &str, value: &[u8]) -> Result<()> {
            self.send(&[b"LPUSH", key.as_bytes(), value])?;
            let line = self.line()?;
            if line.starts_with(':') {
                Ok(())
            } else {
                Err(Error::new(format!("redis answered {line:?} to LPUSH")))
            }
        }

        /// `BLPOP key seconds`: the value, or an error when none came within `seconds`.
        pub fn blpop(&mut self, key: &str, seconds: u64) -> Result<Vec<u8>> {
            self.send(&[b"BLPOP", key.as_bytes(), seconds.to_string().as_bytes()])?;
            let line = self.line()?;
            match line.as_str() {
                "*2" => {
                    self.bulk()?;
                    self.bulk()
                }
                "*-1" => Err(Error::with_status(
                    praas_ffi::PRAAS_ERR_TIMEOUT,
                    format!("nothing under {key:?} in redis within {seconds} s"),
                )),
                other => Err(Error::new(format!("redis answered {other:?} to BLPOP"))),
            }
        }
    }
}

/// Seconds a Redis variant's BLPOP waits, and (a little more) its socket.
const REDIS_WAIT_SECS: u64 = 30;

/// Input `redis_addr iterations`: `iterations` times, pops the centroids from Redis (list
/// `kmeans:c:ID`, ID this process), computes this worker's partial and pushes `ID` then a newline
/// and the partial to list `kmeans:p`; returns `done`.
fn kmeans_worker_redis(ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let (w, _) = words(input, 2)?;
    let iterations = number(w[1].as_bytes())?;
    let id = ctx.process_id();
    let mut redis = resp::Redis::connect(w[0], Duration::from_secs(REDIS_WAIT_SECS + 5))?;
    let list = format!("kmeans:c:{id}");
    for _ in 0..iterations {
        let centroids = centroids_of(&redis.blpop(&list, REDIS_WAIT_SECS)?)?;
        let mut bytes = format!("{id}\n").into_bytes();
        kmeans::extend(&mut bytes, &own_partials(ctx, &centroids)?);
        redis.lpush("kmeans:p", &bytes)?;
    }
    out.extend_from_slice(b"done")
}

/// Input `redis_addr w1,w2,... iterations ` then K * 8 centroids: the steps of [`kmeans_reduce`]
/// with the exchange through Redis: the centroids pushed to every worker's list (its
/// `kmeans_worker_redis` running), the partials popped from `kmeans:p` and summed in the order
/// given. Returns [`reducer_output`].
fn kmeans_reduce_redis(_ctx: &mut Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<()> {
    let (w, rest) = words(input, 3)?;
    let workers: Vec<&str> = w[1].split(',').collect();
    let iterations = number(w[2].as_bytes())?;
    let mut centroids = centroids_of(rest)?;
    let k = centroids.len() / kmeans::DIMS;
    let mut redis = resp::Redis::connect(w[0], Duration::from_secs(REDIS_WAIT_SECS + 5))?;
    let lists: Vec<String> = workers.iter().map(|w| format!("kmeans:c:{w}")).collect();
    let (mut times, mut total) = (Vec::new(), Vec::new());
    let mut request = Vec::with_capacity(rest.len());
    for _ in 0..iterations {
        let start = Instant::now();
        request.clear();
        kmeans::extend(&mut request, &centroids);
        for list in &lists {
            redis.lpush(list, &request)?;
        }
        let mut partials: Vec<Option<Vec<f64>>> = vec![None; workers.len()];
        for _ in 0..workers.len() {
            let message = redis.blpop("kmeans:p", REDIS_WAIT_SECS)?;
            let at =
                message.iter().position(|&b| b == b'\n').ok_or_else(|| Error::new("a partial without its sender"))?;
            let from = text(&message[..at])?;
            let index = workers
                .iter()
                .position(|w| *w == from)
                .filter(|&i| partials[i].is_none())
                .ok_or_else(|| Error::new(format!("an unexpected partial from {from:?}")))?;
            partials[index] = Some(partial_of(&message[at + 1..], k, from)?);
        }
        total = vec![0.0; k * kmeans::PARTIAL];
        for partial in partials.iter().flatten() {
            kmeans::add(&mut total, partial);
        }
        kmeans::next_centroids(&mut centroids, &total);
        times.push(start.elapsed().as_nanos() as u64);
    }
    reducer_output(out, &times, &total)
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
    fan_out,
    remote_bench,
    kmeans_load,
    kmeans_partial,
    kmeans_reduce,
    kmeans_worker_msg,
    kmeans_reduce_msg,
    kmeans_worker_redis,
    kmeans_reduce_redis
);
