//! `swap`: swap-out and swap-in of a process's state through the swap store, against a plain
//! sequential write (with fsync) and read of the same bytes to the same filesystem, in the same
//! run. State is held in 4 MiB values, as a process with large arrays would hold it.
//!
//! Swap-out is `SwapStore::write` (the code a process runs when the control plane swaps it out:
//! records, CRC-32s, fsync, rename); swap-in is `SwapStore::read` with its checks plus restoring
//! the state store. Both sides run in this process, so the page cache treats them alike.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use praas_dataplane::state::StateStore;
use praas_dataplane::swap::SwapStore;

use crate::cli::SwapArgs;
use crate::output::Reporter;
use crate::placement;
use crate::report::{Record, RunInfo};

const CHUNK: u64 = 4 << 20;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// State of `bytes` bytes in values of at most 4 MiB, with content that does not compress.
fn state_of(bytes: u64) -> StateStore {
    let state = StateStore::default();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut left = bytes;
    let mut index = 0;
    while left > 0 {
        let len = left.min(CHUNK) as usize;
        let value: Vec<u8> = (0..len / 8 + 1)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .take(len)
            .collect();
        state.put(&format!("chunk-{index:06}"), value).expect("valid key");
        left -= len as u64;
        index += 1;
    }
    state
}

fn plain_write(path: &Path, state: &StateStore) -> Result<f64, String> {
    let started = Instant::now();
    let mut file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut failure = None;
    state.for_each(|_, entry| {
        if failure.is_none() {
            failure = file.write_all(&entry.value).err();
        }
    });
    if let Some(e) = failure {
        return Err(format!("{}: {e}", path.display()));
    }
    file.sync_all().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(started.elapsed().as_secs_f64())
}

fn plain_read(path: &Path, bytes: u64) -> Result<f64, String> {
    let started = Instant::now();
    let mut file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut chunks = Vec::new();
    let mut left = bytes;
    while left > 0 {
        let len = left.min(CHUNK) as usize;
        let mut chunk = vec![0u8; len];
        file.read_exact(&mut chunk).map_err(|e| format!("{}: {e}", path.display()))?;
        chunks.push(chunk);
        left -= len as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    drop(chunks);
    Ok(secs)
}

/// Runs the whole `swap` benchmark.
pub fn run(args: &SwapArgs) -> Result<(), String> {
    let info = RunInfo { transport: "local-fs", placement: "unpinned".into(), host: placement::host() };
    let temp;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("praas-bench-swap-")
                .tempdir_in(std::env::var_os("TMPDIR").unwrap_or_else(|| "/var/tmp".into()))
                .map_err(|e| format!("cannot create a folder to swap into: {e}"))?;
            temp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let store = SwapStore::new(dir.join("store"));
    let plain = dir.join("plain.bin");
    eprintln!("praas-bench: swapping into {} ({} repetitions, median reported)", dir.display(), args.reps);
    let mut reporter = Reporter::new("swap", &args.output);
    for &bytes in &args.sizes {
        let state = state_of(bytes);
        let (mut outs, mut ins, mut writes, mut reads) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for rep in 0..args.reps {
            // Alternate which side goes first, so that the filesystem's drift hits both alike.
            let ours_first = rep % 2 == 1;
            // Outside the timed region, as the control plane does after a swap: the replaced
            // snapshot goes (and the baseline's file, so that neither side pays for a delete).
            store.collect_garbage("bench", "swapper").map_err(|e| e.to_string())?;
            let _ = std::fs::remove_file(&plain);
            let swap_out =
                || store.write("bench", "swapper", &state, &[], None).map(|r| r.secs).map_err(|e| e.to_string());
            if ours_first {
                outs.push(swap_out()?);
                writes.push(plain_write(&plain, &state)?);
            } else {
                writes.push(plain_write(&plain, &state)?);
                outs.push(swap_out()?);
            }
            let swap_in = || -> Result<(f64, StateStore), String> {
                let started = Instant::now();
                let snapshot = store.read("bench", "swapper").map_err(|e| e.to_string())?;
                let restored = StateStore::default();
                snapshot.restore_state(&restored);
                Ok((started.elapsed().as_secs_f64(), restored))
            };
            let restored = if ours_first {
                let (secs, restored) = swap_in()?;
                ins.push(secs);
                reads.push(plain_read(&plain, bytes)?);
                restored
            } else {
                reads.push(plain_read(&plain, bytes)?);
                let (secs, restored) = swap_in()?;
                ins.push(secs);
                restored
            };
            // Verified outside the timed region: every value came back byte-exact.
            if restored.len() != state.len() || restored.value_bytes() != bytes {
                return Err(format!("swap-in of {bytes} bytes restored {} bytes", restored.value_bytes()));
            }
            let mut mismatch = None;
            state.for_each(|key, entry| {
                if mismatch.is_none() && restored.get(key).is_none_or(|r| r.value != entry.value) {
                    mismatch = Some(key.to_owned());
                }
            });
            if let Some(key) = mismatch {
                return Err(format!("swap-in changed the value of {key}"));
            }
        }
        let io = |e: std::io::Error| format!("cannot print: {e}");
        reporter
            .push(Record::transfer("swap-out", &info, bytes, args.reps, median(outs), "plain-write", median(writes)))
            .map_err(io)?;
        reporter
            .push(Record::transfer("swap-in", &info, bytes, args.reps, median(ins), "plain-read", median(reads)))
            .map_err(io)?;
        let _ = std::fs::remove_file(&plain);
        let _ = store.delete("bench", "swapper");
    }
    reporter.finish(&info).map_err(|e| format!("cannot print: {e}"))
}
